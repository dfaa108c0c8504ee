"""Benchmark the BPE trainers on one corpus: rustbpe against Hugging Face tokenizers.

    python bench/bpe_trainers.py                                   # the Python stdlib corpus (~12 MB)
    python bench/bpe_trainers.py --corpus=200mb                    # stdlib + site-packages + C headers, 200 MB
    python bench/bpe_trainers.py --corpus=200mb --vocab_size=16384 --libraries rustbpe

Each library runs in its own process, on the same documents: the training split (about 90% of the
files, chosen as prepare/text.py chooses them), streamed to the trainer in the pieces
prepare/text.py cuts (never the whole text at once), with the same GPT-4-style pre-split pattern
and the same number of ranks. It prints, per library, the wall time of the whole process (reading
the files included), its CPU time, its peak resident memory (the child's VmHWM), and the bytes per
token of the trained tokenizer on the held-out files, encoded by tiktoken with the trained ranks
(so both are judged by the encoder prepare/text.py uses).

Corpora (file lists, read in place; nothing is copied):
  stdlib  the files prepare/python_stdlib.py reads
  200mb   those, then the .py files of site-packages, then /usr/include's headers, sorted, up to
          200 MB (--size_mb): code from many projects and in two languages, no file repeated
"""

import argparse
import json
import os
import sysconfig
import tempfile
from pathlib import Path

from prepare_speed import run_measured  # bench/prepare_speed.py, beside this file

from smallgpt import cli
from smallgpt.errors import UserError
from smallgpt.prepare import HelpFormatter, _is_val, _pieces, stdlib_files
from smallgpt.tokenizer import BPE_PATTERNS, BPETokenizer, byte_to_unicode

LIBRARIES = ("rustbpe", "tokenizers")
SEED, VAL_FRACTION = 1337, 0.1


def corpus_files(name: str, size_mb: float) -> list[Path]:
    """The files of a named corpus (see the module docstring)."""
    files = stdlib_files()
    if name == "stdlib":
        return files
    site = Path(sysconfig.get_paths()["purelib"])
    extra = sorted(site.rglob("*.py"), key=lambda p: p.as_posix())
    extra += sorted(Path("/usr/include").rglob("*.h"), key=lambda p: p.as_posix())
    seen = set(files)
    total = sum(f.stat().st_size for f in files)
    for f in extra:
        if total >= size_mb * 1e6:
            break
        if f.is_file() and not f.is_symlink() and f not in seen:
            files.append(f)
            seen.add(f)
            total += f.stat().st_size
    if total < size_mb * 1e6 * 0.95:
        raise UserError(f"found only {total / 1e6:.0f} MB of files for the {size_mb:.0f} MB corpus; lower --size_mb")
    return files


def split_files(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """(train, val) files: each non-empty file is a document, sent to val as prepare/text.py would."""
    docs = [f for f in files if f.stat().st_size > 0]
    train = [f for i, f in enumerate(docs) if not _is_val(SEED, i, VAL_FRACTION)]
    val = [f for i, f in enumerate(docs) if _is_val(SEED, i, VAL_FRACTION)]
    return train, val


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def training_pieces(files: list[Path]):
    for f in files:
        yield from _pieces(iter((read(f),)), anywhere=False)


def train_rustbpe(files, n_ranks: int, pattern: str) -> list[bytes]:
    from smallgpt.bpe import train_bpe

    return train_bpe(training_pieces(files), n_ranks + 1, pattern).tokens


def train_tokenizers(files, n_ranks: int, pattern: str) -> list[bytes]:
    """HF tokenizers' BpeTrainer with the same pattern (Split, then ByteLevel without its own regex)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=n_ranks, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    hf.train_from_iterator(training_pieces(files), trainer)
    merges = json.loads(hf.to_str())["model"]["merges"]
    byte_of = {c: b for b, c in byte_to_unicode().items()}
    spelled = [pair.split(" ") if isinstance(pair, str) else pair for pair in merges]
    return [bytes([b]) for b in range(256)] + [bytes(byte_of[c] for c in a + b) for a, b in spelled]


def child(library: str, n_ranks: int, corpus: str, size_mb: float, result: str) -> None:
    train, val = split_files(corpus_files(corpus, size_mb))
    pattern = BPE_PATTERNS["gpt4"]
    tokens = (train_rustbpe if library == "rustbpe" else train_tokenizers)(train, n_ranks, pattern)
    tok = BPETokenizer(tokens, pattern)
    n_bytes = n_tokens = 0
    for f in val:
        text = read(f)
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(tok.encode_array(text))
    Path(result).write_text(json.dumps({"ranks": len(tokens), "bytes_per_token": n_bytes / n_tokens,
                                        "train_files": len(train), "val_files": len(val)}))


def main(argv=None):
    parser = cli.ArgumentParser(prog="python bench/bpe_trainers.py", description=__doc__.strip().splitlines()[0],
                                formatter_class=HelpFormatter)
    parser.add_argument("--corpus", choices=("stdlib", "200mb"), default="stdlib", help="which files")
    parser.add_argument("--size_mb", type=float, default=200, help="size of the 200mb corpus")
    parser.add_argument("--vocab_size", type=int, default=4096, help="ids including <|endoftext|>")
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES), help="trainers to run")
    parser.add_argument("--child", choices=LIBRARIES, default=None, help=argparse.SUPPRESS)  # (one measured run)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n_ranks = args.vocab_size - 1
    if args.child:
        return child(args.child, n_ranks, args.corpus, args.size_mb, args.result)
    files = corpus_files(args.corpus, args.size_mb)
    mb = sum(f.stat().st_size for f in files) / 1e6
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_bpe-") as tmp:
        for library in args.libraries:
            result = Path(tmp) / f"{library}.json"
            wall, peak, cpu = run_measured(Path(__file__), "--child", library, "--corpus", args.corpus, "--size_mb",
                                           str(args.size_mb), "--vocab_size", str(args.vocab_size),
                                           "--result", str(result))
            rows.append((library, wall, cpu, peak, json.loads(result.read_text())))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"corpus {args.corpus}: {len(files)} files, {mb:.0f} MB ({rows[0][4]['train_files']} train files, "
          f"{rows[0][4]['val_files']} held out); vocab {args.vocab_size} ({n_ranks} ranks + <|endoftext|>); "
          f"{os.cpu_count()} cores; load average after the runs {load:.1f}")
    print("| trainer | wall s | CPU s | peak RSS MB | ranks | held-out bytes/token |")
    print("|---|---|---|---|---|---|")
    for library, wall, cpu, peak, res in rows:
        print(f"| {library} | {wall:.1f} | {cpu:.1f} | {peak:.0f} | {res['ranks']} | {res['bytes_per_token']:.3f} |")


if __name__ == "__main__":
    cli.run_main(main)
