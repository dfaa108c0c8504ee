"""Training speed: ms per iteration, tokens/s, achieved FLOP/s and MFU, for one config or several.

    python bench/train_speed.py config/shakespeare_char_cpu.toml
    python bench/train_speed.py --n_layer=4 --n_head=4 --n_embd=128 --block_size=64 --batch_size=12 \\
        --variant "fp32: --dtype=float32" --variant "bf16: --dtype=bfloat16" --iters=30 --repeats=5

The config is read exactly as train.py reads it (train.load_config: TOML files, then --key=value),
the run is built by train.build_run, and one iteration is train.train_step: the update train.py
makes (micro-batches under autocast, DDP-style loss weighting, GradScaler, gradient norm and
clipping, the non-finite check, optimizer step, next batch drawn). Only the learning rate stays at
its peak.

Each `--variant "NAME: --key=value ..."` adds overrides on top of the base config (no variant: the
base config alone); `--matrix` adds the four variants eager/compiled x AdamW/Muon. All variants are
built first; then, `--repeats` times, each variant in turn runs `--warmup` untimed and `--iters`
timed iterations (interleaved, so that a neighbour's load hits every variant alike). Reported:
median ms/iter over all timed iterations (and the 10th-90th percentile range), tokens/s, achieved
FLOP/s from GPT.flops_per_token, and MFU against two peaks: the data sheet's (GPUs, device.GPU_PEAKS)
and this device's measured one (median of chains of large matmuls in the variant's dtype, after a
warm-up: device.measure_matmul_flops; 8192^3 on a GPU, 2048^3 on a CPU).
Bench options: --iters (20), --warmup (3), --repeats (3), --variant (repeatable), --matrix, --no_peak.
"""

import math
import os
import statistics
import sys
import time

import torch

from smallgpt.cli import parse_variant, run_main
from smallgpt.device import measure_matmul_flops, peak_flops, synchronize
from smallgpt.distributed import setup_processes
from smallgpt.errors import UserError
from smallgpt.optim import set_learning_rate
from smallgpt.preemption import StopRequest
from smallgpt.runfolder import RunFolder
from trainer import load_trainer  # bench/trainer.py

train = load_trainer()
build_run, load_config, train_step = train.build_run, train.load_config, train.train_step
DEFAULT_THREADS = torch.get_num_threads()
BENCH_OPTIONS = {"iters": 20, "warmup": 3, "repeats": 3}
MATRIX = [("eager adamw", ["--compile=false", "--optimizer=adamw"]), ("compiled adamw", ["--compile=true", "--optimizer=adamw"]),
          ("eager muon", ["--compile=false", "--optimizer=muon"]), ("compiled muon", ["--compile=true", "--optimizer=muon"])]


def split_args(argv: list[str]):
    """Separate the bench's own options from config files and --key=value config overrides."""
    bench, variants, config_args, no_peak = dict(BENCH_OPTIONS), [], [], False
    args = iter(argv)
    for arg in args:
        key, eq, value = arg.removeprefix("--").partition("=")
        if arg.startswith("--") and key in BENCH_OPTIONS:
            try:
                bench[key] = int(value)
            except ValueError:
                raise UserError(f"bad value for --{key}: {value!r} is not an int") from None
            if bench[key] < (0 if key == "warmup" else 1):
                raise UserError(f"bad value for --{key}: {bench[key]}")
        elif arg.startswith("--") and key == "variant":
            if not eq:
                value = next(args, "")
            variants.append(parse_variant(value))
        elif arg == "--no_peak":
            no_peak = True
        elif arg == "--matrix":
            variants.extend(MATRIX)
        else:
            config_args.append(arg)
    return bench, variants or [("base", [])], config_args, no_peak


class Variant:
    """One config's run (model, optimizer, data: train.build_run), able to run timed updates."""

    def __init__(self, name: str, argv: list[str]):
        self.name = name
        cfg, _ = load_config(argv)
        self.cfg = cfg
        self.procs = setup_processes(cfg.device, cfg.dtype, cfg.threads, cfg.model.n_embd)
        folder = RunFolder(cfg.out_dir, self.procs.master, read_only=True)  # nothing is written
        self.run, self.state = build_run(cfg, self.procs, None, folder, StopRequest(), hook=None)
        set_learning_rate(self.run.optimizer, cfg.learning_rate)
        self.device, self.dtype = self.procs.device, self.procs.dtype
        self.tokens_per_iter = self.run.plan.tokens_per_update
        self.flops_per_iter = self.run.model.flops_per_token(cfg.model.block_size) * self.tokens_per_iter
        self.times: list[float] = []
        self.last_loss = math.nan

    def iteration(self) -> None:
        metrics, _, _ = train_step(self.run, self.state, [])
        self.last_loss = metrics["loss"].item()  # waits for the device, as train.py's logging does

    def run_timed(self, warmup: int, iters: int) -> None:
        torch.set_num_threads(self.cfg.threads or DEFAULT_THREADS)  # variants may differ in threads
        for _ in range(warmup):
            self.iteration()
        for _ in range(iters):
            synchronize(self.device)
            t0 = time.perf_counter()
            self.iteration()
            synchronize(self.device)
            self.times.append(time.perf_counter() - t0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return device.type


def main(argv: list[str]) -> None:
    bench, variant_specs, config_args, no_peak = split_args(argv)
    variants = [Variant(name, config_args + overrides) for name, overrides in variant_specs]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    threads = sorted({v.cfg.threads or DEFAULT_THREADS for v in variants})
    print(f"{device_name(variants[0].device)}; torch {torch.__version__}, threads {'/'.join(map(str, threads))}, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {load:.2f}")
    peaks = {}
    for v in variants:
        if not no_peak and (v.device, v.dtype) not in peaks:
            size = 8192 if v.device.type == "cuda" else 2048
            peaks[(v.device, v.dtype)] = measure_matmul_flops(v.device, v.dtype, size=size, seconds=2.0)
    for repeat in range(bench["repeats"]):
        for v in variants:  # interleaved: every variant sees the same stretch of machine load
            v.run_timed(bench["warmup"], bench["iters"])
    header = (f"{'variant':<16} {'ms/iter':>8} {'p10-p90':>13} {'tok/s':>10} {'GFLOP/s':>8} {'peak':>7} {'MFU':>6} "
              f"{'MFU(sheet)':>10} {'vs 1st':>7}")
    print(header)
    print("-" * len(header))
    first_ms = None
    for v in variants:
        ms = 1000 * statistics.median(v.times)
        first_ms = first_ms or ms
        peak = peaks.get((v.device, v.dtype))
        achieved = v.flops_per_iter / (ms / 1000)
        spread = f"{1000 * percentile(v.times, 0.1):.1f}-{1000 * percentile(v.times, 0.9):.1f}"
        peak_text = f"{peak / 1e9:7.0f}" if peak else f"{'-':>7}"
        mfu_text = f"{100 * achieved / peak:5.1f}%" if peak else f"{'-':>6}"
        sheet = peak_flops(v.device, v.dtype)
        sheet_text = f"{100 * achieved / sheet:9.1f}%" if sheet else f"{'-':>10}"
        print(f"{v.name:<16} {ms:8.2f} {spread:>13} {v.tokens_per_iter / (ms / 1000):10,.0f} "
              f"{achieved / 1e9:8.1f} {peak_text} {mfu_text} {sheet_text} {first_ms / ms:6.2f}x")
    print(f"medians over {bench['repeats']} x {bench['iters']} timed iterations per variant "
          f"({bench['warmup']} warmup each round); peak = {('-' if no_peak else 'measured matmul peak')} "
          f"in GFLOP/s; MFU(sheet) against the data-sheet peak; 'vs 1st' = speed relative to the first variant")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
