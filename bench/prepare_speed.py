"""Benchmark prepare/text.py against the plain one-call GPT-2 encode, side by side.

    TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache python bench/prepare_speed.py            # ~200 MB corpus
    python bench/prepare_speed.py --size_mb 50 --corpus my.txt

Generates a corpus of --size_mb MB in a temporary folder (shuffled lines of tiny Shakespeare, or of
the standard library's .py files when that is missing, grouped into paragraphs; never in the repo)
unless --corpus names a file, then runs, each in its own process:
  plain  read the whole file, enc.encode_ordinary(text) in one call, np.array(ids, uint16).tofile()
  ours   python prepare/text.py --tokenizer gpt2 (streaming, --workers threads)
and prints throughput (input MB/s), wall and CPU time and peak resident memory (the child's VmHWM),
then checks that both produced the same tokens (ours adds one <|endoftext|> at the end).
"""

import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from smallgpt import cli
from smallgpt.errors import UserError
from smallgpt.prepare import HelpFormatter

REPO_ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

PLAIN = """
import sys, numpy as np, tiktoken
enc = tiktoken.get_encoding("r50k_base")
with open(sys.argv[1], encoding="utf-8") as f:
    text = f.read()
ids = enc.encode_ordinary(text)
np.array(ids, dtype=np.uint16).tofile(sys.argv[2])
"""


def source_lines() -> list[str]:
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8").splitlines(keepends=True)
    root = Path(sysconfig.get_paths()["stdlib"])
    lines = []
    for path in sorted(root.glob("*.py")):
        lines += path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    return lines


def generate(path: Path, size_mb: float, seed: int = 0) -> int:
    """Write about size_mb MB of shuffled lines, in paragraphs of 1-30 lines; return the size."""
    rng = random.Random(seed)
    lines = [line for line in source_lines() if line.strip()]
    target = int(size_mb * 1e6)
    written = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        while written < target:
            rng.shuffle(lines)
            i = 0
            while i < len(lines) and written < target:
                n = rng.randint(1, 30)
                block = "".join(lines[i : i + n]) + "\n"
                f.write(block)
                written += len(block.encode("utf-8"))
                i += n
    return path.stat().st_size


# Runs a script and records its peak resident memory. ru_maxrss is no good here: exec() keeps the
# high-water mark of the process it replaced (the parent's memory, copied by fork), whereas
# /proc/self/status VmHWM belongs to the new program only.
_MEASURE = """
import atexit, os, runpy, sys

def _record_peak():
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(os.environ["PREPARE_PEAK_FILE"], "w") as f:
        f.write(str(kb))

atexit.register(_record_peak)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_measured(script: str, *args: str, env: dict | None = None) -> tuple[float, float, float]:
    """Run `python script args...` from the repo root; return (wall s, peak RSS MB, CPU s user+sys).

    The peak is the child's VmHWM (Linux); elsewhere ru_maxrss, which may include this process.
    """
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        full_env = dict(os.environ if env is None else env, PREPARE_PEAK_FILE=str(peak_file))
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _MEASURE, str(script), *args], cwd=REPO_ROOT, env=full_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            last = err.strip().splitlines()[-1:] or ["(no output)"]
            raise UserError(f"{Path(script).name} failed (exit {proc.returncode}): {last[0]}")
        peak_kb = int(peak_file.read_text()) if peak_file.is_file() else usage.ru_maxrss
    return wall, peak_kb / 1024, usage.ru_utime + usage.ru_stime


def main(argv=None):
    parser = cli.ArgumentParser(prog="python bench/prepare_speed.py",
                                description=__doc__.strip().splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--size_mb", type=float, default=200, help="size of the generated corpus")
    parser.add_argument("--corpus", default=None, help="use this text file instead of generating one")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="threads for prepare/text.py (default: all cores)")
    args = parser.parse_args(argv)
    if not os.environ.get("TIKTOKEN_CACHE_DIR") and (REPO_ROOT.parent / "shared" / "tiktoken_cache").is_dir():
        os.environ["TIKTOKEN_CACHE_DIR"] = str(REPO_ROOT.parent / "shared" / "tiktoken_cache")

    with tempfile.TemporaryDirectory(prefix="bench_prepare-") as tmp:
        tmp = Path(tmp)
        if args.corpus:
            corpus = Path(args.corpus)
            if not corpus.is_file():
                raise UserError(f"--corpus {corpus} is not a file")
        else:
            corpus = tmp / "corpus.txt"
            t0 = time.perf_counter()
            generate(corpus, args.size_mb)
            print(f"generated {corpus.stat().st_size / 1e6:.0f} MB corpus in {time.perf_counter() - t0:.1f} s")
        mb = corpus.stat().st_size / 1e6

        plain_script = tmp / "plain.py"
        plain_script.write_text(PLAIN)
        plain_out = tmp / "plain.bin"
        plain = run_measured(plain_script, str(corpus), str(plain_out))
        ours_dir = tmp / "ours"
        ours = run_measured(REPO_ROOT / "prepare" / "text.py", "--input", str(corpus), "--out_dir", str(ours_dir),
                            "--tokenizer", "gpt2", "--workers", str(args.workers), "--quiet")

        a = np.fromfile(plain_out, dtype=np.uint16)
        b = np.concatenate([np.fromfile(ours_dir / "train.bin", np.uint16), np.fromfile(ours_dir / "val.bin", np.uint16)])
        same = len(b) == len(a) + 1 and b[-1] == 50256 and np.array_equal(a, b[:-1])

    print(f"corpus {mb:.0f} MB, {len(a):,} tokens, {os.cpu_count()} cores, --workers {args.workers}")
    print("| method | wall s | MB/s | CPU s | cores busy | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, (wall, rss, cpu) in (("plain encode_ordinary", plain), ("prepare/text.py", ours)):
        print(f"| {name} | {wall:.1f} | {mb / wall:.1f} | {cpu:.1f} | {cpu / wall:.2f} | {rss:.0f} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average after the runs: {load:.1f} (other work on the machine lowers both throughputs)")
    print(f"throughput ratio (ours / plain): {plain[0] / ours[0]:.2f}x; tokens identical: {same}")
    if not same:
        raise UserError("prepare/text.py produced different tokens from the plain encode")


if __name__ == "__main__":
    cli.run_main(main)
