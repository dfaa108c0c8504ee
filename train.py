"""Train a GPT on a prepared dataset, on CPU or GPU, in one process or many (DDP or FSDP via torchrun).

    python train.py config/shakespeare_char.toml
    python train.py config/shakespeare_char.toml --max_iters=2000 --compile=false
    python train.py --init_from=resume --out_dir=out-shakespeare-char --max_iters=8000   # continue a run
    torchrun --standalone --nproc_per_node=8 train.py config/gpt2.toml
    python train.py --help                       # every key with its type, default and meaning

Configs are TOML files (or nanoGPT's .py configs, parsed, never run) whose keys are the fields of
`TrainConfig` below and of model.GPTConfig (flat, or in a [model] table); `--key=value` overrides
them. Writes out_dir/ckpt.pt, out_dir/metrics.jsonl (a record per training line and per evaluation),
out_dir/config.json and out_dir/loss.png.

Read top to bottom: the config, the loop state a checkpoint resumes, building a run, one update
(`train_step`), the schedule, `evaluate`, `save`, the loop (`train_loop`), `main`. The rest lives in
the smallgpt package, a module per job (init_from, distributed, data, runfolder, report, preemption).
Where changes go: a metric is one entry in train_step's dict (averaged, printed, recorded, logged);
a schedule is learning_rate_at; a loss term goes in GPT.forward (model.py), where the loss is
computed; a resumable counter is a field of LoopState; a key is a field of TrainConfig (of
GPTConfig for the architecture).

Nothing lost: `--init_from=resume` continues bitwise; SIGTERM or a first Ctrl-C stops within a step,
saves and exits 0; non-finite updates are skipped (`max_nonfinite_steps` in a row stop the run
without saving); a fresh run never replaces out_dir/ckpt.pt unless given --overwrite=true; one
trainer per out_dir.
"""

import dataclasses
import math
import sys
import time
PROCESS_STARTED_AT = time.time()  # before torch's import: a time budget (max_seconds) counts start-up too
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from model import GPT, GPTConfig
from smallgpt import fsdp, init_from
from smallgpt.checkpoint import CHECKPOINT_NAME, build_checkpoint, rng_state
from smallgpt.cli import build_config, option, option_group, read_overrides, run_main
from smallgpt.data import (BatchPlan, BatchSampler, UpdateBatches, load_dataset, make_samplers, plan_batches,
                           sequences_per_update, split_bytes_per_token)
from smallgpt.device import CpuThreads, autocast, cpu_snapshot, should_compile
from smallgpt.distributed import (Processes, any_rank, gather_objects, gradient_sync, print0, rank0_values,
                                  setup_processes, shutdown, sum_over_ranks)
from smallgpt.memory import check_memory
from smallgpt.optim import build_optimizer, set_learning_rate
from smallgpt.preemption import StopRequest
from smallgpt.report import (EvalProgress, MetricWindow, batch_origin, compiling, describe, evaluation_line,
                             log_training, report_skipped)
from smallgpt.runfolder import RunFolder


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = option("out", "folder for ckpt.pt, metrics.jsonl and config.json (one trainer at a time)")
    overwrite: bool = option(False, "let a fresh run (any init_from but resume) replace out_dir/ckpt.pt")
    dataset: str = option("shakespeare_char", "folder with train.bin/val.bin/meta.json, or a name under data/")
    init_from: str = option("scratch", "scratch: new weights; resume: continue out_dir's run (its saved config, "
                            "with the keys given here changed); gpt2|gpt2-medium|gpt2-large|gpt2-xl: OpenAI's "
                            "weights from the Hugging Face hub; or a folder in the Hugging Face GPT-2 layout")
    eval_interval: int = option(250, "evaluate (and maybe checkpoint) every this many iterations", at_least=1)
    eval_iters: int = option(200, "batches per split in each evaluation, their windows evenly spaced through "
                                  "the split (enough of them score every token)", at_least=1, at_most=10**7)
    eval_only: bool = option(False, "evaluate once and exit (the checkpoint in out_dir if there is one)")
    log_interval: int = option(10, "print a training line every this many iterations", at_least=1)
    always_save_checkpoint: bool = option(True, "save at every evaluation, not only when val loss improves")
    checkpoint_interval_s: float = option(0.0, "also save every this many seconds of training (0 = only at "
                                          "evaluations); for long runs whose evaluations are far apart",
                                          at_least=0)
    # batch
    batch_size: int = option(12, "sequences per micro-batch per process (an upper bound when tokens_per_update "
                             "is set: the micro-batch shrinks to divide the process's share)", at_least=1,
                             at_most=1 << 16)
    tokens_per_update: int = option(0, "tokens per optimizer update over all processes (a multiple of "
                                    "block_size); 0: gradient_accumulation_steps x batch_size x block_size",
                                    at_least=0)
    gradient_accumulation_steps: int = option(1, "with tokens_per_update = 0: micro-batches of batch_size per "
                                              "update, counted over all processes", at_least=1, at_most=1 << 16)
    # model: every field of model.GPTConfig but vocab_size (which comes from the dataset)
    model: GPTConfig = option_group(GPTConfig, "the model's shape and architecture", exclude=("vocab_size",))
    # optimizer
    learning_rate: float = option(6e-4, "peak learning rate", at_least=0)
    max_iters: int = option(5000, "total optimizer updates", at_least=0)
    weight_decay: float = option(0.1, "AdamW weight decay on 2-D weights", at_least=0)
    beta1: float = option(0.9, "AdamW beta1", at_least=0, below=1)
    beta2: float = option(0.95, "AdamW beta2", at_least=0, below=1)
    grad_clip: float = option(1.0, "clip the global gradient norm to this; 0 disables", at_least=0)
    max_nonfinite_steps: int = option(5, "skip updates whose loss is inf/nan; stop after this many in a row",
                                      at_least=1)
    optimizer: str = option("adamw", "adamw: AdamW for every weight; muon: Muon for the blocks' matrices, "
                            "AdamW for embeddings, head, gains and biases (see optim.py)", ["adamw", "muon"])
    muon_lr: float = option(0.02, "peak learning rate of the Muon groups (follows the same schedule)", at_least=0)
    muon_momentum: float = option(0.95, "Muon momentum (Nesterov)", at_least=0, below=1)
    muon_ns_steps: int = option(5, "Newton-Schulz iterations per Muon update", at_least=1, at_most=100)
    # learning-rate schedule
    decay_lr: bool = option(True, "linear warmup then cosine decay; false keeps learning_rate constant")
    warmup_iters: int = option(100, "iterations of linear warmup", at_least=0)
    lr_decay_iters: int = option(0, "iteration where the decay reaches min_lr; 0 means max_iters", at_least=0)
    lr_decay_fraction: float = option(1.0, "1: a cosine from the peak to min_lr over the run after warmup; below 1: "
                                      "the peak held, then a linear decay over this last share (warmup-stable-decay)",
                                      above=0, at_most=1)
    min_lr: float = option(6e-5, "learning rate at the end of the decay", at_least=0)
    max_seconds: float = option(0.0, "time budget in seconds of the whole run, start-up included (0 = off): the LR "
                                "schedule follows elapsed/max_seconds, not iterations, the run stops in time for its "
                                "last evaluation (a new run's first scores a tenth of eval_iters)", at_least=0)
    # system
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "compute precision; auto: bfloat16 on GPUs and CPUs with bf16 units (older GPUs: "
                        "float16 with a gradient scaler), else float32", ["auto", "float32", "bfloat16", "float16"])
    compile: str = option("auto", "torch.compile the model; auto: on GPUs; on CPUs off, and the CPU configs turn "
                          "it on, where it made steps faster (docs/cpu.md)", ["auto", "true", "false"])
    threads: int = option(0, "CPU threads for torch, at most the usable cores; 0: one per core other programs leave "
                          "free, re-checked every few seconds (one process on a CPU; else torch's default)", at_least=0)
    seed: int = option(1337, "random seed for weights, dropout and batches", at_least=0)
    parallel: str = option("ddp", "under torchrun: ddp keeps the whole model, its gradients and optimizer state on "
                           "every process; fsdp shards all three over the processes (fsdp.py)", ["ddp", "fsdp"])
    fsdp_sync_once: bool = option(False, "fsdp with several micro-batches per update: reduce-scatter gradients once, "
                                  "after the last, not after each; costs each process a float32 gradient of the whole "
                                  "model, unsharded (4 bytes per parameter; the memory plan counts it)")
    activation_checkpointing: bool = option(False, "keep only each block's input in the forward pass and recompute "
                                            "the rest in backward: far less activation memory, ~30% more compute")
    # logging
    wandb_log: bool = option(False, "log to Weights & Biases (works with WANDB_MODE=offline)")
    wandb_project: str = option("gpt", "wandb project")
    wandb_run_name: str = option("run", "wandb run name")


LOG_AT_LEAST_EVERY_S = 60.0  # a training line at least this often, whatever log_interval says


@dataclass
class LoopState:
    """Where the run is. Every checkpoint saves all of it and a resume restores all of it, so a new
    resumable counter is one more field here (an older checkpoint without it gets the default)."""
    iter_num: int = 0  # optimizer updates done
    best_val_loss: float = float("inf")  # the lowest val loss of any evaluation so far
    evaluated_at: int = -1  # the last iteration whose evaluation is in metrics.jsonl (one still due reruns)
    elapsed_s: float = 0.0  # seconds of every process of the run, start-ups included (what max_seconds counts)
    eval_batch_s: float = 0.0  # the last evaluation's seconds per batch: what a time budget keeps for the last one
    sampler: dict = field(default_factory=dict)  # the train sampler's position before the batches drawn ahead
    pretrained_from: str | None = None  # the init_from that gave the first weights, kept through resumes


def load_config(argv: list[str]) -> tuple[TrainConfig, dict | None]:
    """The run's config, and the checkpoint to resume from (None for a fresh run).

    A fresh run: defaults, then the TOML files and --key=value of argv (the model's shape from the
    pretrained weights, if init_from names some). A resumed run (and eval_only on a folder holding a
    checkpoint): the run's own saved config, then the keys given (init_from.resumed_config).
    """
    sources: dict = {}  # where each key came from, for the line on the update's size
    given = read_overrides(TrainConfig, argv, __doc__, sources, nanogpt="train")
    ckpt_path = Path(given.get("out_dir", TrainConfig.out_dir)) / CHECKPOINT_NAME
    if given.get("eval_only") and "init_from" not in given and ckpt_path.is_file():
        given["init_from"] = "resume"  # evaluate the run that is there
    ckpt = None
    if given.get("init_from") == "resume":
        cfg, ckpt = init_from.resumed_config(TrainConfig, given, ckpt_path)
    else:
        cfg = build_config(TrainConfig, given)
        if cfg.init_from != "scratch":
            shape = init_from.pretrained_shape(cfg.init_from, cfg.dataset, given, cfg.model.dropout)
            cfg = dataclasses.replace(cfg, model=shape)
    batch_origin(cfg, sources)
    return cfg, ckpt


# ----------------------------------------------------------------------------- building a run

@dataclass
class Run:
    """What the loop works with: built once by `build_run`, never reassigned. What changes is LoopState."""
    cfg: TrainConfig
    procs: Processes
    meta: dict  # the dataset's meta.json: the tokenizer, saved with every checkpoint
    model: GPT  # the uncompiled, unwrapped module: its state dict is what is saved
    train_model: torch.nn.Module  # what the update calls: model compiled and/or DDP-wrapped
    eval_model: torch.nn.Module  # not DDP-wrapped (evaluation shares may differ per rank); compiled on GPUs
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # float16's loss scaling; a no-op in every other precision
    plan: BatchPlan  # this process's share of each update
    batches: UpdateBatches  # this process's micro-batches, one update drawn ahead
    splits: dict[str, BatchSampler]  # "train" and "val", for evaluation
    folder: RunFolder
    stop: StopRequest
    hook: Callable | None  # see main
    threads: CpuThreads | None  # fits torch's CPU threads to the cores other programs leave free
    bytes_per_token: dict[str, float]  # of each split's evaluation windows: bits per byte from a loss in nats
    sharded: bool  # FSDP: parameters sharded over the processes, every forward a collective


def build_run(cfg: TrainConfig, procs: Processes, ckpt: dict | None, folder: RunFolder, stop: StopRequest,
              hook: Callable | None, cpu_at_start=None) -> tuple[Run, LoopState]:
    """Data, model, optimizer and loop state: fresh, from pretrained weights, or restored from ckpt.
    cpu_at_start: a device.cpu_snapshot from the process's start (how busy other programs keep the CPU)."""
    data_dir, meta = load_dataset(cfg.dataset, log=print0)
    block_size = cfg.model.block_size
    splits = make_samplers(data_dir, meta, block_size, cfg.seed, procs.device, log=print0)  # text or conversations
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model, pretrained_from = init_from.first_model(cfg, meta, ckpt)  # on the CPU, whole, for now
    model.activation_checkpointing = cfg.activation_checkpointing
    cfg = dataclasses.replace(cfg, model=model.config)  # the true vocabulary, as saved
    seqs = sequences_per_update(cfg.tokens_per_update, block_size, cfg.gradient_accumulation_steps * cfg.batch_size)
    plan = plan_batches(seqs, cfg.batch_size, block_size, procs.rank, procs.world_size)
    sharded = procs.ddp and cfg.parallel == "fsdp"
    # the memory plan, before anything big goes to the device
    check_memory(model, procs, optimizer=cfg.optimizer, micro_batch=max(plan.micro_sizes), block_size=block_size,
                 dtype=procs.dtype, world_size=procs.world_size, sharded=sharded,
                 checkpointing=cfg.activation_checkpointing, sync_once=cfg.fsdp_sync_once and len(plan.micro_sizes) > 1)
    model.to(procs.device)
    if sharded:
        fsdp.shard_model(model, procs)  # before the optimizer, which keeps its state in the same shards
    optimizer = build_optimizer(model, cfg, procs.device.type)
    scaler = torch.amp.GradScaler(procs.device.type, enabled=(procs.dtype == torch.float16))
    compiled = model
    if should_compile(cfg.compile, procs.device, log=print0):  # FSDP: its hooks, eager, between compiled pieces
        compiled = model.compile_pieces() if sharded else torch.compile(model)
    train_model = compiled if not procs.ddp or sharded else DDP(  # DDP: gradients in its buckets' memory
        compiled, device_ids=[procs.local_rank] if procs.device.type == "cuda" else None,
        gradient_as_bucket_view=True)
    # a CPU evaluates uncompiled (FSDP's pieces excepted): compiling the no-grad graph costs more than it saves
    eval_model = model if procs.device.type == "cpu" else compiled
    state = LoopState(pretrained_from=pretrained_from)
    if ckpt is not None:  # optimizer, scaler, this process's RNG, sampler position, and the loop state
        state = LoopState(**init_from.restore(ckpt, dataclasses.fields(LoopState), optimizer, scaler,
                                              splits["train"], procs, cfg.seed))
        print0(f"{'evaluating' if cfg.eval_only else 'resumed from'} {folder.ckpt_path} at iteration "
               f"{state.iter_num} (best val loss {state.best_val_loss:.4f})")
    else:
        torch.manual_seed(cfg.seed + procs.rank)  # dropout streams differ per rank
        if cfg.eval_only:
            print0(f"eval_only: no checkpoint in {cfg.out_dir}, so this evaluates the {cfg.init_from} weights")
    batches = UpdateBatches(splits["train"], plan)
    state.sampler = batches.position
    fit_threads = procs.device.type == "cpu" and not cfg.threads and not procs.ddp
    run = Run(cfg, procs, meta, model, train_model, eval_model, optimizer, scaler, plan, batches, splits, folder,
              stop, hook, CpuThreads(torch.get_num_threads(), cpu_at_start, print0) if fit_threads else None,
              split_bytes_per_token(meta, splits, cfg.eval_iters, cfg.batch_size), sharded)
    return run, state


# ----------------------------------------------------------------------------- one update

def train_step(run: Run, state: LoopState, flags: list[bool]) -> tuple[dict, bool, list[bool]]:
    """One optimizer update on this process's micro-batches: forward/backward each, clip, step (or skip).

    Returns (metrics, skipped, flags). `metrics` are scalar tensors left on the device (nothing waits
    for them here); each is averaged over the updates between training lines, printed, written to
    metrics.jsonl and sent to wandb: a new metric is one more entry. Gradients are synced across
    processes on the last micro-batch only (FSDP: after each, unless fsdp_sync_once). A non-finite loss
    or gradient norm skips the update (in float16 the GradScaler, which would skip it too, lowers its
    scale), and counts toward max_nonfinite_steps. One tiny all-reduce makes every rank agree on skipping
    and on `flags` (stop, save): any rank's True is everyone's. The next batch is drawn while the device
    works on this one.
    """
    procs, plan, model = run.procs, run.plan, run.train_model
    loss_sum = torch.zeros((), device=procs.device)
    for i, (x, y, segments) in enumerate(run.batches.current):  # segments: a conversations dataset's
        last = i == len(run.batches.current) - 1  # DDP syncs gradients once, on the last (FSDP on each)
        with gradient_sync(model, last, run.cfg.fsdp_sync_once):  # (or on the last, with fsdp_sync_once)
            with autocast(procs.device, procs.dtype):
                _, loss = model(x, y, segments=segments)
                loss = loss / plan.loss_divisor(x.size(0))  # a micro-batch's part of the global mean
            run.scaler.scale(loss).backward()
        loss_sum += loss.detach().float() * plan.process_share  # this process's mean over its rows
    state.sampler = run.batches.advance()
    run.scaler.unscale_(run.optimizer)  # true gradients for the norm (a no-op outside float16)
    grad_norm = fsdp.whole(torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip or math.inf))
    bad = ~torch.isfinite(loss_sum) | ~torch.isfinite(grad_norm)  # (float16: what the GradScaler would skip)
    skipped, *flags = any_rank([bool(bad), *flags], procs)
    if not skipped:
        run.scaler.step(run.optimizer)
    run.scaler.update()  # (after a skip too: unscale_ ran, and update resets the scaler for the next step)
    run.optimizer.zero_grad(set_to_none=True)
    state.iter_num += 1
    return {"loss": loss_sum, "grad_norm": grad_norm}, skipped, flags


def learning_rate_at(it: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr at lr_decay_iters, then flat; with
    lr_decay_fraction below 1, the peak held and a linear decay over that last share of the way instead.

    With a time budget (max_seconds > 0), after the warmup iterations the decay follows the fraction
    elapsed / max_seconds of the budget instead, reaching min_lr when the budget is spent.
    """
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if cfg.max_seconds > 0:
        ratio = min(1.0, elapsed / cfg.max_seconds)
    else:
        decay_iters = cfg.lr_decay_iters or cfg.max_iters
        if it >= decay_iters:
            return cfg.min_lr
        ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    if cfg.lr_decay_fraction < 1:  # warmup-stable-decay: a straight line to min_lr over the last share
        return cfg.learning_rate - max(0.0, (ratio - 1) / cfg.lr_decay_fraction + 1) * (cfg.learning_rate - cfg.min_lr)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


# ----------------------------------------------------------------------------- evaluate and save

@torch.no_grad()
def evaluate(run: Run, state: LoopState, batches: int) -> tuple[dict | None, float]:
    """{"train_loss": ..., "val_loss": ...}: the mean loss over `batches` batches per split, shared
    out over the processes; every key is printed and recorded. None, recording nothing, when a stop is
    requested meanwhile (checked before each batch; every rank agrees, and makes as many checks).
    Also the seconds it takes without its first batch's one-time costs (compilation), scaled to
    eval_iters batches: what the next evaluation will take, which a time budget keeps for the last one."""
    cfg, procs = run.cfg, run.procs
    run.eval_model.eval()
    mine = range(procs.rank, batches, procs.world_size)  # this process's batches
    rounds = -(-batches // procs.world_size)  # the same on every rank: as many stop checks
    results, bar, times = {}, EvalProgress(2 * len(mine), procs.master), [time.time()]
    try:
        for split, sampler in run.splits.items():
            # windows evenly spaced through the split, the same every time whatever the seed: closer to the
            # whole split's loss than as many random windows, and every token is scored once they overlap
            offsets = sampler.spaced_offsets(batches * cfg.batch_size).reshape(batches, -1)
            total = torch.zeros((), device=procs.device)
            for j in range(rounds):
                call_hook(run, "eval_batch", state)
                if any_rank([run.stop.requested], procs)[0]:
                    return None, 0.0
                if j >= len(mine) and not run.sharded:  # eval_iters does not divide by the processes
                    continue  # (under FSDP every forward is a collective: a spare one is run, not counted)
                x, y, segments = sampler.batch(offsets[mine[j] if j < len(mine) else 0])
                with autocast(procs.device, procs.dtype):
                    _, loss = run.eval_model(x, y, segments=segments)
                if j < len(mine):
                    total += loss.float()
                    bar.advance()
                times.append(time.time())
            results[f"{split}_loss"] = sum_over_ranks(total, procs).item() / batches
            if split in run.bytes_per_token:  # the mean loss in nats per token, as bits per byte of text
                results[f"{split}_bits_per_byte"] = results[f"{split}_loss"] / math.log(2) / run.bytes_per_token[split]
    finally:
        bar.close(finished=all(f"{split}_loss" in results for split in run.splits))  # abandoned: no "done" line
        run.eval_model.train()
    steady = (times[-1] - times[1]) * (len(times) - 1) / (len(times) - 2) if len(times) > 2 else times[-1] - times[0]
    return results, steady * cfg.eval_iters / batches


def record_evaluation(run: Run, state: LoopState, results: dict, lr: float, seconds: float) -> None:
    """Print an evaluation, append it to metrics.jsonl, and checkpoint if due."""
    cfg = run.cfg
    state.evaluated_at = state.iter_num
    print0(evaluation_line(state.iter_num, results, state.elapsed_s, seconds))
    if cfg.eval_only:
        return
    run.folder.record({"iter": state.iter_num, "kind": "eval", **results, "lr": lr,
                       "elapsed_s": round(state.elapsed_s, 3)})
    val = results["val_loss"]
    improved = val < state.best_val_loss
    state.best_val_loss = min(state.best_val_loss, val)
    if state.iter_num == 0:
        return
    if not math.isfinite(val):
        print0(f"not saving a checkpoint: the val loss is {val}; {run.folder.ckpt_path} is kept")
    elif improved or cfg.always_save_checkpoint:
        save(run, state, f"evaluation, best val loss {val:.4f}" if improved else "evaluation")
    else:
        print0(f"not saving: val loss {val:.4f} is not below the best {state.best_val_loss:.4f} "
               f"(always_save_checkpoint=false); {run.folder.ckpt_path} keeps {run.folder.holds}")


def save(run: Run, state: LoopState, why: str) -> None:
    """Checkpoint the model, optimizer and loop state (every rank calls it); weights that are not
    finite are never saved (the old checkpoint is kept)."""
    if not fsdp.all_finite(run.model.parameters(), run.procs):  # every rank checks its shards, then agrees
        print0(f"not saving a checkpoint at iteration {state.iter_num} ({why}): the weights are not finite; "
               f"{run.folder.ckpt_path} is kept")
        return
    rngs = gather_objects(rng_state(run.procs.device), run.procs)  # every process's RNG state, in rank order
    weights = fsdp.full_state(run.model.state_dict(), run.procs, fsdp.tied_names(run.model))  # FSDP: to rank 0
    moments = fsdp.full_state(run.optimizer.state_dict(), run.procs)
    checkpoint = build_checkpoint(run.model, weights, meta=run.meta, train_config=dataclasses.asdict(run.cfg),
                                  optimizer_state=moments, scaler=run.scaler, rng_per_rank=rngs,
                                  **dataclasses.asdict(state)) if run.procs.master else None
    run.folder.write_checkpoint(checkpoint, state.iter_num, why)
    call_hook(run, "saved", state)


def call_hook(run: Run, event: str, state: LoopState) -> None:
    """main's hook at `event`; its True asks the run to stop, as SIGTERM does."""
    if run.hook is not None and run.hook(event, state, run):
        run.stop.request("the hook")


# ----------------------------------------------------------------------------- the loop

def train_loop(run: Run, state: LoopState) -> None:
    """Evaluate when due, one update, log, save; until max_iters, the time budget, or a stop."""
    cfg, procs = run.cfg, run.procs
    zero = time.time() - state.elapsed_s  # the clock of the whole run, resumes and start-ups included
    window, nonfinite_in_a_row, first_update = MetricWindow(state.iter_num), 0, True
    eval_seconds = state.eval_batch_s * cfg.eval_iters  # known from the checkpoint on a resume, 0 on a new run
    while True:
        # a time budget ends the run when what is left of it is the last evaluation (its measured time),
        # or two when one is due now (which then is the last); under DDP every rank takes rank 0's clock
        state.elapsed_s, spent = time.time() - zero, time.time() - zero + eval_seconds
        if cfg.max_seconds:
            state.elapsed_s, spent = rank0_values([state.elapsed_s, spent], procs)
        due = state.iter_num % cfg.eval_interval == 0
        out_of_time = 0 < cfg.max_seconds <= spent + (eval_seconds if due else 0)
        finished = state.iter_num >= cfg.max_iters or out_of_time or cfg.eval_only
        lr = learning_rate_at(state.iter_num, cfg, state.elapsed_s)
        set_learning_rate(run.optimizer, lr)
        due = due or finished
        evaluated = due and (state.iter_num != state.evaluated_at or cfg.eval_only)
        if evaluated:
            started = time.time()
            # a time budget glances at a new run (it scores about ln(vocab) anywhere): a tenth of the batches
            glance = cfg.max_seconds > 0 and state.iter_num == 0 and not finished
            batches = max(1, cfg.eval_iters // 10) if glance else cfg.eval_iters
            with compiling(run, run.eval_model, "the evaluation", first=not eval_seconds):  # says so, on a first call
                results, eval_seconds = evaluate(run, state, batches)  # (and what a whole one takes: for the ETA)
            if results is None:  # abandoned for a stop; it reruns on resume
                return stop_and_save(run, state, "the evaluation")
            state.elapsed_s, state.eval_batch_s = time.time() - zero, eval_seconds / cfg.eval_iters
            record_evaluation(run, state, results, lr, time.time() - started)
            call_hook(run, "evaluated", state)
            window.restart(state.iter_num)  # evaluations are not training time
        if finished:
            if out_of_time:
                print0(f"time budget of {cfg.max_seconds:g}s spent after {state.iter_num} iterations "
                       f"({state.elapsed_s:.1f}s, the last evaluation included)")
            return
        # a stop that came during the evaluation or since the last update: no update starts (free in
        # one process; under DDP one collective per evaluation, not per update)
        if (evaluated or not procs.ddp) and any_rank([run.stop.requested], procs)[0]:
            return stop_and_save(run, state, "the evaluation" if evaluated else "training")
        timed_save = 0 < cfg.checkpoint_interval_s <= time.time() - run.folder.saved_at
        with compiling(run, run.train_model, "the training step", first=first_update):
            metrics, skipped, (stop_now, save_now) = train_step(run, state, [run.stop.requested, timed_save])
        state.elapsed_s = time.time() - zero
        if run.threads is not None:
            run.threads.fit()  # every few seconds: another program may have started, or ended
        nonfinite_in_a_row = nonfinite_in_a_row + 1 if skipped else 0
        if skipped:
            report_skipped(run, state, metrics["loss"].item(), nonfinite_in_a_row)
        window.add(metrics, skipped)
        if first_update:  # compilation and warm-up are not the speed of training
            first_update = False
            window.restart(state.iter_num)
        elif state.iter_num % cfg.log_interval == 0 or time.time() - window.started >= LOG_AT_LEAST_EVERY_S:
            log_training(run, state, window, lr, eval_seconds)  # a training line and its metrics.jsonl record
        if stop_now:
            return stop_and_save(run, state, "training")
        if save_now:
            save(run, state, f"checkpoint_interval_s={cfg.checkpoint_interval_s:g}")
        call_hook(run, "update", state)


def stop_and_save(run: Run, state: LoopState, during: str) -> None:
    """A stop request: save at the current iteration (an abandoned evaluation reruns on resume)."""
    save(run, state, "stop requested")
    print0(f"stopped by {run.stop.reason or 'a stop request on another process'} during {during} at iteration "
           f"{state.iter_num}; continue with --init_from=resume --out_dir={run.cfg.out_dir}")


def main(argv: list[str], hook: Callable | None = None) -> None:
    """Train as argv says. hook(event, state, run), if given, is called on every rank at these events:
    "update" after each update, "eval_batch" before each evaluation batch, "evaluated" after an
    evaluation is recorded (and saved), "saved" after each checkpoint. It may read anything (state is the
    LoopState, run the Run) and raise; returning True asks the run to stop, as SIGTERM does."""
    cpu_at_start = cpu_snapshot()  # from here, how busy other programs keep the CPU (the threads' choice)
    started_at = PROCESS_STARTED_AT if __name__ == "__main__" else time.time()  # called from Python: this call
    cfg, ckpt = load_config(argv)
    procs = setup_processes(cfg.device, cfg.dtype, cfg.threads, cfg.model.n_embd)
    try:
        train(cfg, ckpt, procs, hook, cpu_at_start, started_at)
    finally:  # the run (its DDP model holds the process group) is gone by now: see distributed.shutdown
        shutdown(procs)


def train(cfg: TrainConfig, ckpt: dict | None, procs: Processes, hook: Callable | None, cpu_at_start, started_at):
    """Take the run folder, build the run, train; every reference to the run ends when this returns."""
    with RunFolder(cfg.out_dir, procs.master, read_only=cfg.eval_only) as folder, StopRequest() as stop:
        if ckpt is None and not cfg.eval_only:
            folder.check_fresh_start(cfg.overwrite)
        run, state = build_run(cfg, procs, ckpt, folder, stop, hook, cpu_at_start)
        state.elapsed_s += time.time() - started_at  # this process's start-up (imports, data, model) counts
        describe(run, state)  # device, batch, model, data, the budget's end; how long an update takes on a CPU
        wandb = {"project": cfg.wandb_project, "name": cfg.wandb_run_name} if cfg.wandb_log else None
        folder.start(dataclasses.asdict(run.cfg), cfg.init_from == "resume", state.iter_num, state.evaluated_at, wandb)
        train_loop(run, state)
        if not cfg.eval_only:
            print0(f"done: {folder.ckpt_path} holds {folder.holds}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
