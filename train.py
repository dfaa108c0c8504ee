"""Train a GPT on a prepared dataset, on CPU or GPU, in one process or many (DDP via torchrun).

    python train.py config/shakespeare_char.toml
    python train.py config/shakespeare_char.toml --max_iters=2000 --compile=false
    torchrun --standalone --nproc_per_node=8 train.py config/gpt2.toml
    python train.py config/finetune_shakespeare.toml     # finetune OpenAI's GPT-2 (init_from = "gpt2")
    python train.py --help                       # every key with its type, default and meaning

Configs are TOML files whose keys are the fields of `TrainConfig` below; `--key=value` overrides
them. Writes out_dir/ckpt.pt (model, optimizer, config, iteration, RNG and sampler state),
out_dir/metrics.jsonl (one line per evaluation) and out_dir/config.json (the resolved config).

Nothing lost: `--init_from=resume` continues bitwise (RNG of every process, sampler position, the
evaluation still due); SIGTERM or a first Ctrl-C saves a checkpoint after the current step and exits
0 (a second Ctrl-C quits at once); an update with a non-finite loss is skipped, and
`max_nonfinite_steps` of them in a row stop the run without saving; a fresh run will not replace an
existing out_dir/ckpt.pt unless given --overwrite=true.
"""

import contextlib
import dataclasses
import difflib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.distributed import destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from checkpoint import CHECKPOINT_NAME, load_checkpoint, load_weights, save_checkpoint
from cli import UserError, option, parse_config, resolve_device, run_main
from data import BatchSampler, load_dataset
import hf
from hf import is_pretrained_source
from model import GPT, GPTConfig
from optim import build_optimizer, set_learning_rate


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = option("out", "folder for ckpt.pt, metrics.jsonl and config.json")
    overwrite: bool = option(False, "let a fresh run (any init_from but resume) replace out_dir/ckpt.pt")
    dataset: str = option("shakespeare_char", "folder with train.bin/val.bin/meta.json, or a name under data/")
    init_from: str = option("scratch", "scratch: new weights; resume: continue from out_dir/ckpt.pt; "
                            "gpt2|gpt2-medium|gpt2-large|gpt2-xl: OpenAI's weights from the Hugging Face "
                            "hub; or a folder in the Hugging Face GPT-2 layout (needs a gpt2 dataset)")
    eval_interval: int = option(250, "evaluate (and maybe checkpoint) every this many iterations")
    eval_iters: int = option(200, "batches per split in each evaluation")
    eval_only: bool = option(False, "evaluate once and exit")
    log_interval: int = option(10, "print a training line every this many iterations")
    always_save_checkpoint: bool = option(True, "save at every evaluation, not only when val loss improves")
    # data
    batch_size: int = option(12, "sequences per micro-batch (per process)")
    block_size: int = option(1024, "context length in tokens")
    gradient_accumulation_steps: int = option(1, "micro-batches per update, summed over all processes")
    # model (see model.GPTConfig for each option)
    n_layer: int = option(12, "transformer blocks")
    n_head: int = option(12, "attention heads per block")
    n_embd: int = option(768, "residual stream width")
    dropout: float = option(0.0, "dropout probability while training (may differ from pretrained weights)")
    bias: bool = option(True, "biases in Linear layers and LayerNorms")
    pos_embedding: str = option("learned", "position encoding", ["learned", "rope"])
    norm: str = option("layernorm", "normalisation layer", ["layernorm", "rmsnorm"])
    qk_norm: bool = option(False, "normalise queries and keys per head")
    mlp: str = option("gelu", "MLP activation", ["gelu", "relu2", "swiglu"])
    tie_embeddings: bool = option(True, "share the token embedding with the output head")
    logit_softcap: float = option(0.0, "if > 0, cap logits smoothly at +-this value")
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
    dtype: str = option("auto", "compute precision; auto: bfloat16 on GPUs that have it (else float16), "
                        "bfloat16 on CPUs with bf16 matrix units (AMX or AVX512-BF16), float32 on other CPUs",
                        ["auto", "float32", "bfloat16", "float16"])
    compile: bool = option(False, "torch.compile the model")
    threads: int = option(0, "CPU threads for torch (0: torch's default, one per core); on a CPU shared "
                          "with other jobs fewer threads can be much faster")
    seed: int = option(1337, "random seed for weights, dropout and batches")
    # logging
    wandb_log: bool = option(False, "log to Weights & Biases (works with WANDB_MODE=offline)")
    wandb_project: str = option("gpt", "wandb project")
    wandb_run_name: str = option("run", "wandb run name")

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The GPTConfig these keys describe (every GPTConfig field except vocab_size is a key here)."""
        keys = {f.name for f in dataclasses.fields(GPTConfig)} & {f.name for f in dataclasses.fields(self)}
        try:
            return GPTConfig(vocab_size=vocab_size, **{k: getattr(self, k) for k in keys})
        except ValueError as e:
            raise UserError(f"invalid model shape: {e}") from None


# ----------------------------------------------------------------------------- setup helpers

def print0(*args, **kwargs):
    """Print from the first process only."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


def cpu_has_bf16_units() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AMX-BF16 or AVX512-BF16).

    Elsewhere bf16 matmuls are emulated and slower than float32, so `dtype=auto` keeps float32.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:  # not Linux: ask oneDNN, which answers for the CPU it runs on
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_bf16_units():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Dense bf16/fp16 tensor-core peak of known GPUs (FLOP/s); None where unknown (MFU omitted)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    table = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
             "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12}
    for key, peak in table.items():
        if key in name:
            if "H100" in name and "PCIe" in name:
                peak = 756e12
            return peak if dtype != torch.float32 else peak / 2  # float32 runs as TF32
    return None


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
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


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
        self.run = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=dataclasses.asdict(cfg))

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self) -> None:
        self.run.finish()


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def checkpoint_state(model, optimizer, scaler, cfg: TrainConfig, meta: dict, *, iter_num: int = 0,
                     evaluated_at: int = -1, best_val_loss: float = float("inf"), rng_states: list | None = None,
                     sampler_state: dict | None = None, pretrained_from: str | None = None,
                     elapsed_s: float = 0.0) -> dict:
    """The dict ckpt.pt holds. model: the uncompiled, unwrapped module (its config is saved with it).

    The defaults describe a model that has not trained yet (tests and benchmarks save such ones).
    """
    rng_states = rng_states or [rng_state(torch.device("cpu"))]
    return {"format_version": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "model_config": dataclasses.asdict(model.config),
            "train_config": dataclasses.asdict(cfg), "meta": meta, "iter_num": iter_num,
            "evaluated_at": evaluated_at, "best_val_loss": best_val_loss, "rng": rng_states[0],
            "rng_per_rank": rng_states, "sampler": sampler_state or {},
            "pretrained_from": pretrained_from, "elapsed_s": elapsed_s}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng_states(device: torch.device, ddp: bool) -> list[dict]:
    """Every process's RNG state, in rank order (a collective under DDP: call it on all ranks)."""
    if not ddp:
        return [rng_state(device)]
    states = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, rng_state(device))
    return states


class StopRequest:
    """SIGTERM or a first Ctrl-C asks the loop to stop after the current step; a second Ctrl-C quits.

    The handler only records the request (and writes a note with os.write, which is safe inside a
    signal handler); the loop checks `requested` once per step, saves a checkpoint and returns.
    """

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

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
            os.write(2, f"\n{self.signal_name} received: finishing this step, then saving a checkpoint "
                        f"and exiting{again}\n".encode())


def check_gpt2_dataset(meta: dict, dataset: str, init_from: str) -> None:
    """Pretrained GPT-2 weights speak GPT-2 BPE: the dataset must be tokenized with it."""
    if meta["tokenizer"] != "gpt2":
        raise UserError(f"init_from={init_from} needs a dataset tokenized with GPT-2 BPE, but {dataset} uses "
                        f"the {meta['tokenizer']} tokenizer; prepare one with --tokenizer=gpt2 "
                        f"(e.g. python prepare/shakespeare.py)")


def with_pretrained_shape(cfg: TrainConfig, model_config: GPTConfig) -> TrainConfig:
    """cfg with its model keys replaced by the pretrained model's (printed, and saved in config.json)."""
    shape = {k: getattr(model_config, k) for k in ("n_layer", "n_head", "n_embd", "bias", "pos_embedding",
                                                  "norm", "qk_norm", "mlp", "tie_embeddings", "logit_softcap")}
    print0(f"init_from={cfg.init_from}: model shape from the pretrained config (n_layer={shape['n_layer']}, "
           f"n_head={shape['n_head']}, n_embd={shape['n_embd']}, {model_config.block_size} positions, vocab "
           f"{model_config.vocab_size}); the config's shape keys are ignored, dropout={cfg.dropout} applies")
    return dataclasses.replace(cfg, **shape)


def check_resume_compatible(saved: dict, model_config: GPTConfig, ckpt_path: Path) -> None:
    """Resuming may change schedule keys, never the model's shape."""
    current = dataclasses.asdict(model_config)
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in current.items() if saved.get(k) != v]
    if changed:
        raise UserError(f"cannot resume from {ckpt_path}: the model differs from the checkpoint's "
                        f"({'; '.join(changed)}); use the checkpoint's values or start a new out_dir")


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


# ----------------------------------------------------------------------------- training

def main(argv: list[str]) -> None:
    cfg = parse_config(TrainConfig, argv, __doc__)
    if not cfg.init_from:
        raise UserError("bad value for init_from: ''; choose scratch, resume, gpt2 or a Hugging Face folder")
    known = ["scratch", "resume", *hf.PRETRAINED]
    if cfg.init_from not in known and not Path(cfg.init_from).exists():  # a typo, not a folder
        close = difflib.get_close_matches(cfg.init_from, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UserError(f"bad value for init_from: {cfg.init_from!r} is neither {', '.join(known)} nor an "
                        f"existing Hugging Face folder{hint}")
    for key in ("batch_size", "block_size", "gradient_accumulation_steps", "eval_iters", "eval_interval",
                "log_interval", "max_nonfinite_steps"):
        if getattr(cfg, key) < 1:
            raise UserError(f"bad value for {key}: {getattr(cfg, key)} (must be at least 1)")
    if cfg.max_iters < 0:
        raise UserError(f"bad value for max_iters: {cfg.max_iters} (must be >= 0)")
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    if cfg.init_from != "resume" and ckpt_path.exists() and not cfg.overwrite:
        raise UserError(f"{ckpt_path} already exists: continue that run with --init_from=resume, train into "
                        f"a new --out_dir, or pass --overwrite=true to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"out_dir {out_dir} is a file, not a folder; choose another --out_dir")

    # --- processes and device
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, world_size = 0, 1
    device = resolve_device(cfg.device)
    if cfg.threads < 0:
        raise UserError(f"bad value for threads: {cfg.threads} (0 means torch's default)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if ddp:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if cfg.gradient_accumulation_steps % world_size:
            raise UserError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be a "
                            f"multiple of the number of processes ({world_size})")
    master = rank == 0
    local_accum = cfg.gradient_accumulation_steps // world_size
    dtype = resolve_dtype(cfg.dtype, device)
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bfloat16 support: use --dtype=float16")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = (contextlib.nullcontext() if dtype == torch.float32
                else torch.autocast(device_type=device.type, dtype=dtype))
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    print0(f"device {device}, dtype {str(dtype).removeprefix('torch.')}, {world_size} process(es); "
           f"tokens per iteration: {cfg.gradient_accumulation_steps} accumulation x {cfg.batch_size} "
           f"batch x {cfg.block_size} block = {tokens_per_iter:,}")

    # --- data
    data_dir, meta = load_dataset(cfg.dataset)
    train_data = BatchSampler(data_dir / "train.bin", meta["dtype"], cfg.block_size, cfg.seed, device)
    val_data = BatchSampler(data_dir / "val.bin", meta["dtype"], cfg.block_size, cfg.seed + 1, device)

    # --- model, optimizer, state
    model_config = None
    pretrained = None  # our GPT holding Hugging Face GPT-2 weights, when init_from names some
    pretrained_source = None  # the init_from that gave the weights, kept through resumes
    if is_pretrained_source(cfg.init_from):
        check_gpt2_dataset(meta, cfg.dataset, cfg.init_from)
        pretrained = hf.load_pretrained(cfg.init_from, dropout=cfg.dropout)
        model_config, pretrained_source = pretrained.config, cfg.init_from
        if meta["vocab_size"] > model_config.vocab_size:
            raise UserError(f"dataset {cfg.dataset} has {meta['vocab_size']} token ids but {cfg.init_from} knows "
                            f"only {model_config.vocab_size}; use a dataset prepared with the gpt2 tokenizer")
        cfg = with_pretrained_shape(cfg, model_config)
    torch.manual_seed(cfg.seed)
    iter_num, best_val_loss, ckpt, resumed_seconds = 0, float("inf"), None, 0.0
    evaluated_at = -1  # the last iteration whose evaluation is in metrics.jsonl
    if cfg.init_from == "resume":
        if not ckpt_path.is_file():
            raise UserError(f"init_from=resume but there is no checkpoint at {ckpt_path}: "
                            f"train with --init_from=scratch first or point --out_dir at the run")
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        pretrained_source = ckpt.get("pretrained_from")
        if pretrained_source:  # a finetune: its shape came from the pretrained config, not the keys
            model_config = GPTConfig(**{**ckpt["model_config"], "dropout": cfg.dropout})
            cfg = with_pretrained_shape(cfg, model_config)
        model_config = model_config or cfg.model_config(meta["vocab_size"])
        check_resume_compatible(ckpt["model_config"], model_config, ckpt_path)
        if ckpt.get("meta", {}).get("vocab_size") not in (None, meta["vocab_size"]):
            raise UserError(f"cannot resume: the checkpoint was trained on a vocabulary of "
                            f"{ckpt['meta']['vocab_size']} tokens, dataset {cfg.dataset} has {meta['vocab_size']}")
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        evaluated_at = ckpt.get("evaluated_at", iter_num)  # a preempted run saves before evaluating
        resumed_seconds = ckpt.get("elapsed_s", 0.0)  # time already spent from a max_seconds budget
    model_config = model_config or cfg.model_config(meta["vocab_size"])
    if cfg.block_size > model_config.block_size:
        raise UserError(f"block_size {cfg.block_size} exceeds the {model_config.block_size} positions of the "
                        f"pretrained model; use --block_size={model_config.block_size} or less")
    model = (pretrained if pretrained is not None else GPT(model_config)).to(device)
    del pretrained
    if ckpt is not None:
        load_weights(model, ckpt["model"], ckpt_path)
    print0(f"model: {model.num_params() / 1e6:.2f}M parameters (non-embedding), vocab {meta['vocab_size']} "
           f"({meta['tokenizer']})")
    optimizer = build_optimizer(model, cfg, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt and scaler.is_enabled():
            scaler.load_state_dict(ckpt["scaler"])
        train_data.load_state_dict(ckpt["sampler"])
        if len(ckpt.get("rng_per_rank", [])) == world_size:  # each process continues its own dropout stream
            set_rng_state(ckpt["rng_per_rank"][rank], device)
        elif master and "rng" in ckpt:
            set_rng_state(ckpt["rng"], device)
        else:  # a different number of processes than the run saved: fresh streams
            torch.manual_seed(cfg.seed + rank + iter_num)
        print0(f"resumed from {ckpt_path} at iteration {iter_num} (best val loss {best_val_loss:.4f})")
        del ckpt
    elif ddp:
        torch.manual_seed(cfg.seed + rank)  # same weights were made above; dropout differs per rank

    raw_model = model  # the uncompiled, unwrapped module: its state dict is what we save
    if cfg.compile:
        print0("compiling the model (takes a minute)...")
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    if master:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            probe = out_dir / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write to out_dir {out_dir}: {e.strerror or e}; choose another --out_dir") from None
        if not cfg.eval_only:  # an evaluation leaves the run's files as they are
            (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    logger = WandbLogger(cfg) if (cfg.wandb_log and master) else NullLogger()
    peak = peak_flops(device, dtype)
    flops_per_iter = raw_model.flops_per_token(cfg.block_size) * tokens_per_iter

    @torch.no_grad()
    def estimate_loss() -> dict:
        """Mean loss over eval_iters fixed batches per split, shared out over the processes."""
        model.eval()
        losses = {}
        for split, sampler in (("train", train_data), ("val", val_data)):
            eval_rng = np.random.Generator(np.random.PCG64(cfg.seed + 7))  # same batches every time
            offsets = eval_rng.integers(0, sampler.num_tokens - cfg.block_size, size=(cfg.eval_iters, cfg.batch_size))
            total = torch.zeros((), device=device)
            for k in tqdm(range(rank, cfg.eval_iters, world_size), desc=f"eval {split}", leave=False,
                          disable=not master or not sys.stderr.isatty()):
                x, y = sampler.batch(offsets[k])
                with autocast:
                    _, loss = raw_model(x, y)
                total += loss.float()
            if ddp:
                torch.distributed.all_reduce(total)
            losses[split] = total.item() / cfg.eval_iters
        model.train()
        return losses

    def save(why: str) -> bool:
        """Checkpoint the current state (call on every rank); refuses non-finite weights."""
        if not all(torch.isfinite(p).all() for p in raw_model.parameters()):  # same weights on every rank
            print0(f"not saving a checkpoint at iteration {iter_num} ({why}): the weights are not finite; "
                   f"{ckpt_path} is kept")
            return False
        rng_states = gather_rng_states(device, ddp)  # collective under DDP
        if master:
            state = checkpoint_state(raw_model, optimizer, scaler, cfg, meta, iter_num=iter_num,
                                     evaluated_at=evaluated_at, best_val_loss=best_val_loss,
                                     rng_states=rng_states, sampler_state=sampler_state,
                                     pretrained_from=pretrained_source, elapsed_s=elapsed)
            save_checkpoint(state, ckpt_path)
            print0(f"saved checkpoint to {ckpt_path} (iteration {iter_num}, {why})")
        return True

    def next_batches():
        """This process's micro-batches for one update, cut from the global batch every rank draws."""
        offsets = train_data.draw_offsets(cfg.gradient_accumulation_steps * cfg.batch_size)
        mine = offsets.reshape(world_size, local_accum, cfg.batch_size)[rank]  # (local_accum, B)
        return [train_data.batch(row) for row in mine]

    # --- the loop
    metrics_path = out_dir / "metrics.jsonl"
    if master and cfg.init_from != "resume" and metrics_path.exists():
        metrics_path.unlink()
    if master and cfg.init_from == "resume" and not cfg.eval_only:
        trim_metrics(metrics_path, evaluated_at)
    if cfg.init_from == "resume" and iter_num >= cfg.max_iters and not cfg.eval_only:
        print0(f"the checkpoint is at iteration {iter_num}, max_iters is {cfg.max_iters}: nothing to train "
               f"(raise --max_iters to continue)")
    start_time = time.time() - resumed_seconds  # elapsed counts the whole loop, evaluations included
    sampler_state = train_data.state_dict()  # as of before the pending batches were drawn
    batches = next_batches()
    last_log_time, last_log_iter = time.time(), iter_num
    loss_sum, finite_steps = torch.zeros((), device=device), 0  # over the updates since the last log line
    nonfinite_run = 0  # consecutive updates skipped because the loss was not finite
    stop = StopRequest()
    with stop:
        while True:
            elapsed = time.time() - start_time
            if ddp and cfg.max_seconds > 0:  # every rank must take the same LR and stop at the same step
                elapsed_t = torch.tensor(elapsed, dtype=torch.float64, device=device)
                torch.distributed.broadcast(elapsed_t, src=0)
                elapsed = elapsed_t.item()
            out_of_time = cfg.max_seconds > 0 and elapsed >= cfg.max_seconds
            finished = iter_num >= cfg.max_iters or out_of_time
            lr = learning_rate_at(iter_num, cfg, elapsed)
            set_learning_rate(optimizer, lr)

            due = iter_num % cfg.eval_interval == 0 or finished or cfg.eval_only
            if due and (iter_num != evaluated_at or cfg.eval_only):
                losses = estimate_loss()
                evaluated_at = iter_num
                elapsed = time.time() - start_time
                print0(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                       f"{elapsed:.1f}s")
                if master and not cfg.eval_only:
                    record = {"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"],
                              "lr": lr, "elapsed_s": round(elapsed, 3)}
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    logger.log({"train/loss": losses["train"], "val/loss": losses["val"], "lr": lr}, step=iter_num)
                improved = losses["val"] < best_val_loss
                best_val_loss = min(best_val_loss, losses["val"])
                if iter_num > 0 and (improved or cfg.always_save_checkpoint) and not cfg.eval_only:
                    if math.isfinite(losses["val"]):
                        save("evaluation")
                    else:
                        print0(f"not saving a checkpoint: the val loss is {losses['val']}; {ckpt_path} is kept")
                last_log_time = time.time()  # evaluation time is not training time
            if finished or cfg.eval_only:
                if out_of_time:
                    print0(f"time budget of {cfg.max_seconds:g}s spent after {iter_num} iterations")
                break

            # one update: forward/backward over the micro-batches, then clip and step
            step_loss = torch.zeros((), device=device)
            for micro_step, (x, y) in enumerate(batches):
                sync = micro_step == local_accum - 1
                no_sync = model.no_sync() if (ddp and not sync) else contextlib.nullcontext()
                with no_sync:
                    with autocast:
                        _, loss = model(x, y)
                        loss = loss / local_accum
                    scaler.scale(loss).backward()
                step_loss += loss.detach().float()
            sampler_state = train_data.state_dict()
            batches = next_batches()  # read the next batch while the device finishes this one
            grad_norm = None
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            # One device sync per update decides whether to step. A non-finite loss skips the update;
            # in fp16 an inf gradient is the GradScaler's business (it skips and lowers its scale), in
            # other precisions a non-finite gradient norm is skipped like a non-finite loss.
            bad = ~torch.isfinite(step_loss)
            if grad_norm is not None and not scaler.is_enabled():
                bad = bad | ~torch.isfinite(grad_norm)
            if ddp:  # every rank must agree to skip and to stop: one tiny all_reduce per update
                flags = torch.stack([bad.float(), torch.tensor(float(stop.requested), device=device)])
                torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
                skip, stop_now = (v > 0 for v in flags.tolist())
            else:
                skip, stop_now = bool(bad), stop.requested
            if skip:
                nonfinite_run += 1
                what = f"the loss is {step_loss.item()}"
                if math.isfinite(step_loss.item()):  # the loss was fine, the gradient was not (or another rank's)
                    what = "the gradient is not finite" if not ddp else "the loss or gradient is not finite on a process"
                print0(f"iter {iter_num + 1}: {what}; skipped this update ({nonfinite_run} in a row, "
                       f"stopping at {cfg.max_nonfinite_steps})")
                optimizer.zero_grad(set_to_none=True)
                if grad_norm is not None and scaler.is_enabled():
                    scaler.update()  # unscale_ ran; update() resets the scaler for the next step
                if nonfinite_run >= cfg.max_nonfinite_steps:
                    raise UserError(f"the loss was not finite for {nonfinite_run} updates in a row (up to "
                                    f"iteration {iter_num + 1}); stopped without saving, so the last good "
                                    f"checkpoint stays in {ckpt_path}; lower --learning_rate or check the data")
            else:
                nonfinite_run = 0
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                loss_sum += step_loss
                finite_steps += 1
            iter_num += 1

            if iter_num % cfg.log_interval == 0 and master:
                loss_value = loss_sum.item() / finite_steps if finite_steps else math.nan  # .item() waits for the device
                now = time.time()
                dt = (now - last_log_time) / (iter_num - last_log_iter)
                line = (f"iter {iter_num}: loss {loss_value:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
                        f"{tokens_per_iter / dt:,.0f} tok/s")
                if peak:
                    line += f", mfu {100 * flops_per_iter / dt / peak:.1f}%"
                print0(line)
                logger.log({"train/loss_step": loss_value, "ms_per_iter": dt * 1000}, step=iter_num)
                last_log_time, last_log_iter = now, iter_num
                loss_sum, finite_steps = torch.zeros((), device=device), 0

            if stop_now:  # SIGTERM or Ctrl-C: keep this step's work and leave cleanly
                save("stop requested")
                print0(f"stopped by {stop.signal_name or 'a stop signal'} at iteration {iter_num}; "
                       f"continue with --init_from=resume --out_dir={out_dir}")
                break

    logger.finish()
    if ddp:
        destroy_process_group()


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
