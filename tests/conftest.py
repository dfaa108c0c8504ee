"""Shared test fixtures: paths, a character-level Shakespeare dataset, and a script runner.

The corpus and the GPT-2 vocabulary come from ../shared beside the checkout (as in CI; `python
prepare/shared.py` makes that folder while online); nothing is downloaded. Datasets are written with
the same format the prepare scripts produce.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import model

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"
TIKTOKEN_CACHE = SHARED / "tiktoken_cache"

# The in-process tests use tiny models, which one thread runs fastest (and CI has two cores).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread_after_each_test():
    """Tests that change torch's thread count (sample.main chooses one) do not leak it."""
    yield
    torch.set_num_threads(1)


def records(out_dir: Path, kind: str = "eval") -> list[dict]:
    """The records of out_dir/metrics.jsonl of one kind: "eval" (one per evaluation) or "train" (one
    per training line)."""
    lines = (Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind", "eval") == kind]


def training_line_fields(line: str) -> dict:
    """The fields of a training line, "iter 5/20: loss 4.0707, grad_norm 1.7166, lr 9.72e-04, 29.9 ms/iter,
    4,276 tok/s, eta 1s" -> {"iter": "5/20", "loss": "4.0707", "grad_norm": "1.7166", "lr": "9.72e-04",
    "ms/iter": "29.9", "tok/s": "4,276", "eta": "1s"}: a name and a value, in either order."""
    head, _, rest = line.partition(": ")
    assert head.startswith("iter "), line
    fields = {"iter": head.removeprefix("iter ")}
    for part in rest.split(", "):
        a, _, b = part.rpartition(" ")
        name, value = (a, b) if a and not a[0].isdigit() else (b, a)  # "loss 4.07" or "29.9 ms/iter"
        assert name and value and name not in fields, (part, line)
        fields[name] = value
    return fields


SIZE_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")  # the shape, not a switch


def model_switches() -> list[dict]:
    """Each architecture switch of model.GPTConfig set away from its default, one at a time: every value of
    a choice (GPTConfig.CHOICES), the other bool, and a changed number. Enumerated from GPTConfig's fields,
    so a new switch is covered by every test that uses this (compile, KV cache, export, resume)."""
    switches = []
    for f in dataclasses.fields(model.GPTConfig):
        if f.name in SIZE_FIELDS:
            continue
        if f.name in model.GPTConfig.CHOICES:
            switches += [{f.name: v} for v in model.GPTConfig.CHOICES[f.name] if v != f.default]
        elif isinstance(f.default, bool):
            switches.append({f.name: not f.default})
        elif isinstance(f.default, int):
            switches.append({f.name: 1 if f.default != 1 else 2})
        elif isinstance(f.default, float):
            switches.append({f.name: f.default * 2 if f.default else 0.1})
        else:
            raise AssertionError(f"GPTConfig.{f.name}: add a rule for its type to conftest.model_switches")
    return switches


def switch_id(switch: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in switch.items()) or "default"


def write_char_dataset(out_dir: Path, text: str, val_fraction: float = 0.1) -> dict:
    """train.bin / val.bin / meta.json for a character vocabulary, split at the tail like nanoGPT."""
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = sorted(set(text))
    stoi = {c: i for i, c in enumerate(vocab)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n_train = int(len(ids) * (1 - val_fraction))
    ids[:n_train].tofile(out_dir / "train.bin")
    ids[n_train:].tofile(out_dir / "val.bin")
    meta = {"format_version": 1, "tokenizer": "char", "vocab_size": len(vocab), "dtype": "uint16",
            "train_tokens": int(n_train), "val_tokens": int(len(ids) - n_train), "vocab": vocab,
            "eot_token": None, "documents": {"train": 1, "val": 1}, "source": "test"}
    (out_dir / "meta.json").write_text(json.dumps(meta))
    return meta


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"corpus not found at {SHAKESPEARE} (expected ../shared beside the checkout; "
                    "`python prepare/shared.py` fills it while online)")
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def char_dataset(tmp_path_factory, shakespeare_text) -> Path:
    """Character-level tiny Shakespeare (65 symbols), written once per test session."""
    out = tmp_path_factory.mktemp("shakespeare_char")
    write_char_dataset(out, shakespeare_text)
    return out


@pytest.fixture(scope="session")
def small_char_dataset(tmp_path_factory, shakespeare_text) -> Path:
    """The first 100k characters only: quick to read, enough for tiny models."""
    out = tmp_path_factory.mktemp("shakespeare_char_small")
    write_char_dataset(out, shakespeare_text[:100_000])
    return out


def torchrun_command(script, *args: str, nproc: int = 2, env: dict | None = None) -> tuple[list[str], dict]:
    """(command, environment) to run a script (train.py, or a file) under torchrun on this machine's
    CPUs: one thread per process (2 processes on CI's 2 cores), unbuffered output. `env` changes the
    environment; a value of None removes that variable."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO_ROOT / script), *args]
    return cmd, full_env


def run_script(script: str, *args: str, env: dict | None = None, timeout: float = 600, cwd=None):
    """Run a repo script ("train.py", "prepare/text.py") or a library module ("-m smallgpt.plot") with this
    Python; returns the CompletedProcess (text mode, output captured)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", TIKTOKEN_CACHE_DIR=str(TIKTOKEN_CACHE))
    full_env.pop("GPT_DEBUG", None)
    full_env.update(env or {})
    target = script.split() if script.startswith("-m ") else [str(REPO_ROOT / script)]
    return subprocess.run([sys.executable, *target, *args], cwd=cwd or REPO_ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
