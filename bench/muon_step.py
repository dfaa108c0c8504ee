"""Muon's optimizer step in one process and sharded over FSDP processes: median ms per step, and the ratio.

    python bench/muon_step.py                        # 1 process, then 2 under torchrun (gloo on CPUs)
    python bench/muon_step.py --nproc=4 --n_layer=12 --n_embd=768 --repeats=20

One command measures both, one after the other, so that the ratio compares one machine in one state
(on a shared machine, quote the ratio of one run, not figures from two). Each run builds the same GPT
(GPT-2's architecture, random weights), shards it with fsdp.shard_model when there are several
processes, builds the Muon optimizer train.py builds (optim.build_optimizer), and makes gradients with
one forward and backward on random tokens; then it times `repeats` optimizer steps after `warmup`
untimed ones, each step between two barriers (all processes start together; a step ends when the
slowest process is done). Each process gets `--threads` CPU threads (default 1: on a CPU, one core
per process, as a GPU per process). Under FSDP each matrix is orthogonalized by one process
(optim.orthogonalize_shared), so the Newton-Schulz work divides by the processes, against two
all-to-alls per shape of matrix.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python bench/muon_step.py", description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="FSDP processes of the second run (default 2)")
    parser.add_argument("--n_layer", type=int, default=8)
    parser.add_argument("--n_embd", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per run (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (default 1)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one measuring run
    return parser.parse_args(argv)


def worker(args) -> None:
    """Build, step, time; rank 0 prints one JSON line: the step times in ms."""
    import torch
    import torch.distributed as dist

    from model import GPT, GPTConfig
    from smallgpt import fsdp
    from smallgpt.distributed import setup_processes, shutdown
    from smallgpt.optim import build_optimizer

    procs = setup_processes("cpu", "float32", args.threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=args.n_layer, n_head=args.n_embd // 64, n_embd=args.n_embd, block_size=64))
    if procs.ddp:
        fsdp.shard_model(model, procs)
    cfg = SimpleNamespace(optimizer="muon", learning_rate=6e-4, muon_lr=0.02, weight_decay=0.1, beta1=0.9,
                          beta2=0.95, muon_momentum=0.95, muon_ns_steps=5)  # train.TrainConfig's defaults
    optimizer = build_optimizer(model, cfg, "cpu")
    tokens = torch.randint(0, model.config.vocab_size, (2, 65), generator=torch.Generator().manual_seed(1))
    _, loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    barrier = dist.barrier if procs.ddp else (lambda: None)
    times = []
    for i in range(args.warmup + args.repeats):
        barrier()
        started = time.perf_counter()
        optimizer.step()  # the same gradients every step: the work is the same
        barrier()
        if i >= args.warmup:
            times.append(1000 * (time.perf_counter() - started))
    if procs.master:
        print(json.dumps({"processes": procs.world_size, "ms": times}), flush=True)
    del model, optimizer
    shutdown(procs)


def measure(args, nproc: int) -> list[float]:
    """The step times (ms) of one run on `nproc` processes (1: a plain process; more: torchrun)."""
    flags = [f"--{k}={getattr(args, k)}" for k in ("n_layer", "n_embd", "repeats", "warmup", "threads")]
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc_per_node={nproc}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([*launcher, str(Path(__file__).resolve()), "--worker", *flags], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench/muon_step.py: the {nproc}-process run failed:\n{result.stderr[-3000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("{"))
    return json.loads(line)["ms"]


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        worker(args)
        return 0
    one, several = measure(args, 1), measure(args, args.nproc)
    a, b = statistics.median(one), statistics.median(several)
    print(f"Muon optimizer step, GPT-2 architecture {args.n_layer} layers x {args.n_embd} wide, {args.threads} "
          f"thread(s) per process, median of {args.repeats}:")
    print(f"  1 process:               {a:8.1f} ms  (range {min(one):.1f}-{max(one):.1f})")
    print(f"  {args.nproc} processes (fsdp):    {b:8.1f} ms  (range {min(several):.1f}-{max(several):.1f})")
    print(f"  ratio 1 / {args.nproc}: {a / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
