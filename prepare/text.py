"""Turn text files into a training dataset: train.bin, val.bin and meta.json in one folder.

    python prepare/text.py --input notes/ --out_dir data/notes --tokenizer char
    python prepare/text.py --input 'corpus/**/*.jsonl.gz' --out_dir data/corpus --tokenizer gpt2

The default tokenizer, gpt2 (GPT-2 BPE), needs tiktoken's r50k_base file: tiktoken downloads it once
into its cache; offline, set TIKTOKEN_CACHE_DIR to a folder holding it (`python prepare/shared.py`
makes one while online), or use --tokenizer char or byte, which need no file.

What it reads
  * files, folders (walked recursively, hidden files and the output folder skipped, `--include '*.md'`
    filters names) and
    shell-style globs ('**' matches folders at any depth); the file order is sorted and deterministic.
  * plain text (any suffix), `.jsonl` (one JSON object per line, the text in `--text_field`), and
    the gzip-compressed forms `.txt.gz` / `.jsonl.gz` (any `.gz`), decompressed as a stream.
  * each file, or each line of a .jsonl file, is one document; empty documents are skipped.
  * text must be UTF-8: `--errors strict` (default) refuses a file with undecodable bytes,
    `--errors replace` substitutes U+FFFD for them.

What it writes (see tokenizer.py for the meta.json keys)
  * the tokens of every document, in order, as raw little-endian uint16 (uint32 when the vocabulary
    has more than 65535 tokens) in train.bin and val.bin, and meta.json describing them.
  * gpt2: each document is followed by <|endoftext|> (50256). char and byte: documents are simply
    concatenated, with no separator (their vocabularies have no end-of-text token).
  * validation split by document: a seeded hash of each document's index sends about
    `--val_fraction` of the documents to val.bin; no document is cut in two. When the corpus is too
    small for that (fewer than 10 / val_fraction documents, e.g. one Shakespeare file) the split is
    the last val_fraction of the token stream instead, as nanoGPT does.
  * outputs are written to temporary files in the output folder and renamed into place only when
    everything succeeded: a failed run leaves an earlier dataset there untouched.

How it runs
  * streaming: files are read in chunks and tokens written as they come, so memory stays at tens
    of MB whatever the corpus size. Progress is counted in input bytes: a bar on a terminal, a
    plain line every few seconds when the output goes to a log (progress.py). The char tokenizer reads
    the input twice: once to collect its vocabulary, once to encode.
  * parallel: documents are cut into ~1 MB pieces tokenized by `--workers` threads (tiktoken and
    numpy release the GIL). gpt2 pieces are cut only after a line break that has non-space text on
    both sides, where GPT-2's pre-tokenizer splits anyway, so the tokens equal a one-call encode and
    the output is byte-identical for any number of workers.

`prepare_dataset(...)` is the same thing as a Python function; the other prepare scripts use it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import fnmatch
import glob
import gzip
import io
import json
import os
import shutil
import tempfile
import zlib
from array import array
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import cli
from cli import UserError
from progress import progress as progress_report
from tokenizer import KINDS, build_tokenizer, make_meta, token_dtype

PIECE_CHARS = 1 << 20  # characters per tokenization task (a document is cut into pieces this big)
READ_CHARS = 1 << 20  # characters read from a text file at a time
MIN_VAL_DOCS = 10  # split by document only when val_fraction of the documents is at least this many
TRACK_DOCS = 1 << 20  # document lengths remembered for the tail-split fallback (8 bytes each)
COPY_BYTES = 1 << 24  # buffer size when moving tokens between temporary files
_MASK64 = (1 << 64) - 1


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
            raise UserError(f"input not found: {item} (give files, folders or glob patterns)")
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


def _file_documents(files: list[Path], text_field: str, errors: str, progress: _Progress):
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
                yield _text_chunks(path, text, advance)
            advance()


def _text_chunks(path: Path, text, advance):
    with _reading(path):
        while chunk := text.read(READ_CHARS):
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

    GPT-2's pre-tokenizer regex makes that lone newline a piece of its own whether or not text
    follows, and starts a fresh match at p; so encode(buf[:p]) + encode(buf[p:]) == encode(buf).
    (Python's isspace() covers every Unicode White_Space character, so "not isspace" is safe.)
    """
    i = buf.rfind("\n", max(lo - 1, 1), len(buf) - 1)
    while i >= max(lo - 1, 1):
        if not buf[i - 1].isspace() and not buf[i + 1].isspace():
            return i + 1
        i = buf.rfind("\n", max(lo - 1, 1), i)
    return -1


def _pieces(chunks, anywhere: bool):
    """Cut one document's text chunks into pieces of about PIECE_CHARS that tokenize independently.

    anywhere=True (char, byte): any character boundary will do. Otherwise (gpt2) only _safe_cut
    points; a document without one stays whole.
    """
    buf = ""
    searched = 0  # buf[:searched] holds no cut point
    for chunk in chunks:
        buf = buf + chunk if buf else chunk
        while len(buf) >= PIECE_CHARS:
            if anywhere:
                cut = PIECE_CHARS
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
    """A batch of pieces (about PIECE_CHARS characters) for one worker, see _encode_task."""

    __slots__ = ("texts", "ends", "docs", "chars")

    def __init__(self):
        self.texts: list[str] = []
        self.ends: list[bool] = []  # the piece is the last of its document
        self.docs: list[int] = []  # document index of each piece
        self.chars = 0

    def add(self, text: str, end: bool, doc: int):
        self.texts.append(text)
        self.ends.append(end)
        self.docs.append(doc)
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


def prepare_dataset(
    inputs,
    out_dir,
    tokenizer: str = "gpt2",
    *,
    val_fraction: float = 0.1,
    seed: int = 1337,
    workers: int | None = None,
    include: str | None = None,
    text_field: str = "text",
    errors: str = "strict",
    max_tokens: int | None = None,
    source: str | None = None,
    progress: bool = True,
) -> dict:
    """Tokenize a corpus into out_dir/{train.bin,val.bin,meta.json}; return the meta dict.

    inputs: a list of files, folders and glob patterns; or a function returning an iterable of
    document strings (called twice for the char tokenizer, which first collects its vocabulary).
    max_tokens: stop at the first document end at or after this many tokens.
    """
    if tokenizer not in KINDS:
        raise UserError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(KINDS)}")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if errors not in ("strict", "replace"):
        raise UserError(f"--errors must be strict or replace, got {errors!r}")
    workers = max(1, workers or os.cpu_count() or 1)

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
            return _file_documents(files, text_field, errors, bar)

    vocab = None
    if tokenizer == "char":
        bar = _Progress(total_bytes, progress, "vocabulary")
        try:
            vocab = _collect_vocab(documents(bar))
        except BaseException:
            bar.close(failed=True)
            raise
        bar.close()
        if not vocab:
            raise UserError("the input holds no text; check --input (empty files are skipped)")
    tok = build_tokenizer(tokenizer, vocab)
    dtype = np.dtype(token_dtype(tok.vocab_size))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
    try:
        counts = _tokenize(
            tok, dtype, documents, total_bytes, tmp, val_fraction, seed, workers, max_tokens, progress
        )
        meta = make_meta(tok, train_tokens=counts["train_tokens"], val_tokens=counts["val_tokens"],
                         documents={"train": counts["train_docs"], "val": counts["val_docs"]}, source=describe,
                         dtype=dtype.name)
        (tmp / "meta.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
        # Everything is written: move into place, meta.json last (read_meta checks the sizes).
        for name in ("train.bin", "val.bin", "meta.json"):
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _describe_files(inputs, files) -> str:
    names = ", ".join(str(i) for i in inputs)
    if len(names) > 120:
        names = names[:117] + "..."
    return f"{len(files)} file(s): {names}"


def _tokenize(tok, dtype, documents, total_bytes, tmp, val_fraction, seed, workers, max_tokens, progress):
    """Stream documents through the workers into tmp/train.bin and tmp/val.bin; return counts."""
    itemsize = dtype.itemsize
    files = {"train": open(tmp / "train.bin", "wb"), "val": open(tmp / "val.bin", "wb")}
    n_docs = 0
    docs = {"train": 0, "val": 0}
    doc_flags: dict[int, bool] = {}  # val choice of documents whose tokens are still in flight
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
        for doc, end, n in zip(task.docs, task.ends, piece_lengths):
            split = "val" if doc_flags[doc] else "train"
            ids[start : start + n].tofile(files[split])
            start += n
            current_len += n
            total += n
            if end:
                if doc < TRACK_DOCS:
                    lengths.append(-current_len if split == "val" else current_len)
                docs[split] += 1
                del doc_flags[doc]
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
        anywhere = tok.kind != "gpt2"
        for chunks in documents(bar):
            if stopped:
                break
            doc = None
            for piece, last in _with_last(_pieces(chunks, anywhere)):
                if doc is None:  # the first non-empty piece: the document counts
                    doc = n_docs
                    n_docs += 1
                    doc_flags[doc] = _is_val(seed, doc, val_fraction)
                task.add(piece, last, doc)
                if task.chars >= PIECE_CHARS:
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
    # (n_docs counts documents read; after a max_tokens stop fewer were written)
    return _finish_split(tmp, itemsize, docs["train"] + docs["val"], docs, lengths, total, val_fraction)


def _finish_split(tmp: Path, itemsize: int, n_docs: int, docs: dict, lengths, total: int, val_fraction: float) -> dict:
    """Keep the split by document, or rewrite tmp/*.bin as the nanoGPT-style tail split."""
    if total == 0:
        raise UserError("the input holds no text (zero tokens); check --input (empty files are skipped)")
    counts = {"train_docs": docs["train"], "val_docs": docs["val"]}
    if n_docs * val_fraction >= MIN_VAL_DOCS and docs["train"] and docs["val"]:
        counts["train_tokens"] = (tmp / "train.bin").stat().st_size // itemsize
        counts["val_tokens"] = (tmp / "val.bin").stat().st_size // itemsize
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


def main(argv=None):
    parser = cli.ArgumentParser(  # bad flags: one line, not usage
        prog="python prepare/text.py", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="files, folders (recursive) or glob patterns ('**' for any depth); .jsonl and .gz understood")
    parser.add_argument("--out_dir", required=True, help="folder for train.bin, val.bin and meta.json")
    parser.add_argument("--tokenizer", choices=KINDS, default="gpt2",
                        help="char: distinct characters; byte: UTF-8 bytes; gpt2: tiktoken BPE with <|endoftext|> after "
                             "each document (needs tiktoken's r50k_base file: downloaded once, or TIKTOKEN_CACHE_DIR)")
    parser.add_argument("--val_fraction", type=float, default=0.1,
                        help="share of documents for val.bin (share of the token stream's tail when there are few documents)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the choice of validation documents")
    parser.add_argument("--include", default=None, metavar="GLOB",
                        help="only files in input folders whose name (or path below the folder) matches, e.g. '*.txt'")
    parser.add_argument("--text_field", default="text", help="the JSON field holding the text in .jsonl files")
    parser.add_argument("--workers", type=int, default=None,
                        help="tokenizer threads (default: all cores; the output does not depend on it)")
    parser.add_argument("--errors", choices=("strict", "replace"), default="strict",
                        help="undecodable (non-UTF-8) bytes: strict stops naming the file; replace substitutes U+FFFD")
    parser.add_argument("--max_tokens", type=int, default=None, help="stop at the first document end after this many tokens")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    meta = prepare_dataset(
        args.input, args.out_dir, args.tokenizer, val_fraction=args.val_fraction, seed=args.seed,
        workers=args.workers, include=args.include, text_field=args.text_field, errors=args.errors,
        max_tokens=args.max_tokens, progress=not args.quiet,
    )
    print_summary(meta, args.out_dir)


def print_summary(meta: dict, out_dir) -> None:
    print(
        f"wrote {out_dir}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
        f"({meta['tokenizer']}, vocab {meta['vocab_size']:,}, {meta['dtype']}; "
        f"documents {meta['documents']['train']:,} train / {meta['documents']['val']:,} val)"
    )


if __name__ == "__main__":
    cli.run_main(main)
