"""A memory plan before the first step: what each process will hold, and whether it fits.

    plan = plan_memory(model, optimizer="adamw", micro_batch=12, block_size=1024, dtype=torch.bfloat16,
                       world_size=8, sharded=True, checkpointing=False)
    print(plan.line())   # weights 0.06 GB, gradients 0.06 GB, optimizer 0.12 GB, activations 9.97 GB, ...
    check_fits(plan, free_bytes, retry)   # a one-line error naming the keys that would make it fit

    python -m smallgpt.memory     # the README's table: GPT-2 124M to 1.5B, one GPU and eight, ddp / fsdp /
                                  # checkpointing; then config/gpt2.toml's and config/gpt2_xl.toml's plans per GPU

What each process holds during an update, in bytes (N parameters, S processes under FSDP, else S = 1):
  weights      4N/S: float32 master weights (the optimizer steps them; compute uses copies or gathers)
  gradients    4N/S (DDP's buckets are views of them); with fsdp_sync_once 4N: FSDP adds each unit's
               gradient up whole, in float32, until the last micro-batch reduce-scatters it
  optimizer    AdamW: 8 per parameter (two moments); Muon: 4 per hidden-matrix entry (momentum) and
               AdamW's 8 for the rest; divided by S
  activations  what autograd keeps for backward, for one micro-batch of B sequences of T tokens:
               per block  B*T*(8*C + a*(7*C + 2*F))  (C: n_embd, F: the MLP's hidden width, a: 2 bytes
                          under bf16/fp16 autocast, 4 in float32; 8*C: the float32 residual stream
                          saved twice; 7*C: two norm outputs, q, k, v, the attention output and the
                          projection's input; 2*F: the MLP's hidden layer before and after its activation;
                          rotary positions and QK-norm add 2*a*C each, RMSNorm 8*C)
               with activation checkpointing a block keeps only its input (4*B*T*C), and backward rebuilds
               one block's activations at a time
               the head  B*T*V*(a + 8)  (V: the padded vocabulary; the logits, their float32 copy and
                          the log-softmax cross-entropy keeps)
  weight copies  under bf16/fp16 autocast, 2 per matmul weight (the blocks' matrices and the head):
               autocast's copies, kept for backward; under FSDP in bf16 only the head's (the blocks'
               weights are gathered in bf16: fsdp.block_precision)
  gathered units  FSDP: the root unit whole with its whole gradient (8 per parameter: it is float32 and
               stays gathered from forward to the end of backward), two blocks whole at a time (the one
               running and the one prefetched, 2 per parameter in bf16, else 4), one block's gradient
               in that precision and its float32 reduce-scatter input
  optimizer step  Muon: Nesterov's directions (4 per matrix entry, /S) and the largest shape's stack
               being orthogonalized (muon_stack_bytes)
The total is the larger of two peaks: weights, optimizer state, gradients, activations, weight copies
and gathered units at the end of a forward; weights, optimizer state, (sharded) gradients and the
step's temporaries during the step. tests/test_fsdp.py checks it against measured memory on a CPU
(within 10% for a model whose weights dominate: one process with AdamW and with Muon, FSDP on 2
processes; within 25-30% for one whose activations dominate); fragmentation, the CUDA context and the
evaluation's batches are not in it, so check_fits keeps 10% of the free memory in reserve.
"""

import dataclasses
import sys

import torch

from smallgpt.distributed import any_rank
from smallgpt.errors import UserError
from smallgpt.fsdp import block_precision
from smallgpt.optim import newton_schulz_dtype

GB = 1e9
RESERVE = 0.10  # of the free memory, kept for what the plan does not count


@dataclasses.dataclass
class MemoryPlan:
    """Bytes per process, and what they were planned for (the module docstring says what each counts)."""
    weights: float
    gradients: float
    optimizer: float
    activations: float
    micro_batch: int
    world_size: int
    sharded: bool
    checkpointing: bool
    copies: float = 0.0  # autocast's low-precision weight copies
    gathered: float = 0.0  # FSDP: units gathered whole, and a unit's gradient on its way to the reduce-scatter
    step: float = 0.0  # the optimizer step's temporaries (Muon's directions and stacks)
    step_gradients: float | None = None  # the gradients while the optimizer steps, if not `gradients` (sync_once)

    @property
    def total(self) -> float:
        """The larger of the two peaks: the end of a forward (or the start of its backward), and the step."""
        during = self.gradients + self.activations + self.copies + self.gathered
        stepping = (self.gradients if self.step_gradients is None else self.step_gradients) + self.step
        return self.weights + self.optimizer + max(during, stepping)

    def line(self) -> str:
        how = f"{'fsdp' if self.sharded else 'ddp' if self.world_size > 1 else 'one process'}" + \
              (", activation checkpointing" if self.checkpointing else "")
        extras = [(self.copies, "weight copies"), (self.gathered, "gathered units"), (self.step, "optimizer step")]
        return (f"weights {size(self.weights)}, gradients {size(self.gradients)}, optimizer {size(self.optimizer)}, "
                f"activations {size(self.activations)}" + "".join(f", {name} {size(n)}" for n, name in extras if n)
                + f" (micro-batch {self.micro_batch}; {how}): {size(self.total)}")


def size(n_bytes: float) -> str:
    """1.23 GB, or 45.6 MB below a gigabyte."""
    return f"{n_bytes / GB:.2f} GB" if n_bytes >= GB else f"{n_bytes / 1e6:.1f} MB"


def plan_memory(model, optimizer: str, micro_batch: int, block_size: int, dtype: torch.dtype, world_size: int = 1,
                sharded: bool = False, checkpointing: bool = False, sync_once: bool = False,
                device_type: str = "cuda") -> MemoryPlan:
    """The memory plan of training `model` (a GPT, on any device, even the meta device) one update at a time.
    sync_once: FSDP's gradients reduce-scattered once per update (train.py's fsdp_sync_once, with several
    micro-batches); device_type: where it runs (the precision of Muon's iteration depends on it)."""
    config = model.config
    kinds = model.parameter_kinds()
    n_params = sum(p.numel() for kind in kinds.values() for p in kind)
    shards = world_size if sharded else 1
    weights = 4 * n_params / shards
    gradients = step_gradients = 4 * n_params / shards
    matrices = sum(p.numel() for p in kinds["matrix"])
    if optimizer == "muon":
        optimizer_bytes = (4 * matrices + 8 * (n_params - matrices)) / shards
    else:
        optimizer_bytes = 8 * n_params / shards
    head = config.padded_vocab_size * config.n_embd  # the output head's weight (tied or not)
    low = dtype in (torch.bfloat16, torch.float16)
    gathered_bf16 = sharded and block_precision(dtype).param_dtype == torch.bfloat16
    copies = 2 * (head + (0 if gathered_bf16 else matrices)) if low else 0
    gathered = 0
    if sharded:
        units = [sum(p.numel() for p in block.parameters()) for block in model.transformer.h]
        root = n_params - sum(units)
        unit_bytes = 2 if gathered_bf16 else 4
        # the root whole from forward to the end of backward, with its whole gradient; two blocks at a time
        # (the one running and the one prefetched); one block's gradient, and its float32 reduce-scatter input
        gathered = 8 * root + max(units) * (2 * unit_bytes + unit_bytes + 4)
        if sync_once:  # every unit's gradient whole, in float32, until the last micro-batch reduce-scatters it
            gradients = 4 * n_params
    step = 0.0
    if optimizer == "muon":
        step = 4 * matrices / shards + max(muon_stack_bytes(shape, count, shards, newton_schulz_dtype(device_type))
                                           for shape, count in matrix_shapes(kinds["matrix"]).items())
    a = 4 if dtype == torch.float32 else 2
    C, L = config.n_embd, config.n_layer
    F = model.transformer.h[0].mlp.c_fc.weight.shape[0] * (2 if config.mlp == "swiglu" else 1)
    tokens = micro_batch * block_size
    extra = (2 * a * C if config.pos_embedding == "rope" else 0) + (2 * a * C if config.qk_norm else 0) \
        + (8 * C if config.norm == "rmsnorm" else 0)  # rotated q and k; normed q and k; RMSNorm's normalized x
    per_block = tokens * (8 * C + a * (7 * C + 2 * F) + extra)
    blocks = L * 4 * tokens * C + per_block if checkpointing else L * per_block
    head_activations = tokens * config.padded_vocab_size * (a + 8)
    activations = blocks + head_activations + 3 * 4 * tokens * C  # the embedding's output, the final norm's in and out
    return MemoryPlan(weights, gradients, optimizer_bytes, activations, micro_batch, world_size, sharded, checkpointing,
                      copies, gathered, step, step_gradients)


def matrix_shapes(matrices) -> dict[tuple, int]:
    """How many of the matrices have each shape (Muon orthogonalizes each shape as one stack)."""
    shapes: dict[tuple, int] = {}
    for p in matrices:
        shapes[tuple(p.shape)] = shapes.get(tuple(p.shape), 0) + 1
    return shapes


def muon_stack_bytes(shape: tuple, count: int, shards: int, ns_dtype: torch.dtype) -> float:
    """The most that Muon's orthogonalization of `count` matrices of `shape` holds at once (optim.py).
    One process: the float32 stack, its Newton-Schulz iterate (the old and the new one, in ns_dtype) or
    the iterate and its float32 result. Sharded: this process's matrices whole (the received rows, the
    iterate, the old and the new one: 3 in ns_dtype) or its shards of all of them (sent and received,
    then turned into float32 updates). Both: the Gram matrices of the iteration (two per matrix)."""
    rows, cols = shape
    ns = torch.finfo(ns_dtype).bits // 8
    grams = 2 * min(rows, cols) ** 2 * ns
    if shards == 1:
        result = 4 if ns != 4 else 0  # (a float32 iterate is its own result)
        return count * (rows * cols * (4 + max(2 * ns, ns + result)) + grams)
    mine = -(-count // shards)  # the most matrices one process owns
    my_rows = -(-rows // shards) * cols * count  # this process's rows of all of them
    return max(mine * (3 * rows * cols * ns + grams), my_rows * (ns + 4), 2 * my_rows * ns)


def check_fits(plan: MemoryPlan, free: float, retry) -> None:
    """A one-line UserError when `plan` does not fit in `free` bytes (less the reserve), naming the keys
    that would make it fit. retry(micro_batch=, checkpointing=, world_size=, sharded=) re-plans."""
    room = free * (1 - RESERVE)
    if plan.total <= room:
        return

    def smallest_batch(**changes):  # the largest micro-batch below the planned one that fits, if any
        batch = plan.micro_batch - 1
        while batch >= 1 and retry(micro_batch=batch, **changes).total > room:
            batch = batch // 2 if batch > 8 else batch - 1
        return batch if batch >= 1 else None

    def fewest_processes(**changes):  # the fewest FSDP processes that fit (these, if not sharded yet), up to 1024
        counts = sorted({plan.world_size, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024})
        return next((n for n in counts if (n > plan.world_size or not plan.sharded) and n > 1
                     and retry(world_size=n, sharded=True, **changes).total <= room), None)

    ckpt = "--activation_checkpointing=true"
    ways = [ckpt] if not plan.checkpointing and retry(checkpointing=True).total <= room else []
    if (batch := smallest_batch()) is not None:
        ways.append(f"--batch_size={batch} (the tokens per update stay: more micro-batches)")
    if (n := fewest_processes()) is not None:
        ways.append(f"--parallel=fsdp on {n} processes (torchrun --nproc_per_node={n}, or over nodes)")
    if not ways:  # no one key is enough: two or three together
        batch, n = smallest_batch(checkpointing=True), fewest_processes(checkpointing=True)
        if batch is not None:
            ways.append(f"{ckpt} with --batch_size={batch}")
        elif n is not None:
            ways.append(f"{ckpt} with --parallel=fsdp on {n} processes")
        elif (n := fewest_processes(checkpointing=True, micro_batch=1)) is not None:
            ways.append(f"{ckpt} with --batch_size=1 and --parallel=fsdp on {n} processes")
    how = " or ".join(ways) if ways else "a smaller model (n_layer, n_embd) or block_size"
    raise UserError(f"this run needs about {size(plan.total)} per process ({plan.line()}) but {size(free)} "
                    f"are free on the device: use {how}")


def check_memory(model, procs, **settings) -> MemoryPlan:
    """Print this process's memory plan (plan_memory's settings) and, on a CUDA device, stop with one
    line when it does not fit the free memory there (every process agrees, so none waits on the others)."""
    settings["device_type"] = procs.device.type
    plan = plan_memory(model, **settings)
    free = torch.cuda.mem_get_info(procs.device)[0] if procs.device.type == "cuda" else None
    where = f"rank {procs.rank} ({procs.device})" if procs.ddp else str(procs.device)
    line = f"memory plan, {where}: {plan.line()}" + (f", {size(free)} free" if free is not None else "")
    sys.stdout.write(line + "\n")  # one write: the processes' lines must not interleave
    sys.stdout.flush()
    problem = None
    if free is not None:
        try:
            check_fits(plan, free, lambda **changes: plan_memory(model, **{**settings, **changes}))
        except UserError as e:
            problem = str(e)
    if any_rank([problem is not None], procs)[0]:
        raise UserError(problem or "another process's device has too little free memory for this run (its memory "
                                   "plan line says how much it needs)")
    return plan


def gpt2_table() -> str:
    """The README's table: GPT-2's sizes, planned GB per GPU (bf16, AdamW, batch 12 x 1024)."""
    from model import GPT, GPTConfig

    sizes = {"124M": (12, 12, 768), "350M": (24, 16, 1024), "774M": (36, 20, 1280), "1.5B": (48, 25, 1600)}
    rows = ["| model | 1 GPU | 8 GPUs ddp | 8 GPUs fsdp | 8 GPUs fsdp + checkpointing |", "|---|---|---|---|---|"]
    for name, (n_layer, n_head, n_embd) in sizes.items():
        with torch.device("meta"):
            model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd), init_weights=False)
        cells = [plan_memory(model, "adamw", 12, 1024, torch.bfloat16, world, sharded, ckpt)
                 for world, sharded, ckpt in ((1, False, False), (8, False, False), (8, True, False), (8, True, True))]
        rows.append(f"| GPT-2 {name} | " + " | ".join(f"{p.total / GB:.1f} GB" for p in cells) + " |")
    return "\n".join(rows)


def config_plans(gpus: int = 8) -> list[str]:
    """The plan per GPU of config/gpt2.toml and config/gpt2_xl.toml on `gpus` GPUs in bf16, as each config sets
    its keys (parallel, batch_size, tokens_per_update, checkpointing), then with one key changed."""
    import tomllib
    from pathlib import Path

    from model import GPT, GPTConfig
    from smallgpt.data import plan_batches

    lines = []
    for name, changes in (("gpt2", [{}, {"parallel": "fsdp"}, {"optimizer": "muon"}]),
                          ("gpt2_xl", [{}, {"optimizer": "muon"}, {"fsdp_sync_once": True}])):
        path = Path(__file__).resolve().parents[1] / "config" / f"{name}.toml"
        if not path.is_file():  # (installed without the checkout's configs)
            continue
        keys = tomllib.loads(path.read_text())
        shape = {k: v for k, v in keys.pop("model").items()
                 if k in ("n_layer", "n_head", "n_embd", "block_size", "bias")}
        with torch.device("meta"):
            model = GPT(GPTConfig(**shape), init_weights=False)
        block_size = shape["block_size"]
        micro = plan_batches(keys["tokens_per_update"] // block_size, keys["batch_size"], block_size, 0,
                             gpus).micro_sizes
        for change in changes:
            cfg = {"parallel": "ddp", "optimizer": "adamw", "activation_checkpointing": False, "fsdp_sync_once": False,
                   **keys, **change}
            plan = plan_memory(model, cfg["optimizer"], max(micro), block_size, torch.bfloat16, gpus,
                               cfg["parallel"] == "fsdp", cfg["activation_checkpointing"],
                               cfg["fsdp_sync_once"] and cfg["parallel"] == "fsdp" and len(micro) > 1)
            given = " ".join(f"--{k}={str(v).lower()}" for k, v in change.items())
            lines.append(f"config/{name}.toml {given}".strip() + f", {len(micro)} micro-batches: {plan.line()}")
    return lines


if __name__ == "__main__":
    print(gpt2_table())
    print("\nPer GPU on 8 GPUs, bf16:")
    print("\n".join(config_plans()))
    sys.exit(0)
