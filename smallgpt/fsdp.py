"""FSDP2 (parallel = "fsdp"): parameters, gradients and optimizer state sharded over the processes.

    check_torch()                                  # one line when this torch cannot do it (needs 2.8+)
    shard_model(model, procs)                      # fully_shard each block, then the root
    full = full_state(model.state_dict(), procs, tied_names(model))  # rank 0: whole CPU tensors; others: None
    optimizer.load_state_dict(shard_like_params(optimizer, saved_optimizer_state))

PyTorch's engine (torch.distributed.fsdp.fully_shard) does the sharding; this file only says where the
units are and keeps the checkpoint format one. Each transformer block is one unit: its parameters are
all-gathered for its forward (and again for its backward), then freed, and its gradients are
reduce-scattered after its backward. The root unit holds the rest: token and position embeddings, the
final norm and the output head, which is tied to the token embedding and so must sit in the same unit.
Every parameter becomes a DTensor sharded by rows (dim 0) over the processes (a tensor of fewer rows
than processes leaves some ranks an empty shard; a 0-D one has no rows and is refused by name); the
optimizer, built after sharding, keeps its state in the same shards. Under gradient accumulation each micro-batch
reduce-scatters its gradients (so they stay sharded: DDP's one all-reduce per update would need the
full gradients on every process), or, with fsdp_sync_once, only the last does (distributed.gradient_sync):
one reduce-scatter per update, for a whole float32 gradient held on every process meanwhile.

In bf16 the blocks' parameters are gathered and used in bf16 (block_precision: FSDP's
MixedPrecisionPolicy), their gradients reduced in float32. Elsewhere in the package: torch.compile
compiles each block and the steps around them apart (GPT.compile_pieces; FSDP's hooks run between the
pieces), and Muon orthogonalizes each sharded matrix on one process (optim.orthogonalize_shared).

A checkpoint stays the file one process writes: `full_state` gathers one tensor at a time (every rank
takes part; rank 0 keeps a CPU copy, so no device ever holds more than one whole tensor extra), and
`shard_like_params` cuts a saved optimizer state back into each process's shards, so a run resumes on
any number of processes, with ddp or fsdp. Rank 0's host memory holds the whole state while saving:
for GPT-2 XL (1.56B parameters) about 6.2 GB of weights plus 12.5 GB of AdamW moments.

gloo (CPUs): averaging reductions and PREMUL_SUM are not what gloo does well (older torch got averages
wrong, gloo rejects PREMUL_SUM), so every unit is told to reduce with plain sums and divide after
(set_force_sum_reduction_for_comms), which also holds on NCCL.
"""

import warnings

import torch

from smallgpt.distributed import any_rank
from smallgpt.errors import UserError

MIN_TORCH = "2.8"  # fully_shard with force-sum reductions, and gloo's reduce-scatter


def check_torch() -> None:
    """A one-line error when this torch's FSDP2 lacks what parallel=fsdp uses."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        FSDPModule = None
    if FSDPModule is None or not hasattr(FSDPModule, "set_force_sum_reduction_for_comms"):
        raise UserError(f"parallel=fsdp needs torch {MIN_TORCH} or newer (this is torch {torch.__version__}): "
                        f"upgrade torch, or use --parallel=ddp")


def block_precision(dtype: torch.dtype):
    """The blocks' MixedPrecisionPolicy for a run computing in `dtype`: under bf16, parameters gathered
    and used in bf16 (half of float32's all-gather traffic, and no bf16 copy of them for autocast to
    keep), gradients reduce-scattered and accumulated in float32; the float32 master weights stay the
    sharded ones, which the optimizer steps. The blocks' inputs are not cast: the residual stream stays
    float32, as in one process. Other precisions: FSDP's default (parameters as they are, float32)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if dtype != torch.bfloat16:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)


def shard_model(model: torch.nn.Module, procs) -> None:
    """Shard `model` in place over all processes: one FSDP unit per block, then the root (the rest).

    Autocast (device.autocast, around every forward) still chooses each op's precision: matmuls in
    bf16 (for the blocks' bf16 parameters a no-op cast; the root's float32 head is cast per forward),
    norms, softmax and the loss in float32. The root unit keeps float32 parameters (block_precision
    is for the blocks): its token embedding is where the float32 residual stream starts, and it is
    5% of GPT-2 XL's parameters (a third of GPT-2 small's)."""
    check_torch()
    scalars = [name for name, p in model.named_parameters() if p.dim() == 0]
    if scalars:  # fully_shard splits dim 0, which a 0-D tensor lacks: refused here, by name, before any work
        raise UserError(f"parallel=fsdp cannot shard the 0-D parameter(s) {', '.join(scalars)}: give them shape "
                        f"(1,) in model.py, or use --parallel=ddp")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # the root returns the logits sliced to the true vocabulary (a view); FSDP warns that an in-place op
    # on a returned view would skip its backward hook: nothing here modifies logits in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(procs.device.type, (procs.world_size,))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=block_precision(procs.dtype))
    fully_shard(model, mesh=mesh)  # embeddings, final norm and the (tied) head: one unit
    for module in model.modules():
        if hasattr(module, "set_force_sum_reduction_for_comms"):  # an FSDP unit
            module.set_force_sum_reduction_for_comms(True)


def is_sharded(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor; a plain tensor as it is."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole on every process (a collective); a plain one as it is. (The
    gradient norm clip_grad_norm_ returns for sharded parameters is such a tensor, replicated.)"""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def full_state(state, procs, tied: dict[str, str] | None = None):
    """`state` (a state dict, nested dicts and lists) with every sharded tensor gathered whole: on rank
    0 as CPU tensors, elsewhere None. Every rank must call it (one all-gather per sharded tensor, in the
    dict's order, which is the same on every rank). `tied` ({name: the name it shares its parameter
    with}, from `tied_names`) names the top-level entries of a model's state dict that are one parameter:
    such a tensor is gathered once and stays one tensor. (Not recognised by their storage: the shards of
    a tensor with fewer rows than processes are empty on some ranks, and empty shards all look alike.)"""
    tied = tied or {}

    def walk(value):
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(walk(v) for v in value)
        if not is_sharded(value):
            return value
        whole = value.full_tensor()  # collective
        return whole.cpu() if procs.master else None

    full = {k: walk(v) for k, v in state.items() if k not in tied}
    return {k: full[tied[k]] if k in tied else full[k] for k in state}


def tied_names(model: torch.nn.Module) -> dict[str, str]:
    """{name: the first name of the same parameter} for each parameter the model holds under a second
    name (tied weights: lm_head.weight -> transformer.wte.weight)."""
    first: dict[int, str] = {}
    names = [(name, first.setdefault(id(p), name)) for name, p in model.named_parameters(remove_duplicate=False)]
    return {name: original for name, original in names if name != original}


def shard_like_params(optimizer: torch.optim.Optimizer, saved: dict) -> dict:
    """A saved (full) optimizer state dict, its per-parameter tensors cut into this process's shards of
    the parameters they belong to (parameters are numbered in param_groups order, as state_dict does)."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entry in saved["state"].items():
        param = params[index]
        if not is_sharded(param):
            continue
        for key, value in entry.items():
            if torch.is_tensor(value) and value.shape == param.shape:  # a moment or momentum buffer
                entry[key] = distribute_tensor(value.to(param.device), param.device_mesh, param.placements,
                                               src_data_rank=None)  # every rank has it whole: no communication
    return saved


def all_finite(params, procs) -> bool:
    """Whether every parameter is finite on every process: each checks its own shards, then one
    all-reduce (a check per sharded tensor could stop at different tensors on different ranks and hang)."""
    mine = all(bool(torch.isfinite(local(p)).all()) for p in params)
    return not any_rank([not mine], procs)[0]
