"""One command for a CUDA machine: what the GPU path claims, measured in one go, as a table for docs/results.md.

    python bench/gpu.py                          # every step, about 8 minutes on one H100
    python bench/gpu.py --steps=tests,gpt2       # some of them
    python bench/gpu.py --out=gpu.md             # where the table goes (default: gpu-<date>.md here)

Steps, each under its own time limit so that all of them end within 9 minutes:
  tests  python -m pytest tests/test_gpu.py: mixed precision, compile, resume, sampling on CUDA (DDP
         over NCCL where 2+ GPUs exist)
  char   config/shakespeare_char_fast.toml on tiny Shakespeare (--shakespeare, default
         ../shared/data/tinyshakespeare.txt): the wall time to val loss 1.47, and the best val loss
  gpt2   GPT-2 124M (config/gpt2.toml) on random tokens, one micro-batch an update: ms/iter, tokens/s,
         MFU against the GPU's data sheet, peak memory against the memory plan's
  xl     the 1.5B config (config/gpt2_xl.toml) with activation checkpointing, 30 updates on random
         tokens: ms/iter, and the peak memory after the 30 (peak_gb, rank 0) against the memory plan's
         total (measured/planned: the plan is checked on CPUs only, tests/test_fsdp.py); under FSDP
         (bf16 gathers, compiled piece by piece, Muon's work shared) over every GPU where there are 2+
Every run is train.py as a user runs it (torchrun where there are several GPUs); the figures come from
the metrics.jsonl it writes. The table names the date, the GPU, torch, the commit and each command.
On a machine without CUDA it says so in one line and exits 0.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = ("tests", "char", "gpt2", "xl")
LIMIT_S = {"tests": 150, "char": 170, "gpt2": 80, "xl": 130}  # 530 s in all, start-ups and compiles included
TARGET = 1.47  # nanoGPT's shakespeare_char val loss on an A100
RANDOM_TOKENS = 2_000_000  # per split: enough windows that no batch repeats in these short runs


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python bench/gpu.py", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from {', '.join(STEPS)}")
    parser.add_argument("--out", default=None, help="the markdown table's file (default: gpu-<date>.md here)")
    parser.add_argument("--shakespeare", default=str(REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"),
                        help="tiny Shakespeare's input.txt, for the char step")
    args = parser.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown or not args.steps:
        parser.exit(2, f"bench/gpu.py: unknown step {', '.join(unknown) or '(none given)'}; "
                       f"choose from {', '.join(STEPS)}\n")
    return args


def run(cmd: list[str], limit_s: float, log: Path) -> tuple[int, float]:
    """Run cmd from the checkout with its output in `log`; (exit status, seconds). 124: over its limit."""
    started = time.time()
    with open(log, "w") as out:
        try:
            status = subprocess.run(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=limit_s,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1")).returncode
        except subprocess.TimeoutExpired:
            status = 124
    return status, time.time() - started


def trainer(gpus: int) -> list[str]:
    """train.py, under torchrun over every GPU when there are several."""
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "train.py"]
    return [sys.executable, "train.py"]


def records(out_dir: Path, kind: str) -> list[dict]:
    path = out_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def random_tokens(folder: Path) -> Path:
    """A dataset of uniform random GPT-2 token ids: speed and memory do not depend on what the tokens are."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        rng.integers(0, 50257, RANDOM_TOKENS, dtype=np.uint16).tofile(folder / f"{split}.bin")
    meta = {"format_version": 1, "tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16", "eot_token": 50256,
            "train_tokens": RANDOM_TOKENS, "val_tokens": RANDOM_TOKENS, "documents": {"train": 1, "val": 1},
            "source": "random tokens (bench/gpu.py)"}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def step_tests(work: Path, gpus: int, args) -> list[tuple]:
    cmd = [sys.executable, "-m", "pytest", "tests/test_gpu.py", "-q", "-rs"]
    status, seconds = run(cmd, LIMIT_S["tests"], work / "tests.log")
    summary = (work / "tests.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
    return [("GPU tests", summary[0] if status != 124 else "over its time limit", f"{seconds:.0f} s", " ".join(cmd[1:]))]


def step_char(work: Path, gpus: int, args) -> list[tuple]:
    data, out = work / "shakespeare_char", work / "char"
    prep = [sys.executable, "prepare/shakespeare_char.py", f"--input={args.shakespeare}", f"--out_dir={data}"]
    if run(prep, 60, work / "char-prepare.log")[0] != 0:
        return [("shakespeare_char_fast", f"no data: see {work / 'char-prepare.log'}", "", " ".join(prep[1:]))]
    cmd = [*trainer(gpus), "config/shakespeare_char_fast.toml", f"--dataset={data}", f"--out_dir={out}"]
    status, seconds = run(cmd, LIMIT_S["char"], work / "char.log")
    evals = records(out, "eval")
    reached = next((r for r in evals if r["val_loss"] <= TARGET), None)
    best = min((r["val_loss"] for r in evals), default=float("nan"))
    result = (f"val {TARGET} at iteration {reached['iter']}, {reached['elapsed_s']:.0f} s" if reached
              else f"val {TARGET} not reached by iteration {evals[-1]['iter'] if evals else 0}")
    end = "stopped at its time limit" if status == 124 else f"exit {status}"
    return [("shakespeare_char_fast: time to val 1.47", f"{result}; best val {best:.4f}", f"{seconds:.0f} s, {end}",
             " ".join(cmd[1:] if gpus == 1 else cmd[2:]))]


def speed_row(name: str, cmd: list[str], out: Path, status: int, seconds: float, gpus: int) -> tuple:
    train = records(out, "train")[1:]  # the first line includes compilation
    if not train:
        return (name, f"no training line (exit {status}); see {out}.log", f"{seconds:.0f} s", " ".join(cmd[1:]))
    last = train[-1]
    mfu = f", MFU {100 * last['mfu']:.1f}%" if "mfu" in last else ""
    peak = f", peak {last['peak_gb']:.1f} GB per GPU" if "peak_gb" in last else ""
    return (name, f"{last['ms_per_iter']:.0f} ms/iter, {last['tok_per_s']:,.0f} tok/s{mfu}{peak} (iteration "
            f"{last['iter']})", f"{seconds:.0f} s", " ".join(cmd[1:] if gpus == 1 else cmd[2:]))


def step_gpt2(work: Path, gpus: int, args) -> list[tuple]:
    data, out = random_tokens(work / "random"), work / "gpt2"
    cmd = [*trainer(gpus), "config/gpt2.toml", f"--dataset={data}", f"--out_dir={out}", "--tokens_per_update=0",
           "--gradient_accumulation_steps=1", "--batch_size=16", "--max_iters=60", "--eval_interval=100000",
           "--log_interval=20", "--eval_iters=1", "--always_save_checkpoint=false"]
    status, seconds = run(cmd, LIMIT_S["gpt2"], Path(f"{out}.log"))
    row = speed_row(f"GPT-2 124M, batch 16 x 1024 per GPU, {gpus} GPU(s)", cmd, out, status, seconds, gpus)
    return [row[:1] + (row[1] + plan_against_peak(Path(f"{out}.log"), out),) + row[2:]]


def step_xl(work: Path, gpus: int, args) -> list[tuple]:
    data, out = random_tokens(work / "random"), work / "xl"
    parallel = "fsdp" if gpus > 1 else "ddp"
    cmd = [*trainer(gpus), "config/gpt2_xl.toml", f"--dataset={data}", f"--out_dir={out}", f"--parallel={parallel}",
           "--activation_checkpointing=true", "--tokens_per_update=0", "--gradient_accumulation_steps=1",
           "--max_iters=30", "--eval_interval=100000", "--log_interval=10", "--eval_iters=1",
           "--always_save_checkpoint=false", "--checkpoint_interval_s=0"]
    status, seconds = run(cmd, LIMIT_S["xl"], Path(f"{out}.log"))
    row = speed_row(f"GPT-2 1.5B, checkpointing, {parallel}, {gpus} GPU(s)", cmd, out, status, seconds, gpus)
    return [row[:1] + (row[1] + plan_against_peak(Path(f"{out}.log"), out),) + row[2:]]


def plan_against_peak(log: Path, out: Path) -> str:
    """"; planned X GB per GPU, measured/planned R; <rank 0's memory plan line>": the plan's total against the
    peak_gb of the last training line (torch.cuda.max_memory_allocated on rank 0, after 30 iterations here)."""
    plan = next((line.strip() for line in log.read_text().splitlines() if line.startswith("memory plan")), "")
    total = re.search(r"\): ([\d.]+) (GB|MB)", plan)
    train = records(out, "train")
    if not total or not train or "peak_gb" not in train[-1]:
        return f"; {plan}" if plan else ""
    planned = float(total.group(1)) / (1000 if total.group(2) == "MB" else 1)
    return f"; planned {planned:.1f} GB per GPU, measured/planned {train[-1]['peak_gb'] / planned:.2f}; {plan}"


def commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch  # after the arguments: --help and mistakes answer at once

    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA GPU here (torch.cuda.is_available() is False); nothing to measure")
        return 0
    gpus, name = torch.cuda.device_count(), torch.cuda.get_device_name(0)
    today = datetime.date.today().isoformat()
    out_file = Path(args.out or f"gpu-{today}.md")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for step in args.steps:
            print(f"{step}: at most {LIMIT_S[step]} s", flush=True)
            rows += globals()[f"step_{step}"](Path(tmp), gpus, args)
            print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)
    lines = [f"### GPU measurements, {today}: {gpus} x {name}, torch {torch.__version__}, commit {commit()}", "",
             "| what | result | wall time | command |", "|---|---|---|---|",
             *(f"| {what} | {result} | {wall} | `{cmd}` |" for what, result, wall, cmd in rows), ""]
    out_file.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out_file}: paste it into docs/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
