"""Tokenizers for the trainer: characters, UTF-8 bytes, or GPT-2 BPE, behind one small interface.

Every tokenizer has
    kind        "char", "byte" or "gpt2" (the value stored in a dataset's meta.json)
    vocab_size  number of distinct token ids
    eot_token   id of the end-of-text token that separates documents, or None
    encode(text) -> list[int]
    decode(ids) -> str
and, for prepare/text.py, `encode_array(text) -> np.ndarray` (uint32) that skips the Python list.

    char  the sorted distinct characters of the training text; a character outside that vocabulary
          is an error (re-prepare the data, or use a prompt made of known characters).
    byte  the 256 UTF-8 byte values; any text can be encoded, decode replaces broken sequences.
    gpt2  tiktoken's "r50k_base" (the GPT-2 ranks, <|endoftext|> = 50256). Its ranks are not stored
          in datasets or checkpoints: tiktoken reads them from its cache file, downloaded once when
          online. Offline, set TIKTOKEN_CACHE_DIR to a folder holding that file; `python
          prepare/shared.py` makes one (../shared/tiktoken_cache) while online. Text is encoded as
          ordinary text: "<|endoftext|>" written in a document is not turned into the special token.

A dataset folder (train.bin, val.bin, meta.json) records its tokenizer in meta.json; use
`read_meta(folder)` and `tokenizer_from_meta(meta)` to get it back. Usage:

    tok = build_tokenizer("byte")
    ids = tok.encode("héllo")
    assert tok.decode(ids) == "héllo"
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from cli import UserError

KINDS = ("char", "byte", "gpt2")
META_FORMAT_VERSION = 1
GPT2_ENCODING = "r50k_base"  # same ranks and special token as tiktoken's "gpt2", one cache file
SHARED_DIR = Path(__file__).resolve().parent.parent / "shared"  # what prepare/shared.py fills by default


def token_dtype(vocab_size: int) -> str:
    """The dtype of a dataset's token files: "uint16" up to 65535 tokens, else "uint32".

    (65536 would still fit in uint16; it is kept at uint32 so the boundary is the one documented.)
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return "uint16" if vocab_size <= 65535 else "uint32"


class CharTokenizer:
    """One token per character: ids are positions in a list of distinct characters (sorted by prepare)."""

    kind = "char"
    eot_token = None

    def __init__(self, vocab: list[str]):
        if not vocab:
            raise UserError("the char tokenizer needs a non-empty vocabulary; re-prepare the dataset")
        if any(not isinstance(c, str) or len(c) != 1 for c in vocab):
            raise UserError("the char vocabulary must be a list of single characters; re-prepare the dataset")
        self.vocab = list(vocab)  # ids are positions in this list (prepare writes it sorted)
        if len(set(self.vocab)) != len(self.vocab):
            raise UserError("the char vocabulary has repeated characters; re-prepare the dataset")
        self.vocab_size = len(self.vocab)
        self.stoi = {c: i for i, c in enumerate(self.vocab)}
        # for encode_array: code points in increasing order and the id of each
        cps = np.array([ord(c) for c in self.vocab], dtype=np.uint32)
        order = np.argsort(cps, kind="stable")
        self._sorted_cps = cps[order]
        self._sorted_ids = order.astype(np.uint32)

    def _missing_error(self, text: str) -> UserError:
        missing = sorted(set(text) - self.stoi.keys())
        shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
        return UserError(
            f"{len(missing)} character(s) not in this char vocabulary: {shown}; "
            "use a prompt made of characters from the training text, or re-prepare the data with them"
        )

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            raise self._missing_error(text) from None

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised encode: code points looked up in the sorted vocabulary."""
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        pos = np.minimum(np.searchsorted(self._sorted_cps, cps), self.vocab_size - 1)
        if not np.array_equal(self._sorted_cps[pos], cps):
            raise self._missing_error(text)
        return self._sorted_ids[pos]

    def decode(self, ids) -> str:
        try:
            return "".join(self.vocab[int(i)] for i in ids)
        except IndexError:
            raise UserError(f"token id out of range for a char vocabulary of {self.vocab_size}") from None


class ByteTokenizer:
    """One token per UTF-8 byte: vocabulary 256, nothing is ever unknown."""

    kind = "byte"
    vocab_size = 256
    eot_token = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", "surrogatepass"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8).astype(np.uint32)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class GPT2Tokenizer:
    """GPT-2 byte-pair encoding through tiktoken (r50k_base); documents end with <|endoftext|>."""

    kind = "gpt2"

    def __init__(self):
        try:
            import tiktoken
        except ImportError:
            raise UserError("the gpt2 tokenizer needs tiktoken: pip install tiktoken") from None
        try:
            self.enc = tiktoken.get_encoding(GPT2_ENCODING)
        except Exception as e:  # tiktoken raises requests/urllib/OSError-flavoured errors offline
            cache = SHARED_DIR / "tiktoken_cache"
            raise UserError(
                f"GPT-2 BPE needs tiktoken's {GPT2_ENCODING} file: it is not in {_tiktoken_cache()} and downloading "
                f"it failed ({type(e).__name__}). Get it while online with `python prepare/shared.py` (fills {cache}) "
                f"and set TIKTOKEN_CACHE_DIR={cache} (or any folder holding the file); a sampling or training run "
                "of GPT-2 BPE data needs it too, while new data can be prepared without it (--tokenizer=byte "
                "or --tokenizer=char)"
            ) from None
        self.vocab_size = self.enc.n_vocab  # 50257
        self.eot_token = self.enc.eot_token  # 50256

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        # Same tokens as encode_ordinary (special-token text is ordinary text), without a list.
        try:
            return self.enc.encode_to_numpy(text, disallowed_special=())
        except UnicodeEncodeError:  # lone surrogates (e.g. from JSON escapes): as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return self.enc.encode_to_numpy(text, disallowed_special=())

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise UserError(f"token id {bad[0]} out of range for gpt2 (vocab {self.vocab_size})")
        return self.enc.decode(ids, errors="replace")


def _tiktoken_cache() -> str:
    """Where tiktoken looks for its cache files (as tiktoken.load.read_file_cached decides)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return f"{var}={os.environ[var]}" if os.environ[var] else f"tiktoken's cache ({var} is empty: no cache)"
    return f"tiktoken's cache {os.path.join(tempfile.gettempdir(), 'data-gym-cache')} (TIKTOKEN_CACHE_DIR is not set)"


def build_tokenizer(kind: str, vocab: list[str] | None = None):
    """Make a tokenizer by name; "char" needs its vocabulary (a list of characters)."""
    if kind == "char":
        if vocab is None:
            raise UserError("the char tokenizer needs a vocabulary; prepare a char dataset and use its meta.json")
        return CharTokenizer(vocab)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise UserError(f"unknown tokenizer {kind!r}; choose one of {', '.join(KINDS)}")


def same_vocabulary(a: dict, b: dict) -> bool:
    """Whether two meta dicts (a dataset's, a checkpoint's) give token ids the same meaning."""
    if a.get("tokenizer") != b.get("tokenizer"):
        return False
    return a.get("tokenizer") != "char" or a.get("vocab") == b.get("vocab")


def tokenizer_from_meta(meta: dict):
    """The tokenizer a dataset was prepared with, from its meta.json dict."""
    kind = meta.get("tokenizer")
    tok = build_tokenizer(kind, meta.get("vocab"))
    if "vocab_size" in meta and meta["vocab_size"] != tok.vocab_size:
        raise UserError(
            f"meta.json says vocab_size {meta['vocab_size']} but the {kind} tokenizer has {tok.vocab_size}; "
            "re-prepare the dataset"
        )
    return tok


def make_meta(tokenizer, *, train_tokens: int = 0, val_tokens: int = 0, documents: dict | None = None,
              source: str = "", dtype: str | None = None) -> dict:
    """The meta.json dict of a dataset tokenized with `tokenizer` (the one place that writes one).

    dtype: the token files' dtype, by default the smallest that fits (token_dtype); `vocab` is
    stored for the char tokenizer only, the whole vocabulary in id order.
    """
    meta = {"format_version": META_FORMAT_VERSION, "tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
            "dtype": dtype or token_dtype(tokenizer.vocab_size), "train_tokens": int(train_tokens),
            "val_tokens": int(val_tokens), "eot_token": tokenizer.eot_token, "documents": documents or {},
            "source": source}
    if tokenizer.kind == "char":
        meta["vocab"] = list(tokenizer.vocab)
    return meta


_META_TYPES = {
    "format_version": int,
    "tokenizer": str,
    "vocab_size": int,
    "dtype": str,
    "train_tokens": int,
    "val_tokens": int,
    "documents": dict,
    "source": str,
}


def validate_meta(meta, where: str = "meta.json") -> dict:
    """Check a meta.json dict's keys and types; raise UserError naming the first problem."""
    fix = "re-run the prepare script for this dataset"
    if not isinstance(meta, dict):
        raise UserError(f"{where} is not a JSON object; {fix}")
    for key, tp in _META_TYPES.items():
        if key not in meta:
            raise UserError(f"{where} lacks the key {key!r}; {fix}")
        value = meta[key]
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise UserError(f"{where}: {key!r} should be a {tp.__name__}, got {value!r}; {fix}")
    if meta["format_version"] != META_FORMAT_VERSION:
        raise UserError(f"{where} has format_version {meta['format_version']}, expected {META_FORMAT_VERSION}; {fix}")
    if meta["tokenizer"] not in KINDS:
        raise UserError(f"{where} names an unknown tokenizer {meta['tokenizer']!r}; {fix}")
    if meta["dtype"] not in ("uint16", "uint32") or meta["dtype"] != token_dtype(max(meta["vocab_size"], 1)):
        raise UserError(f"{where}: dtype {meta['dtype']!r} does not fit vocab_size {meta['vocab_size']}; {fix}")
    if meta["tokenizer"] == "char":
        vocab = meta.get("vocab")
        if not isinstance(vocab, list) or len(vocab) != meta["vocab_size"]:
            raise UserError(f"{where}: a char dataset needs 'vocab', a list of {meta['vocab_size']} characters; {fix}")
    eot = meta.get("eot_token")
    if eot is not None and (not isinstance(eot, int) or not 0 <= eot < meta["vocab_size"]):
        raise UserError(f"{where}: eot_token {eot!r} is not a token id; {fix}")
    return meta


def read_meta(dataset_dir) -> dict:
    """Load and validate <dataset_dir>/meta.json; also check train.bin/val.bin sizes when present."""
    folder = Path(dataset_dir)
    path = folder / "meta.json"
    if not path.is_file():
        raise UserError(f"{path} not found; prepare the dataset first (e.g. python prepare/shakespeare_char.py)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is corrupt ({e}); re-run the prepare script for this dataset") from None
    validate_meta(meta, str(path))
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in ("train", "val"):
        binfile = folder / f"{split}.bin"
        if binfile.exists() and binfile.stat().st_size != meta[f"{split}_tokens"] * itemsize:
            raise UserError(
                f"{binfile} holds {binfile.stat().st_size} bytes but meta.json says "
                f"{meta[f'{split}_tokens']} {meta['dtype']} tokens; the folder's files disagree: "
                f"re-run the prepare script for this dataset"
            )
    return meta
