"""The engine of the prepare scripts: text files in, train.bin / val.bin / meta.json out, streaming and parallel.

    from smallgpt.prepare import prepare_dataset
    meta = prepare_dataset(["notes/"], "data/notes", "char")

`prepare_dataset(...)` does what `python prepare/text.py` does (that script's docstring says what
it reads, what it writes and how the validation split is chosen); every prepare script calls it.

How it runs
  * streaming: files are read in chunks and tokens written as they come, so memory stays at tens
    of MB whatever the corpus size. Progress is counted in input bytes: a bar on a terminal, a
    plain line every few seconds when the output goes to a log (progress.py). The char tokenizer reads
    the input twice: once to collect its vocabulary, once to encode. A bpe reads it three times:
    to count documents (stopping once there are enough for a split by document), to learn its
    merges, and to encode.
  * parallel: documents are cut into ~1 MB pieces tokenized by `workers` threads (tiktoken and
    numpy release the GIL). gpt2 and bpe pieces are cut only after a line break that has non-space
    text on both sides, where both pre-split patterns split anyway, so the tokens equal a one-call
    encode and the output is byte-identical for any number of workers.
  * atomic: outputs are written to temporary files in the output folder and renamed into place only
    when everything succeeded, so a failed run leaves an earlier dataset there untouched.

Also here, for the prepare scripts: the options they share (`add_bpe_arguments`), the summary line
they print, `download` (atomic, with a one-line error offline), tiny Shakespeare's script
(`shakespeare_main`) and the standard library's files (`stdlib_files`, the quick start's corpus).
"""


import argparse
import contextlib
import fnmatch
import glob
import gzip
import io
import itertools
import json
import os
import shutil
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from array import array
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from smallgpt import cli
from smallgpt.bpe import DEFAULT_SAMPLE_BYTES, MAX_VOCAB, MIN_VOCAB, check_vocab_size, train_bpe
from smallgpt.bpe import DEFAULT_VOCAB as DEFAULT_BPE_VOCAB
from smallgpt.errors import UserError
from smallgpt.progress import progress as progress_report
from smallgpt.tokenizer import (BPE_PATTERNS, BPE_RANKS_FILE, KINDS, build_tokenizer, make_meta, read_meta, token_dtype,
                                tokenizer_from_meta, write_meta)

PIECE_CHARS = 1 << 20  # characters per tokenization task and per read from a file (prepare_dataset's piece_chars)
MIN_VAL_DOCS = 10  # split by document only when val_fraction of the documents is at least this many
TRACK_DOCS = 1 << 20  # document lengths remembered for the tail-split fallback (8 bytes each)
COPY_BYTES = 1 << 24  # buffer size when moving tokens between temporary files
BPE_SAMPLE_SALT = 0x5A3D  # added to the seed for the choice of bpe training pieces (not the val choice)
_MASK64 = (1 << 64) - 1
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
STDLIB_EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


# ----------------------------------------------------------------------------------------------
# inputs


def expand_inputs(inputs, include: str | None = None, skip=None) -> list[Path]:
    """Files named by `inputs` (files, folders, globs), each argument's files sorted, no repeats.

    Files found in folders or by globs under the folder `skip` (the output folder) are left out.
    """
    skip = Path(skip).resolve() if skip is not None else None
    files: list[Path] = []
    for item in inputs:
        item = str(item)
        path = Path(item)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = _walk(path, include)
        elif glob.has_magic(item):
            found = []
            for match in sorted(glob.glob(item, recursive=True)):
                m = Path(match)
                found.extend([m] if m.is_file() else _walk(m, include) if m.is_dir() else [])
            if not found:
                raise UserError(f"no files match {item!r}; check the pattern (quote it so the shell keeps '**')")
        else:
            raise UserError(f"input not found: {item} (give --input files, folders or glob patterns)")
        if skip is not None and not path.is_file():
            found = [f for f in found if not f.resolve().is_relative_to(skip)]
        if path.is_dir() and not found:
            hint = f" matching --include {include!r}" if include else ""
            raise UserError(f"no files{hint} in folder {item}; check --input and --include")
        files.extend(found)
    unique = list(dict.fromkeys(files))
    if not unique:
        raise UserError("no input files; pass --input with files, folders or glob patterns")
    return unique


def _walk(folder: Path, include: str | None) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name.startswith("."):
                continue
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            if include is None or fnmatch.fnmatch(name, include) or fnmatch.fnmatch(rel, include):
                found.append(p)
    return sorted(found, key=lambda p: p.as_posix())


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


class _Progress:
    """Counts input bytes (compressed bytes for .gz): a bar on a terminal, plain lines in a log, or nowhere."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = progress_report(total or None, desc, "B", unit_scale=True) if enabled else None

    def add(self, n: int):
        if self.bar is not None and n:
            self.bar.update(n)

    def close(self, failed: bool = False):
        """Finish the report; after a failure without a last "done" line (the error line follows)."""
        if self.bar is not None:
            getattr(self.bar, "abandon", self.bar.close)() if failed else self.bar.close()


@contextlib.contextmanager
def _reading(path: Path):
    """Turn decoding and gzip errors while reading `path` into one-line UserErrors."""
    try:
        yield
    except UnicodeDecodeError:
        raise UserError(
            f"{path} is not valid UTF-8 text; pass --errors=replace to substitute U+FFFD for "
            "undecodable bytes, or leave the file out (--include)"
        ) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise UserError(f"{path} is not a valid gzip file ({e}); fix or remove it") from None


def _file_documents(files: list[Path], text_field: str, errors: str, progress: _Progress, read_chars: int = PIECE_CHARS):
    """Yield one chunk iterator per document (a file, or a line of a .jsonl file)."""
    for path in files:
        with open(path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if path.name.endswith(".gz") else raw
            text = io.TextIOWrapper(stream, encoding="utf-8", errors=errors, newline="")
            seen = 0

            def advance():
                nonlocal seen
                pos = raw.tell()
                progress.add(pos - seen)
                seen = pos

            if _is_jsonl(path):
                with _reading(path):
                    for lineno, line in enumerate(text, 1):
                        if line.strip():
                            yield iter((_jsonl_text(line, path, lineno, text_field),))
                        if lineno % 1024 == 0:
                            advance()
            else:
                yield _text_chunks(path, text, advance, read_chars)
            advance()


def _text_chunks(path: Path, text, advance, read_chars: int):
    with _reading(path):
        while chunk := text.read(read_chars):
            advance()
            yield chunk


def _jsonl_text(line: str, path: Path, lineno: int, text_field: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{lineno} is not valid JSON ({e.msg}); each line of a .jsonl file must be one object") from None
    if not isinstance(obj, dict) or text_field not in obj:
        keys = ", ".join(map(repr, list(obj)[:5])) if isinstance(obj, dict) else "not an object"
        raise UserError(f"{path}:{lineno} has no {text_field!r} field (keys: {keys}); pick the field with --text_field")
    value = obj[text_field]
    if not isinstance(value, str):
        raise UserError(f"{path}:{lineno}: field {text_field!r} is a {type(value).__name__}, not text; pick another --text_field")
    return value


def _memory_documents(make_documents, progress: _Progress):
    for doc in make_documents():
        if not isinstance(doc, str):
            raise UserError(f"documents must be strings, got {type(doc).__name__}")
        progress.add(len(doc))
        yield iter((doc,))


def iter_documents(inputs, include: str | None = None, text_field: str = "text", errors: str = "strict"):
    """The text of each document `prepare_dataset` would read from `inputs`, in its order, empties skipped.

    For eval.py, which scores text as prepared: a file is one document, as is each line of a .jsonl
    file; .gz is decompressed; bad input is a one-line UserError, as in prepare_dataset.
    """
    if errors not in ("strict", "replace"):
        raise UserError(f"--errors must be strict or replace, got {errors!r}")
    files = expand_inputs(inputs, include)
    for chunks in _file_documents(files, text_field, errors, _Progress(0, False, "")):
        text = "".join(chunks)
        if text:
            yield text


# ----------------------------------------------------------------------------------------------
# cutting documents into pieces


def _safe_cut(buf: str, lo: int) -> int:
    """Last p >= lo with buf[p-1] == "\\n" and non-space characters at p-2 and p, or -1.

    GPT-2's pre-tokenizer regex, and both of tokenizer.BPE_PATTERNS, end a piece with that lone
    newline (after the punctuation run before it, if any) whether or not text follows, and start a
    fresh match at p; so encode(buf[:p]) + encode(buf[p:]) == encode(buf).
    (Python's isspace() covers every Unicode White_Space character, so "not isspace" is safe.)
    """
    i = buf.rfind("\n", max(lo - 1, 1), len(buf) - 1)
    while i >= max(lo - 1, 1):
        if not buf[i - 1].isspace() and not buf[i + 1].isspace():
            return i + 1
        i = buf.rfind("\n", max(lo - 1, 1), i)
    return -1


def _pieces(chunks, anywhere: bool, piece_chars: int = PIECE_CHARS):
    """Cut one document's text chunks into pieces of about piece_chars that tokenize independently.

    anywhere=True (char, byte): any character boundary will do. Otherwise (gpt2, bpe) only _safe_cut
    points; a document without one stays whole.
    """
    buf = ""
    searched = 0  # buf[:searched] holds no cut point
    for chunk in chunks:
        buf = buf + chunk if buf else chunk
        while len(buf) >= piece_chars:
            if anywhere:
                cut = piece_chars
            else:
                cut = _safe_cut(buf, max(searched, 1))
                if cut < 0:
                    searched = max(len(buf) - 1, 0)
                    break
            yield buf[:cut]
            buf = buf[cut:]
            searched = 0
    if buf:
        yield buf


def _with_last(items):
    """Yield (item, is_last) pairs."""
    it = iter(items)
    try:
        prev = next(it)
    except StopIteration:
        return
    for item in it:
        yield prev, False
        prev = item
    yield prev, True


def _cut_chunks(chunks, n: int):
    """Two iterators over one document's chunks: its first n characters, then the rest.

    Consume the first before the second (they share the underlying iterator).
    """
    source = iter(chunks)
    rest: list[str] = []

    def head():
        left = n
        for chunk in source:
            if len(chunk) >= left:
                if left:
                    yield chunk[:left]
                rest.append(chunk[left:])
                return
            left -= len(chunk)
            yield chunk

    def tail():
        yield from rest
        yield from source

    return head(), tail()


def _routed_pieces(documents, anywhere: bool, seed: int, val_fraction: float, train_chars: int | None,
                   piece_chars: int = PIECE_CHARS):
    """(piece, last, doc, is_val) for each piece of each document, in order; empty documents skipped.

    doc numbers the non-empty documents from 0 and `last` marks a document's last piece. With
    train_chars None each document is sent whole to val with probability val_fraction (seeded by its
    number, _is_val); otherwise the first train_chars characters of the corpus are train and the rest
    val, the document holding that point being cut there (the bpe split of a corpus of few documents).
    """
    n_docs = position = 0
    for chunks in documents:
        if train_chars is None:
            pieces = ((piece, None) for piece in _pieces(chunks, anywhere, piece_chars))
        else:
            head, tail = _cut_chunks(chunks, max(train_chars - position, 0))
            pieces = itertools.chain(((piece, False) for piece in _pieces(head, anywhere, piece_chars)),
                                     ((piece, True) for piece in _pieces(tail, anywhere, piece_chars)))
        doc = doc_val = None
        for (piece, val), last in _with_last(pieces):
            if doc is None:  # the first non-empty piece: the document counts
                doc, n_docs = n_docs, n_docs + 1
                doc_val = _is_val(seed, doc, val_fraction)
            position += len(piece)
            yield piece, last, doc, doc_val if val is None else val


# ----------------------------------------------------------------------------------------------
# validation choice


def _is_val(seed: int, index: int, fraction: float) -> bool:
    """Seeded pseudo-random choice of a document for val (splitmix64 of seed and index)."""
    z = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z >> 11) * (1.0 / (1 << 53)) < fraction


# ----------------------------------------------------------------------------------------------
# the pipeline


class _Task:
    """A batch of pieces (about piece_chars characters) for one worker, see _encode_task."""

    __slots__ = ("texts", "ends", "docs", "vals", "chars")

    def __init__(self):
        self.texts: list[str] = []
        self.ends: list[bool] = []  # the piece is the last of its document
        self.docs: list[int] = []  # document index of each piece
        self.vals: list[bool] = []  # the piece goes to val.bin
        self.chars = 0

    def add(self, text: str, end: bool, doc: int, val: bool):
        self.texts.append(text)
        self.ends.append(end)
        self.docs.append(doc)
        self.vals.append(val)
        self.chars += len(text)


def _encode_task(tok, dtype, texts, ends):
    """Tokens of each piece (and eot after each document end): one array and the piece lengths."""
    arrays, lengths = [], []
    eot = np.array([tok.eot_token], dtype=np.uint32) if tok.eot_token is not None else None
    for text, end in zip(texts, ends):
        ids = tok.encode_array(text)
        if end and eot is not None:
            ids = np.concatenate([ids, eot])
        arrays.append(ids)
        lengths.append(len(ids))
    out = np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)
    return out, lengths


def _collect_vocab(documents) -> list[str]:
    chars: set[str] = set()
    for chunks in documents:
        for chunk in chunks:
            chars.update(chunk)
    return sorted(chars)


def _copy_range(src, dst, start: int, length: int):
    src.seek(start)
    while length > 0:
        block = src.read(min(COPY_BYTES, length))
        if not block:
            raise OSError("temporary token file ended early")
        dst.write(block)
        length -= len(block)


def prepare_dataset(inputs, out_dir, tokenizer: str | None = "gpt2", *, val_fraction: float = 0.1, seed: int = 1337,
                    workers: int | None = None, include: str | None = None, text_field: str = "text",
                    errors: str = "strict", max_tokens: int | None = None, source: str | None = None,
                    progress: bool = True, vocab_size: int | None = None, bpe_pattern: str = "gpt4",
                    bpe_sample_bytes: int = DEFAULT_SAMPLE_BYTES, tokenizer_from=None,
                    piece_chars: int = PIECE_CHARS) -> dict:
    """Tokenize a corpus into out_dir/{train.bin,val.bin,meta.json}; return the meta dict.

    inputs: a list of files, folders and glob patterns; or a function returning an iterable of
    document strings (called again for each pass: char collects its vocabulary first, a bpe
    counts documents and learns its merges first).
    max_tokens: stop at the first document end at or after this many tokens.
    vocab_size, bpe_pattern, bpe_sample_bytes: the bpe to train (tokenizer="bpe"; see smallgpt/bpe.py).
    tokenizer_from: a dataset folder or a run folder whose tokenizer to use instead of making one
    (tokenizer then None or its kind).
    piece_chars: characters per tokenization task and per read from a file. The output does not depend
    on it (nor on workers); smaller pieces spread a small corpus over more tasks.
    """
    if tokenizer_from is None and tokenizer not in KINDS:
        raise UserError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(KINDS)}")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if errors not in ("strict", "replace"):
        raise UserError(f"--errors must be strict or replace, got {errors!r}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    workers = cli.usable_threads(workers, key="workers") if workers else os.cpu_count() or 1  # (more threads than cores only queue)

    if callable(inputs):
        total_bytes = 0
        describe = source or "documents"

        def documents(bar):
            return _memory_documents(inputs, bar)
    else:
        files = expand_inputs(inputs, include, skip=out_dir)
        total_bytes = sum(os.path.getsize(f) for f in files)
        describe = source or _describe_files(inputs, files)

        def documents(bar):
            return _file_documents(files, text_field, errors, bar, piece_chars)

    passes = _Passes(documents, total_bytes, progress, val_fraction, seed)
    tok, split = _choose_tokenizer(passes, tokenizer, tokenizer_from, vocab_size, bpe_pattern, bpe_sample_bytes)
    dtype = np.dtype(token_dtype(tok.vocab_size))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
    try:
        counts = _tokenize(
            tok, dtype, documents, total_bytes, tmp, val_fraction, seed, workers, max_tokens, progress, split, piece_chars
        )
        meta = make_meta(tok, train_tokens=counts["train_tokens"], val_tokens=counts["val_tokens"],
                         documents={"train": counts["train_docs"], "val": counts["val_docs"]}, source=describe,
                         dtype=dtype.name)
        names = write_meta(tmp, meta)  # meta.json, and before it a bpe's ranks file
        # Everything is written: move into place, meta.json last (read_meta checks the sizes and the
        # ranks file's hash against it, so a half-replaced folder is refused, never misread).
        for name in ("train.bin", "val.bin", *names):
            os.replace(tmp / name, out / name)
        if tok.kind != "bpe" and (out / BPE_RANKS_FILE).is_file():
            (out / BPE_RANKS_FILE).unlink()  # an earlier bpe dataset's, no longer meant
        for stale in ("train.mask.bin", "val.mask.bin"):  # an earlier conversations dataset's (prepare/chat.py)
            (out / stale).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


class _Passes:
    """What a pass over the corpus before tokenizing needs: the documents, a progress bar, the split."""

    def __init__(self, documents, total_bytes: int, progress: bool, val_fraction: float, seed: int):
        self.documents, self.total_bytes, self.progress = documents, total_bytes, progress
        self.val_fraction, self.seed = val_fraction, seed

    @contextlib.contextmanager
    def reading(self, desc: str):
        """The documents, read with a progress bar named desc (closed as failed on an error)."""
        bar = _Progress(self.total_bytes, self.progress, desc)
        try:
            yield self.documents(bar)
        except BaseException:
            bar.close(failed=True)
            raise
        bar.close()


def _choose_tokenizer(passes: _Passes, kind, tokenizer_from, vocab_size, bpe_pattern, bpe_sample_bytes):
    """(tokenizer, split for _tokenize): reused from another folder, trained (bpe), collected (char) or fixed."""
    if vocab_size is not None and (tokenizer_from is not None or kind != "bpe"):
        raise UserError("--vocab_size is for a bpe trained here (--tokenizer=bpe); "
                        + ("--tokenizer_from's tokenizer has its own" if tokenizer_from is not None else
                           f"the {kind} tokenizer's vocabulary is fixed by its kind"))
    if tokenizer_from is not None:
        meta = tokenizer_source_meta(tokenizer_from)
        if kind is not None and kind != meta["tokenizer"]:
            raise UserError(f"--tokenizer={kind} but --tokenizer_from={tokenizer_from} holds a {meta['tokenizer']} "
                            f"tokenizer; give one of the two")
        return tokenizer_from_meta(meta, where=str(tokenizer_from)), "auto"
    if kind == "bpe":
        if bpe_pattern not in BPE_PATTERNS:
            raise UserError(f"--bpe_pattern must be one of {', '.join(BPE_PATTERNS)}, got {bpe_pattern!r}")
        vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size  # (0 is refused, not the default)
        check_vocab_size(vocab_size)
        if bpe_sample_bytes < 1:
            raise UserError(f"--bpe_sample_bytes must be positive, got {bpe_sample_bytes}")
        return _train_bpe(passes, vocab_size, BPE_PATTERNS[bpe_pattern], bpe_sample_bytes)
    vocab = None
    if kind == "char":
        with passes.reading("vocabulary") as documents:
            vocab = _collect_vocab(documents)
        if not vocab:
            raise UserError("the input holds no text; check --input (empty files are skipped)")
    return build_tokenizer(kind, vocab), "auto"


def _train_bpe(passes: _Passes, vocab_size: int, pattern: str, sample_bytes: int):
    """Learn a bpe from the training split only; return it and the split _tokenize must then make.

    The split is decided first, by a pass that stops as soon as there are documents enough for a
    split by document ("document"); a corpus of fewer documents is split by characters instead (an
    int: the first 1 - val_fraction of its characters are train), because the token stream's tail
    that the other tokenizers send to val is not known before the tokenizer exists.
    """
    train_chars, train_bytes = _plan_bpe_split(passes)
    split = "document" if train_chars is None else train_chars
    if train_bytes is None and passes.total_bytes:  # by document: estimated from the files' sizes
        train_bytes = int(passes.total_bytes * (1 - passes.val_fraction))
    fraction = 1.0 if train_bytes is None or train_bytes <= sample_bytes else sample_bytes / train_bytes
    if fraction < 1:
        print(f"bpe: the training text is about {_size(train_bytes)}, more than --bpe_sample_bytes="
              f"{_size(sample_bytes)}: learning from a seeded sample of about 1 piece in {1 / fraction:.1f}")
    stats = {"bytes": 0, "capped": False}
    started = time.perf_counter()
    with passes.reading("bpe training text") as documents:
        pieces = _routed_pieces(documents, False, passes.seed, passes.val_fraction, train_chars)
        tok = train_bpe(_bpe_training_text(pieces, passes.seed, fraction, sample_bytes, stats), vocab_size, pattern)
    if stats["bytes"] == 0:
        raise UserError("the training split holds no text to learn a bpe from; check --input and --val_fraction")
    if stats["capped"]:
        print(f"bpe: stopped reading training text at --bpe_sample_bytes={_size(sample_bytes)}: the rest of it "
              f"is not in the sample" + (" (it is bigger than its files' size suggested)" if fraction < 1 else ""))
    print(f"bpe: learned {len(tok.tokens) - 256:,} merges ({tok.vocab_size:,} ids with <|endoftext|>) from "
          f"{_size(stats['bytes'])} of training text in {time.perf_counter() - started:.1f} s")
    if tok.vocab_size < vocab_size:
        print(f"bpe: the training text had no more pairs to merge: the vocabulary is {tok.vocab_size:,} ids, "
              f"not the {vocab_size:,} asked for")
    return tok, split


def _size(n_bytes: int) -> str:
    if n_bytes < 1000:
        return f"{n_bytes} bytes"
    return f"{n_bytes / 1e6:,.1f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:,.1f} kB"


def _plan_bpe_split(passes: _Passes) -> tuple[int | None, int | None]:
    """(None, None) when there are documents enough for a split by document; else (train characters,
    train UTF-8 bytes) of a split by characters (see _train_bpe)."""
    n_docs = n_chars = n_bytes = 0
    with passes.reading("counting documents") as documents:
        for chunks in documents:
            chars = 0
            for chunk in chunks:
                chars += len(chunk)
                n_bytes += len(chunk.encode("utf-8", "surrogatepass"))
            if chars:
                n_docs += 1
                n_chars += chars
                if n_docs * passes.val_fraction >= MIN_VAL_DOCS:
                    documents.close()  # enough: the split is by document (as _finish_split decides)
                    return None, None
    train_chars = int(n_chars * (1 - passes.val_fraction))
    return train_chars, int(n_bytes * train_chars / max(n_chars, 1))


def _bpe_training_text(pieces, seed: int, fraction: float, sample_bytes: int, stats: dict):
    """The train pieces of _routed_pieces, each kept with probability `fraction` (seeded by its
    number), until sample_bytes UTF-8 bytes were kept; stats counts the bytes and the cut."""
    index = 0
    for piece, _, _, val in pieces:
        if val:
            continue
        index += 1
        if fraction < 1 and not _is_val(seed + BPE_SAMPLE_SALT, index, fraction):
            continue
        try:
            n = len(piece.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates (from JSON escapes): replaced, as tiktoken encodes them
            piece = piece.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            n = len(piece.encode("utf-8"))
        if stats["bytes"] and stats["bytes"] + n > sample_bytes:
            stats["capped"] = True
            return
        stats["bytes"] += n
        yield piece


def tokenizer_source_meta(folder) -> dict:
    """The meta dict, tokenizer included, of a dataset folder (meta.json) or a run (its ckpt.pt)."""
    path = Path(folder)
    checkpoint_file = path if path.is_file() else path / "ckpt.pt"
    if not (path / "meta.json").is_file() and checkpoint_file.is_file():
        from smallgpt.checkpoint import load_checkpoint  # (torch) only for a run's tokenizer

        meta = load_checkpoint(checkpoint_file).get("meta") or {}
        if meta.get("tokenizer") not in KINDS:
            raise UserError(f"{checkpoint_file} records no tokenizer (its run had no dataset metadata); "
                            "give the dataset folder it was trained on")
        return meta
    if not path.is_dir():
        raise UserError(f"--tokenizer_from={folder} is not a folder; give a dataset folder (meta.json) or a run "
                        "folder (ckpt.pt)")
    if not (path / "meta.json").is_file():
        raise UserError(f"--tokenizer_from={folder} holds neither meta.json (a dataset) nor ckpt.pt (a run)")
    return read_meta(path)


def _describe_files(inputs, files) -> str:
    names = ", ".join(str(i) for i in inputs)
    if len(names) > 120:
        names = names[:117] + "..."
    return f"{len(files)} file(s): {names}"


def _tokenize(tok, dtype, documents, total_bytes, tmp, val_fraction, seed, workers, max_tokens, progress,
              split="auto", piece_chars: int = PIECE_CHARS):
    """Stream documents through the workers into tmp/train.bin and tmp/val.bin; return counts.

    split: "auto" (by document, or the token stream's tail when there are too few documents),
    "document" (by document only), or an int: the first that many characters are train (see
    _routed_pieces; the choice a trained bpe was trained with).
    """
    itemsize = dtype.itemsize
    files = {"train": open(tmp / "train.bin", "wb"), "val": open(tmp / "val.bin", "wb")}
    docs = {"train": 0, "val": 0}  # documents with text in each split
    last_doc = {"train": -1, "val": -1}
    lengths = array("q")  # tokens of each document (first TRACK_DOCS), negative when in val
    current_len = 0
    total = 0
    stopped = False

    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    pending: deque = deque()
    bar = _Progress(total_bytes, progress, "tokenizing")

    def drain_one():
        nonlocal current_len, total, stopped
        task, result = pending.popleft()
        ids, piece_lengths = result.result() if pool is not None else result
        if stopped:
            return
        start = 0
        for doc, end, val, n in zip(task.docs, task.ends, task.vals, piece_lengths):
            split_name = "val" if val else "train"
            ids[start : start + n].tofile(files[split_name])
            start += n
            current_len += n
            total += n
            if last_doc[split_name] != doc:
                docs[split_name] += 1
                last_doc[split_name] = doc
            if end:
                if doc < TRACK_DOCS:
                    lengths.append(-current_len if val else current_len)
                current_len = 0
                if max_tokens is not None and total >= max_tokens:
                    stopped = True
                    return

    def submit(task):
        if pool is not None:
            pending.append((task, pool.submit(_encode_task, tok, dtype, task.texts, task.ends)))
        else:
            pending.append((task, _encode_task(tok, dtype, task.texts, task.ends)))
        while len(pending) > 2 * workers or (pending and pool is None):
            drain_one()

    try:
        task = _Task()
        anywhere = tok.kind in ("char", "byte")  # gpt2 and bpe pieces are cut where their pattern cuts
        train_chars = split if isinstance(split, int) else None
        for piece, last, doc, val in _routed_pieces(documents(bar), anywhere, seed, val_fraction, train_chars,
                                                    piece_chars):
            if stopped:
                break
            task.add(piece, last, doc, val)
            if task.chars >= piece_chars:
                submit(task)
                task = _Task()
        if task.texts:
            submit(task)
        while pending:
            drain_one()
    except BaseException:
        bar.close(failed=True)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()  # (a no-op after a failure)
        for f in files.values():
            f.close()
    return _finish_split(tmp, itemsize, docs, lengths, total, val_fraction, split)


def _finish_split(tmp: Path, itemsize: int, docs: dict, lengths, total: int, val_fraction: float,
                  split="auto") -> dict:
    """Keep the split made while tokenizing, or rewrite tmp/*.bin as the nanoGPT-style tail split.

    split: as _tokenize's; only "auto" may fall back to the tail split (a bpe was trained without
    the text a tail split would send to val, so its split is kept, and must leave neither side empty).
    """
    if total == 0:
        raise UserError("the input holds no text (zero tokens); check --input (empty files are skipped)")
    counts = {"train_docs": docs["train"], "val_docs": docs["val"]}
    n_docs = docs["train"] + docs["val"]  # (in the automatic split each document is in one of them)
    if split != "auto" or (n_docs * val_fraction >= MIN_VAL_DOCS and docs["train"] and docs["val"]):
        counts["train_tokens"] = (tmp / "train.bin").stat().st_size // itemsize
        counts["val_tokens"] = (tmp / "val.bin").stat().st_size // itemsize
        if not counts["train_tokens"] or not counts["val_tokens"]:
            empty = "val" if not counts["val_tokens"] else "train"
            raise UserError(f"the {val_fraction} validation split left {empty} empty ({total} tokens in all); "
                            f"add text or change --val_fraction")
        return counts

    # Too few documents: the last val_fraction of the token stream, in document order.
    n_train = int(total * (1 - val_fraction))
    n_val = total - n_train
    if n_val == 0 or n_train == 0:
        raise UserError(
            f"the corpus has only {total} tokens: a {val_fraction} validation split would leave "
            f"{'val' if n_val == 0 else 'train'} empty; add text or change --val_fraction"
        )
    if len(lengths) != n_docs:
        raise UserError(
            f"--val_fraction {val_fraction} is too small to pick validation documents among {n_docs}; raise it"
        )
    sizes = np.abs(np.frombuffer(lengths, dtype=np.int64))
    starts = np.cumsum(sizes) - sizes
    counts["train_docs"] = int(np.count_nonzero(starts < n_train))
    counts["val_docs"] = int(np.count_nonzero(starts + sizes > n_train))
    counts["train_tokens"], counts["val_tokens"] = n_train, n_val

    ordered = tmp / "ordered.bin"
    if docs["val"] == 0:
        os.replace(tmp / "train.bin", ordered)
    elif docs["train"] == 0:
        os.replace(tmp / "val.bin", ordered)
    else:  # interleave the documents back into their original order
        with open(tmp / "train.bin", "rb") as tr, open(tmp / "val.bin", "rb") as va, open(ordered, "wb") as out:
            for n in lengths:
                src = va if n < 0 else tr
                _copy_range(src, out, src.tell(), abs(n) * itemsize)
    with open(ordered, "r+b") as src, open(tmp / "val.bin", "wb") as val:
        _copy_range(src, val, n_train * itemsize, n_val * itemsize)
        src.truncate(n_train * itemsize)
    os.replace(ordered, tmp / "train.bin")
    return counts


# ----------------------------------------------------------------------------------------------
# command line


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help for the prepare scripts: the description as written, and each option's default said once.

    "(default: X)" is added to an option's help unless the help already says what the default is
    ("default: all cores"), the default is None (the help says what happens without the option),
    or the option is a flag (store_true: its default is always off).
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.nargs == 0 or "default" in text:
            return text
        return super()._get_help_string(action)


def add_bpe_arguments(parser) -> None:
    """The options of a trained bpe and of a reused tokenizer, for every prepare script that takes --tokenizer."""
    parser.add_argument("--vocab_size", type=int, default=None, at_least=MIN_VOCAB, at_most=MAX_VOCAB,
                        help=f"bpe: ids in all, <|endoftext|> included (default: {DEFAULT_BPE_VOCAB})")
    parser.add_argument("--bpe_pattern", choices=tuple(BPE_PATTERNS), default="gpt4",
                        help="bpe: the pre-split regex (merges never cross its pieces): GPT-4's or GPT-2's")
    parser.add_argument("--bpe_sample_bytes", type=int, default=DEFAULT_SAMPLE_BYTES, at_least=1, at_most=1 << 40,
                        help="bpe: learn from at most this much training text (UTF-8 bytes); a bigger corpus is "
                             "sampled (seeded), which keeps the trainer's memory and time bounded")
    parser.add_argument("--tokenizer_from", default=None, metavar="FOLDER",
                        help="use the tokenizer of this dataset folder (meta.json) or run folder (ckpt.pt) "
                             "instead of making one: the same ids, e.g. for a finetuning set or a second corpus")


def bpe_options(args) -> dict:
    """prepare_dataset's keyword arguments for the options add_bpe_arguments added."""
    return {"vocab_size": args.vocab_size, "bpe_pattern": args.bpe_pattern, "bpe_sample_bytes": args.bpe_sample_bytes,
            "tokenizer_from": args.tokenizer_from}


def print_summary(meta: dict, out_dir) -> None:
    print(
        f"wrote {out_dir}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
        f"({meta['tokenizer']}, vocab {meta['vocab_size']:,}, {meta['dtype']}; "
        f"documents {meta['documents']['train']:,} train / {meta['documents']['val']:,} val)"
        + (f"; tokenizer in {Path(out_dir) / meta['bpe']['ranks_file']}" if meta["tokenizer"] == "bpe" else "")
    )


# ----------------------------------------------------------------------------------------------
# corpora and downloads the prepare scripts share


def download(url: str, dest: Path, timeout: float, hint: str) -> None:
    """Write `url`'s content to `dest` atomically (temporary file beside it, then rename).

    A failure raises a one-line UserError ending with `hint` (what to do instead); no partial file stays.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url}")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        if os.path.getsize(tmp) == 0:
            raise ValueError("the download is empty")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's file is private; the downloaded one is not
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(f"could not download {url} ({reason}); {hint}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch_shakespeare(out_dir: Path, url: str = SHAKESPEARE_URL, timeout: float = 20.0) -> Path:
    """out_dir/input.txt, downloaded from `url` unless it is already there."""
    cached = out_dir / "input.txt"
    if cached.is_file() and cached.stat().st_size > 0:
        return cached
    download(url, cached, timeout, hint="without network pass the text with --input PATH, "
                                        "e.g. --input ../shared/data/tinyshakespeare.txt")
    return cached


def shakespeare_main(argv, tokenizer: str, default_out: str, doc: str, script: str):
    """prepare/shakespeare_char.py and prepare/shakespeare.py: tiny Shakespeare (downloaded, or --input) as one
    document, split at its tail, with `tokenizer`."""
    parser = cli.ArgumentParser(prog=f"python prepare/{script}", description=doc.strip().splitlines()[0],
                                formatter_class=HelpFormatter)
    parser.add_argument("--input", default=None, help="a local copy of tinyshakespeare input.txt (no download)")
    parser.add_argument("--out_dir", default=default_out, help="output folder (relative to the current folder)")
    parser.add_argument("--val_fraction", type=float, default=0.1, above=0, below=1,
                        help="share of the tokens (the tail) for val.bin")
    parser.add_argument("--url", default=SHAKESPEARE_URL, help="where to download the text from when --input is not given")
    parser.add_argument("--timeout", type=float, default=20.0, above=0, help="download timeout in seconds")
    parser.add_argument("--workers", type=int, default=None, at_least=1, help="tokenizer threads (default: all cores)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    if args.input is not None:
        path = Path(args.input)
        if not path.is_file():
            raise UserError(f"--input {args.input} is not a file; give the path of tinyshakespeare input.txt")
    else:
        path = fetch_shakespeare(out_dir, args.url, args.timeout)
    meta = prepare_dataset([path], out_dir, tokenizer, val_fraction=args.val_fraction, workers=args.workers,
                           source=f"tiny Shakespeare ({path.name}), {tokenizer}")
    print_summary(meta, out_dir)
    return meta


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's .py files, sorted, without third-party packages and test suites."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise UserError(f"the standard library folder {root} does not exist; pass another corpus to prepare/text.py")
    files = [p for p in root.rglob("*.py")
             if p.is_file() and not STDLIB_EXCLUDED_DIRS & set(p.relative_to(root).parts[:-1])]
    if not files:
        raise UserError(f"no .py files under {root}; pass another corpus to prepare/text.py")
    return sorted(files, key=lambda p: p.as_posix())
