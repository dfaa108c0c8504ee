"""Training speed: ms per iteration, tokens/s, achieved FLOP/s and MFU, for one config or several.

    python bench/train_speed.py config/shakespeare_char_cpu.toml
    python bench/train_speed.py --n_layer=4 --n_head=4 --n_embd=128 --block_size=64 --batch_size=12 \\
        --variant "fp32: --dtype=float32" --variant "bf16: --dtype=bfloat16" --iters=30 --repeats=5

The config is read exactly as train.py reads it (TOML files, then --key=value, keys of
train.TrainConfig). One iteration is what train.py does per update: draw the batch, forward and
backward under autocast, clip the gradient norm, step the optimizer, zero the gradients.

Each `--variant "NAME: --key=value ..."` adds overrides on top of the base config (no variant: the
base config alone). All variants are built first; then, `--repeats` times, each variant in turn
runs `--warmup` untimed and `--iters` timed iterations (interleaved, so that a neighbour's load
hits every variant alike). Reported: median ms/iter over all timed iterations (and the 10th-90th
percentile range), tokens/s, achieved FLOP/s from GPT.flops_per_token, and MFU against the peak
of this device measured in the same run (median time of a large matmul in the variant's dtype).
Bench options: --iters (20), --warmup (3), --repeats (3), --variant (repeatable), --no_peak.
"""

import contextlib
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

import torch  # noqa: E402

from cli import UserError, parse_config, resolve_device, run_main  # noqa: E402
from data import BatchSampler, load_dataset  # noqa: E402
from model import GPT  # noqa: E402
from optim import build_optimizer, set_learning_rate  # noqa: E402
from train import TrainConfig, resolve_dtype  # noqa: E402

DEFAULT_THREADS = torch.get_num_threads()
BENCH_OPTIONS = {"iters": 20, "warmup": 3, "repeats": 3}


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
            name, colon, overrides = value.partition(":")
            if not colon or not name.strip():
                raise UserError(f"bad --variant {value!r}: write --variant \"NAME: --key=value ...\"")
            variants.append((name.strip(), overrides.split()))
        elif arg == "--no_peak":
            no_peak = True
        else:
            config_args.append(arg)
    return bench, variants or [("base", [])], config_args, no_peak


def measure_peak_flops(device: torch.device, dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matmul in dtype on device (median of repeats): the MFU denominator."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times[1:])  # the first call warms up


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """One config's model, optimizer and batches, able to run timed training iterations."""

    def __init__(self, name: str, cfg: TrainConfig):
        self.name, self.cfg = name, cfg
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        data_dir, meta = load_dataset(cfg.dataset)
        self.sampler = BatchSampler(data_dir / "train.bin", meta["dtype"], cfg.block_size, cfg.seed, self.device)
        torch.manual_seed(cfg.seed)
        self.raw_model = GPT(cfg.model_config(meta["vocab_size"])).to(self.device)
        self.model = torch.compile(self.raw_model) if cfg.compile else self.raw_model
        self.optimizer = build_optimizer(self.raw_model, cfg, self.device.type)
        set_learning_rate(self.optimizer, cfg.learning_rate)
        self.autocast = (contextlib.nullcontext() if self.dtype == torch.float32
                         else torch.autocast(device_type=self.device.type, dtype=self.dtype))
        self.tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
        self.flops_per_iter = self.raw_model.flops_per_token(cfg.block_size) * self.tokens_per_iter
        self.times: list[float] = []
        self.last_loss = math.nan

    def iteration(self) -> None:
        cfg = self.cfg
        for _ in range(cfg.gradient_accumulation_steps):
            x, y = self.sampler.batch(self.sampler.draw_offsets(cfg.batch_size))
            with self.autocast:
                _, loss = self.model(x, y)
            (loss / cfg.gradient_accumulation_steps).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = loss.item()  # waits for the device, as train.py's logging does

    def run(self, warmup: int, iters: int) -> None:
        torch.set_num_threads(self.cfg.threads or DEFAULT_THREADS)  # variants may differ in threads
        for _ in range(warmup):
            self.iteration()
        for _ in range(iters):
            sync(self.device)
            t0 = time.perf_counter()
            self.iteration()
            sync(self.device)
            self.times.append(time.perf_counter() - t0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str]) -> None:
    bench, variant_specs, config_args, no_peak = split_args(argv)
    variants = [Variant(name, parse_config(TrainConfig, config_args + overrides, __doc__))
                for name, overrides in variant_specs]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    threads = sorted({v.cfg.threads or DEFAULT_THREADS for v in variants})
    print(f"torch {torch.__version__}, threads {'/'.join(map(str, threads))}, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {load:.2f}")
    peaks = {}
    for v in variants:
        if not no_peak and (v.device, v.dtype) not in peaks:
            peaks[(v.device, v.dtype)] = measure_peak_flops(v.device, v.dtype)
    for repeat in range(bench["repeats"]):
        for v in variants:  # interleaved: every variant sees the same stretch of machine load
            v.run(bench["warmup"], bench["iters"])
    header = f"{'variant':<16} {'ms/iter':>8} {'p10-p90':>13} {'tok/s':>9} {'GFLOP/s':>8} {'peak':>7} {'MFU':>6} {'vs 1st':>7}"
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
        print(f"{v.name:<16} {ms:8.2f} {spread:>13} {v.tokens_per_iter / (ms / 1000):9,.0f} "
              f"{achieved / 1e9:8.1f} {peak_text} {mfu_text} {first_ms / ms:6.2f}x")
    print(f"medians over {bench['repeats']} x {bench['iters']} timed iterations per variant "
          f"({bench['warmup']} warmup each round); peak = {('-' if no_peak else 'median 1024^3 matmul')} "
          f"in GFLOP/s; 'vs 1st' = speed relative to the first variant")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
