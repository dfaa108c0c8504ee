"""Random token windows from a prepared dataset folder (train.bin, val.bin, meta.json).

`find_dataset` resolves the `dataset` key (a folder, or a name under data/) and checks that the
files agree with meta.json. `BatchSampler` draws (B, T) input/target windows at random offsets with
its own seeded generator, whose state goes into checkpoints for exact resume. The token file is
memory-mapped afresh for every batch, so pages read for old batches are not kept mapped.
"""

from pathlib import Path

import numpy as np
import torch

from cli import UserError
from tokenizer import read_meta

SPLITS = ("train", "val")


def find_dataset(dataset: str) -> Path:
    """The folder holding meta.json for `dataset`: the path itself, or data/<dataset>."""
    for candidate in (Path(dataset), Path("data") / dataset):
        if (candidate / "meta.json").is_file():
            return candidate
    raise UserError(f"dataset {dataset!r} not found: no meta.json in {dataset} or data/{dataset} "
                    f"(prepare one with python prepare/text.py --input FILES --out_dir DIR, "
                    f"or python prepare/shakespeare_char.py)")


def load_dataset(dataset: str) -> tuple[Path, dict]:
    """Resolve and validate a dataset folder; returns (folder, meta)."""
    folder = find_dataset(dataset)
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

    def batch(self, offsets: np.ndarray):
        """Token windows at the given offsets: x, y of shape (len(offsets), block_size), int64."""
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        window = data[offsets[:, None] + np.arange(self.block_size + 1)]  # (B, block_size + 1)
        del data
        tokens = torch.from_numpy(window.astype(np.int64))
        x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        if self.device.type == "cuda":  # pinned memory lets the copy overlap with compute
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]
