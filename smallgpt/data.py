"""Random token windows from a prepared dataset folder (train.bin, val.bin, meta.json).

`find_dataset` resolves the `dataset` key: a path means that folder; a name means the folder of that
name, or data/<name>, under the current folder, else data/<name> in this checkout (see
`dataset_candidates`). `load_dataset` checks that the files agree with meta.json; a nanoGPT data
folder (train.bin, val.bin and maybe meta.pkl, no meta.json) is read too, saying which tokenizer it
assumed (nanogpt.py). `BatchSampler` draws (B, T) input/target windows at random offsets with
its own seeded generator, whose state goes into checkpoints for exact resume. The token file is
memory-mapped afresh for every batch, so pages read for old batches are not kept mapped.
`plan_batches` shares one update's sequences out over the processes (`BatchPlan`), and
`UpdateBatches` draws each update's micro-batches one update ahead.

A dataset of conversations (prepare/chat.py: a mask file beside each split) is drawn by
`ConversationSampler` instead (`make_samplers` picks): rows of whole conversations packed into the
window, each conversation seeing only itself (the batch carries segment ids for GPT.forward), the
targets of every token that is not an answer's set to -1, which the loss ignores. A sampler's batch is
(x, y, segments); segments is None for plain text.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smallgpt.errors import UserError
from smallgpt.interop.nanogpt import is_nanogpt_data_folder, nanogpt_data_meta
from smallgpt.tokenizer import read_meta, token_byte_lengths, tokenizer_from_meta

SPLITS = ("train", "val")
CHECKOUT = Path(__file__).resolve().parents[1]  # the prepare scripts write data/<name> under the folder they run in


def is_dataset_name(dataset: str) -> bool:
    """A bare name ("shakespeare_char"), not a path ("data/x", "./x", "/abs/x", "~/x", "..")."""
    separators = [sep for sep in (os.sep, os.altsep) if sep]
    return (bool(dataset) and not any(sep in dataset for sep in separators) and dataset not in (".", "..")
            and not dataset.startswith("~"))


def dataset_candidates(dataset: str) -> list[Path]:
    """The folders `dataset` may mean, in lookup order, without repeats.

    A path means that folder only. A name means, in order: ./<name>, ./data/<name> (where
    prepare/shakespeare_char.py and the others write by default when run in the current folder),
    then <checkout>/data/<name>, so `python /path/to/checkout/train.py` run from another folder
    finds what the prepare scripts wrote inside the checkout.
    """
    path = Path(dataset).expanduser()
    if not is_dataset_name(dataset):
        return [path]
    candidates, seen = [], set()
    for candidate in (path, Path("data") / dataset, CHECKOUT / "data" / dataset):
        key = candidate.resolve()
        if key not in seen:
            seen.add(key)
            candidates.append(candidate)
    return candidates


def _is_dataset_folder(folder: Path) -> bool:
    return (folder / "meta.json").is_file() or is_nanogpt_data_folder(folder)


def find_dataset(dataset: str) -> Path:
    """The first of `dataset_candidates` holding meta.json (or nanoGPT's train.bin + val.bin)."""
    candidates = dataset_candidates(dataset)
    for candidate in candidates:
        if _is_dataset_folder(candidate):
            return candidate
    prepare = ("prepare one with python prepare/text.py --input FILES --out_dir DIR, "
               "or python prepare/shakespeare_char.py")
    if len(candidates) == 1:
        folder = candidates[0]  # (named below as the user wrote it)
        why = "holds no meta.json (nor nanoGPT's train.bin + val.bin)" if folder.is_dir() else "is not a folder"
        raise UserError(f"dataset {dataset!r} not found: {dataset} {why} ({prepare})")
    places = ", ".join(str(c) for c in candidates[:-1]) + f" or {candidates[-1]}"
    raise UserError(f"dataset {dataset!r} not found: no meta.json (nor nanoGPT's train.bin + val.bin) in "
                    f"{places} ({prepare})")


def load_dataset(dataset: str, log=print) -> tuple[Path, dict]:
    """Resolve and validate a dataset folder; returns (folder, meta).

    A nanoGPT data folder gets a meta dict built from its meta.pkl (characters) or, without one,
    for GPT-2 BPE; `log` receives one line saying which (train.py passes its rank-0 print).
    """
    folder = find_dataset(dataset)
    if not (folder / "meta.json").is_file():
        meta = nanogpt_data_meta(folder)
        assumed = (f"a char vocabulary of {meta['vocab_size']} from its meta.pkl" if meta["tokenizer"] == "char"
                   else "GPT-2 BPE tokens, since it has no meta.pkl")
        log(f"dataset {folder} is in nanoGPT's layout (no meta.json): reading {assumed}")
        return folder, meta
    meta = read_meta(folder)  # also checks each present .bin file's size against meta.json
    for split in SPLITS:
        path = folder / f"{split}.bin"
        if not path.is_file():
            raise UserError(f"{path} is missing; re-run the prepare script for this dataset")
    return folder, meta


class BatchSampler:
    """Draws windows of block_size + 1 tokens from one split; x is the window, y the window shifted."""

    def __init__(self, path: Path, dtype: str, block_size: int, seed: int, device="cpu"):
        self.path, self.dtype, self.block_size = Path(path), np.dtype(dtype), block_size
        self.num_tokens = self.path.stat().st_size // self.dtype.itemsize
        if self.num_tokens < 2:  # not even one (input, target) pair
            raise UserError(f"{self.path} holds {self.num_tokens} token(s), nothing to train on: prepare the "
                            f"dataset from more text")
        if self.num_tokens < block_size + 1:
            raise UserError(f"{self.path} has {self.num_tokens} tokens, too few for block_size {block_size}: "
                            f"lower --block_size below {self.num_tokens} or add more text")
        self.device = torch.device(device)
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def draw_offsets(self, n: int) -> np.ndarray:
        """n random window starts; every rank draws the same ones and takes its share."""
        return self.rng.integers(0, self.num_tokens - self.block_size, size=n)

    def spaced_offsets(self, n: int) -> np.ndarray:
        """n window starts evenly spaced through the split, the same every time (evaluation's)."""
        return np.linspace(0, self.num_tokens - self.block_size - 1, n).round().astype(np.int64)

    def batch(self, offsets: np.ndarray):
        """Token windows at the given offsets: x, y of shape (len(offsets), block_size), int64, and None."""
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        window = data[offsets[:, None] + np.arange(self.block_size + 1)]  # (B, block_size + 1)
        del data
        tokens = torch.from_numpy(window.astype(np.int64))
        return to_device(self.device, tokens[:, :-1], tokens[:, 1:]) + (None,)

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


def to_device(device, *tensors) -> tuple:
    """CPU tensors onto the device (through pinned memory on CUDA, so that the copy overlaps with compute)."""
    if device.type == "cuda":
        return tuple(t.contiguous().pin_memory().to(device, non_blocking=True) for t in tensors)
    return tuple(t.contiguous().to(device) for t in tensors)


class ConversationSampler(BatchSampler):
    """Rows of whole conversations from one split of a conversations dataset (prepare/chat.py).

    A row is a conversation and the ones after it in the file (wrapping round at the end), as many as
    fit in block_size + 1 tokens; the rest is padding (never a target). A row is named by its first
    conversation: training draws it at random, evaluation spaces it evenly (the same every time). A
    conversation longer than the window keeps its first block_size + 1 tokens. pack=False puts one
    conversation in each row, padded, with no segments (slower per answer token where conversations are
    short: bench/chat_packing.py).
    """

    def __init__(self, path: Path, dtype: str, block_size: int, seed: int, device="cpu", pack: bool = True):
        self.path, self.dtype, self.block_size = Path(path), np.dtype(dtype), block_size  # (rows are padded:
        self.num_tokens = self.path.stat().st_size // self.dtype.itemsize  # a split may be shorter than them)
        self.device, self.rng = torch.device(device), np.random.Generator(np.random.PCG64(seed))
        self.mask_path, self.pack = self.path.with_suffix(".mask.bin"), pack
        flags = np.fromfile(self.mask_path, dtype=np.uint8)
        self.starts = np.flatnonzero(flags & 2)  # where each conversation begins
        if len(flags) != self.num_tokens or not len(self.starts) or self.starts[0] != 0:
            raise UserError(f"{self.mask_path} does not describe {self.path}'s conversations; re-run prepare/chat.py")
        self.lengths = np.diff(np.append(self.starts, self.num_tokens))
        self.too_long = int((self.lengths > block_size + 1).sum())
        answers = np.flatnonzero(flags & 1)  # a row starts with a conversation that has an answer in the window,
        owner = np.searchsorted(self.starts, answers, side="right") - 1  # so that its loss is never empty
        self.firsts = np.unique(owner[answers - self.starts[owner] <= block_size])
        if not len(self.firsts):
            raise UserError(f"no conversation in {self.path} has an answer within its first {block_size} tokens: "
                            f"raise block_size or shorten the prompts")

    def draw_offsets(self, n: int) -> np.ndarray:
        """The first conversations of n rows, at random."""
        return self.firsts[self.rng.integers(0, len(self.firsts), size=n)]

    def spaced_offsets(self, n: int) -> np.ndarray:
        return self.firsts[np.linspace(0, len(self.firsts) - 1, n).round().astype(np.int64)]

    def row(self, first: int) -> list[int]:
        """The conversations of the row that starts with conversation `first`."""
        chosen, used = [first], min(self.lengths[first], self.block_size + 1)
        while self.pack and len(chosen) < len(self.starts):
            following = (chosen[-1] + 1) % len(self.starts)
            if used + self.lengths[following] > self.block_size + 1:
                break
            chosen.append(following)
            used += self.lengths[following]
        return chosen

    def batch(self, offsets: np.ndarray):
        """x, y, segments of shape (len(offsets), block_size): y is -1 where the target is no answer's token
        (or belongs to another conversation); segments numbers the conversations of each row (padding last)."""
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        flags = np.memmap(self.mask_path, dtype=np.uint8, mode="r")
        width = self.block_size + 1
        tokens = np.zeros((len(offsets), width), dtype=np.int64)
        trained = np.zeros((len(offsets), width), dtype=bool)
        segments = np.zeros((len(offsets), width), dtype=np.int64)
        for r, first in enumerate(offsets):
            at = 0
            for k, c in enumerate(self.row(int(first))):
                n = min(self.lengths[c], width - at)
                span = slice(self.starts[c], self.starts[c] + n)
                tokens[r, at:at + n], trained[r, at:at + n] = data[span], flags[span] & 1
                segments[r, at:at + n] = k
                at += n
            segments[r, at:] = k + 1  # the padding: a segment of its own
        del data, flags
        trained[:, 1:] &= segments[:, 1:] == segments[:, :-1]
        targets = np.where(trained[:, 1:], tokens[:, 1:], -1)
        x, y, seg = (torch.from_numpy(a) for a in (tokens[:, :-1], targets, segments[:, :-1]))
        if not self.pack:  # one conversation per row, from position 0: plain causal attention is enough
            return to_device(self.device, x, y) + (None,)
        return to_device(self.device, x, y, seg)


def make_samplers(folder: Path, meta: dict, block_size: int, seed: int, device, log=print) -> dict:
    """{"train": sampler, "val": sampler} of a dataset folder: ConversationSampler for a conversations
    dataset (its meta.json describes masks: prepare/chat.py's), else BatchSampler. `log` gets one line
    about the conversations."""
    chat = "mask" in (meta.get("chat") or {})
    kind = ConversationSampler if chat else BatchSampler
    splits = {split: kind(folder / f"{split}.bin", meta["dtype"], block_size, seed + i, device)
              for i, split in enumerate(SPLITS)}
    if chat:
        train = splits["train"]
        log(f"conversations: {len(train.starts):,} train, {len(splits['val'].starts):,} val, packed whole into rows "
            f"of {block_size} tokens, the loss on the answers only"
            + (f"; {train.too_long:,} train conversations are longer than the window: their ends are cut"
               if train.too_long else ""))
    return splits


BYTES_SAMPLE_WINDOWS = 4096  # windows an estimate of bytes per token reads at most (all of a usual evaluation's)


def split_bytes_per_token(meta: dict, splits: dict, batches: int, batch_size: int) -> dict:
    """{split: UTF-8 bytes per scored target in its evaluation windows (up to BYTES_SAMPLE_WINDOWS of them,
    evenly spaced)}: what turns a mean loss in nats per
    token into bits per byte, the unit in which runs on different tokenizers compare. Each token counts
    the bytes of its text (the end-of-text separator and chat markers none: tokenizer.token_byte_lengths,
    as eval.py counts them). Empty when the tokenizer cannot be loaded here (GPT-2 BPE without tiktoken's
    file)."""
    try:
        byte_lengths = token_byte_lengths(tokenizer_from_meta(meta))
    except UserError:
        return {}
    ratios = {}
    for split, sampler in splits.items():
        offsets = sampler.spaced_offsets(min(batches * batch_size, BYTES_SAMPLE_WINDOWS))  # those evaluate() scores
        n_bytes = n_targets = 0
        for chunk in np.array_split(offsets, -(-len(offsets) // 256)):
            y = sampler.batch(chunk)[1].cpu().numpy()  # (B, block_size); -1 where nothing is scored
            scored = y[y >= 0]
            n_bytes, n_targets = n_bytes + int(byte_lengths[np.minimum(scored, len(byte_lengths) - 1)].sum()), \
                n_targets + scored.size
        if n_bytes:
            ratios[split] = n_bytes / n_targets
    return ratios


# ----------------------------------------------------------------------------- one update's batch, shared out

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


def sequences_per_update(tokens_per_update: int, block_size: int, otherwise: int) -> int:
    """The sequences of one update: tokens_per_update of them when it is set (a multiple of block_size),
    else `otherwise` (gradient_accumulation_steps x batch_size)."""
    if tokens_per_update % block_size:
        raise UserError(f"bad value for tokens_per_update: {tokens_per_update} is not a multiple of block_size "
                        f"{block_size} (e.g. {block_size * 32:,})")
    return tokens_per_update // block_size or otherwise


def plan_batches(global_seqs: int, batch_size: int, block_size: int, rank: int = 0, world_size: int = 1) -> BatchPlan:
    """Share `global_seqs` sequences over `world_size` processes, in micro-batches of at most batch_size."""
    if global_seqs < world_size:
        raise UserError(f"an update of {global_seqs} sequence(s) cannot be shared by {world_size} processes: raise "
                        f"tokens_per_update to at least {world_size * block_size:,} (or use fewer processes)")
    start, stop = rank * global_seqs // world_size, (rank + 1) * global_seqs // world_size
    share = stop - start
    count = -(-share // batch_size)  # micro-batches of at most batch_size, as equal as possible
    sizes = [share // count + (1 if i < share % count else 0) for i in range(count)]
    return BatchPlan(global_seqs, block_size, start, stop, sizes, world_size)


class UpdateBatches:
    """This process's micro-batches for each update, the next update's drawn one update ahead.

    `current` holds the micro-batches of the update under way; `advance()` draws the next update's
    (called while the device still works on this one) and returns `position`, the sampler's state
    before that draw: a run resumed from that position draws those very batches again.
    """

    def __init__(self, sampler: BatchSampler, plan: BatchPlan):
        self.sampler, self.plan = sampler, plan
        self.current, self.position = [], {}
        self.advance()

    def advance(self) -> dict:
        self.position = self.sampler.state_dict()
        offsets = self.sampler.draw_offsets(self.plan.global_seqs)[self.plan.start:self.plan.stop]
        bounds = np.cumsum([0, *self.plan.micro_sizes])
        self.current = [self.sampler.batch(offsets[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        return self.position
