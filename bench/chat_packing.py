"""Conversations packed into rows or padded one per row: answer tokens trained per second.

    python bench/chat_packing.py config/python_stdlib_chat.toml
    python bench/chat_packing.py config/python_stdlib_chat.toml --compile=true --iters=20 --repeats=3

The run is built as train.py builds it (train.load_config and train.build_run: any config, then
--key=value), on a conversations dataset (prepare/chat.py). One update is train.train_step. Two
layouts of the same batch shape take turns over --repeats rounds (--warmup untimed and --iters timed
updates each): "pack", what training does (whole conversations one after another in each row, the
attention cut between them), and "pad" (one conversation per row, the rest padding; plain causal
attention, as no row holds two). Reported per layout: the median ms per update, the answer tokens
(those trained on) per update, and answer tokens per second at the median speed, the measure that
matters: both learn only from answers. Bench options: --iters (20), --warmup (3), --repeats (3).
"""

import statistics
import sys
import time

import torch

from smallgpt.cli import run_main
from smallgpt.data import ConversationSampler
from smallgpt.distributed import setup_processes
from smallgpt.errors import UserError
from smallgpt.optim import set_learning_rate
from smallgpt.preemption import StopRequest
from smallgpt.runfolder import RunFolder
from trainer import load_trainer  # bench/trainer.py

OPTIONS = {"iters": 20, "warmup": 3, "repeats": 3}


def main(argv: list[str]) -> None:
    options, config_args = dict(OPTIONS), []
    for arg in argv:
        key, _, value = arg.removeprefix("--").partition("=")
        if arg.startswith("--") and key in OPTIONS and value.isdigit() and int(value) >= (key != "warmup"):
            options[key] = int(value)
        else:
            config_args.append(arg)
    train = load_trainer()
    cfg, _ = train.load_config(config_args)
    procs = setup_processes(cfg.device, cfg.dtype, cfg.threads, cfg.model.n_embd)
    folder = RunFolder(cfg.out_dir, procs.master, read_only=True)  # nothing is written
    run, state = train.build_run(cfg, procs, None, folder, StopRequest(), hook=None)
    set_learning_rate(run.optimizer, cfg.learning_rate)
    sampler = run.splits["train"]
    if not isinstance(sampler, ConversationSampler):
        raise UserError(f"dataset {cfg.dataset} holds no conversations (prepare one with prepare/chat.py)")
    times, answers = {"pack": [], "pad": []}, {"pack": [], "pad": []}
    for _ in range(options["repeats"]):
        for layout in times:  # interleaved: both layouts see the same stretch of machine load
            sampler.pack = layout == "pack"
            run.batches.advance()  # redraw the next update in this layout
            for i in range(options["warmup"] + options["iters"]):
                trained = sum(int((y >= 0).sum()) for _, y, _ in run.batches.current)
                started = time.perf_counter()
                metrics, _, _ = train.train_step(run, state, [])
                metrics["loss"].item()  # waits for the device
                if i >= options["warmup"]:
                    times[layout].append(time.perf_counter() - started)
                    answers[layout].append(trained)
    print(f"{cfg.dataset}: {run.plan.global_seqs} rows of {cfg.model.block_size} tokens per update, threads "
          f"{torch.get_num_threads()}, compile {cfg.compile}, dtype {procs.dtype}")
    print(f"{'layout':<6} {'ms/update':>10} {'p10-p90':>13} {'answer tokens/update':>21} {'answer tokens/s':>16}")
    for layout in times:
        ordered = sorted(times[layout])
        ms, low, high = (1000 * ordered[int(q * (len(ordered) - 1))] for q in (0.5, 0.1, 0.9))
        per_update = statistics.mean(answers[layout])
        print(f"{layout:<6} {ms:10.1f} {f'{low:.1f}-{high:.1f}':>13} {per_update:21.1f} {per_update / ms * 1000:16,.0f}")
    print(f"medians over {options['repeats']} x {options['iters']} timed updates per layout, taking turns")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
