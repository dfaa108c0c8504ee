"""The checkpoint format, in one place: build the dict, save it atomically, read it back safely.

    state = build_checkpoint(model, meta=meta, train_config=cfg_dict, optimizer=opt, ...)
    save_checkpoint(state, "out/ckpt.pt")
    model, ckpt = load_model("out")                  # sampling, eval, export: the model and the dict
    ckpt = load_checkpoint("out", map_location="cpu")  # everything, e.g. to resume

A checkpoint is one `torch.save`d dict of tensors and plain data (no classes), so it loads with
`torch.load(weights_only=True)`: a file that carries pickled code is refused and the code never runs.
Its keys (FORMAT_VERSION 2):
    format_version  2; a newer number is refused (update the code), 1 is upgraded when read
    model           the uncompiled, unwrapped module's state dict
    model_config    dict of model.GPTConfig (vocab_size is the true vocabulary; rows are padded)
    meta            the dataset's meta.json dict (tokenizer, vocabulary, a trained bpe's ranks, ...)
    train_config    the resolved training config as a dict (model keys in a "model" table)
    optimizer, scaler            their state dicts (None in a checkpoint made only for sampling)
    rng_per_rank                 every process's RNG state, for exact resume
    iter_num, best_val_loss, evaluated_at, elapsed_s, eval_batch_s, sampler, pretrained_from, ...
                                 where the run is: the fields of train.LoopState, saved and restored as a
                                 whole (a field missing from an older checkpoint takes its default)
Saves are atomic: the dict goes to a temporary file in the same folder, is flushed and fsynced, then
renamed over the old file, so a crash leaves either the old or the new checkpoint, never half of one.
"""

import dataclasses
import os
import pickle
import tempfile
import zipfile
import zlib
from pathlib import Path

import torch

from smallgpt.errors import UserError
from smallgpt.interop import nanogpt

CHECKPOINT_NAME = "ckpt.pt"
FORMAT_VERSION = 2


def rng_state(device) -> dict:
    """This process's RNG state as a checkpoint stores it (CPU tensors only)."""
    state = {"torch": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif torch.device(device).type == "mps":  # dropout on mps draws from its own generator
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict, device) -> None:
    """Restore what rng_state returned (the CUDA or mps generator too, on such a device)."""
    torch.set_rng_state(state["torch"])
    if torch.device(device).type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif torch.device(device).type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def build_checkpoint(model, model_state: dict | None = None, *, meta: dict, train_config: dict | None = None,
                     optimizer=None, optimizer_state: dict | None = None, scaler=None, rng_per_rank: list | None = None,
                     **loop_state) -> dict:
    """The dict ckpt.pt holds (see the module docstring). model: the uncompiled, unwrapped module.

    model_state / optimizer_state: their state dicts when not model.state_dict() / optimizer.state_dict()
    (an FSDP run passes them gathered whole: fsdp.full_state). loop_state: where the run is
    (train.LoopState's fields: iter_num, best_val_loss, ...), stored as top-level keys. A checkpoint
    without them describes a model that has not trained (benchmarks and tests save such ones); readers
    take LoopState's defaults for any that are missing.
    """
    if optimizer_state is None and optimizer is not None:
        optimizer_state = optimizer.state_dict()
    return {"format_version": FORMAT_VERSION, "model": model_state if model_state is not None else model.state_dict(),
            "model_config": dataclasses.asdict(model.config), "meta": meta, "train_config": train_config or {},
            "optimizer": optimizer_state, "scaler": scaler.state_dict() if scaler is not None else None,
            "rng_per_rank": rng_per_rank or [rng_state("cpu")], **loop_state}


def upgrade(state: dict, path) -> dict:
    """A checkpoint dict in the current format: older versions are converted, newer ones refused."""
    version = state.get("format_version")
    if not isinstance(version, int):
        raise UserError(f"{path} is not a checkpoint written by train.py (it has no format_version)")
    if version > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer version of this code (checkpoint format {version}; this "
                        f"code reads up to {FORMAT_VERSION}): update the code (git pull) to read it")
    if version == 1:  # vocabulary rows were not padded; model keys sat flat in train_config
        state["model_config"] = {**state["model_config"], "vocab_multiple": 1}
        state.setdefault("rng_per_rank", [state["rng"]] if "rng" in state else [])
        state.setdefault("elapsed_s", 0.0)
        state.setdefault("evaluated_at", state.get("iter_num", 0))  # format 1 evaluated at every save
        state.setdefault("pretrained_from", None)
        state["format_version"] = FORMAT_VERSION
    return state


def save_checkpoint(state: dict, path) -> None:
    """Write state to path atomically; on failure the old file is kept and UserError says why.

    The dict goes to a hidden temporary file beside `path` (`.ckpt.pt.XXXX.tmp`), is fsynced, and
    is renamed over `path`. A process killed mid-save leaves its temporary file behind; the next
    successful save removes such leftovers.
    """
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        if hasattr(os, "fchmod"):  # (not on Windows before Python 3.13, where the mode means little)
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes the file private (0600); use the usual mode
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        fsync_folder(path.parent)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write (disk full) as RuntimeError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:160]
        raise UserError(f"could not save checkpoint {path}: {reason} (the previous checkpoint, "
                        f"if any, is kept; free disk space or choose another --out_dir)") from None
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
    remove_stale_temporaries(path)


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX). Windows opens no folder as a file (its NTFS journals
    the rename itself), so there it is skipped."""
    if os.name == "nt":
        return
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temporaries(path) -> list[Path]:
    """Delete `.ckpt.pt.*.tmp` files that killed saves left beside `path`; returns what was removed."""
    path = Path(path)
    removed = []
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            leftover.unlink()
            removed.append(leftover)
        except OSError:  # another process's save in progress, or not ours to delete: leave it
            pass
    return removed


def damaged_member(path) -> str | None:
    """Name of the first archive member whose bytes do not match their stored CRC-32, else None.

    torch.load does not check the CRCs, so a flipped bit in a tensor would load silently. Reading the
    whole file costs about a second per GB (mostly from the page cache, where it then helps torch.load).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:  # ZipExtFile raises BadZipFile on a CRC mismatch at EOF
                    while member.read(1 << 24):
                        pass
    except zipfile.BadZipFile as e:
        return str(e).replace("Bad CRC-32 for file ", "").strip("'") or "the archive"
    except (OSError, EOFError, zlib.error) as e:
        return f"the archive ({type(e).__name__})"
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path, map_location="cpu", mmap: bool = False, dataset=None, cwd=None) -> dict:
    """Load a checkpoint (a run folder or the file); any problem becomes a one-line UserError.

    Ours are upgraded to the current format; nanoGPT's (recognised by their model_args) are
    converted to it by nanogpt.convert_checkpoint, which finds their vocabulary (dataset: a folder
    holding nanoGPT's meta.pkl; cwd: where nanoGPT's sample.py would look for data/).
    mmap=True maps the file instead of reading it: tensors are read from disk when first used, so
    parts never used (the optimizer state, when sampling) cost nothing.
    """
    state = read_archive(path, map_location, mmap)
    path = Path(path) / CHECKPOINT_NAME if Path(path).is_dir() else Path(path)
    if isinstance(state, dict) and "model_args" in state and "model_config" not in state:
        model, meta, loop_state, extras = nanogpt.convert_checkpoint(state, path, dataset, cwd)
        return {**build_checkpoint(model, meta=meta, **loop_state), **extras}
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a checkpoint written by train.py or nanoGPT (no model weights)")
    state = upgrade(state, path)
    if "model_config" not in state:
        raise UserError(f"{path} is not a checkpoint written by train.py (no model_config)")
    return state


def read_archive(path, map_location="cpu", mmap: bool = False):
    """torch.load(weights_only=True) of a checkpoint file, after checking the archive and its CRCs.

    Pickled code or classes are refused (and never run); a damaged file is a one-line UserError.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise UserError(f"no checkpoint at {path} (train one first, or point --out_dir at a folder "
                        f"holding {CHECKPOINT_NAME})")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not ours
        size = path.stat().st_size
        what = "is empty" if size == 0 else "is truncated or corrupt, or not a checkpoint (not a zip archive)"
        raise UserError(f"checkpoint {path} {what}; restore it from a backup or retrain")
    damaged = damaged_member(path)
    if damaged:
        raise UserError(f"checkpoint {path} is corrupt ({damaged} fails its CRC check); "
                        f"restore it from a backup or retrain")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # torch's message is a paragraph; keep its line naming the refused object
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        named = [line for line in lines if "GLOBAL" in line or "nsupported" in line]
        detail = (named or lines or ["unsupported content"])[0]
        raise UserError(f"refused to load {path}: it holds pickled code or objects, not only tensors and "
                        f"plain data ({detail[:160]}); nothing in it was run: only load checkpoints from train.py or nanoGPT") from None
    except Exception as e:  # a damaged archive fails in many ways (RuntimeError, EOFError, KeyError, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = first.split(". This is an internal")[0]  # drop miniz's boilerplate
        raise UserError(f"checkpoint {path} is truncated or corrupt ({first[:120]}); "
                        f"restore it from a backup or retrain") from None


def _weights_error(path, error: Exception) -> UserError:
    detail = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return UserError(f"the weights in {path} do not fit its model ({detail[:200]}); the checkpoint is "
                     f"damaged or from another version of this code: retrain or restore it")


def load_weights(model, state_dict, path) -> None:
    """model.load_state_dict, with a mismatch (damaged or foreign checkpoint) as a one-line UserError."""
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError, KeyError) as e:
        raise _weights_error(path, e) from None


def model_from_checkpoint(ckpt: dict, path, **config_changes):
    """The GPT a checkpoint describes (its model_config, then its weights); problems are UserErrors.

    The model takes the checkpoint's tensors over without copying them (a memory-mapped checkpoint
    stays mapped).
    """
    from model import GPT, GPTConfig  # here, so that loading a checkpoint alone needs no model code

    try:
        config = GPTConfig(**{**ckpt["model_config"], **config_changes})
    except (TypeError, ValueError) as e:
        raise UserError(f"{path} holds a model_config this code cannot build ({e}); it comes from another "
                        f"version of this code or is damaged") from None
    try:
        return GPT.from_state_dict(config, ckpt["model"])
    except (RuntimeError, TypeError, AttributeError, KeyError) as e:
        raise _weights_error(path, e) from None


def load_model(path, device="cpu", dataset=None):
    """(model in eval mode on device, checkpoint dict) for sampling, evaluation or export.

    Ours or nanoGPT's (dataset: see load_checkpoint). The file is memory-mapped, so the optimizer
    state, which these never read, costs nothing.
    """
    ckpt = load_checkpoint(path, map_location="cpu", mmap=True, dataset=dataset)
    model = model_from_checkpoint(ckpt, path)
    return model.to(device).eval(), ckpt
