"""Sampling speed: tokens/s of the generation loop, and the whole `python sample.py` process time.

    python bench/sample_speed.py                      # the defaults below
    python bench/sample_speed.py --new_tokens=200 --repeats=5
    python bench/sample_speed.py --help

Builds a GPT of 6 layers, 6 heads, 384 wide, block 512, vocab 65 (random weights: speed does not
depend on what the weights are), then
  1. times `model.generate` for batch 1 and batch 8, with the key/value cache on and off, greedy,
     from a one-token prompt; the variants are interleaved in each repeat and the table shows the
     median new tokens/s (a batch of 8 counts 8 tokens per step) and the speed-up of the cache;
  2. writes that model as a real checkpoint (the dict train.py saves, through
     checkpoint.build_checkpoint, char vocabulary of tiny Shakespeare) and times the whole process
     `python sample.py --out_dir=<it> --max_new_tokens=500` as a subprocess (median wall time),
     next to `python -c "import torch"` for scale (and, with --compare_passive, sample.py with
     OpenMP's threads sleeping between ops instead of spinning).
Threads are chosen as sample.py chooses them (device.free_cpu_threads: one per core that other
processes leave free), and the one-row Linear path as sample.py chooses it (sample.row_split_is_faster:
the row split or plain F.linear, whichever times faster here); below the table, batch 1 is also
timed with the other path, and with bfloat16 weights (half the bytes to read per token).
The CPU may be shared: the load average is printed with the figures; compare ratios within a run.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from smallgpt.cli import option, parse_config, run_main
from smallgpt.device import cpu_snapshot, free_cpu_threads

STARTED = cpu_snapshot()  # threads are chosen as sample.py chooses them, from the load measured from here

import copy

import torch

from model import GPT, GPTConfig
from smallgpt.checkpoint import CHECKPOINT_NAME, build_checkpoint, save_checkpoint
from smallgpt.inference import row_split_is_faster, use_row_split
from smallgpt.tokenizer import CharTokenizer, make_meta

REPO_ROOT = Path(__file__).resolve().parents[1]

# the 65 distinct characters of tiny Shakespeare, sorted (the vocabulary of shakespeare_char)
SHAKESPEARE_VOCAB = list("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


@dataclass
class BenchConfig:
    new_tokens: int = option(256, "new tokens per generate call in the tokens/s table")
    repeats: int = option(3, "timed repeats of each variant (medians are reported)")
    process_tokens: int = option(500, "--max_new_tokens of the timed sample.py process")
    process_repeats: int = option(3, "timed runs of the sample.py process")
    skip_process: bool = option(False, "only the tokens/s table")
    compare_passive: bool = option(False, "also time sample.py with OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep "
                                          "instead of spinning between ops)")


def bench_model() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=512, vocab_size=len(SHAKESPEARE_VOCAB))
    return GPT(config).eval()


def char_meta(vocab: list[str]) -> dict:
    """meta.json of a char dataset (as prepare/shakespeare_char.py writes it)."""
    return make_meta(CharTokenizer(vocab), source="bench")


def write_checkpoint(out_dir: Path, model: GPT, meta: dict) -> Path:
    """Save model as train.py does (checkpoint.build_checkpoint), with AdamW's state after one step."""
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    for p in model.parameters():  # one step with zero gradients: AdamW's moments exist, as after training
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state = build_checkpoint(model, meta=meta, optimizer=optimizer)
    path = Path(out_dir) / CHECKPOINT_NAME
    save_checkpoint(state, path)
    return path


def tokens_per_second(model: GPT, batch: int, use_cache: bool, new_tokens: int) -> float:
    idx = torch.zeros((batch, 1), dtype=torch.long)
    start = time.perf_counter()
    model.generate(idx, new_tokens, temperature=0, use_cache=use_cache)
    return batch * new_tokens / (time.perf_counter() - start)


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def timed_process(args: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main(argv: list[str]) -> None:
    cfg = parse_config(BenchConfig, argv, __doc__)
    model = bench_model()
    torch.set_num_threads(free_cpu_threads(torch.get_num_threads(), STARTED))  # as sample.py does
    row_split = row_split_is_faster(model.transformer.h[0].mlp.c_fc)  # as sample.py does
    split_model = copy.deepcopy(model)
    use_row_split(split_model)
    model, other_model = (split_model, model) if row_split else (model, split_model)  # the chosen path first
    print(f"model: 6 layers, 6 heads, 384 wide, block 512, vocab 65 ({model.num_params() / 1e6:.1f}M params); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load_average()}")
    variants = [(batch, use_cache) for batch in (1, 8) for use_cache in (True, False)]
    tokens_per_second(model, 1, True, 8)  # warm-up
    rates = {v: [] for v in variants}
    plain_rates, bf16_rates = [], []
    model_bf16 = bench_model().to(torch.bfloat16)
    tokens_per_second(model_bf16, 1, True, 8)  # warm-up
    for _ in range(cfg.repeats):
        for batch, use_cache in variants:
            rates[(batch, use_cache)].append(tokens_per_second(model, batch, use_cache, cfg.new_tokens))
        plain_rates.append(tokens_per_second(other_model, 1, True, cfg.new_tokens))  # the path not chosen
        bf16_rates.append(tokens_per_second(model_bf16, 1, True, cfg.new_tokens))
    print(f"\ngenerate: {cfg.new_tokens} new tokens from a 1-token prompt, greedy, median of {cfg.repeats}")
    print("| batch | cache on (tok/s) | cache off (tok/s) | speed-up |")
    print("|---|---|---|---|")
    for batch in (1, 8):
        on, off = statistics.median(rates[(batch, True)]), statistics.median(rates[(batch, False)])
        print(f"| {batch} | {on:,.0f} | {off:,.0f} | {on / off:.1f}x |")
    plain = statistics.median(plain_rates)
    chosen, other = ("row split", "plain F.linear") if row_split else ("plain F.linear", "row split")
    print(f"batch 1, cache on: one-row Linear path chosen by timing: {chosen}; with the {other} instead: "
          f"{plain:,.0f} tok/s (the choice is {statistics.median(rates[(1, True)]) / plain:.2f}x)")
    print(f"batch 1, cache on, bfloat16 weights (sample.py --dtype=bfloat16; not bit-comparable with float32): "
          f"{statistics.median(bf16_rates):,.0f} tok/s")
    print(f"load average {load_average()}")
    if cfg.skip_process:
        return

    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(Path(tmp), model, char_meta(SHAKESPEARE_VOCAB))
        sample_cmd = [sys.executable, str(REPO_ROOT / "sample.py"), f"--out_dir={tmp}",
                      f"--max_new_tokens={cfg.process_tokens}"]
        import_cmd = [sys.executable, "-c", "import torch"]
        processes = {"python -c 'import torch'": (import_cmd, None),
                    f"python sample.py --out_dir=<ckpt> --max_new_tokens={cfg.process_tokens}": (sample_cmd, None)}
        if cfg.compare_passive:
            processes["the same with OMP_WAIT_POLICY=PASSIVE"] = (sample_cmd, dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
        times = {name: [] for name in processes}
        for _ in range(cfg.process_repeats):  # interleaved, so that all variants see the same load
            for name, (cmd, env) in processes.items():
                times[name].append(timed_process(cmd, env))
    print(f"\nwhole process, wall time of a subprocess, median of {cfg.process_repeats}:")
    for name, runs in times.items():
        print(f"  {statistics.median(runs):6.2f} s  {name}   (runs: {', '.join(f'{t:.2f}' for t in runs)})")
    print(f"load average {load_average()}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
