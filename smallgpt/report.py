"""What a training run prints: its start lines, the slow-CPU warning, training lines and evaluation progress.

    window = MetricWindow(iter_num)           # the updates since the last training line
    window.add({"loss": loss, "grad_norm": g})   # each update's metrics: scalar tensors, summed on the device
    means = window.means()                    # {"loss": 2.31, "grad_norm": 0.42}: one device sync per line
    print(training_line(record, where, eta))  # "iter 10/100: loss 2.3100, grad_norm 0.4200, lr ..., eta 1m05s"
    time_left(iter_num, max_iters, eval_interval, step_s, eval_s, budget_left)   # the ETA's seconds
    describe(run, state); log_training(run, state, window, lr, eval_seconds)   # what train.py calls

Only rank 0 prints (distributed.print0). Nothing here decides anything about the training but
`report_skipped`, which stops a run after max_nonfinite_steps skipped updates in a row; the functions
that take `run` read a train.Run (and `state` a train.LoopState), nothing else of train.py.
"""

import contextlib
import math
import os
import sys
import tempfile
import threading
import time

import torch

from smallgpt import device, progress
from smallgpt.distributed import print0
from smallgpt.errors import UserError


class MetricWindow:
    """Each update's metrics summed until the next training line. They stay tensors on the device, so an
    update never waits for the device; `means()` syncs once per line. A skipped update (its loss or
    gradient norm not finite) is counted, not summed."""

    def __init__(self, iter_num: int):
        self.restart(iter_num)

    def restart(self, iter_num: int) -> None:
        """Start a new window at iter_num (also after evaluations and compilation: they are not training time)."""
        self.sums: dict[str, torch.Tensor] = {}
        self.updates, self.skipped, self.start_iter, self.started = 0, 0, iter_num, time.time()

    def add(self, metrics: dict[str, torch.Tensor], skipped: bool = False) -> None:
        if skipped:
            self.skipped += 1
            return
        for name, value in metrics.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.updates += 1

    def means(self) -> dict[str, float]:
        """The mean of each metric over the window's updates that were not skipped (NaN when every one
        was), and "skipped": how many were, when any."""
        if not self.updates:
            means = {name: math.nan for name in self.sums} or {"loss": math.nan}
        else:
            means = {name: float(total) / self.updates for name, total in self.sums.items()}
        return {**means, "skipped": self.skipped} if self.skipped else means


def format_metric(value: float) -> str:
    """4 decimals for the usual range of losses and norms, else 3 significant digits in e-notation; a
    count as it is."""
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e5 or not math.isfinite(value) else f"{value:.3e}"


def training_line(record: dict, where: str, eta: float) -> str:
    """The training line of a "train" record: its metrics, then lr, speed, MFU (on known GPUs), peak device
    memory (on CUDA) and the ETA."""
    run_keys = ("iter", "kind", "bits_per_byte", "lr", "ms_per_iter", "tok_per_s", "mfu", "peak_gb", "elapsed_s")
    fields = [f"{name} {format_metric(value)}" for name, value in record.items() if name not in run_keys]
    if "bits_per_byte" in record:  # beside the loss
        fields.insert(1, f"bits/byte {record['bits_per_byte']:.4f}")
    fields += [f"lr {record['lr']:.2e}", f"{record['ms_per_iter']:.1f} ms/iter", f"{record['tok_per_s']:,.0f} tok/s"]
    if "mfu" in record:
        fields.append(f"mfu {100 * record['mfu']:.1f}%")
    if "peak_gb" in record:
        fields.append(f"peak {record['peak_gb']:.1f} GB")
    return f"iter {where}: {', '.join(fields)}, eta {format_seconds(eta)}"


def evaluation_line(iter_num: int, results: dict, elapsed_s: float, seconds: float) -> str:
    """"step 800: train loss 3.1024, val loss 3.2017, train 1.5101 / val 1.5573 bits/byte, 101.2s (evaluation
    2.9s)": each result, the splits' bits per byte where the tokenizer gives them, the run's time and the
    evaluation's."""
    fields = [f"{name.replace('_', ' ')} {value:.4f}" for name, value in results.items()
              if not name.endswith("_bits_per_byte")]
    bpb = [f"{name.removesuffix('_bits_per_byte')} {value:.4f}" for name, value in results.items()
           if name.endswith("_bits_per_byte")]
    return (f"step {iter_num}: {', '.join(fields)}" + (f", {' / '.join(bpb)} bits/byte" if bpb else "")
            + f", {elapsed_s:.1f}s (evaluation {seconds:.1f}s)")


def time_left(iter_num: int, max_iters: int, eval_interval: int, step_s: float, eval_s: float,
              budget_left: float | None = None) -> float:
    """Seconds until the run ends: the updates and evaluations still to do or, with a time budget,
    what is left of it (then the last evaluation) if that ends the run first."""
    updates = max(0, max_iters - iter_num)
    # evaluations at the multiples of eval_interval in [iter_num, max_iters] (the one at iter_num is still
    # to come when the training line is printed), and the last one at max_iters if it is not such a multiple
    evaluations = max(0, max_iters // eval_interval - (iter_num - 1) // eval_interval) \
        + (max_iters % eval_interval != 0)
    left = updates * step_s + evaluations * eval_s
    if budget_left is not None:
        budget = max(0.0, budget_left) + eval_s
        left = budget if math.isnan(left) else min(left, budget)
    return left


def format_seconds(seconds: float) -> str:
    """45s, 3m07s, 2h05m; ? when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def describe(run, state) -> None:
    """What a run (train.Run, at train.LoopState `state`) is about to do: device, precision, batch
    arithmetic, model size, data, when a time budget ends it; and, on a CPU, a warning when its updates
    or evaluations will be slow."""
    procs, plan, model, cfg = run.procs, run.plan, run.model, run.cfg
    # DDP wraps the compiled model; FSDP's is compiled piece by piece (GPT.compile_pieces)
    compiled = getattr(run.train_model, "module", run.train_model) is not model or model.pieces_compiled
    micro = "+".join(map(str, plan.micro_sizes)) if len(set(plan.micro_sizes)) > 1 else \
        f"{len(plan.micro_sizes)} x {plan.micro_sizes[0]}"
    where = f" ({device.cpu_class()})" if procs.device.type == "cpu" else ""
    print0(f"device {procs.device}{where}, dtype {str(procs.dtype).removeprefix('torch.')}, {procs.world_size} "
           f"process(es){', fsdp' if run.sharded else ''}, compile {'on' if compiled else 'off'}; "
           f"tokens per update: {plan.global_seqs} sequences x {plan.block_size} = {plan.tokens_per_update:,} (per "
           f"process {plan.stop - plan.start} sequences in micro-batch(es) of {micro})")
    print0(f"model: {model.num_params() / 1e6:.2f}M parameters in the blocks, {model.num_params(False) / 1e6:.2f}M "
           f"in all; vocab {run.meta['vocab_size']} ({run.meta['tokenizer']}); data "
           f"{run.splits['train'].path.parent.resolve()}")
    if cfg.parallel == "fsdp" and not procs.ddp:
        print0("parallel=fsdp without torchrun: this runs as one process holding the whole model (start it with "
               "torchrun --nproc_per_node=N to shard it over N processes)")
    warn_if_slow(procs, model.flops_per_token(plan.block_size), plan, cfg)
    if cfg.init_from == "resume" and state.iter_num >= cfg.max_iters and not cfg.eval_only:
        print0(f"the checkpoint is at iteration {state.iter_num}, max_iters is {cfg.max_iters}: nothing to train "
               f"(raise --max_iters to continue)")
    if cfg.max_seconds and not cfg.eval_only:
        left = max(0.0, cfg.max_seconds - state.elapsed_s)
        print0(f"time budget {cfg.max_seconds:g}s ({format_seconds(left)} left), the last evaluation included: "
               f"ends at about {time.strftime('%H:%M:%S', time.localtime(time.time() + left))}")


def log_training(run, state, window: MetricWindow, lr: float, eval_seconds: float) -> None:
    """A training line, and its "train" record in metrics.jsonl and wandb (rank 0): the window's mean
    metrics, lr, speed, MFU on known GPUs, and the time left. run: train.Run; state: train.LoopState."""
    cfg, procs, plan = run.cfg, run.procs, run.plan
    seconds = (time.time() - window.started) / max(1, state.iter_num - window.start_iter)
    if procs.master:
        record = {"iter": state.iter_num, "kind": "train", **window.means(), "lr": lr, "ms_per_iter": 1000 * seconds,
                  "tok_per_s": plan.tokens_per_update / seconds, "elapsed_s": round(state.elapsed_s, 3)}
        if "train" in run.bytes_per_token and "loss" in record:  # estimated from the train split's evaluation windows
            record["bits_per_byte"] = record["loss"] / math.log(2) / run.bytes_per_token["train"]
        utilization = device.mfu(run.model.flops_per_token(plan.block_size) * plan.tokens_per_update, seconds,
                                 procs.device, procs.dtype, procs.world_size)
        if utilization is not None:
            record["mfu"] = utilization
        if procs.device.type == "cuda":  # what the memory plan estimated, measured (rank 0's device)
            record["peak_gb"] = torch.cuda.max_memory_allocated(procs.device) / 1e9
        budget = cfg.max_seconds - state.elapsed_s if cfg.max_seconds else None
        where = f"{state.iter_num} ({state.elapsed_s:.0f}/{cfg.max_seconds:g}s)" if budget is not None else \
            f"{state.iter_num}/{cfg.max_iters}"
        eta = time_left(state.iter_num, cfg.max_iters, cfg.eval_interval, seconds, eval_seconds, budget)
        print0(training_line(record, where, eta))
        run.folder.record(record)
    window.restart(state.iter_num)


COMPILE_NOTE_EVERY_S = 10.0  # while torch.compile works, a line this often: a first run never looks hung


@contextlib.contextmanager
def compiling(run, module, what: str, first: bool):
    """Around the first call of a compiled module (train.Run's train_model or eval_model): a line before
    torch.compile starts saying what happens and how long it may take, one every COMPILE_NOTE_EVERY_S
    while it lasts, and how long it took. Anything else (eager modules, later calls): nothing."""
    compiled = getattr(module, "module", module) is not run.model  # (DDP wraps the compiled model)
    if not (first and compiled and run.procs.master):
        yield
        return
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "torchinductor_*")
    print0(f"compiling the model for {what} (torch.compile): on a first run this takes a minute or more on a "
           f"laptop-class CPU; later runs reuse its cache ({cache}) and take seconds")
    started, done = time.time(), threading.Event()

    def note():
        while not done.wait(COMPILE_NOTE_EVERY_S):
            print0(f"  still compiling, {time.time() - started:.0f}s so far")

    thread = threading.Thread(target=note, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        print0(f"compiled {what} in {time.time() - started:.1f}s")


def batch_origin(cfg, sources: dict) -> None:
    """One line when a command-line batch_size or block_size meets tokens_per_update from a config file
    (sources: where each key came from, cli.read_overrides's): the file's tokens_per_update keeps the
    update's size, the command line's batch_size is only the micro-batch. (nanoGPT users expect
    batch_size x gradient_accumulation_steps sequences: --tokens_per_update=0 gives that.)"""
    source = sources.get("tokens_per_update")
    given = [k for k in ("batch_size", "block_size") if sources.get(k) == "the command line"]
    if not cfg.tokens_per_update or source in (None, "the command line") or not given:
        return
    block_size = cfg.model.block_size
    what = {"batch_size": f"--batch_size={cfg.batch_size} is the micro-batch, not the update",
            "block_size": f"--block_size={block_size} makes it {cfg.tokens_per_update // block_size:,} sequences "
                          f"of {block_size}"}
    print0(f"tokens per update: {cfg.tokens_per_update:,} from tokens_per_update in {source}; "
           f"{'; '.join(what[k] for k in given)} (--tokens_per_update=0 makes an update batch_size x "
           f"gradient_accumulation_steps sequences, as nanoGPT counts it)")


SLOWEST_CPU_FLOPS = 5e9  # matmul FLOP/s of a slow CPU: an old laptop core, or two shared with busy programs


def warn_if_slow(procs, flops_per_token: float, plan, cfg) -> None:
    """On a CPU, one line before the first step with the expected time per update and per evaluation
    (a forward pass is a third of training's FLOPs), from a matmul rate measured here: when an update is
    several micro-batches per process (then saying which key sets its size), or when an update or an
    evaluation will be long (then saying what to lower). plan: data.BatchPlan; cfg: train.TrainConfig."""
    if procs.device.type != "cpu" or not procs.master:
        return
    update_flops = flops_per_token * plan.tokens_per_update
    eval_flops = flops_per_token / 3 * 2 * cfg.eval_iters * cfg.batch_size * plan.block_size  # both splits
    if len(plan.micro_sizes) == 1 and max(update_flops / 2, eval_flops / 60) < SLOWEST_CPU_FLOPS:
        return  # nothing to say even on the slowest CPU: spare the measurement's ~0.3 s
    rate = device.measure_matmul_flops(procs.device, procs.dtype, seconds=0.2)
    per_update, per_eval = update_flops / rate, eval_flops / rate
    parts = [f"this CPU does about {rate / 1e9:.0f} GFLOP/s: expect roughly {format_seconds(per_update)} per update "
             f"and {format_seconds(per_eval)} per evaluation"]
    if len(plan.micro_sizes) > 1:
        key = "tokens_per_update" if cfg.tokens_per_update else "gradient_accumulation_steps"
        parts.append(f"an update is {len(plan.micro_sizes)} micro-batches of up to {max(plan.micro_sizes)} sequences"
                     f"{' per process' if procs.world_size > 1 else ''} ({plan.tokens_per_update:,} tokens, set by "
                     f"{key}={getattr(cfg, key)}): lower {key} for quicker updates")
    if per_update > 2 or per_eval > 60:
        parts.append("for a quicker run lower n_layer, n_embd, block_size or batch_size (and eval_iters), or start "
                     "from config/quickstart_cpu.toml")
    if len(parts) > 1:
        print0("; ".join(parts))


class EvalProgress:
    """Evaluation progress on stdout, beside the training lines: a bar on a terminal; in a log, a
    plain line every 10 s (and a closing one) only when an evaluation takes that long."""

    def __init__(self, total: int, master: bool):
        self.bar = progress.progress(total, desc="eval", unit="batch", file=sys.stdout) if master else None

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self, finished: bool = True) -> None:
        if isinstance(self.bar, progress.PlainProgress) and (self.bar.last == self.bar.start or not finished):
            self.bar.abandon()  # a short evaluation: its result line says enough; an abandoned one is not done
        elif self.bar is not None:
            self.bar.close()


def report_skipped(run, state, loss: float, in_a_row: int) -> None:
    """Say why an update was skipped; stop the run (without saving) after max_nonfinite_steps in a row."""
    what = f"the loss is {loss}"
    if math.isfinite(loss):  # the loss was fine, the gradient was not (or another rank's)
        what = "the loss or gradient is not finite on a process" if run.procs.ddp else "the gradient is not finite"
        if run.scaler.is_enabled():  # float16: inf gradients, which the scaler answers by halving its scale
            what += f" (float16's loss scale is now {run.scaler.get_scale():g})"
    print0(f"iter {state.iter_num}: {what}; skipped this update ({in_a_row} in a row, stopping at "
           f"{run.cfg.max_nonfinite_steps})")
    if in_a_row >= run.cfg.max_nonfinite_steps:
        raise UserError(f"the loss was not finite for {in_a_row} updates in a row (up to iteration {state.iter_num}); "
                        f"stopped without saving, so the last good checkpoint stays in {run.folder.ckpt_path}; "
                        f"lower --learning_rate or check the data")
