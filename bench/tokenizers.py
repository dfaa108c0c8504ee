"""Tokenizers compared on the same text: bytes per token held out, and the quick start in bits per byte.

    python bench/tokenizers.py compression      # bpe 1K/4K/16K against byte and GPT-2 BPE, stdlib and Shakespeare
    python bench/tokenizers.py quickstart       # config/python_stdlib.toml on byte and on bpe 1K and 4K, 100 s each, twice
    python bench/tokenizers.py quickstart --vocab_sizes 2048 8192 --work_dir=bench-tok   # keep data and runs

compression: for each corpus a bpe of each size is trained by prepare/text.py on the corpus's
training split, and every tokenizer then encodes the same held-out text: the bpe datasets' val
split (the stdlib's held-out files; Shakespeare's last 10% of characters), which no bpe saw. Bytes
per token = UTF-8 bytes of that text / tokens encoding it (<|endoftext|> not counted). GPT-2's
column needs tiktoken's r50k_base file (TIKTOKEN_CACHE_DIR, see prepare/shared.py); without it the
column says n/a. Shakespeare is ../shared/data/tinyshakespeare.txt (--shakespeare=PATH).

quickstart: `python prepare/python_stdlib.py` with byte tokens and with a bpe of each
--vocab_sizes; 3 untimed steps on each (torch.compile caches a graph per vocabulary size: without
them the first run of a new size pays ~15-30 s of compilation out of its budget that the others do
not); then --repeats rounds (2) in which each dataset in turn gets `python train.py
config/python_stdlib.toml` (its 100 s budget, --max_seconds to change it) and `python eval.py
--split=val` on the whole val split, which is the same held-out files for every tokenizer (the
split is by file, seeded), in bits per byte, the measure that compares tokenizers. A tiny model
pays for a big vocabulary in its embedding and head (parameters and time per step); a bpe gives it
more text per block_size window and per step. The printed table (medians, and each run) says which
won on this machine.

Every step is a subprocess, as a user runs it; the data and runs go to a temporary folder unless
--work_dir names one. Measure on a quiet machine: the load average is printed with the results.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from smallgpt.cli import run_main
from smallgpt.errors import UserError
from smallgpt.tokenizer import EOT_TEXT, build_tokenizer, read_meta, tokenizer_from_meta

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, load average {load:.1f}"


def run(*command: str, cwd=REPO_ROOT) -> str:
    """Run a repo script with this Python; its stdout, or a UserError with its last error line."""
    proc = subprocess.run([sys.executable, *command], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"{' '.join(command[:2])} failed: {last}")
    return proc.stdout


def prepare(script_args: list[str], out: Path) -> dict:
    started = time.perf_counter()
    run(*script_args, f"--out_dir={out}")
    return {"meta": read_meta(out), "seconds": time.perf_counter() - started}


def held_out_documents(folder: Path) -> list[str]:
    """The text of a prepared bpe dataset's val split, one string per document."""
    meta = read_meta(folder)
    text = tokenizer_from_meta(meta).decode(np.fromfile(folder / "val.bin", dtype=meta["dtype"]))
    return [doc for doc in text.split(EOT_TEXT) if doc]


def bytes_per_token(tok, docs: list[str]) -> float:
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return n_bytes / sum(len(tok.encode_array(d)) for d in docs)


def compression(args, work: Path) -> None:
    shakespeare = Path(args.shakespeare)
    corpora = {"Python stdlib": ["prepare/python_stdlib.py", "--tokenizer=bpe"]}
    if shakespeare.is_file():
        corpora["tiny Shakespeare"] = ["prepare/text.py", f"--input={shakespeare}", "--tokenizer=bpe"]
    else:
        print(f"(no Shakespeare row: {shakespeare} not found; --shakespeare=PATH)")
    try:
        gpt2 = build_tokenizer("gpt2")
    except UserError:
        gpt2 = None
    sizes = args.vocab_sizes or [1024, 4096, 16384]
    rows = []
    for name, script in corpora.items():
        made = {v: prepare([*script, f"--vocab_size={v}"], work / f"{name.split()[-1]}-bpe{v}") for v in sizes}
        docs = held_out_documents(work / f"{name.split()[-1]}-bpe{sizes[0]}")
        cells = [bytes_per_token(build_tokenizer("byte"), docs), bytes_per_token(gpt2, docs) if gpt2 else None]
        cells += [bytes_per_token(tokenizer_from_meta(made[v]["meta"]), docs) for v in sizes]
        short = [f"bpe {v:,} has {made[v]['meta']['vocab_size']:,} ids" for v in sizes
                 if made[v]["meta"]["vocab_size"] < v]
        if short:
            print(f"{name}: the training text ran out of pairs to merge: {'; '.join(short)}")
        n_bytes = sum(len(d.encode()) for d in docs)
        rows.append((name, n_bytes, cells, [made[v]["seconds"] for v in sizes]))
    print(f"bytes per token on held-out text ({machine()})")
    print("| corpus (held-out text) | byte | GPT-2 BPE | " + " | ".join(f"bpe {v:,}" for v in sizes) + " |")
    print("|---" * (3 + len(sizes)) + "|")
    for name, n_bytes, cells, seconds in rows:
        shown = ["n/a" if c is None else f"{c:.2f}" for c in cells]
        print(f"| {name} ({n_bytes / 1e6:.2f} MB) | " + " | ".join(shown) + " |")
    for name, _, _, seconds in rows:
        print(f"{name}: prepare (train the bpe + tokenize) took " +
              ", ".join(f"{s:.0f} s for {v:,}" for v, s in zip(sizes, seconds)))


def quickstart(args, work: Path) -> None:
    sizes = args.vocab_sizes or [1024, 4096]
    variants = [("byte", ["--tokenizer=byte"])] + [(f"bpe {v:,}", ["--tokenizer=bpe", f"--vocab_size={v}"])
                                                   for v in sizes]
    datasets = {}
    for name, options in variants:
        datasets[name] = work / f"stdlib-{name.replace(' ', '').replace(',', '')}"
        prepare(["prepare/python_stdlib.py", *options], datasets[name])
    extra = [f"--max_seconds={args.max_seconds}"] if args.max_seconds else []
    for name, data in datasets.items():  # 3 untimed steps each: torch.compile caches each vocabulary's graphs,
        run("train.py", "config/python_stdlib.toml", f"--dataset={data}",  # so no run is charged compilation
            f"--out_dir={work / 'warm-up'}", "--overwrite=true", "--max_iters=3", "--eval_interval=3", "--eval_iters=2")
    found = {name: [] for name in datasets}
    for repeat in range(args.repeats):  # tokenizers in turn, so that a change in the machine's speed hits all
        for name, data in datasets.items():
            out = work / f"run-{data.name}-{repeat}"
            run("train.py", "config/python_stdlib.toml", f"--dataset={data}", f"--out_dir={out}", "--overwrite=true",
                *extra)
            evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            last = [r for r in evals if r.get("kind", "eval") == "eval"][-1]
            limit = [f"--max_tokens={args.eval_max_tokens}"] if args.eval_max_tokens else []
            result = json.loads(run("eval.py", f"--out_dir={out}", f"--dataset={data}", "--split=val", "--json",
                                    "--batch_size=64", *limit).strip().splitlines()[-1])
            found[name].append((last["iter"], last["val_loss"], result["bits_per_byte"], result["bytes"]))
            print(f"  {name}, round {repeat + 1}: {last['iter']:,} iterations, {result['bits_per_byte']:.4f} bits/byte",
                  flush=True)
    from smallgpt.checkpoint import load_checkpoint

    rows = []
    for name, data in datasets.items():
        ckpt = load_checkpoint(work / f"run-{data.name}-0" / "ckpt.pt")
        params = sum(t.numel() for k, t in ckpt["model"].items() if k != "lm_head.weight")  # (tied: once)
        iters, val_loss, bpb, n_bytes = (statistics.median(r[i] for r in found[name]) for i in range(4))
        rows.append((name, read_meta(data)["vocab_size"], params, iters, val_loss, bpb, int(n_bytes),
                     [r[2] for r in found[name]]))
    print(f"quick start (config/python_stdlib.toml, {args.max_seconds or 100:g} s budget) by tokenizer ({machine()}); "
          f"medians of {args.repeats}")
    print("| tokenizer | vocab | parameters | iterations | val loss (nats/token, train.py) | val bits/byte (eval.py) "
          "| each run |")
    print("|---|---|---|---|---|---|---|")
    for name, vocab, params, iters, val_loss, bpb, n_bytes, each in rows:
        print(f"| {name} | {vocab:,} | {params / 1e6:.2f}M | {iters:,.0f} | {val_loss:.3f} | {bpb:.4f} | "
              f"{', '.join(f'{b:.4f}' for b in each)} |")
    best = min(rows, key=lambda r: r[5])
    print(f"best: {best[0]} ({best[5]:.4f} bits/byte over {best[6]:,} val bytes"
          + (", --eval_max_tokens cut each split at a different byte count: a smoke test, not a comparison)"
             if args.eval_max_tokens else ")"))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python bench/tokenizers.py", description=__doc__.strip().splitlines()[0])
    parser.add_argument("what", choices=("compression", "quickstart"))
    parser.add_argument("--vocab_sizes", type=int, nargs="+", default=None,
                        help="bpe sizes (compression: 1024 4096 16384; quickstart: 1024 4096)")
    parser.add_argument("--shakespeare", default=str(SHAKESPEARE), help="tiny Shakespeare's input.txt")
    parser.add_argument("--max_seconds", type=float, default=0.0, help="quickstart: training budget (0: the config's)")
    parser.add_argument("--eval_max_tokens", type=int, default=0,
                        help="quickstart: score only this many val tokens (a smoke test; 0: the whole split)")
    parser.add_argument("--repeats", type=int, default=2, help="quickstart: runs of each tokenizer, in turn")
    parser.add_argument("--work_dir", default=None, help="keep datasets and runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.work_dir:
        work = Path(args.work_dir).resolve()
        work.mkdir(parents=True, exist_ok=True)
        (compression if args.what == "compression" else quickstart)(args, work)
        return
    with tempfile.TemporaryDirectory(prefix="bench-tokenizers-") as tmp:
        (compression if args.what == "compression" else quickstart)(args, Path(tmp))


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
