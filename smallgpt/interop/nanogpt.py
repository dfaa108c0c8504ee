"""Read karpathy/nanoGPT's files safely: its checkpoints, its data folders and its meta.pkl.

nanoGPT writes three kinds of files this project can use:
  * `out-*/ckpt.pt`: a torch.save dict {model, optimizer, model_args, iter_num, best_val_loss,
    config}. It holds only tensors and plain data, so it is read with torch.load(weights_only=True):
    a file carrying pickled code is refused and the code never runs.
  * `data/<dataset>/train.bin`, `val.bin`: raw uint16 token ids, as ours are.
  * `data/<dataset>/meta.pkl`: for character-level data, a pickle of {vocab_size, itos, stoi}; GPT-2
    BPE data have none. Pickle can run code, so `read_meta_pkl` first reads every opcode without
    executing any and refuses anything but plain containers, strings, bytes, numbers, booleans and
    None: a pickled class, function or `__reduce__` is a one-line error and is never run.

What maps to what:
    meta.pkl {vocab_size, itos, stoi}   -> our meta.json {tokenizer: "char", vocab: itos in id order}
    no meta.pkl                         -> GPT-2 BPE (tiktoken r50k_base), nanoGPT's default
    model_args                          -> model_config (a model.GPTConfig), mlp = "gelu_exact"
    model (maybe `_orig_mod.` prefixed) -> model: same names and layout as ours, the prefix dropped
                                           and the `attn.bias` causal-mask buffers skipped

nanoGPT's GPT is ours (pre-norm blocks, learned positions, LayerNorm eps 1e-5, tied head, c_attn
giving q | k | v with the heads side by side) except its MLP's GELU, which is exact (erf), hence
mlp = "gelu_exact". Without a meta.pkl nanoGPT pads GPT-2's 50257 tokens to 50304 rows; the
conversion keeps those rows and records the true vocabulary (see `vocab_fields`).

Where the vocabulary of a checkpoint comes from (the first that applies):
  1. an explicit dataset folder (`--dataset=FOLDER` holding meta.pkl, or one of our meta.json folders)
  2. data/<config.dataset>/meta.pkl under the current folder (where nanoGPT's sample.py looks)
  3. <run>/../data/<config.dataset>/meta.pkl (the nanoGPT checkout the run folder sits in)
  4. none found and at least 50257 token rows: GPT-2 BPE; otherwise a one-line error naming the
     places tried and what to pass.

Used by data.py (nanoGPT data folders) and checkpoint.load_checkpoint (nanoGPT runs, for
sample.py, eval.py and train.py --init_from). Tests: python -m pytest tests/test_nanogpt.py -q
"""

import dataclasses
import io
import pickle
import pickletools
from collections import deque
from pathlib import Path
from types import SimpleNamespace

from smallgpt.errors import UserError
from smallgpt.tokenizer import CharTokenizer, make_meta, read_meta, validate_meta

GPT2_VOCAB = 50257  # GPT-2 BPE token ids (r50k_base), <|endoftext|> = 50256 the last
GPT2_EOT = 50256
TOKEN_DTYPE = "uint16"  # nanoGPT writes every dataset as uint16
MAX_META_BYTES = 64 << 20  # a char meta.pkl is about 1 KB; refuse to parse absurd ones
ORIG_MOD = "_orig_mod."  # the prefix torch.compile's wrapper adds to every state-dict key
MASK_BUFFER = ".attn.bias"  # nanoGPT's causal mask (only without flash attention), not a weight
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")

# Opcodes that only build plain data: containers, strings, bytes, numbers, booleans, None, and the
# memo/stack/framing bookkeeping. Everything else (GLOBAL, STACK_GLOBAL, REDUCE, BUILD, INST, OBJ,
# NEWOBJ*, EXT*, PERSID, buffers) imports or calls something and is refused before anything runs.
PLAIN_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
    "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE",
    "NONE", "NEWTRUE", "NEWFALSE",
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "EMPTY_LIST", "APPEND", "APPENDS", "LIST",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS",
    "EMPTY_SET", "ADDITEMS", "FROZENSET",
})


# ----------------------------------------------------------------------------- meta.pkl

class _NothingImportable(pickle.Unpickler):
    """Second line of defence: an unpickler that can import nothing (the opcode scan comes first)."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent id")


def load_plain_pickle(path) -> object:
    """Unpickle `path` if it holds only plain data; any code or object is a UserError, never run.

    Every opcode is read first (pickletools parses without executing anything); one that would
    import a name or call something stops the load before unpickling starts.
    """
    path = Path(path)
    fix = "re-create it from the text (python prepare/text.py --tokenizer char) or use a trusted copy"
    size = path.stat().st_size
    if size > MAX_META_BYTES:
        raise UserError(f"{path} is {size:,} bytes, too big for a vocabulary file; {fix}")
    data = path.read_bytes()
    recent_strings = deque(maxlen=2)  # STACK_GLOBAL takes its module and name from the two pushed before
    try:
        for opcode, arg, pos in pickletools.genops(data):
            if opcode.name not in PLAIN_OPCODES:
                if opcode.name == "STACK_GLOBAL" and len(recent_strings) == 2:
                    arg = " ".join(recent_strings)
                what = f"{opcode.name} {arg}" if isinstance(arg, str) else opcode.name
                raise UserError(f"refused to read {path}: it holds pickled code or objects ({what} at byte "
                                f"{pos}), not only plain data, and nothing in it was run; {fix}")
            if isinstance(arg, str) and ("UNICODE" in opcode.name or "STRING" in opcode.name):
                recent_strings.append(str(arg))
    except UserError:
        raise
    except Exception as e:  # truncated or not a pickle at all
        raise UserError(f"{path} is not a readable pickle ({str(e)[:100] or type(e).__name__}); {fix}") from None
    try:
        return _NothingImportable(io.BytesIO(data)).load()
    except Exception as e:
        raise UserError(f"refused to read {path} ({str(e)[:100] or type(e).__name__}); {fix}") from None


def _token_counts(folder: Path) -> dict:
    """train_tokens / val_tokens from the sizes of folder's uint16 .bin files (0 when absent)."""
    counts = {}
    for split in ("train", "val"):
        binfile = folder / f"{split}.bin"
        size = binfile.stat().st_size if binfile.is_file() else 0
        if size % 2:
            raise UserError(f"{binfile} holds {size} bytes, not a whole number of uint16 tokens; "
                            f"it is truncated or not nanoGPT's: re-run the data's prepare.py")
        counts[f"{split}_tokens"] = size // 2
    return counts


def read_meta_pkl(path) -> dict:
    """Our meta dict (see tokenizer.validate_meta) for nanoGPT's character-level meta.pkl.

    The vocabulary is itos in id order; stoi, when present, must be its inverse. Token counts come
    from train.bin / val.bin beside the file (0 when absent). Only plain data is unpickled.
    """
    path = Path(path)
    raw = load_plain_pickle(path)
    fix = "pass --dataset=FOLDER holding the meta.pkl of the data this model was trained on"
    if not isinstance(raw, dict) or "itos" not in raw:
        raise UserError(f"{path} is not nanoGPT's meta.pkl (expected a dict with vocab_size, itos and stoi); {fix}")
    itos = raw["itos"]
    if isinstance(itos, (list, tuple)):
        itos = dict(enumerate(itos))
    vocab_size = raw.get("vocab_size", len(itos) if isinstance(itos, dict) else None)
    if not isinstance(itos, dict) or not isinstance(vocab_size, int) or isinstance(vocab_size, bool) \
            or vocab_size < 1 or sorted(itos) != list(range(vocab_size)):
        raise UserError(f"{path}: itos should map the ids 0..vocab_size-1 to characters; {fix}")
    vocab = [itos[i] for i in range(vocab_size)]
    odd = next((i for i, c in enumerate(vocab) if not isinstance(c, str) or len(c) != 1), None)
    if odd is not None:
        raise UserError(f"{path}: token {odd} is {vocab[odd]!r}, not one character; only character-level "
                        f"meta.pkl files (nanoGPT's shakespeare_char) are understood")
    if len(set(vocab)) != vocab_size:
        raise UserError(f"{path}: itos repeats a character; the file is damaged; {fix}")
    stoi = raw.get("stoi")
    if stoi is not None and stoi != {c: i for i, c in enumerate(vocab)}:
        raise UserError(f"{path}: stoi is not the inverse of itos; the file is damaged; {fix}")
    if vocab_size > 65535:
        raise UserError(f"{path}: {vocab_size} tokens do not fit nanoGPT's uint16 files; {fix}")
    meta = make_meta(CharTokenizer(vocab), **_token_counts(path.parent), source=f"nanoGPT meta.pkl ({path})",
                     dtype=TOKEN_DTYPE)
    return validate_meta(meta, str(path))


def gpt2_meta(folder=None, source: str = "GPT-2 BPE, nanoGPT's default (no meta.pkl)") -> dict:
    """Our meta dict for GPT-2 BPE tokens; counts from folder's .bin files when a folder is given."""
    counts = _token_counts(Path(folder)) if folder is not None else {"train_tokens": 0, "val_tokens": 0}
    gpt2 = SimpleNamespace(kind="gpt2", vocab_size=GPT2_VOCAB, eot_token=GPT2_EOT)  # no tiktoken needed
    return validate_meta(make_meta(gpt2, **counts, source=source, dtype=TOKEN_DTYPE), source)


# ----------------------------------------------------------------------------- data folders

def is_nanogpt_data_folder(folder) -> bool:
    """A folder holding train.bin and val.bin but no meta.json: nanoGPT's layout, not ours."""
    folder = Path(folder)
    return (folder.is_dir() and not (folder / "meta.json").exists()
            and (folder / "train.bin").is_file() and (folder / "val.bin").is_file())


def nanogpt_data_meta(folder) -> dict:
    """Our meta dict for a nanoGPT data folder (train.bin, val.bin as uint16; meta.pkl for char data).

    With meta.pkl the tokens are characters (its itos); without, GPT-2 BPE, as nanoGPT assumes.
    "source" says which was assumed; train_tokens / val_tokens come from the file sizes.
    """
    folder = Path(folder)
    for split in ("train", "val"):
        if not (folder / f"{split}.bin").is_file():
            raise UserError(f"{folder / f'{split}.bin'} is missing; re-run the prepare.py of this nanoGPT "
                            f"dataset, or prepare the text with python prepare/text.py")
    if (folder / "meta.pkl").is_file():
        return read_meta_pkl(folder / "meta.pkl")
    return gpt2_meta(folder, source=f"nanoGPT data folder {folder} without meta.pkl: GPT-2 BPE assumed")


def describe_vocabulary(meta: dict) -> str:
    """One phrase saying which tokenizer a converted meta dict stands for and where it came from."""
    if meta["tokenizer"] == "char":
        return f"char vocabulary of {meta['vocab_size']} from {meta['source'].removeprefix('nanoGPT ')}"
    return meta["source"]


# ----------------------------------------------------------------------------- checkpoints

def is_nanogpt_checkpoint(ckpt) -> bool:
    """True for a dict in nanoGPT's checkpoint layout (model + model_args, no model_config)."""
    return (isinstance(ckpt, dict) and "model_args" in ckpt and "model" in ckpt
            and "model_config" not in ckpt)


def vocab_fields(vocab_size: int, rows: int) -> dict:
    """GPTConfig's vocabulary fields for `vocab_size` true token ids held in `rows` embedding rows.

    When model.GPTConfig has `vocab_multiple` (rows are vocab_size rounded up to a multiple of it),
    the result is the true vocabulary and the multiple that reproduces `rows`: the smallest power of
    two that does (50257 in 50304 rows: 64; 65 in 65: 1), else the smallest divisor of rows that does.
    Without that field, vocab_size is simply `rows` (the model then has logits for the padding ids).
    """
    from model import GPTConfig

    if vocab_size > rows:
        raise ValueError(f"vocabulary of {vocab_size} does not fit {rows} rows")
    if "vocab_multiple" not in {f.name for f in dataclasses.fields(GPTConfig)}:
        return {"vocab_size": rows}
    powers = [1 << k for k in range(rows.bit_length())]
    for m in powers + [d for d in range(1, rows + 1) if rows % d == 0]:
        if -(-vocab_size // m) * m == rows:
            return {"vocab_size": vocab_size, "vocab_multiple": m}
    raise AssertionError("unreachable: m = rows always fits")


def _run_paths(path) -> tuple[Path, Path]:
    """(the ckpt.pt file, the run folder) for a run folder or a checkpoint file."""
    path = Path(path)
    ckpt_file = path / "ckpt.pt" if path.is_dir() else path
    return ckpt_file, ckpt_file.parent


def _unique(paths: list[Path]) -> list[Path]:
    """paths without the ones that name a folder already listed (however spelled), in order."""
    seen, out = set(), []
    for path in paths:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


def _hint_meta(hint: str, run_dir: Path, cwd: Path, rows: int) -> tuple[dict | None, list[str]]:
    """The vocabulary an explicit dataset folder (or meta.pkl, or dataset name) gives; places tried."""
    given = Path(hint)
    candidates = [given]
    if not given.is_absolute() and len(given.parts) == 1:  # a dataset name: where nanoGPT keeps those
        candidates += [cwd / "data" / hint, run_dir.parent / "data" / hint]
    candidates = _unique(candidates)
    for place in candidates:
        if place.is_file():
            return read_meta_pkl(place), [str(place)]
        if (place / "meta.pkl").is_file():
            return read_meta_pkl(place / "meta.pkl"), [str(place)]
        if (place / "meta.json").is_file():
            return read_meta(place), [str(place)]
        if is_nanogpt_data_folder(place):  # nanoGPT's GPT-2 BPE data: no meta.pkl by design
            return (gpt2_meta(place, f"nanoGPT data folder {place} without meta.pkl: GPT-2 BPE")
                    if rows >= GPT2_VOCAB else None), [str(place)]
    places = ", ".join(map(str, candidates))
    raise UserError(f"dataset {hint!r} not found: no meta.pkl, meta.json or train.bin + val.bin in {places}; "
                    f"pass --dataset=FOLDER holding the meta.pkl of the data the model was trained on")


def find_vocabulary(ckpt: dict, path, dataset_hint=None, cwd=None) -> dict:
    """Our meta dict for a nanoGPT checkpoint's vocabulary (see the module docstring for the order).

    A meta.pkl must hold exactly as many tokens as the model has rows (nanoGPT pads only GPT-2's
    vocabulary); otherwise it belongs to other data and is refused.
    """
    ckpt_file, run_dir = _run_paths(path)
    cwd = Path.cwd() if cwd is None else Path(cwd)
    rows = _rows(ckpt, ckpt_file)
    fix = "pass --dataset=FOLDER holding the meta.pkl of the data the model was trained on"
    meta, tried = None, []
    if dataset_hint:
        meta, tried = _hint_meta(str(dataset_hint), run_dir, cwd, rows)
    else:
        config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        dataset = config.get("dataset")
        if isinstance(dataset, str) and dataset:
            for place in _unique([cwd / "data" / dataset / "meta.pkl", run_dir.parent / "data" / dataset / "meta.pkl"]):
                tried.append(str(place.parent))
                if place.is_file():
                    meta = read_meta_pkl(place)
                    break
    if meta is None:
        if rows >= GPT2_VOCAB:
            where = f" in {' or '.join(tried)}" if tried else ""
            return gpt2_meta(source=f"GPT-2 BPE: no meta.pkl{where}, as nanoGPT assumes")
        where = f"looked in {', '.join(tried)}" if tried else "its config names no dataset"
        raise UserError(f"{ckpt_file} is a nanoGPT model with {rows} token ids, not GPT-2's, and no meta.pkl "
                        f"was found to decode them ({where}); {fix}")
    if meta["tokenizer"] == "gpt2":
        if rows < GPT2_VOCAB:
            raise UserError(f"{tried[0]} holds GPT-2 BPE tokens but the model in {ckpt_file} has only {rows} "
                            f"token ids; {fix}")
    elif meta["vocab_size"] != rows:
        raise UserError(f"{tried[0]} has a vocabulary of {meta['vocab_size']} but the model in {ckpt_file} has "
                        f"{rows} token ids, so it is not the vocabulary the model was trained with; {fix}")
    return meta


def _rows(ckpt: dict, ckpt_file: Path) -> int:
    weight = None
    for key in ("transformer.wte.weight", ORIG_MOD + "transformer.wte.weight"):
        weight = ckpt["model"].get(key) if isinstance(ckpt.get("model"), dict) else None
        if weight is not None:
            break
    if weight is None or getattr(weight, "ndim", 0) != 2:
        raise UserError(f"{ckpt_file} has no transformer.wte.weight matrix; it is not a nanoGPT GPT checkpoint")
    return int(weight.shape[0])


def convert_state_dict(state: dict) -> dict:
    """nanoGPT's model state dict with our key names: `_orig_mod.` dropped, attn.bias masks skipped."""
    out = {}
    for key, tensor in state.items():
        key = key.removeprefix(ORIG_MOD)
        if key.endswith(MASK_BUFFER):  # the (1, 1, T, T) causal mask buffer, not a parameter
            continue
        out[key] = tensor
    if "lm_head.weight" not in out and "transformer.wte.weight" in out:  # tied: the head is wte
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def convert_checkpoint(ckpt: dict, path, dataset_hint=None, cwd=None) -> dict:
    """What a nanoGPT checkpoint holds, in our terms: (model, meta, loop_state, extras), from which
    checkpoint.load_checkpoint builds the dict it returns for ours.

    ckpt: the dict torch.load(weights_only=True) gave for nanoGPT's ckpt.pt; path: that file or its
    run folder (for finding meta.pkl and for messages); dataset_hint: a folder holding meta.pkl (or
    a dataset name, or one of our dataset folders) that overrides the search; cwd: where nanoGPT's
    sample.py would have run (default: the current folder).

    model: our GPT holding its weights; meta: its vocabulary as our meta.json; loop_state: iter_num
    and best_val_loss; extras: "nanogpt_source", "nanogpt_config", "nanogpt_vocabulary". The
    optimizer state is not carried over (its parameter groups are nanoGPT's). Problems are one-line
    UserErrors.
    """
    from model import GPT, GPTConfig

    ckpt_file, _ = _run_paths(path)
    args = ckpt.get("model_args")
    if not isinstance(args, dict) or any(key not in args for key in MODEL_ARGS):
        missing = [key for key in MODEL_ARGS if not isinstance(args, dict) or key not in args]
        raise UserError(f"{ckpt_file}: model_args lacks {', '.join(missing)}; not a nanoGPT checkpoint, or damaged")
    if not isinstance(ckpt.get("model"), dict):
        raise UserError(f"{ckpt_file} has no model state dict; not a nanoGPT checkpoint, or damaged")
    state = convert_state_dict(ckpt["model"])
    rows = _rows({"model": state}, ckpt_file)
    if rows != args["vocab_size"]:
        raise UserError(f"{ckpt_file}: model_args says vocab_size {args['vocab_size']} but the embedding has "
                        f"{rows} rows; the checkpoint is damaged")
    meta = find_vocabulary(ckpt, path, dataset_hint, cwd)
    fields = dict(block_size=args["block_size"], n_layer=args["n_layer"], n_head=args["n_head"],
                  n_embd=args["n_embd"], bias=bool(args["bias"]), dropout=float(args.get("dropout", 0.0)),
                  mlp="gelu_exact", **vocab_fields(meta["vocab_size"], rows))
    try:
        config = GPTConfig(**fields)
    except (TypeError, ValueError) as e:
        raise UserError(f"{ckpt_file}: model_args describe a model this code cannot build ({e})") from None
    best = ckpt.get("best_val_loss")
    config_dict = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    try:
        model = GPT.from_state_dict(config, state)
    except (RuntimeError, TypeError, KeyError) as e:
        raise UserError(f"{ckpt_file}: its weights do not fit its model_args ({str(e).splitlines()[0][:160]}); "
                        f"the checkpoint is damaged") from None
    best = float(best) if best is not None else float("inf")  # nanoGPT saves a 0-d tensor
    return (model, meta, {"iter_num": int(ckpt.get("iter_num", 0)), "best_val_loss": best},
            {"nanogpt_source": str(ckpt_file), "nanogpt_config": config_dict,
             "nanogpt_vocabulary": describe_vocabulary(meta)})
