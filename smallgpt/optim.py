"""Optimizers for train.py and bench/train_speed.py: AdamW (torch's) or Muon for hidden matrices.

    from smallgpt.optim import build_optimizer
    optimizer = build_optimizer(model, cfg, device_type)   # cfg: train.TrainConfig (or any object
                                                           # with the same optimizer keys)

`optimizer = "adamw"`: torch.optim.AdamW (fused kernel where this torch has one, CPU included) with
weight decay on 2-D weights only; this is GPT.configure_optimizers.

`optimizer = "muon"`: one `MuonAdamW` optimizer with two kinds of parameter groups:
  * Muon for the 2-D weights inside the transformer blocks (attention and MLP matrices). Each step
    keeps a momentum buffer m = momentum * m + g, takes the Nesterov direction g + momentum * m,
    replaces it by the nearest semi-orthogonal matrix (all singular values ~1, computed with a few
    Newton-Schulz iterations, no SVD), scales it by sqrt(max(1, rows / cols)) and steps by muon_lr.
    The update is equally large in every direction of the matrix, which is what lets Muon use large
    learning rates and learn faster per token than AdamW.
  * AdamW for everything else: token/position embeddings, the output head, norm gains and biases
    (Muon is only defined for matrices that act on hidden vectors).
Under FSDP (parameters sharded by rows) each matrix is orthogonalized once, by one process, and each
process gets its rows of the result back (orthogonalize_shared: two all-to-alls per shape); one
process, or DDP's whole copies, orthogonalize every matrix where they are.
Both kinds live in one torch Optimizer so that checkpoints, GradScaler and the LR schedule see one
object. The schedule sets every group's lr to (scheduled learning_rate) * group["lr_scale"]; Muon
groups carry lr_scale = muon_lr / learning_rate, so both follow the same warmup and decay shape.

Reference for the method: K. Jordan et al., "Muon: an optimizer for hidden layers in neural
networks" (2024). Written here from the description, not copied.
"""

import torch

from smallgpt.device import cpu_has_bf16_units
from smallgpt.fsdp import is_sharded, local

# Quintic Newton-Schulz coefficients (a, b, c): X <- a X + b (X X^T) X + c (X X^T)^2 X. Chosen (by
# the Muon authors) to push singular values in (0, 1] quickly towards ~1 (they land in about
# [0.7, 1.2], which trains as well as an exact orthogonalisation and costs only matmuls).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz_dtype(device_type: str) -> torch.dtype:
    """bfloat16 where matmuls have bf16 units (GPUs; CPUs with AMX or AVX-512 BF16), else float32.

    The iteration only needs singular values pushed into ~[0.7, 1.2], which bf16 does as well as
    float32 (the Muon authors run it in bf16), and on a CPU with bf16 units several times faster. CPUs
    without them would emulate bf16, slower than float32.
    """
    if device_type == "cuda" or (device_type == "cpu" and cpu_has_bf16_units()):
        return torch.bfloat16
    return torch.float32


def orthogonalize(grad: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately U V^T for grad = U S V^T, by Newton-Schulz iteration.

    grad: one matrix (rows, cols) or a stack of same-shaped matrices (N, rows, cols), each treated
    on its own (a stack runs as batched matmuls: far fewer, larger ops than a loop for small
    matrices). Runs in `dtype`, by default newton_schulz_dtype(grad's device). Returns a tensor of
    grad's shape and dtype.
    """
    a, b, c = NS_COEFFS
    x = grad.to(dtype or newton_schulz_dtype(grad.device.type))
    single = x.dim() == 2
    if single:
        x = x.unsqueeze(0)
    transposed = x.size(1) > x.size(2)
    if transposed:  # iterate on the wide orientation: the Gram matrix x x^T is then the small one
        x = x.mT
    # Frobenius norm >= spectral norm, so singular values start in (0, 1]
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)  # (N, rows, cols)
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)  # (N, rows, rows)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b gram + c gram^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a x + poly x
    if transposed:
        x = x.mT
    if single:
        x = x.squeeze(0)
    return x.to(grad.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for groups with use_muon=True, AdamW for the others (see the module docstring).

    Group keys: lr, weight_decay (decoupled, both kinds), use_muon; Muon groups also momentum,
    nesterov, ns_steps; AdamW groups betas, eps. ns_dtype: the Newton-Schulz precision (None: the
    machine's, newton_schulz_dtype); not saved with the state, since it belongs to the machine.
    """

    def __init__(self, param_groups, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8,
                 momentum=0.95, nesterov=True, ns_steps=5, ns_dtype: torch.dtype | None = None):
        self.ns_dtype = ns_dtype
        defaults = dict(lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, momentum=momentum,
                        nesterov=nesterov, ns_steps=ns_steps, use_muon=False)
        super().__init__(param_groups, defaults)
        for group in self.param_groups:
            if group["use_muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups may only hold 2-D weight matrices")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group):
        lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads)
        directions = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
        if wd:
            torch._foreach_mul_(params, 1.0 - lr * wd)
        by_shape: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        dtype = self.ns_dtype or newton_schulz_dtype(params[0].device.type)
        first_owner = 0  # sharded: who orthogonalizes the next matrix (round robin over every shape)
        for (rows, cols), members in by_shape.items():  # same-shaped matrices orthogonalized as one stack
            stack = [directions[i] for i in members]
            if is_sharded(stack[0]):
                updates = orthogonalize_shared(stack, group["ns_steps"], dtype, first_owner)
                first_owner += len(members)
            else:
                updates = orthogonalize(torch.stack(stack), group["ns_steps"], dtype=dtype).unbind(0)
            # an orthogonal (rows x cols) update has RMS 1/sqrt(max dim); the factor makes tall and
            # wide matrices move by comparable amounts per step
            scale = max(1.0, rows / cols) ** 0.5
            torch._foreach_add_([local(params[i]) for i in members], [u.to(params[i].dtype) for i, u in
                                                                       zip(members, updates)], alpha=-lr * scale)
            del stack, updates  # before the next shape's: one stack at a time (what the memory plan counts)

    def _adamw_step(self, group):
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        by_step: dict[float, list] = {}  # parameters that missed a step (no grad) differ in bias correction
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            by_step.setdefault(state["step"].item(), []).append(p)
        for step, members in by_step.items():
            grads = [p.grad for p in members]
            exp_avgs = [self.state[p]["exp_avg"] for p in members]
            exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in members]
            torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
            bias1, bias2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
            denoms = torch._foreach_div(exp_avg_sqs, bias2)
            torch._foreach_sqrt_(denoms)
            torch._foreach_add_(denoms, eps)
            if wd:
                torch._foreach_mul_(members, 1.0 - lr * wd)
            torch._foreach_addcdiv_(members, exp_avgs, denoms, value=-lr / bias1)


def orthogonalize_shared(directions: list, steps: int, dtype: torch.dtype, first_owner: int = 0) -> list:
    """orthogonalize() of same-shaped matrices sharded by rows over the processes (FSDP's DTensors), each
    matrix orthogonalized once, by one process: this process's rows of each result, in `dtype`.

    Matrix j belongs to rank (first_owner + j) % world. One all-to-all sends every process's rows of
    each matrix to its owner, which orthogonalizes its matrices as one stack; a second sends each
    process its rows of every result. Both carry `dtype` (the iteration's first step casts to it, so
    casting before sending changes nothing). Each process sends and receives about its shard's worth
    of the matrices, there and back, where gathering every matrix whole on every process received all
    of them (the world size times more) and repeated every orthogonalization on every process. The
    result equals orthogonalize() on the whole stack, matrix by matrix.
    """
    import torch.distributed as dist

    group = directions[0].device_mesh.get_group()
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    rows, cols = directions[0].shape
    per_rank = -(-rows // world)  # Shard(0) cuts rows as torch.chunk does: the last ranks may get fewer, or none
    counts = [max(0, min(per_rank, rows - r * per_rank)) for r in range(world)]
    owners = [(first_owner + j) % world for j in range(len(directions))]
    mine = owners.count(rank)
    assert all(local(d).shape == (counts[rank], cols) for d in directions), "expected Shard(0) placements"

    # to the owners: for each owner in turn, this process's rows of the matrices it owns (buffers are
    # dropped as soon as they are used: the memory plan counts the largest set alive at once)
    send = torch.cat([local(directions[j]).to(dtype).flatten() for owner in range(world)
                      for j in range(len(owners)) if owners[j] == owner]
                     + [torch.empty(0, dtype=dtype, device=directions[0].device)])
    send_sizes = [owners.count(owner) * counts[rank] * cols for owner in range(world)]
    receive_sizes = [mine * counts[source] * cols for source in range(world)]
    received = send.new_empty(sum(receive_sizes))
    dist.all_to_all_single(received, send, receive_sizes, send_sizes, group=group)
    del send
    stack = torch.cat([block.view(mine, counts[source], cols) for source, block in
                       enumerate(received.split(receive_sizes))], dim=1)  # (mine, rows, cols), whole
    del received
    results = orthogonalize(stack, steps, dtype=dtype) if mine else stack
    del stack

    # back: to each process its rows of every result this process computed
    send = torch.cat([piece.flatten() for piece in results.split(counts, dim=1)])
    del results
    send_sizes = [mine * count * cols for count in counts]
    receive_sizes = [owners.count(source) * counts[rank] * cols for source in range(world)]
    received = send.new_empty(sum(receive_sizes))
    dist.all_to_all_single(received, send, receive_sizes, send_sizes, group=group)
    from_owner = [iter(block.view(owners.count(source), counts[rank], cols).unbind(0))
                  for source, block in enumerate(received.split(receive_sizes))]
    return [next(from_owner[owner]) for owner in owners]  # in the order of `directions`


def muon_param_groups(model, cfg) -> list[dict]:
    """Muon groups for the blocks' hidden matrices; AdamW groups (decay / no decay) for the rest
    (which parameter is which: GPT.parameter_kinds)."""
    kinds = model.parameter_kinds()
    hidden_matrices, adam_decay, adam_no_decay = kinds["matrix"], kinds["embedding"], kinds["vector"]
    lr_scale = cfg.muon_lr / cfg.learning_rate if cfg.learning_rate > 0 else 0.0
    groups = [
        {"params": hidden_matrices, "use_muon": True, "lr": cfg.muon_lr, "lr_scale": lr_scale,
         "weight_decay": cfg.weight_decay, "momentum": cfg.muon_momentum, "ns_steps": cfg.muon_ns_steps},
        {"params": adam_decay, "weight_decay": cfg.weight_decay},
        {"params": adam_no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model, cfg, device_type: str) -> torch.optim.Optimizer:
    """The optimizer cfg.optimizer names, with every group's lr_scale set for the LR schedule."""
    if cfg.optimizer == "adamw":
        optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    elif cfg.optimizer == "muon":
        optimizer = MuonAdamW(muon_param_groups(model, cfg), lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose adamw or muon")
    for group in optimizer.param_groups:
        group.setdefault("lr_scale", 1.0)
    return optimizer


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set each group's lr to the scheduled lr times the group's lr_scale (Muon groups differ)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
