"""Saving and loading checkpoints, shared by train.py and sample.py.

A checkpoint is one `torch.save`d dict of tensors and plain data (no classes), so it loads with
`torch.load(weights_only=True)`: a file that carries pickled code is refused and the code never runs.
Saves are atomic: the dict goes to a temporary file in the same folder, is flushed and fsynced, then
renamed over the old file, so a crash leaves either the old or the new checkpoint, never half of one.
"""

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from cli import UserError

CHECKPOINT_NAME = "ckpt.pt"


def save_checkpoint(state: dict, path) -> None:
    """Write state to path atomically; on failure the old file is kept and UserError says why."""
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise UserError(f"could not save checkpoint {path}: {e.strerror or e} (the previous checkpoint, "
                        f"if any, is kept; free disk space or choose another --out_dir)") from None
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def load_checkpoint(path, map_location="cpu", mmap: bool = False) -> dict:
    """Load a checkpoint written by save_checkpoint; any problem becomes a one-line UserError.

    mmap=True maps the file instead of reading it: tensors are read from disk when first used, so
    parts never used (the optimizer state, when sampling) cost nothing.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise UserError(f"no checkpoint at {path} (train one first, or point --out_dir at a folder "
                        f"holding {CHECKPOINT_NAME})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise UserError(f"refused to load {path}: it holds objects other than tensors and plain data "
                        f"({first[:160]}); only load checkpoints you trust, written by train.py") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise UserError(f"checkpoint {path} is truncated or corrupt ({str(e).splitlines()[0][:120]}); "
                        f"restore it or retrain") from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise UserError(f"{path} is not a checkpoint written by train.py (no model or model_config)")
    return state
