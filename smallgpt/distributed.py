"""The processes of a run: one, or several under torchrun (DDP), and what they must agree on.

    procs = setup_processes("auto", "auto", threads=0)  # under torchrun: joins the process group
    print0("printed by the first process only")
    skip, stop = any_rank([skip, stop], procs)          # one all-reduce: True where any rank said True
    elapsed, spent = rank0_values([elapsed, spent], procs)  # every rank takes rank 0's numbers
    with gradient_sync(model, last_micro_batch): loss.backward()   # DDP's no_sync, FSDP's one sync per update
    shutdown(procs)

Under torchrun (RANK, WORLD_SIZE and LOCAL_RANK set) each process joins one process group: NCCL on
GPUs (one GPU per process, LOCAL_RANK), gloo on CPUs. Every collective must be made by every rank the
same number of times, or the run hangs; so decisions that depend on one rank's state (a signal, a
non-finite loss, a timer) are agreed with `any_rank` at fixed points of the loop.
"""

import contextlib
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Imported before any process group exists, on purpose: torch.distributed.nn.functional evaluates
# `group=group.WORLD` into default arguments at import, and DDP imports it (through torch._dynamo)
# after init_process_group, which would keep the group alive past destroy_process_group (shutdown).
import torch.distributed.nn  # noqa: F401

from smallgpt.cli import usable_threads
from smallgpt.device import enable_tf32, repeatable_cpu_runs, resolve_device, resolve_dtype


def print0(*args, **kwargs):
    """Print from the first process only."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


@dataclass
class Processes:
    """Where this process runs: its rank among the processes, its device and compute precision."""
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


def setup_processes(device_name: str, dtype_name: str, threads: int = 0, width: int | None = None) -> Processes:
    """Device, threads, precision (width: the model's n_embd, see device.resolve_dtype); under torchrun
    also the process group (NCCL on GPUs, gloo on CPUs)."""
    device = resolve_device(device_name)
    if threads:
        torch.set_num_threads(usable_threads(threads, print0))
    rank, local_rank, world_size = 0, 0, 1
    if "RANK" in os.environ:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    enable_tf32(device)
    repeatable_cpu_runs(device)
    return Processes(rank, local_rank, world_size, device, resolve_dtype(dtype_name, device, width))


def shutdown(procs: Processes) -> None:
    """Leave the process group cleanly (every rank calls it, on success and on error).

    destroy_process_group must drop the last reference to the group, so that gloo's destructor
    joins its worker threads here and not during interpreter exit: a worker still finishing the
    last collective then takes the GIL while Python finalizes, is ended by pthread_exit, and the
    unwind through a noexcept destructor aborts the rank ("terminate called without an active
    exception"). So the DDP model (its reducer holds the group) is gone before this is called, an
    FSDP model (its units hold the group, and they sit in reference cycles that only the garbage
    collector frees) is collected here first, and torch.distributed.nn is imported before the group
    exists (see the imports).
    """
    if procs.ddp and dist.is_initialized():
        gc.collect()  # the FSDP model sits in reference cycles (modules <-> hooks) that hold the group
        dist.destroy_process_group()


def gradient_sync(model: torch.nn.Module, last: bool, fsdp_once: bool = False):
    """The context of one micro-batch's forward and backward, `last` of an update or not. DDP syncs
    gradients once, on the last (its no_sync before). FSDP reduce-scatters after every micro-batch
    (gradients stay sharded) or, with fsdp_once, after the last only: before it each process adds
    every unit's whole gradient up in float32 (FSDP's unsharded accumulation, what the memory plan's
    sync_once counts)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext() if last else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # an FSDP module
        model.set_requires_gradient_sync(last or not fsdp_once)
    return contextlib.nullcontext()


def any_rank(flags: list[bool], procs: Processes) -> list[bool]:
    """Each flag, True if it is True on any process (one all-reduce under DDP: every rank must call)."""
    if not procs.ddp:
        return list(flags)
    agreed = torch.tensor([float(f) for f in flags], device=procs.device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return [v > 0 for v in agreed.tolist()]


def rank0_values(values: list[float], procs: Processes) -> list[float]:
    """Rank 0's values on every process (one broadcast under DDP: every rank must call)."""
    if not procs.ddp:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=procs.device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def gather_objects(obj, procs: Processes) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process (picklable objects; every rank must call)."""
    if not procs.ddp:
        return [obj]
    gathered = [None] * procs.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def sum_over_ranks(tensor: torch.Tensor, procs: Processes) -> torch.Tensor:
    """The tensor summed over every process, in place (every rank must call)."""
    if procs.ddp:
        dist.all_reduce(tensor)
    return tensor
