"""Side by side with nanoGPT: its README's CPU quick start and the same command here, on the same data.

    python bench/vs_nanogpt.py ../nanoGPT                        # 2000 iterations each, as nanoGPT's README
    python bench/vs_nanogpt.py ../nanoGPT --max_iters=100 --rounds=2
    python bench/vs_nanogpt.py ../nanoGPT --ours=config/shakespeare_char_cpu.toml --rounds=2
    python bench/vs_nanogpt.py ../nanoGPT --ours=config/shakespeare_char_cpu.toml --match_time --rounds=2

NANOGPT_DIR is a checkout of karpathy/nanoGPT that you have (no nanoGPT code is in this repo). Its
shakespeare_char data are prepared offline: --input (default: ../shared/data/tinyshakespeare.txt
beside this checkout) is copied to NANOGPT_DIR/data/shakespeare_char/input.txt when that is missing,
so nanoGPT's own prepare.py finds it and downloads nothing. Both trainers then read that folder's
train.bin and val.bin (ours reads nanoGPT's data folders as they are).

The two commands, one after the other (--rounds alternates them, nanoGPT first; each in a fresh
temporary --out_dir):
    nanoGPT:  python train.py config/train_shakespeare_char.py QUICK_START        (in NANOGPT_DIR)
    ours:     python train.py config/shakespeare_char.toml QUICK_START --dataset=NANOGPT_DIR/data/shakespeare_char
QUICK_START is the README's --device=cpu --compile=False --eval_iters=20 --log_interval=1
--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=N --lr_decay_iters=2000
--dropout=0.0 (N = --max_iters, 2000 as in the README; --eval_interval=N is added when N is not a
multiple of 250, so that both evaluate at the end).

--ours=CONFIG runs one of our configs instead of the same command (`python train.py CONFIG
--dataset=NANOGPT_DIR/data/shakespeare_char`, as the config says otherwise: its own shape, optimizer
and time budget): the race against nanoGPT's quick start for the best val loss in its wall time.
With --match_time, ours gets that wall time on this machine: each round's run of ours is given
--max_seconds = nanoGPT's wall time in that round minus --margin seconds (what ours spends outside
its budget, which counts start-up: drawing loss.png and exiting; 2.5 s by default), so the race is fair on a machine slower or faster than the one the config's
max_seconds was set on. Both wall times are printed: check that ours' is not longer.

Printed for each: tokens per iteration (from its own start line), ms per iteration (the median over
every logged iteration but the first, as each prints it: nanoGPT's `time ...ms`, our `ms/iter`), the
final val loss as each trainer printed it, the val loss of its saved checkpoint on the whole val split
(our eval.py --context=1: every one of the split's tokens scored once, in disjoint windows of the
block size, the same tokens for both), and the wall time of the process (the scoring not included);
then ours over nanoGPT's ms/iter. The printed val losses are estimates from a sample of the split
(nanoGPT: 20 random batches of 12 windows; ours: windows evenly spaced through the split), off the
whole split's loss by up to ~0.02; compare the whole-split column. Both use torch's default threads:
run it on a quiet machine (the load is printed before and after).
"""

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from smallgpt import cli
from smallgpt.errors import UserError

DEFAULT_INPUT = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
PATTERNS = {  # (iteration time in ms, val loss, tokens per iteration) in each trainer's output
    "nanoGPT": (r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", r"^step \d+: train loss [\d.]+, val loss ([\d.]+)",
                r"tokens per iteration will be: ([\d,]+)"),
    # "iter 10/2000: ..." or, with a time budget, "iter 50 (9/52s): ..."
    "smallgpt": (r"^iter \d+(?:/\d+)?(?: \([^)]*\))?: .*?, ([\d.]+) ms/iter", r"^step \d+: train loss [\d.]+, val loss ([\d.]+)",
                 r"tokens per update: .*= ([\d,]+)"),
}


def quick_start(max_iters: int) -> list[str]:
    """nanoGPT's README CPU command's flags, with max_iters (lr_decay_iters stays 2000: nanoGPT divides by
    lr_decay_iters - warmup_iters, 0 when both are 100)."""
    flags = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
             "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", f"--max_iters={max_iters}",
             "--lr_decay_iters=2000", "--dropout=0.0"]
    return flags + ([f"--eval_interval={max_iters}"] if max_iters % 250 else [])


def prepare_nanogpt_data(nanogpt: Path, text: Path) -> Path:
    """NANOGPT_DIR/data/shakespeare_char with train.bin, val.bin and meta.pkl, made offline by its prepare.py."""
    if not (nanogpt / "train.py").is_file() or not (nanogpt / "config" / "train_shakespeare_char.py").is_file():
        raise UserError(f"{nanogpt} is not a nanoGPT checkout (no train.py and config/train_shakespeare_char.py); "
                        f"git clone https://github.com/karpathy/nanoGPT and pass its folder")
    data = nanogpt / "data" / "shakespeare_char"
    if all((data / name).is_file() for name in ("train.bin", "val.bin", "meta.pkl")):
        return data
    if not (data / "input.txt").is_file():
        if not text.is_file():
            raise UserError(f"no tiny Shakespeare text at {text}: pass --input=PATH (python prepare/shared.py "
                            f"fetches it once, online)")
        shutil.copyfile(text, data / "input.txt")
    result = subprocess.run([sys.executable, "prepare.py"], cwd=data, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"nanoGPT's {data / 'prepare.py'} failed: {last} (it imports requests even offline: "
                        f"pip install requests)")
    return data


def run(name: str, cmd: list[str], cwd: Path, out_dir: Path, data: Path) -> dict:
    """Run one trainer (writing to out_dir); its iteration times, last val loss, tokens per iteration,
    wall time and its checkpoint's loss on data's whole val split."""
    print(f"{name}: {' '.join(cmd[1:])}", flush=True)
    started = time.time()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.time() - started
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"{name} failed (exit {result.returncode}): {last}")
    time_re, val_re, tokens_re = (re.compile(p, re.M) for p in PATTERNS[name])
    times = [float(t) for t in time_re.findall(result.stdout)][1:]  # the first includes the warm-up
    vals = val_re.findall(result.stdout)
    tokens = tokens_re.search(result.stdout)
    if not times or not vals:
        raise UserError(f"{name}: found no iteration times or val loss in its output; its last line: "
                        f"{(result.stdout.strip().splitlines() or ['(none)'])[-1]}")
    found = {"times": times, "val": float(vals[-1]), "tokens": tokens.group(1) if tokens else "?", "wall": wall,
             "full_val": whole_split_loss(out_dir, data)}
    print(f"  {statistics.median(times):.1f} ms/iter, val loss {found['val']:.4f} (whole split "
          f"{found['full_val']:.4f}), {wall:.1f} s", flush=True)
    return found


def whole_split_loss(out_dir: Path, data: Path) -> float:
    """The saved checkpoint's mean loss on every token of data's val split (eval.py, disjoint windows)."""
    result = subprocess.run([sys.executable, "eval.py", f"--out_dir={out_dir}", f"--dataset={data}", "--split=val",
                             "--context=1", "--json"], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"eval.py could not score {out_dir}: {last}")
    return json.loads(result.stdout.strip().splitlines()[-1])["nats_per_token"]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor() or platform.machine()


def main(argv=None) -> dict:
    parser = cli.ArgumentParser(prog="python bench/vs_nanogpt.py", description=__doc__.splitlines()[0])
    parser.add_argument("nanogpt", metavar="NANOGPT_DIR", help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--max_iters", type=int, default=2000, help="iterations of each run (README: 2000)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each, alternating (nanoGPT first)")
    parser.add_argument("--ours", default="", help='one of our configs to run instead of the same command, '
                        'with any overrides: "config/shakespeare_char_cpu.toml --max_seconds=50"')
    parser.add_argument("--match_time", action="store_true", help="with --ours: give ours nanoGPT's wall time "
                        "of the same round, less --margin (--max_seconds)")
    parser.add_argument("--margin", type=float, default=2.5, help="seconds of ours' exit (loss.png) outside "
                        "its budget, taken off nanoGPT's wall time by --match_time")
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="tiny Shakespeare text, if the "
                        "checkout's data/shakespeare_char has none")
    args = parser.parse_args(argv)
    if args.max_iters < 2 or args.rounds < 1:
        raise UserError("--max_iters must be at least 2 and --rounds at least 1")
    if args.match_time and not args.ours:
        raise UserError("--match_time gives one of our configs nanoGPT's time: name it with --ours=CONFIG")
    nanogpt = Path(args.nanogpt).resolve()
    data = prepare_nanogpt_data(nanogpt, args.input)
    import torch  # only for its version

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, python "
          f"{platform.python_version()}; load before: {load()}", flush=True)
    flags = quick_start(args.max_iters)
    results: dict[str, list[dict]] = {"nanoGPT": [], "smallgpt": []}
    with tempfile.TemporaryDirectory(prefix="vs_nanogpt_") as tmp:
        for r in range(args.rounds):
            out = Path(tmp) / f"nanogpt{r}"
            results["nanoGPT"].append(run("nanoGPT", [sys.executable, "train.py", "config/train_shakespeare_char.py",
                                                      *flags, f"--out_dir={out}"], nanogpt, out, data))
            ours = args.ours.split() if args.ours else ["config/shakespeare_char.toml", *flags]
            if args.match_time:
                budget = results["nanoGPT"][-1]["wall"] - args.margin
                ours.append(f"--max_seconds={budget:.1f}")
            out = Path(tmp) / f"ours{r}"
            results["smallgpt"].append(run("smallgpt", [sys.executable, "train.py", *ours, f"--dataset={data}",
                                                        f"--out_dir={out}"], REPO, out, data))
    print(f"load after: {load()}")
    summary = {}
    print(f"{'':10} {'tokens/iter':>11} {'ms/iter':>9} {'val loss':>16} {'whole split':>16} {'wall s':>8}")
    for name, runs in results.items():
        ms = statistics.median(t for found in runs for t in found["times"])
        vals = ", ".join(f"{found['val']:.4f}" for found in runs)
        full = ", ".join(f"{found['full_val']:.4f}" for found in runs)
        wall = statistics.median(found["wall"] for found in runs)
        summary[name] = {"ms_per_iter": ms, "val_loss": [found["val"] for found in runs],
                         "whole_split_loss": [found["full_val"] for found in runs], "wall_s": wall}
        print(f"{name:10} {runs[0]['tokens']:>11} {ms:9.1f} {vals:>16} {full:>16} {wall:8.1f}")
    if args.ours:
        pairs = list(zip(results["nanoGPT"], results["smallgpt"]))
        walls = ", ".join(f"{a['wall']:.1f} / {b['wall']:.1f} s" for a, b in pairs)
        print(f"wall time by round, nanoGPT / ours: {walls}"
              f"; ours within nanoGPT's time in {sum(b['wall'] <= a['wall'] for a, b in pairs)} of {len(pairs)}")
        ratio = summary["smallgpt"]["wall_s"] / summary["nanoGPT"]["wall_s"]
        print(f"wall time, {args.ours} over nanoGPT's quick start: {ratio:.2f}x ({args.rounds} round(s) each)")
        summary["ratio"] = ratio
        return summary
    ratio = summary["smallgpt"]["ms_per_iter"] / summary["nanoGPT"]["ms_per_iter"]
    print(f"ms/iter, smallgpt over nanoGPT: {ratio:.2f}x ({args.max_iters} iterations x {args.rounds} round(s) each)")
    summary["ratio"] = ratio
    return summary


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
