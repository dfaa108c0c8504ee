"""Train a GPT on a prepared dataset, on CPU or GPU, in one process or many (DDP via torchrun).

    python train.py config/shakespeare_char.toml
    python train.py config/shakespeare_char.toml --max_iters=2000 --compile=false
    python train.py --init_from=resume --out_dir=out-shakespeare-char --max_iters=8000   # continue a run
    torchrun --standalone --nproc_per_node=8 train.py config/gpt2.toml
    python train.py config/finetune_shakespeare.toml     # finetune OpenAI's GPT-2 (init_from = "gpt2")
    python train.py --help                       # every key with its type, default and meaning

Configs are TOML files whose keys are the fields of `TrainConfig` below and of model.GPTConfig
(flat, or in a [model] table); `--key=value` overrides them. Writes out_dir/ckpt.pt (see
checkpoint.py), out_dir/metrics.jsonl (one line per evaluation) and out_dir/config.json.

`main` reads as the table of contents: parse the config (a resumed run starts from its own saved
config), set up processes and device, take the run folder, build or restore the run state (one
`Run` object that every stage shares), then loop: evaluate when due, one training step, log, save.

Nothing lost: `--init_from=resume` continues bitwise (RNG of every process, sampler position, the
evaluation still due); SIGTERM or a first Ctrl-C stops within a step (or abandons an evaluation),
saves a checkpoint and exits 0 (a second Ctrl-C quits at once); an update with a non-finite loss is
skipped, and `max_nonfinite_steps` of them in a row stop the run without saving; a fresh run will
not replace an existing out_dir/ckpt.pt unless given --overwrite=true; one trainer per out_dir.
"""

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
# Imported before any process group exists, on purpose: torch.distributed.nn.functional evaluates
# `group=group.WORLD` into default arguments at import, and DDP imports it (through torch._dynamo)
# after init_process_group, which would keep the group alive past destroy_process_group (shutdown).
import torch.distributed.nn  # noqa: F401
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import (CHECKPOINT_NAME, build_checkpoint, load_checkpoint, load_weights, model_from_checkpoint,
                        rng_state, save_checkpoint)
from cli import UserError, build_config, config_from_dict, option, option_group, read_overrides, run_main
from data import BatchSampler, load_dataset
from device import (autocast, cpu_has_bf16_units, enable_tf32, measure_matmul_flops, peak_flops, resolve_device,
                    resolve_dtype)
from model import GPT, GPTConfig
import plot
from optim import build_optimizer, set_learning_rate
from progress import PlainProgress, progress as progress_bar
from tokenizer import same_vocabulary


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = option("out", "folder for ckpt.pt, metrics.jsonl and config.json (one trainer at a time)")
    overwrite: bool = option(False, "let a fresh run (any init_from but resume) replace out_dir/ckpt.pt")
    dataset: str = option("shakespeare_char", "folder with train.bin/val.bin/meta.json, or a name under data/")
    init_from: str = option("scratch", "scratch: new weights; resume: continue out_dir's run (its saved config, "
                            "with the keys given here changed); gpt2|gpt2-medium|gpt2-large|gpt2-xl: OpenAI's "
                            "weights from the Hugging Face hub; or a folder in the Hugging Face GPT-2 layout")
    eval_interval: int = option(250, "evaluate (and maybe checkpoint) every this many iterations")
    eval_iters: int = option(200, "batches per split in each evaluation")
    eval_only: bool = option(False, "evaluate once and exit (the checkpoint in out_dir if there is one)")
    log_interval: int = option(10, "print a training line every this many iterations")
    always_save_checkpoint: bool = option(True, "save at every evaluation, not only when val loss improves")
    checkpoint_interval_s: float = option(0.0, "also save every this many seconds of training (0 = only at "
                                          "evaluations); for long runs whose evaluations are far apart")
    # batch
    batch_size: int = option(12, "sequences per micro-batch per process (an upper bound when tokens_per_update "
                             "is set: the micro-batch shrinks to divide the process's share)")
    tokens_per_update: int = option(0, "tokens per optimizer update over all processes (a multiple of "
                                    "block_size); 0: gradient_accumulation_steps x batch_size x block_size")
    gradient_accumulation_steps: int = option(1, "with tokens_per_update = 0: micro-batches of batch_size per "
                                              "update, counted over all processes")
    # model: every field of model.GPTConfig but vocab_size (which comes from the dataset)
    model: GPTConfig = option_group(GPTConfig, "the model's shape and architecture", exclude=("vocab_size",))
    # optimizer
    learning_rate: float = option(6e-4, "peak learning rate")
    max_iters: int = option(5000, "total optimizer updates")
    weight_decay: float = option(0.1, "AdamW weight decay on 2-D weights")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the global gradient norm to this; 0 disables")
    max_nonfinite_steps: int = option(5, "skip updates whose loss is inf/nan; stop after this many in a row")
    optimizer: str = option("adamw", "adamw: AdamW for every weight; muon: Muon for the blocks' matrices, "
                            "AdamW for embeddings, head, gains and biases (see optim.py)", ["adamw", "muon"])
    muon_lr: float = option(0.02, "peak learning rate of the Muon groups (follows the same schedule)")
    muon_momentum: float = option(0.95, "Muon momentum (Nesterov)")
    muon_ns_steps: int = option(5, "Newton-Schulz iterations per Muon update")
    # learning-rate schedule
    decay_lr: bool = option(True, "linear warmup then cosine decay; false keeps learning_rate constant")
    warmup_iters: int = option(100, "iterations of linear warmup")
    lr_decay_iters: int = option(0, "iteration where the cosine reaches min_lr; 0 means max_iters")
    min_lr: float = option(6e-5, "learning rate at the end of the decay")
    max_seconds: float = option(0.0, "time budget in seconds of the training loop (0 = off): the LR "
                                "schedule follows elapsed/max_seconds instead of iterations, and the run "
                                "ends with an evaluation and checkpoint once the budget is spent "
                                "(or at max_iters, whichever comes first)")
    # system
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "compute precision; auto: bfloat16 on GPUs with bf16 tensor cores (else "
                        "float16 with a gradient scaler), bfloat16 on CPUs with bf16 matrix units (AMX or "
                        "AVX512-BF16), float32 elsewhere", ["auto", "float32", "bfloat16", "float16"])
    compile: str = option("auto", "torch.compile the model; auto: on GPUs, off on CPUs (where it measured "
                          "slower for small models, see README)", ["auto", "true", "false"])
    threads: int = option(0, "CPU threads for torch (0: torch's default, one per core); on a CPU shared "
                          "with other jobs fewer threads can be much faster")
    seed: int = option(1337, "random seed for weights, dropout and batches")
    # logging
    wandb_log: bool = option(False, "log to Weights & Biases (works with WANDB_MODE=offline)")
    wandb_project: str = option("gpt", "wandb project")
    wandb_run_name: str = option("run", "wandb run name")


# Keys a resumed run may not change: they define the model its checkpoint holds.
SHAPE_KEYS = tuple(f.name for f in dataclasses.fields(GPTConfig) if f.name not in ("vocab_size", "dropout"))
AT_LEAST_ONE = ("batch_size", "gradient_accumulation_steps", "eval_iters", "eval_interval", "log_interval",
                "max_nonfinite_steps")
NOT_NEGATIVE = ("max_iters", "tokens_per_update", "threads", "checkpoint_interval_s", "max_seconds", "warmup_iters")


def print0(*args, **kwargs):
    """Print from the first process only."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


# ----------------------------------------------------------------------------- stage 1: the config

def load_config(argv: list[str]) -> tuple[TrainConfig, dict | None]:
    """The run's config, and the checkpoint to resume from (None for a fresh run).

    A fresh run: defaults, then the TOML files and --key=value of argv. A resumed run (and
    eval_only on a folder holding a checkpoint): the run's own saved config, then the keys given;
    changing a model-shape key is refused, since the checkpoint holds that model.
    """
    given = read_overrides(TrainConfig, argv, __doc__)
    defaults = TrainConfig()
    ckpt_path = Path(given.get("out_dir", defaults.out_dir)) / CHECKPOINT_NAME
    if given.get("eval_only") and "init_from" not in given and ckpt_path.is_file():
        given["init_from"] = "resume"  # evaluate the run that is there
    if given.get("init_from") != "resume":
        cfg = build_config(TrainConfig, given)
        check_config(cfg)
        if cfg.init_from != "scratch":
            cfg = adopt_pretrained_shape(cfg, given)
        return cfg, None
    if not ckpt_path.is_file():
        raise UserError(f"init_from=resume but there is no checkpoint at {ckpt_path}: train with "
                        f"--init_from=scratch first or point --out_dir at the run")
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")  # CPU: RNG states must stay CPU tensors
    saved = config_from_dict(TrainConfig, ckpt.get("train_config") or {})
    try:  # the model as the checkpoint holds it (true vocabulary included)
        saved = dataclasses.replace(saved, model=GPTConfig(**ckpt["model_config"]))
    except (TypeError, ValueError) as e:
        raise UserError(f"{ckpt_path} holds a model_config this code cannot build ({e})") from None
    changed = [f"{k}: {getattr(saved.model, k)!r} -> {given[k]!r}" for k in SHAPE_KEYS
               if k in given and given[k] != getattr(saved.model, k)]
    if changed:
        raise UserError(f"cannot resume from {ckpt_path}: the model differs from the checkpoint's "
                        f"({'; '.join(changed)}); leave those keys out or start a new out_dir")
    cfg = build_config(TrainConfig, given, base=saved)
    check_config(cfg)
    return cfg, ckpt


def adopt_pretrained_shape(cfg: TrainConfig, given: dict) -> TrainConfig:
    """cfg with the model of the pretrained weights init_from names (block_size may be lowered)."""
    run_ckpt = run_checkpoint_path(cfg.init_from)
    if run_ckpt is not None:  # a run folder or ckpt.pt: ours, or nanoGPT's
        shape = GPTConfig(**load_checkpoint(run_ckpt, mmap=True, dataset=cfg.dataset)["model_config"])
    else:
        import hf  # optional dependencies, needed only for Hugging Face weights

        shape = hf.pretrained_config(cfg.init_from)
    block_size = given.get("block_size", shape.block_size)
    if block_size > shape.block_size:
        raise UserError(f"block_size {block_size} exceeds the {shape.block_size} positions of {cfg.init_from}; "
                        f"use --block_size={shape.block_size} or less")
    ignored = sorted(k for k in given if k in SHAPE_KEYS and k != "block_size" and given[k] != getattr(shape, k))
    shape = dataclasses.replace(shape, dropout=cfg.model.dropout, block_size=block_size)
    print0(f"init_from={cfg.init_from}: model shape from the pretrained config (n_layer={shape.n_layer}, "
           f"n_head={shape.n_head}, n_embd={shape.n_embd}, vocab {shape.vocab_size}), block_size {block_size}"
           + (f"; ignored: {', '.join(ignored)}" if ignored else ""))
    return dataclasses.replace(cfg, model=shape)


def check_config(cfg: TrainConfig) -> None:
    """One-line errors for values no run can use (types and choices were checked while parsing)."""
    for key in AT_LEAST_ONE:
        if getattr(cfg, key) < 1:
            raise UserError(f"bad value for {key}: {getattr(cfg, key)} (must be at least 1)")
    for key in NOT_NEGATIVE:
        if getattr(cfg, key) < 0:
            raise UserError(f"bad value for {key}: {getattr(cfg, key)} (must be >= 0)")
    if not cfg.init_from:
        raise UserError("bad value for init_from: ''; choose scratch, resume, gpt2 or a Hugging Face folder")
    if cfg.init_from not in ("scratch", "resume"):
        import hf  # the hub names and folder checks live there

        hf.check_source(cfg.init_from)
    if cfg.tokens_per_update and cfg.tokens_per_update % cfg.model.block_size:
        raise UserError(f"bad value for tokens_per_update: {cfg.tokens_per_update} is not a multiple of "
                        f"block_size {cfg.model.block_size} (e.g. {cfg.model.block_size * 32:,})")


# ----------------------------------------------------------------------------- stage 2: processes

@dataclass
class Processes:
    """Where this process runs: its rank among the DDP processes, device and compute precision."""
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    dtype: torch.dtype

    @property
    def ddp(self) -> bool:
        return self.world_size > 1 or "RANK" in os.environ

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_processes(cfg: TrainConfig) -> Processes:
    """Device, threads, precision; under torchrun also the process group (NCCL on GPUs, gloo on CPUs)."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, local_rank, world_size = 0, 0, 1
    if "RANK" in os.environ:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    enable_tf32(device)
    return Processes(rank, local_rank, world_size, device, resolve_dtype(cfg.dtype, device))


def shutdown(procs: Processes) -> None:
    """Leave the process group cleanly (every rank calls it, on success and on error).

    destroy_process_group must drop the last reference to the group, so that gloo's destructor
    joins its worker threads here and not during interpreter exit: a worker still finishing the
    last collective then takes the GIL while Python finalizes, is ended by pthread_exit, and the
    unwind through a noexcept destructor aborts the rank ("terminate called without an active
    exception"). So the DDP model (its reducer holds the group) is gone before this is called, and
    torch.distributed.nn is imported before the group exists (see the imports).
    """
    if procs.ddp and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- stage 3: the run state

@dataclass
class BatchPlan:
    """How one update's global batch of sequences is shared out: this process's rows, in micro-batches.

    Every process draws the same global batch and takes rows [start, stop). Shares differ by at most
    one sequence; each micro-batch's loss is weighted by its share of the global batch, so the
    averaged gradient is the global batch's mean whatever the number of processes.
    """
    global_seqs: int
    block_size: int
    start: int
    stop: int
    micro_sizes: list[int]
    world_size: int

    @property
    def tokens_per_update(self) -> int:
        return self.global_seqs * self.block_size

    @property
    def process_share(self) -> float:
        """Times a micro-batch's divided loss, its part of this process's mean (1.0 in one process)."""
        return self.global_seqs / (self.world_size * (self.stop - self.start))

    def loss_divisor(self, micro_size: int) -> float:
        """Divide a micro-batch's mean loss by this: DDP averages over processes, so this undoes that."""
        return self.global_seqs / (micro_size * self.world_size)


def plan_batches(cfg: TrainConfig, procs: Processes) -> BatchPlan:
    block_size, world = cfg.model.block_size, procs.world_size
    global_seqs = (cfg.tokens_per_update // block_size if cfg.tokens_per_update
                   else cfg.gradient_accumulation_steps * cfg.batch_size)
    if global_seqs < world:
        raise UserError(f"an update of {global_seqs} sequence(s) cannot be shared by {world} processes: raise "
                        f"tokens_per_update to at least {world * block_size:,} (or use fewer processes)")
    start, stop = procs.rank * global_seqs // world, (procs.rank + 1) * global_seqs // world
    share = stop - start
    count = -(-share // cfg.batch_size)  # micro-batches of at most batch_size, as equal as possible
    sizes = [share // count + (1 if i < share % count else 0) for i in range(count)]
    return BatchPlan(global_seqs, block_size, start, stop, sizes, world)


@dataclass
class Run:
    """Everything the stages share: the config, processes, data, model, optimizer and progress."""
    cfg: TrainConfig
    procs: Processes
    meta: dict
    train_data: BatchSampler
    val_data: BatchSampler
    raw_model: GPT  # the uncompiled, unwrapped module: its state dict is what is saved
    model: torch.nn.Module  # what the training step calls: compiled and/or DDP-wrapped raw_model
    eval_model: torch.nn.Module  # compiled (if so) but not DDP-wrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    plan: BatchPlan
    pretrained_from: str | None = None  # hub name or folder of the first weights, kept through resumes
    iter_num: int = 0
    best_val_loss: float = float("inf")
    evaluated_at: int = -1  # the last iteration whose evaluation is in metrics.jsonl
    elapsed_before: float = 0.0  # seconds of training in earlier processes of this run (max_seconds)
    started_at: float = field(default_factory=time.time)
    sampler_state: dict = field(default_factory=dict)  # the train sampler as of before `pending` was drawn
    pending: list = field(default_factory=list)  # this process's micro-batches for the next update
    saved: str = "nothing saved yet"  # what out_dir/ckpt.pt holds, for the last line of the run
    last_save_time: float = field(default_factory=time.time)  # for checkpoint_interval_s

    @property
    def ckpt_path(self) -> Path:
        return Path(self.cfg.out_dir) / CHECKPOINT_NAME

    def elapsed(self, agree: bool = True) -> float:
        """Seconds of this run so far. Under DDP with a time budget all processes agree (a collective:
        every rank must call it); agree=False reads this process's own clock (rank 0's ETA)."""
        elapsed = self.elapsed_before + time.time() - self.started_at
        if agree and self.procs.ddp and self.cfg.max_seconds > 0:  # same LR and same last step on every rank
            value = torch.tensor(elapsed, dtype=torch.float64, device=self.procs.device)
            dist.broadcast(value, src=0)
            elapsed = value.item()
        return elapsed

    def draw_batches(self) -> None:
        """Draw the next update's global batch (same on every rank) and keep this process's share."""
        self.sampler_state = self.train_data.state_dict()
        offsets = self.train_data.draw_offsets(self.plan.global_seqs)[self.plan.start:self.plan.stop]
        bounds = np.cumsum([0, *self.plan.micro_sizes])
        self.pending = [self.train_data.batch(offsets[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def build_run(cfg: TrainConfig, procs: Processes, ckpt: dict | None) -> Run:
    """Data, model, optimizer and progress: fresh, from pretrained weights, or restored from ckpt."""
    data_dir, meta = load_dataset(cfg.dataset, log=print0)
    block_size = cfg.model.block_size
    train_data = BatchSampler(data_dir / "train.bin", meta["dtype"], block_size, cfg.seed, procs.device)
    val_data = BatchSampler(data_dir / "val.bin", meta["dtype"], block_size, cfg.seed + 1, procs.device)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    raw_model, pretrained_from = make_model(cfg, meta, ckpt)
    raw_model.to(procs.device)
    cfg = dataclasses.replace(cfg, model=raw_model.config)  # the true vocabulary, as saved
    optimizer = build_optimizer(raw_model, cfg, procs.device.type)
    scaler = torch.amp.GradScaler(procs.device.type, enabled=(procs.dtype == torch.float16))
    eval_model = torch.compile(raw_model) if compile_enabled(cfg, procs.device) else raw_model
    model = DDP(eval_model, device_ids=[procs.local_rank] if procs.device.type == "cuda" else None) \
        if procs.ddp else eval_model
    run = Run(cfg, procs, meta, train_data, val_data, raw_model, model, eval_model, optimizer, scaler,
              plan_batches(cfg, procs), pretrained_from)
    if ckpt is not None:
        restore(run, ckpt)
    else:
        torch.manual_seed(cfg.seed + procs.rank)  # dropout streams differ per rank
        if cfg.eval_only:
            print0(f"eval_only: no checkpoint in {cfg.out_dir}, so this evaluates the {cfg.init_from} weights")
    run.draw_batches()
    return run


def make_model(cfg: TrainConfig, meta: dict, ckpt: dict | None) -> tuple[GPT, str | None]:
    """The GPT this run trains, and the source of its pretrained weights (None for scratch)."""
    if ckpt is not None:
        if (ckpt.get("meta") or {}).get("vocab_size") not in (None, meta["vocab_size"]):
            raise UserError(f"cannot resume: the checkpoint was trained on a vocabulary of "
                            f"{ckpt['meta']['vocab_size']} tokens, dataset {cfg.dataset} has {meta['vocab_size']}")
        model = GPT(cfg.model, init_weights=False)
        load_weights(model, ckpt["model"], cfg.out_dir)
        return model, ckpt.get("pretrained_from")
    if cfg.init_from == "scratch":
        return GPT(dataclasses.replace(cfg.model, vocab_size=meta["vocab_size"])), None
    run_ckpt = run_checkpoint_path(cfg.init_from)
    if run_ckpt is not None:
        return weights_of_run(cfg, meta, run_ckpt), str(run_ckpt)
    import hf  # optional dependencies, needed only for Hugging Face weights

    check_same_vocabulary(cfg, hf.pretrained_meta(cfg.init_from), meta)  # GPT-2 BPE, or an exported run's
    model = hf.load_pretrained(cfg.init_from, dropout=cfg.model.dropout)
    if cfg.model.block_size < model.config.block_size:
        model.crop_block_size(cfg.model.block_size)
    if meta["vocab_size"] > model.config.vocab_size:
        raise UserError(f"dataset {cfg.dataset} has {meta['vocab_size']} token ids but {cfg.init_from} knows only "
                        f"{model.config.vocab_size}; use a dataset prepared with its tokenizer")
    return model, cfg.init_from


def run_checkpoint_path(init_from: str) -> Path | None:
    """The ckpt.pt that init_from names (the file, or a run folder holding one), else None."""
    path = Path(init_from)
    if path.is_file() and path.suffix == ".pt":
        return path
    return path / CHECKPOINT_NAME if (path / CHECKPOINT_NAME).is_file() else None


def weights_of_run(cfg: TrainConfig, meta: dict, path: Path) -> GPT:
    """The model of another run's checkpoint (ours or nanoGPT's), to train on: a fresh optimizer."""
    ckpt = load_checkpoint(path, dataset=cfg.dataset)
    check_same_vocabulary(cfg, ckpt["meta"], meta)
    model = model_from_checkpoint(ckpt, path, dropout=cfg.model.dropout)
    if cfg.model.block_size < model.config.block_size:
        model.crop_block_size(cfg.model.block_size)
    print0(f"init_from={cfg.init_from}: weights of {path} (iteration {ckpt.get('iter_num', '?')}), fresh optimizer")
    return model


def check_same_vocabulary(cfg: TrainConfig, theirs: dict, meta: dict) -> None:
    """Pretrained weights (init_from) and the dataset must give token ids the same meaning."""
    if same_vocabulary(theirs, meta):
        return
    if theirs.get("tokenizer") == "gpt2":
        raise UserError(f"init_from={cfg.init_from} needs a dataset tokenized with GPT-2 BPE, but {cfg.dataset} "
                        f"uses the {meta['tokenizer']} tokenizer; prepare one with --tokenizer=gpt2 "
                        f"(e.g. python prepare/shakespeare.py)")
    raise UserError(f"init_from={cfg.init_from} was trained on the {theirs.get('tokenizer')} tokenizer (vocab "
                    f"{theirs.get('vocab_size')}), dataset {cfg.dataset} on {meta['tokenizer']} (vocab "
                    f"{meta['vocab_size']}); prepare the data with the run's tokenizer")


def compile_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """compile=auto: on GPUs. On CPUs it is asked for in the configs where it measured faster (it
    costs ~10-30 s of compilation up front); there torch.compile needs a C++ compiler."""
    wanted = device.type == "cuda" if cfg.compile == "auto" else cfg.compile == "true"
    if wanted and device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++",
                                                                               "clang++")):
        print0("compile=true needs a C++ compiler on a CPU and none was found (set CXX or install g++); "
               "training without torch.compile")
        return False
    return wanted


def restore(run: Run, ckpt: dict) -> None:
    """Optimizer, scaler, sampler, RNG and progress from a checkpoint (loaded on the CPU)."""
    run.optimizer.load_state_dict(ckpt["optimizer"])  # moves the moments to the parameters' device
    if ckpt.get("scaler") and run.scaler.is_enabled():
        run.scaler.load_state_dict(ckpt["scaler"])
    run.train_data.load_state_dict(ckpt["sampler"])
    run.iter_num, run.best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
    run.evaluated_at = ckpt.get("evaluated_at", run.iter_num)
    run.elapsed_before = ckpt.get("elapsed_s", 0.0)
    states = ckpt.get("rng_per_rank") or []
    if len(states) == run.procs.world_size:  # each process continues its own dropout stream
        set_rng_state(states[run.procs.rank], run.procs.device)
    else:  # a different number of processes than the run saved: fresh streams
        torch.manual_seed(run.cfg.seed + run.procs.rank + run.iter_num)
    run.saved = f"iteration {run.iter_num} (the checkpoint resumed from)"
    print0(f"{'evaluating' if run.cfg.eval_only else 'resumed from'} {run.ckpt_path} at iteration {run.iter_num} "
           f"(best val loss {run.best_val_loss:.4f})")


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------- stage 4: one update

@dataclass
class StepResult:
    loss: torch.Tensor  # this process's mean loss over its micro-batches (on the device, not synced)
    skipped: bool  # the update was not applied: a loss or gradient was not finite (on some process)
    stop: bool  # some process was asked to stop
    save: bool  # rank 0's checkpoint timer was due


def train_step(run: Run, stop: "StopRequest | None" = None, save: bool = False) -> StepResult:
    """One optimizer update on run.pending: forward/backward per micro-batch, clip, step (or skip).

    Gradients are synced across processes on the last micro-batch only. One device sync per update
    decides whether to step: a non-finite loss skips the update; in float16 an inf gradient is the
    GradScaler's business (it skips and lowers its scale), elsewhere a non-finite gradient norm is
    skipped like a non-finite loss. Under DDP one tiny all_reduce makes every rank agree on skipping,
    stopping and saving. The next batch is drawn while the device works on this one.
    """
    device, plan = run.procs.device, run.plan
    step_loss = torch.zeros((), device=device)
    for i, (x, y) in enumerate(run.pending):
        last = i == len(run.pending) - 1
        no_sync = run.model.no_sync() if (run.procs.ddp and not last) else contextlib.nullcontext()
        with no_sync:
            with autocast(device, run.procs.dtype):
                _, loss = run.model(x, y)
                loss = loss / plan.loss_divisor(x.size(0))
            run.scaler.scale(loss).backward()
        step_loss += loss.detach().float() * plan.process_share  # this process's mean over its rows
    run.draw_batches()
    grad_norm = None
    if run.cfg.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), run.cfg.grad_clip)
    bad = ~torch.isfinite(step_loss)
    if grad_norm is not None and not run.scaler.is_enabled():
        bad = bad | ~torch.isfinite(grad_norm)
    flags = [bool(bad), stop is not None and stop.should_stop(run.iter_num), save]
    if run.procs.ddp:
        agreed = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        flags = [v > 0 for v in agreed.tolist()]
    skipped = flags[0]
    if skipped:
        if grad_norm is not None and run.scaler.is_enabled():
            run.scaler.update()  # unscale_ ran; update() resets the scaler for the next step
    else:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.iter_num += 1
    return StepResult(step_loss, skipped, flags[1], flags[2])


def learning_rate_at(it: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr at lr_decay_iters, then flat.

    With a time budget (max_seconds > 0), after the warmup iterations the cosine follows the fraction
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
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


# ----------------------------------------------------------------------------- stage 5: evaluate

@torch.no_grad()
def evaluate(run: Run, stop: "StopRequest") -> dict | None:
    """Mean loss over eval_iters fixed batches per split, shared out over the processes.

    Returns None, recording nothing, when a stop is requested meanwhile (all ranks agree each batch).
    """
    cfg, procs = run.cfg, run.procs
    run.eval_model.eval()
    mine = range(procs.rank, cfg.eval_iters, procs.world_size)  # this process's batches
    rounds = -(-cfg.eval_iters // procs.world_size)  # the same on every rank: as many stop checks
    losses, bar = {}, EvalProgress(2 * len(mine))
    try:
        for split, sampler in (("train", run.train_data), ("val", run.val_data)):
            eval_rng = np.random.Generator(np.random.PCG64(cfg.seed + 7))  # the same batches every time
            offsets = eval_rng.integers(0, sampler.num_tokens - cfg.model.block_size,
                                        size=(cfg.eval_iters, cfg.batch_size))
            total = torch.zeros((), device=procs.device)
            for j in range(rounds):
                if stop_agreed(run, stop.should_stop(run.iter_num)):
                    return None
                if j >= len(mine):  # eval_iters does not divide by the processes: this one has no batch left
                    continue
                x, y = sampler.batch(offsets[mine[j]])
                with autocast(procs.device, procs.dtype):
                    _, loss = run.eval_model(x, y)
                total += loss.float()
                bar.advance()
            if procs.ddp:
                dist.all_reduce(total)
            losses[split] = total.item() / cfg.eval_iters
    finally:
        bar.close(finished=len(losses) == 2)  # abandoned (stop or error): no "done" line
        run.eval_model.train()
    return losses


def stop_agreed(run: Run, requested: bool) -> bool:
    """Whether any process was asked to stop (a collective under DDP: every rank calls it)."""
    if not run.procs.ddp:
        return requested
    flag = torch.tensor(float(requested), device=run.procs.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() > 0


class EvalProgress:
    """Evaluation progress on stdout, beside the training lines: a bar on a terminal; in a log, a
    plain line every 10 s (and a closing one) only when an evaluation takes that long."""

    def __init__(self, total: int):
        self.bar = None
        if int(os.environ.get("RANK", "0")) == 0:
            self.bar = progress_bar(total, desc="eval", unit="batch", file=sys.stdout)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self, finished: bool = True) -> None:
        if isinstance(self.bar, PlainProgress) and (self.bar.last == self.bar.start or not finished):
            self.bar.abandon()  # a short evaluation: its result line says enough; an abandoned one is not done
        elif self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- stage 6: save

def save(run: Run, why: str) -> bool:
    """Checkpoint the current state (call on every rank); refuses non-finite weights."""
    if not all(torch.isfinite(p).all() for p in run.raw_model.parameters()):  # same weights on every rank
        print0(f"not saving a checkpoint at iteration {run.iter_num} ({why}): the weights are not finite; "
               f"{run.ckpt_path} is kept")
        return False
    states = [rng_state(run.procs.device)]
    if run.procs.ddp:  # every process's RNG state, in rank order
        states = [None] * run.procs.world_size
        dist.all_gather_object(states, rng_state(run.procs.device))
    elapsed = run.elapsed()  # on every rank: under DDP with a time budget it is a collective
    if run.procs.master:
        state = build_checkpoint(run.raw_model, meta=run.meta, train_config=dataclasses.asdict(run.cfg),
                                 optimizer=run.optimizer, scaler=run.scaler, iter_num=run.iter_num,
                                 evaluated_at=run.evaluated_at, best_val_loss=run.best_val_loss,
                                 elapsed_s=elapsed, rng_per_rank=states, sampler=run.sampler_state,
                                 pretrained_from=run.pretrained_from)
        save_checkpoint(state, run.ckpt_path)
        print0(f"saved checkpoint to {run.ckpt_path} (iteration {run.iter_num}, {why})")
    run.saved = f"iteration {run.iter_num} ({why})"
    run.last_save_time = time.time()
    return True


# ----------------------------------------------------------------------------- the run folder

class RunFolder:
    """out_dir as this run's: one trainer at a time, config.json, metrics.jsonl and the logger.

    The lock is an advisory lock (flock) on out_dir/.lock, held for the whole run by the first
    process: the kernel drops it when the process ends, however it ends, so a `kill -9` never leaves
    a stale lock. Readers (sample.py, hf.py export, eval_only) take no lock: saves are atomic
    renames, so they see the old checkpoint or the new one.
    """

    LOCK_NAME = ".lock"

    PLOT_EVERY_S = 30.0  # loss.png is redrawn at most this often while training, and at the end

    def __init__(self, out_dir: str, master: bool, cfg: TrainConfig, read_only: bool = False):
        self.path, self.master, self.cfg, self.read_only = Path(out_dir), master, cfg, read_only
        self.lock_fd = None
        self.logger = NullLogger()
        self.plotter: threading.Thread | None = None  # draws loss.png beside the training
        self.plotted_at, self.unplotted = 0.0, False

    def __enter__(self):
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"out_dir {self.path} is a file, not a folder; choose another --out_dir")
        if self.master and not self.read_only:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                self.lock_fd = os.open(self.path / self.LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise UserError(f"cannot write to out_dir {self.path}: {e.strerror or e}; choose another "
                                f"--out_dir") from None
            self._lock()
        return self

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX (Windows): no lock, as before
            return
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.lock_fd, 200, 0).decode(errors="replace").strip() or "unknown process"
            os.close(self.lock_fd)
            self.lock_fd = None
            raise UserError(f"another trainer is using {self.path} ({holder}); wait for it to finish or stop it, "
                            f"or choose another --out_dir") from None
        os.ftruncate(self.lock_fd, 0)
        os.pwrite(self.lock_fd, f"pid {os.getpid()} on {os.uname().nodename}, since "
                                f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)

    def __exit__(self, *exc):
        self.logger.finish()
        if self.plotter is not None:
            self.plotter.join()
        if self.unplotted:  # the last evaluations, drawn before the lock is let go
            plot.save_loss_plot(self.path)
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # releases the lock
            self.lock_fd = None
        return False

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def check_fresh_start(self, overwrite: bool) -> None:
        ckpt_path = self.path / CHECKPOINT_NAME
        if ckpt_path.exists() and not overwrite:
            raise UserError(f"{ckpt_path} already exists: continue that run with --init_from=resume, train into "
                            f"a new --out_dir, or pass --overwrite=true to replace it")

    def start(self, cfg: TrainConfig, evaluated_at: int, resumed: bool) -> None:
        """Write config.json; continue metrics.jsonl from the checkpoint (or start it afresh); open the logger."""
        if not self.master or self.read_only:
            return
        (self.path / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        if resumed:
            trim_metrics(self.metrics_path, evaluated_at)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        if cfg.wandb_log:
            self.logger = WandbLogger(cfg)

    def record(self, record: dict, step: int) -> None:
        """One evaluation: a line of metrics.jsonl and the logger."""
        if not self.master or self.read_only:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.log({"train/loss": record["train_loss"], "val/loss": record["val_loss"], "lr": record["lr"]}, step)
        self.unplotted = True
        busy = self.plotter is not None and self.plotter.is_alive()
        if not busy and time.time() - self.plotted_at >= self.PLOT_EVERY_S:
            # out_dir/loss.png (when matplotlib is installed), drawn in a thread: about a second of
            # work that the training need not wait for; save_loss_plot never raises
            self.plotted_at, self.unplotted = time.time(), False
            self.plotter = threading.Thread(target=plot.save_loss_plot, args=(self.path,), daemon=True)
            self.plotter.start()

    def log(self, metrics: dict, step: int) -> None:
        if self.master:
            self.logger.log(metrics, step=step)


def trim_metrics(path: Path, last_iter: int) -> None:
    """Drop metrics.jsonl records after `last_iter` (written by a run that went on past its last
    checkpoint), so that a resumed run's records continue the file without repeats or gaps."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            if json.loads(line)["iter"] <= last_iter:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by a crash
            pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


class NullLogger:
    def log(self, metrics: dict, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger:
    def __init__(self, cfg: TrainConfig):
        try:
            import wandb
        except ImportError:
            raise UserError("wandb_log=true needs wandb: pip install wandb (or set --wandb_log=false)") from None
        self.run = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, dir=cfg.out_dir,
                              config=dataclasses.asdict(cfg))

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self) -> None:
        self.run.finish()


# ----------------------------------------------------------------------------- the loop

class StopRequest:
    """SIGTERM or a first Ctrl-C asks the run to stop (after the current step, or at once during an
    evaluation); a second Ctrl-C quits. `request()` does the same from code (tests, callbacks).

    The handler only records the request (and writes a note with os.write, which is safe inside a
    signal handler); the loop asks `should_stop` once per update and once per evaluation batch.
    """

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def request(self, name: str = "a stop request") -> None:
        self.signal_name = self.signal_name or name

    def should_stop(self, iter_num: int) -> bool:
        """Asked by the loop at iteration iter_num (during an update or an evaluation batch)."""
        return self.requested

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup / background jobs ignore SIGINT: keep that
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: leave now (a save in progress removes its temp file)
            return
        self.signal_name = signal.Signals(signum).name
        if int(os.environ.get("RANK", "0")) == 0:
            again = " (Ctrl-C again to quit at once)" if signum == signal.SIGINT else ""
            os.write(2, f"\n{self.signal_name} received: finishing this step (or abandoning the evaluation), "
                        f"then saving a checkpoint and exiting{again}\n".encode())


@dataclass
class Progress:
    """Training-line bookkeeping: loss over the updates since the last line, timing, skipped updates."""
    window_start: float = field(default_factory=time.time)
    window_iter: int = 0
    loss_sum: float = 0.0
    finite_steps: int = 0
    nonfinite_run: int = 0  # consecutive updates skipped because the loss was not finite
    step_seconds: float = math.nan  # measured time per update, for the ETA
    eval_seconds: float = 0.0  # the last evaluation's duration, for the ETA

    def restart_window(self, iter_num: int) -> None:
        """Time from here: after compilation and evaluations, which are not training time."""
        self.window_start, self.window_iter = time.time(), iter_num


LOG_AT_LEAST_EVERY_S = 60.0  # a training line at least this often, whatever log_interval says


def train_loop(run: Run, folder: RunFolder, stop: StopRequest) -> None:
    cfg = run.cfg
    progress = Progress(window_iter=run.iter_num)
    run.started_at = run.last_save_time = time.time()
    first_update = True
    while True:
        elapsed = run.elapsed(agree=True)
        out_of_time = cfg.max_seconds > 0 and elapsed >= cfg.max_seconds
        finished = run.iter_num >= cfg.max_iters or out_of_time
        lr = learning_rate_at(run.iter_num, cfg, elapsed)
        set_learning_rate(run.optimizer, lr)
        due = run.iter_num % cfg.eval_interval == 0 or finished or cfg.eval_only
        evaluated = due and (run.iter_num != run.evaluated_at or cfg.eval_only)
        if evaluated and not evaluate_and_record(run, folder, stop, lr, progress):
            stop_and_save(run, stop, during="the evaluation")
            return
        if finished or cfg.eval_only:
            if out_of_time:
                print0(f"time budget of {cfg.max_seconds:g}s spent after {run.iter_num} iterations")
            return
        # a stop that came during the evaluation's last batch or its save, or since the last update:
        # none starts (free in one process; under DDP one collective per evaluation, not per update)
        if (evaluated or not run.procs.ddp) and stop_agreed(run, stop.should_stop(run.iter_num)):
            stop_and_save(run, stop, during="the evaluation" if evaluated else "training")
            return
        save_due = cfg.checkpoint_interval_s > 0 and time.time() - run.last_save_time >= cfg.checkpoint_interval_s
        result = train_step(run, stop, save_due)
        count_update(run, result, progress)
        if first_update:  # compilation and warm-up are not the speed of training
            first_update = False
            progress.restart_window(run.iter_num)
        elif run.iter_num % cfg.log_interval == 0 or time.time() - progress.window_start >= LOG_AT_LEAST_EVERY_S:
            log_progress(run, folder, progress, lr)  # slow updates (a big model on a CPU) still show progress
        if result.stop:
            stop_and_save(run, stop, during="training")
            return
        if result.save:
            save(run, f"checkpoint_interval_s={cfg.checkpoint_interval_s:g}")


def count_update(run: Run, result: StepResult, progress: Progress) -> None:
    """Add an update's loss to the log window, or count it as skipped (and stop after too many)."""
    if not result.skipped:
        progress.nonfinite_run = 0
        progress.loss_sum += result.loss  # a tensor until the next log line: no device sync per step
        progress.finite_steps += 1
        return
    progress.nonfinite_run += 1
    loss = result.loss.item()
    what = f"the loss is {loss}"
    if math.isfinite(loss):  # the loss was fine, the gradient was not (or another rank's)
        what = "the loss or gradient is not finite on a process" if run.procs.ddp else "the gradient is not finite"
    print0(f"iter {run.iter_num}: {what}; skipped this update ({progress.nonfinite_run} in a row, "
           f"stopping at {run.cfg.max_nonfinite_steps})")
    if progress.nonfinite_run >= run.cfg.max_nonfinite_steps:
        raise UserError(f"the loss was not finite for {progress.nonfinite_run} updates in a row (up to "
                        f"iteration {run.iter_num}); stopped without saving, so the last good checkpoint stays "
                        f"in {run.ckpt_path}; lower --learning_rate or check the data")


def log_progress(run: Run, folder: RunFolder, progress: Progress, lr: float) -> None:
    """One training line: loss, learning rate, speed, MFU, and the time left."""
    cfg, procs = run.cfg, run.procs
    steps = run.iter_num - progress.window_iter
    if not procs.master or steps <= 0:
        return
    loss = float(progress.loss_sum) / progress.finite_steps if progress.finite_steps else math.nan  # syncs
    dt = (time.time() - progress.window_start) / steps
    progress.step_seconds = dt
    tokens_per_iter = run.plan.tokens_per_update
    where = f"{run.iter_num}/{cfg.max_iters}" if cfg.max_seconds <= 0 else \
        f"{run.iter_num} ({run.elapsed(agree=False):.0f}/{cfg.max_seconds:g}s)"
    line = f"iter {where}: loss {loss:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, {tokens_per_iter / dt:,.0f} tok/s"
    utilization = mfu(run, dt)
    if utilization is not None:
        line += f", mfu {100 * utilization:.1f}%"
    line += f", eta {format_seconds(time_left(run, progress))}"
    print0(line)
    folder.log({"train/loss_step": loss, "ms_per_iter": dt * 1000}, step=run.iter_num)
    progress.loss_sum, progress.finite_steps = 0.0, 0
    progress.restart_window(run.iter_num)


def mfu(run: Run, seconds_per_update: float) -> float | None:
    """Model FLOPs utilization: an update's FLOPs (the global batch, all processes together) per second
    over the data-sheet peak of all the devices that did them; None where the peak is unknown (CPUs)."""
    peak = peak_flops(run.procs.device, run.procs.dtype)
    if not peak:
        return None
    flops = run.raw_model.flops_per_token(run.cfg.model.block_size) * run.plan.tokens_per_update
    return flops / seconds_per_update / (peak * run.procs.world_size)


def time_left(run: Run, progress: Progress) -> float:
    """Seconds until the run ends: the updates and evaluations still to do, or what is left of the time
    budget (then the last evaluation) if that ends the run first. Rank 0 only: no collective."""
    cfg, it = run.cfg, run.iter_num
    updates = max(0, cfg.max_iters - it)
    # evaluations at the multiples of eval_interval in [it, max_iters] (the one at `it` is still to come
    # when the training line is printed), and the last one at max_iters if it is not such a multiple
    evaluations = max(0, cfg.max_iters // cfg.eval_interval - (it - 1) // cfg.eval_interval) \
        + (cfg.max_iters % cfg.eval_interval != 0)
    left = updates * progress.step_seconds + evaluations * progress.eval_seconds
    if cfg.max_seconds > 0:  # the budget ends the run (with one last evaluation) unless max_iters comes first
        budget = max(0.0, cfg.max_seconds - run.elapsed(agree=False)) + progress.eval_seconds
        left = budget if math.isnan(left) else min(left, budget)
    return left


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def evaluate_and_record(run: Run, folder: RunFolder, stop: StopRequest, lr: float, progress: Progress) -> bool:
    """Evaluate, print, append to metrics.jsonl, and checkpoint if due; False if abandoned for a stop."""
    cfg = run.cfg
    started = time.time()
    losses = evaluate(run, stop)
    if losses is None:
        return False
    progress.eval_seconds = time.time() - started
    run.evaluated_at = run.iter_num
    elapsed = run.elapsed()
    print0(f"step {run.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
           f"{elapsed:.1f}s (evaluation {progress.eval_seconds:.1f}s)")
    if not cfg.eval_only:
        folder.record({"iter": run.iter_num, "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr,
                       "elapsed_s": round(elapsed, 3)}, step=run.iter_num)
    improved = losses["val"] < run.best_val_loss
    run.best_val_loss = min(run.best_val_loss, losses["val"])
    if run.iter_num > 0 and not cfg.eval_only:
        if not math.isfinite(losses["val"]):
            print0(f"not saving a checkpoint: the val loss is {losses['val']}; {run.ckpt_path} is kept")
        elif improved or cfg.always_save_checkpoint:
            save(run, "evaluation" if not improved else f"evaluation, best val loss {losses['val']:.4f}")
        else:
            print0(f"not saving: val loss {losses['val']:.4f} is not below the best {run.best_val_loss:.4f} "
                   f"(always_save_checkpoint=false); {run.ckpt_path} keeps {run.saved}")
    progress.restart_window(run.iter_num)
    return True


def stop_and_save(run: Run, stop: StopRequest, during: str) -> None:
    """A stop request: save at the current iteration (an abandoned evaluation reruns on resume)."""
    save(run, "stop requested")
    print0(f"stopped by {stop.signal_name or 'a stop request on another process'} during {during} at iteration "
           f"{run.iter_num}; continue with --init_from=resume --out_dir={run.cfg.out_dir}")


def warn_if_slow(run: Run) -> None:
    """On a CPU, one line before a long first step: the expected time per update and per evaluation."""
    cfg, procs = run.cfg, run.procs
    if procs.device.type != "cpu" or not procs.master:
        return
    flops_per_token = run.raw_model.flops_per_token(cfg.model.block_size)
    rate = measure_matmul_flops(procs.device, procs.dtype, seconds=0.2)
    per_update = flops_per_token * run.plan.tokens_per_update / rate
    per_eval = flops_per_token / 3 * 2 * cfg.eval_iters * cfg.batch_size * cfg.model.block_size / rate
    if per_update > 2 or per_eval > 60:
        print0(f"this CPU does about {rate / 1e9:.0f} GFLOP/s: expect roughly {format_seconds(per_update)} per "
               f"update and {format_seconds(per_eval)} per evaluation; for a quicker run lower n_layer, n_embd, "
               f"block_size or batch_size (and eval_iters), or start from config/quickstart_cpu.toml")


def describe(run: Run) -> None:
    """What the run is about to do: device, precision, batch arithmetic, model size."""
    procs, plan, cfg = run.procs, run.plan, run.cfg
    micro = "+".join(map(str, plan.micro_sizes)) if len(set(plan.micro_sizes)) > 1 else \
        f"{len(plan.micro_sizes)} x {plan.micro_sizes[0]}"
    print0(f"device {procs.device}, dtype {str(procs.dtype).removeprefix('torch.')}, {procs.world_size} "
           f"process(es), compile {'on' if run.eval_model is not run.raw_model else 'off'}; tokens per update: "
           f"{plan.global_seqs} sequences x {plan.block_size} = {plan.tokens_per_update:,} (per process "
           f"{plan.stop - plan.start} sequences in micro-batch(es) of {micro})")
    model, meta = run.raw_model, run.meta
    print0(f"model: {model.num_params() / 1e6:.2f}M parameters in the blocks, {model.num_params(False) / 1e6:.2f}M "
           f"in all; vocab {meta['vocab_size']} ({meta['tokenizer']}); data {run.train_data.path.parent.resolve()}")
    if cfg.init_from == "resume" and run.iter_num >= cfg.max_iters and not cfg.eval_only:
        print0(f"the checkpoint is at iteration {run.iter_num}, max_iters is {cfg.max_iters}: nothing to train "
               f"(raise --max_iters to continue)")


def main(argv: list[str], stop: StopRequest | None = None) -> None:
    cfg, ckpt = load_config(argv)
    procs = setup_processes(cfg)
    try:
        run_in_folder(cfg, ckpt, procs, stop or StopRequest())
    finally:  # the run (its DDP model holds the process group) is gone by now: see shutdown
        shutdown(procs)


def run_in_folder(cfg: TrainConfig, ckpt: dict | None, procs: Processes, stop: StopRequest) -> None:
    """Take the run folder, build the run, train; every reference to the run ends when this returns."""
    with RunFolder(cfg.out_dir, procs.master, cfg, read_only=cfg.eval_only) as folder:
        if ckpt is None and not cfg.eval_only:
            folder.check_fresh_start(cfg.overwrite)
        run = build_run(cfg, procs, ckpt)
        del ckpt
        describe(run)
        warn_if_slow(run)
        folder.start(run.cfg, run.evaluated_at, resumed=cfg.init_from == "resume")
        with stop as requests:
            train_loop(run, folder, requests)
        if not cfg.eval_only:
            print0(f"done: {run.ckpt_path} holds {run.saved}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
