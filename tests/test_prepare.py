"""Tests of the prepare scripts: prepare/text.py's inputs, splits, parallel output, memory, atomicity,
and the corpus scripts (shakespeare_char, shakespeare, python_stdlib, fineweb) offline.
"""

import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from smallgpt.errors import UserError
from smallgpt.tokenizer import read_meta, tokenizer_from_meta

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"
TIKTOKEN_CACHE = SHARED / "tiktoken_cache"

from smallgpt.prepare import prepare_dataset

META_KEYS = {"format_version", "tokenizer", "vocab_size", "dtype", "train_tokens", "val_tokens", "eot_token",
             "documents", "source"}


MAKE_SHARED = "`python prepare/shared.py` fills it while online"


@pytest.fixture
def gpt2_cache(monkeypatch):
    if not TIKTOKEN_CACHE.is_dir():
        pytest.skip(f"no tiktoken cache at {TIKTOKEN_CACHE}; {MAKE_SHARED}")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))


@pytest.fixture(scope="module")
def shakespeare() -> str:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"corpus not found at {SHAKESPEARE}; {MAKE_SHARED}")
    return SHAKESPEARE.read_text(encoding="utf-8")


def run(script: str, *args: str, cwd=REPO_ROOT, env=None, timeout=120):
    full_env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(TIKTOKEN_CACHE), PYTHONUNBUFFERED="1")
    full_env.pop("GPT_DEBUG", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def load(out: Path):
    """(meta, train ids, val ids) of a prepared dataset, checked against meta.json."""
    meta = read_meta(out)
    train = np.fromfile(out / "train.bin", dtype=meta["dtype"])
    val = np.fromfile(out / "val.bin", dtype=meta["dtype"])
    assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]
    assert META_KEYS <= set(meta) and set(meta) <= META_KEYS | {"vocab", "bpe"}
    assert ("vocab" in meta) == (meta["tokenizer"] == "char") and ("bpe" in meta) == (meta["tokenizer"] == "bpe")
    return meta, train, val


def decoded(out: Path) -> tuple[str, str]:
    meta, train, val = load(out)
    tok = tokenizer_from_meta(meta)
    return tok.decode(train), tok.decode(val)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]  # (above it, at most a cleared progress bar)
    assert err.startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in err, err


# ---------------------------------------------------------------------------------------------
# inputs


def test_files_folders_and_globs(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "b.txt").write_text("BBB\n")
    (src / "a.txt").write_text("AAA\n")
    (src / "sub" / "c.txt").write_text("CCC\n")
    (src / "notes.md").write_text("MMM\n")
    (src / ".hidden.txt").write_text("HHH\n")
    (src / "empty.txt").write_text("")

    meta = prepare_dataset([src], tmp_path / "all", "byte", progress=False)
    assert "".join(decoded(tmp_path / "all")) == "AAA\nBBB\nMMM\nCCC\n"  # sorted paths, hidden skipped
    assert meta["documents"]["train"] + meta["documents"]["val"] >= 4

    prepare_dataset([src], tmp_path / "inc", "byte", include="*.txt", progress=False)
    assert "".join(decoded(tmp_path / "inc")) == "AAA\nBBB\nCCC\n"

    proc = run("prepare/text.py", "--input", str(src / "**" / "*.txt"), str(src / "notes.md"),
               "--out_dir", str(tmp_path / "glob"), "--tokenizer", "char", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "".join(decoded(tmp_path / "glob")) == "AAA\nBBB\nCCC\nMMM\n"


def test_output_folder_inside_the_input_is_skipped(tmp_path):
    (tmp_path / "a.txt").write_text("some text\n" * 10)
    for _ in range(2):  # the second run must not read the first run's train.bin/meta.json
        prepare_dataset([tmp_path], tmp_path / "out", "byte", progress=False)
        assert "".join(decoded(tmp_path / "out")) == "some text\n" * 10


def test_missing_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        prepare_dataset([tmp_path / "nope.txt"], tmp_path / "out", "byte", progress=False)
    with pytest.raises(UserError, match="no files match"):
        prepare_dataset([str(tmp_path / "*.zzz")], tmp_path / "out", "byte", progress=False)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("x")
    with pytest.raises(UserError, match="--include"):
        prepare_dataset([tmp_path / "d"], tmp_path / "out", "byte", include="*.md", progress=False)
    with pytest.raises(UserError, match="char, byte, gpt2"):
        prepare_dataset([tmp_path / "d"], tmp_path / "out", "words", progress=False)
    with pytest.raises(UserError, match="val_fraction"):
        prepare_dataset([tmp_path / "d"], tmp_path / "out", "byte", val_fraction=1.5, progress=False)


def test_empty_input_and_empty_split(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="no text"):
        prepare_dataset([tmp_path / "empty.txt"], tmp_path / "out", "byte", progress=False)
    with pytest.raises(UserError, match="no text"):
        prepare_dataset([tmp_path / "empty.txt"], tmp_path / "out", "char", progress=False)
    (tmp_path / "one.txt").write_text("a")
    with pytest.raises(UserError, match="empty"):
        prepare_dataset([tmp_path / "one.txt"], tmp_path / "out", "byte", progress=False)
    assert not (tmp_path / "out" / "meta.json").exists()


def test_jsonl_and_gzip(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one\\n"}\n\n{"text": "twö\\n", "id": 2}\n')
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "three\n"}) + "\n")
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("four\nfour\n")
    meta = prepare_dataset([str(tmp_path / "*")], tmp_path / "out", "byte", progress=False)
    assert "".join(decoded(tmp_path / "out")) == "one\ntwö\nthree\nfour\nfour\n"
    assert meta["documents"]["train"] + meta["documents"]["val"] >= 4  # 4 documents; the tail may cut one

    (tmp_path / "field.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(UserError, match=r"field.jsonl:1 .*--text_field"):
        prepare_dataset([tmp_path / "field.jsonl"], tmp_path / "out2", "byte", progress=False)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2 is not valid JSON"):
        prepare_dataset([tmp_path / "bad.jsonl"], tmp_path / "out2", "byte", progress=False)
    (tmp_path / "fake.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="gzip"):
        prepare_dataset([tmp_path / "fake.gz"], tmp_path / "out2", "byte", progress=False)


def test_text_field_option(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"content": "hello "}\n{"content": "there"}\n')
    prepare_dataset([tmp_path / "c.jsonl"], tmp_path / "out", "char", text_field="content", progress=False)
    assert "".join(decoded(tmp_path / "out")) == "hello there"


def test_undecodable_bytes(tmp_path):
    (tmp_path / "good.txt").write_text("fine text\n" * 5)
    (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1") * 5)
    proc = run("prepare/text.py", "--input", str(tmp_path), "--out_dir", str(tmp_path / "out"), "--tokenizer", "byte")
    assert_one_line_error(proc, "latin1.txt", "--errors=replace")
    assert not (tmp_path / "out" / "meta.json").exists()

    proc = run("prepare/text.py", "--input", str(tmp_path / "latin1.txt"), "--out_dir", str(tmp_path / "out"),
               "--tokenizer", "char", "--errors", "replace", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "".join(decoded(tmp_path / "out")) == "caf\ufffd au lait\n" * 5

    help_text = run("prepare/text.py", "--help").stdout
    assert "--errors" in help_text and "U+FFFD" in help_text and "replace" in help_text


# ---------------------------------------------------------------------------------------------
# splits


def make_documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"<{i:04d}|" + "".join(rng.choice("abc de\n") for _ in range(rng.randint(5, 400))) + f"|{i:04d}>"
            for i in range(n)]


DOC_RE = re.compile(r"<(\d{4})\|[abc de\n]*\|(\d{4})>")


def split_documents(text: str) -> list[int]:
    """Indices of the whole documents in text; fails if anything else is there."""
    found = [(m.start(), m.end(), m.group(1), m.group(2)) for m in DOC_RE.finditer(text)]
    assert sum(e - s for s, e, _, _ in found) == len(text), "a document was cut"
    assert all(a == b for _, _, a, b in found)
    return [int(a) for _, _, a, _ in found]


@pytest.mark.parametrize("tokenizer", ["char", "byte"])
def test_split_by_document_is_whole_and_seeded(tmp_path, tokenizer):
    docs = make_documents(400)
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, d in enumerate(docs):
        (folder / f"{i:04d}.txt").write_text(d)
    meta = prepare_dataset([folder], tmp_path / "a", tokenizer, seed=7, workers=2, progress=False)
    train, val = decoded(tmp_path / "a")
    train_ids, val_ids = split_documents(train), split_documents(val)
    assert sorted(train_ids + val_ids) == list(range(400))
    assert train_ids == sorted(train_ids) and val_ids == sorted(val_ids)  # original order kept
    assert 20 <= len(val_ids) <= 65  # about 10% of 400
    assert meta["documents"] == {"train": len(train_ids), "val": len(val_ids)}

    prepare_dataset([folder], tmp_path / "b", tokenizer, seed=7, workers=1, progress=False)
    assert decoded(tmp_path / "b") == (train, val)
    prepare_dataset([folder], tmp_path / "c", tokenizer, seed=8, progress=False)
    assert split_documents(decoded(tmp_path / "c")[1]) != val_ids


def test_gpt2_documents_end_with_eot(tmp_path, gpt2_cache):
    docs = make_documents(300, seed=3)
    meta = prepare_dataset(lambda: iter(docs), tmp_path / "out", "gpt2", progress=False)
    _, train, val = load(tmp_path / "out")
    assert meta["eot_token"] == 50256 and meta["dtype"] == "uint16"
    assert train[-1] == 50256 and val[-1] == 50256
    assert (train == 50256).sum() == meta["documents"]["train"] and (val == 50256).sum() == meta["documents"]["val"]
    tok = tokenizer_from_meta(meta)
    pieces = tok.decode(train).split("<|endoftext|>")[:-1]
    assert all(p in docs for p in pieces)


def test_tail_split_matches_nanogpt_shakespeare(tmp_path, shakespeare):
    meta = prepare_dataset([SHAKESPEARE], tmp_path / "out", "char", progress=False)
    assert (meta["train_tokens"], meta["val_tokens"]) == (1_003_854, 111_540)
    assert meta["vocab_size"] == 65 and meta["eot_token"] is None
    _, train, val = load(tmp_path / "out")
    stoi = {c: i for i, c in enumerate(sorted(set(shakespeare)))}
    ids = np.array([stoi[c] for c in shakespeare], dtype=np.uint16)
    assert np.array_equal(train, ids[:1_003_854]) and np.array_equal(val, ids[1_003_854:])


def test_tail_split_keeps_document_order(tmp_path):
    """Few documents: the tail split must see them in their original order whatever the hash chose."""
    docs = make_documents(30, seed=5)
    for seed in range(6):
        prepare_dataset(lambda: iter(docs), tmp_path / "out", "char", seed=seed, progress=False)
        train, val = decoded(tmp_path / "out")
        assert train + val == "".join(docs)


def test_max_tokens_stops_at_a_document_end(tmp_path, gpt2_cache):
    docs = make_documents(500, seed=2)
    metas = [prepare_dataset(lambda: iter(docs), tmp_path / f"w{w}", "gpt2", max_tokens=5000, workers=w,
                             progress=False) for w in (1, 3)]
    assert metas[0] == metas[1]
    _, train, val = load(tmp_path / "w1")
    assert 5000 <= len(train) + len(val) < 5000 + 500
    assert (tmp_path / "w1" / "train.bin").read_bytes() == (tmp_path / "w3" / "train.bin").read_bytes()
    # few documents written: the tail split, which needs their lengths in order
    meta = prepare_dataset(lambda: iter(docs), tmp_path / "few", "gpt2", max_tokens=300, progress=False)
    assert sum(meta["documents"].values()) < 10 and meta["val_tokens"] > 0


# ---------------------------------------------------------------------------------------------
# parallel output and cutting documents into pieces


def test_pieces_cut_anywhere_allowed_keep_gpt2_tokens(tmp_path, gpt2_cache, shakespeare):
    """Documents are cut into pieces for parallel encoding only where GPT-2's pattern cuts anyway: with
    pieces of a few characters (a cut at every allowed point), the tokens are those of a one-call encode."""
    from smallgpt.tokenizer import GPT2Tokenizer

    enc = GPT2Tokenizer().enc
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "  ", "\n", "\n\n", "\t", "'", "'s", "1", "23", ".", "!?", "é", "日", "\u00a0", "\r\n",
                "\x1c", "\u2028", "🙂"]
    docs = ["".join(rng.choice(alphabet) for _ in range(rng.randint(2, 60))) for _ in range(300)]
    docs = ["".join(docs), shakespeare[:20000]]  # two documents: the split is the token stream's tail
    meta = prepare_dataset(lambda: iter(docs), tmp_path / "out", "gpt2", workers=3, piece_chars=8, progress=False)
    _, train, val = load(tmp_path / "out")
    assert meta["documents"] == {"train": 2, "val": 1}
    assert np.concatenate([train, val]).tolist() == sum((enc.encode_ordinary(d) + [50256] for d in docs), [])


@pytest.mark.parametrize("tokenizer", ["gpt2", "char"])
def test_parallel_output_is_byte_identical(tmp_path, gpt2_cache, shakespeare, tokenizer):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_shakespeare.txt").write_text(shakespeare)
    for i, d in enumerate(make_documents(50, seed=9)):
        (folder / f"b{i:03d}.txt").write_text(d)
    outputs = []
    for workers in (1, 2, 5):  # pieces of 10,000 characters: many per document
        out = tmp_path / f"w{workers}"
        prepare_dataset([folder], out, tokenizer, workers=workers, piece_chars=10_000, progress=False)
        outputs.append([(out / n).read_bytes() for n in ("train.bin", "val.bin", "meta.json")])
    assert outputs[0] == outputs[1] == outputs[2]
    if tokenizer == "gpt2":  # pieces cut at safe points: the tokens of a one-call encode
        from smallgpt.tokenizer import GPT2Tokenizer

        enc = GPT2Tokenizer().enc
        files = sorted(folder.iterdir())
        expected = []
        for f in files:
            expected += enc.encode_ordinary(f.read_text()) + [50256]
        meta, train, val = load(tmp_path / "w1")
        assert meta["documents"] == {"train": 1, "val": 51}  # 51 documents, too few: the tail 10% of the tokens
        assert np.concatenate([train, val]).tolist() == expected


def test_shakespeare_gpt2_is_one_call_encode(tmp_path, gpt2_cache, shakespeare):
    from smallgpt.tokenizer import GPT2Tokenizer

    proc = run("prepare/shakespeare.py", "--input", str(SHAKESPEARE), "--out_dir", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    meta, train, val = load(tmp_path / "out")
    assert (meta["train_tokens"], meta["val_tokens"]) == (304_223, 33_803)
    expected = GPT2Tokenizer().enc.encode_ordinary(shakespeare) + [50256]
    assert np.concatenate([train, val]).tolist() == expected


# ---------------------------------------------------------------------------------------------
# dtype, memory, atomic output


def test_uint32_for_large_char_vocabularies(tmp_path):
    text = "".join(chr(0x10000 + i) for i in range(70_000)) * 2
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    meta = prepare_dataset([tmp_path / "wide.txt"], tmp_path / "out", "char", progress=False)
    assert meta["vocab_size"] == 70_000 and meta["dtype"] == "uint32"
    _, train, val = load(tmp_path / "out")
    assert train.dtype == np.uint32 and int(train.max()) >= 65536
    assert "".join(decoded(tmp_path / "out")) == text


@pytest.mark.parametrize("tokenizer", ["byte", pytest.param("bpe", marks=pytest.mark.slow)])
def test_memory_stays_bounded(tmp_path, shakespeare, tokenizer):
    """A 150 MB corpus (one 100 MB file plus 1000 files) is prepared in well under its size of memory;
    a bpe trained on a 10 MB sample of it (--bpe_sample_bytes) too: its trainer streams as well."""
    if tokenizer == "bpe":
        pytest.importorskip("rustbpe", reason='rustbpe is not installed (pip install -e ".[bpe]")')
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    block = shakespeare.encode("utf-8")
    with open(corpus / "big.txt", "wb") as f:
        for _ in range(90):
            f.write(block)
    for i in range(1000):
        (corpus / f"doc{i:04d}.txt").write_bytes(block[i * 1000 : i * 1000 + 50_000])
    size_mb = sum(p.stat().st_size for p in corpus.iterdir()) / 1e6
    assert size_mb > 140
    from bench.prepare_speed import run_measured

    options = ["--tokenizer=byte"] if tokenizer == "byte" else ["--tokenizer=bpe", "--vocab_size=1024",
                                                                 "--bpe_sample_bytes=10000000"]
    _, peak_mb, _ = run_measured(REPO_ROOT / "prepare" / "text.py", "--input", str(corpus), "--out_dir",
                                 str(tmp_path / "out"), *options, "--workers", "2", "--quiet")
    meta, _, _ = load(tmp_path / "out")
    if tokenizer == "byte":
        assert meta["train_tokens"] + meta["val_tokens"] == int(size_mb * 1e6 + 0.5)
    else:
        assert meta["vocab_size"] == 1024 and meta["documents"]["train"] > 800
    # The tokens alone are 300 MB (uint16); reading everything first would need more than the
    # corpus size. With 2 workers the peak is ~75 MB here, ~35 MB of it the interpreter and numpy.
    assert peak_mb < 0.7 * size_mb, f"peak RSS {peak_mb:.0f} MB for a {size_mb:.0f} MB corpus"


def test_failed_run_leaves_previous_dataset(tmp_path):
    (tmp_path / "good.txt").write_text("good text\n" * 100)
    out = tmp_path / "out"
    prepare_dataset([tmp_path / "good.txt"], out, "byte", progress=False)
    before = {n: (out / n).read_bytes() for n in ("train.bin", "val.bin", "meta.json")}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_text("other text\n" * 1000)
    (bad / "b.txt").write_bytes(b"\xff\xfe broken")
    with pytest.raises(UserError, match="b.txt"):
        prepare_dataset([bad], out, "byte", progress=False)
    assert {n: (out / n).read_bytes() for n in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]  # no temporaries


# ---------------------------------------------------------------------------------------------
# corpus scripts


def test_shakespeare_char_offline_names_input(tmp_path):
    proc = run("prepare/shakespeare_char.py", "--url", "http://127.0.0.1:9/input.txt", "--timeout", "2", cwd=tmp_path)
    assert_one_line_error(proc, "--input")
    assert not (tmp_path / "data" / "shakespeare_char" / "meta.json").exists()


def test_shakespeare_char_from_input_and_cache(tmp_path, shakespeare):
    proc = run("prepare/shakespeare_char.py", "--input", str(SHAKESPEARE), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "data" / "shakespeare_char"  # default folder, relative to the current folder
    meta, _, _ = load(out)
    assert (meta["train_tokens"], meta["val_tokens"], meta["vocab_size"]) == (1_003_854, 111_540, 65)
    # a cached input.txt in the output folder is used without the network
    cached = tmp_path / "cached"
    cached.mkdir()
    (cached / "input.txt").write_text(shakespeare)
    proc = run("prepare/shakespeare_char.py", "--out_dir", str(cached), "--url", "http://127.0.0.1:9/x")
    assert proc.returncode == 0, proc.stderr
    assert load(cached)[0]["train_tokens"] == 1_003_854


@pytest.mark.slow
def test_python_stdlib_dataset(tmp_path):
    proc = run("prepare/python_stdlib.py", "--tokenizer=byte", "--out_dir", str(tmp_path / "std"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    meta, train, val = load(tmp_path / "std")
    assert meta["tokenizer"] == "byte" and meta["vocab_size"] == 256 and meta["eot_token"] is None
    assert meta["documents"]["train"] > 300 and meta["documents"]["val"] > 20
    assert meta["train_tokens"] > 5_000_000 and meta["val_tokens"] > 100_000
    assert b"def " in train[:200_000].astype(np.uint8).tobytes()

    from smallgpt.prepare import stdlib_files

    parts = {part for f in stdlib_files() for part in f.parts}
    assert not parts & {"site-packages", "dist-packages", "test", "tests"}


def test_fineweb_without_datasets_package(tmp_path, monkeypatch):
    from prepare import fineweb

    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(UserError, match="pip install datasets"):
        fineweb.main(["--out_dir", str(tmp_path / "fw"), "--max_documents", "10"])


def test_fineweb_offline_message(tmp_path, monkeypatch):
    from prepare import fineweb

    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'HuggingFaceFW/fineweb' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(UserError) as err:
        fineweb.main(["--out_dir", str(tmp_path / "fw"), "--max_documents", "10"])
    assert "network" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "fw" / "meta.json").exists()


def test_fineweb_streams_documents(tmp_path, monkeypatch, gpt2_cache):
    """With a stand-in for the Hub stream: max_documents, gpt2 tokens, and a split by document."""
    from prepare import fineweb

    records = [{"text": d, "id": i} for i, d in enumerate(make_documents(5000, seed=4))]
    monkeypatch.setitem(sys.modules, "datasets",
                        types.SimpleNamespace(load_dataset=lambda *a, **k: iter(records)))
    meta = fineweb.main(["--out_dir", str(tmp_path / "fw"), "--max_documents", "4000", "--val_fraction", "0.01"])
    assert meta["documents"]["train"] + meta["documents"]["val"] == 4000
    assert meta["documents"]["val"] > 10


# ---------------------------------------------------------------------------------------------
# --help of every prepare script


PREPARE_SCRIPTS = sorted(p.name for p in (REPO_ROOT / "prepare").glob("*.py")  # the ones run as scripts
                         if 'if __name__ == "__main__":' in p.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("script", PREPARE_SCRIPTS)
def test_help_states_each_default_once(script):
    proc = run(f"prepare/{script}", "--help")
    assert proc.returncode == 0, proc.stderr
    # one entry per option: a line "  -x, --name ..." and its wrapped continuation lines
    entries = []
    for line in proc.stdout.split("\noptions:\n", 1)[1].splitlines():
        if line.startswith("  -"):
            entries.append(line)
        elif entries:
            entries[-1] += line
    assert len(entries) > 2
    for entry in entries:
        entry = " ".join(entry.split())  # argparse wraps lines anywhere, "(default:" included
        assert entry.count("default:") <= 1, entry  # not "(default: all cores) (default: None)"
        assert "(default: None)" not in entry and "(default: False)" not in entry, entry
    assert proc.stdout.startswith(f"usage: python prepare/{script}")  # as one runs it, for the error hints


def test_bad_flags_are_one_line_errors():
    for script in ("shakespeare_char.py", "python_stdlib.py", "fineweb.py", "shared.py"):
        assert_one_line_error(run(f"prepare/{script}", "--nope"), "--nope", f"python prepare/{script} --help")


# ---------------------------------------------------------------------------------------------
# GPT-2 BPE offline, and prepare/shared.py (the folder the tests read), without the network

# Proxies that refuse every connection: a child process that tries to download fails at once.
NO_NETWORK = {name: "http://127.0.0.1:9" for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                                         "http_proxy", "https_proxy", "all_proxy")}
NO_NETWORK.update(NO_PROXY="", no_proxy="")
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"  # tiktoken_ext/openai_public.py
R50K_NAME = hashlib.sha1(R50K_URL.encode()).hexdigest()  # tiktoken's cache key: the SHA-1 of the URL


def test_gpt2_prepare_offline_says_how_to_get_the_file(tmp_path):
    (tmp_path / "a.txt").write_text("some text\n")
    env = dict(NO_NETWORK, TIKTOKEN_CACHE_DIR=str(tmp_path / "empty_cache"))
    proc = run("prepare/text.py", "--input", str(tmp_path / "a.txt"), "--out_dir", str(tmp_path / "out"), env=env)
    assert_one_line_error(proc, "r50k_base", "python prepare/shared.py", "TIKTOKEN_CACHE_DIR=", "--tokenizer=byte")
    assert not (tmp_path / "empty_cache").exists() or not any((tmp_path / "empty_cache").iterdir())


def _fake_tiktoken_download(source: Path | None) -> str:
    """Code that replaces tiktoken's downloader in prepare/shared.py's child: it serves `source`, or fails."""
    return f"""
import tiktoken.load
def read_file(blobpath, source={None if source is None else str(source)!r}):
    if source is None or blobpath != {R50K_URL!r}:
        raise ConnectionError("no network in this test: " + blobpath)
    with open(source, "rb") as f:
        return f.read()
tiktoken.load.read_file = read_file
"""


def test_shared_folder_is_filled_and_then_found(tmp_path, monkeypatch, capsys, shakespeare, gpt2_cache):
    """Files in tiktoken's layout, fetched by tiktoken itself (its download replaced by a local copy)."""
    from prepare import shared

    child = shared.TIKTOKEN_CHILD
    monkeypatch.setattr(shared, "TIKTOKEN_CHILD", _fake_tiktoken_download(TIKTOKEN_CACHE / R50K_NAME) + child)
    to = tmp_path / "shared"
    shared.main(["--to", str(to), "--url", SHAKESPEARE.as_uri()])
    layout = sorted(p.relative_to(to).as_posix() for p in to.rglob("*"))
    assert layout == ["data", "data/tinyshakespeare.txt", "tiktoken_cache", f"tiktoken_cache/{R50K_NAME}"]
    assert (to / "data" / "tinyshakespeare.txt").read_bytes() == SHAKESPEARE.read_bytes()
    assert f"export TIKTOKEN_CACHE_DIR={to / 'tiktoken_cache'}" in capsys.readouterr().out

    # GPT-2 BPE loads from the new folder with no network
    import tiktoken.load
    import tiktoken.registry

    from smallgpt.tokenizer import GPT2Tokenizer

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(to / "tiktoken_cache"))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setattr(tiktoken.load, "read_file", lambda blobpath: pytest.fail(f"downloads {blobpath}"))
    assert GPT2Tokenizer().encode("Hello world") == [15496, 995]

    # a second run finds both files: nothing is downloaded (both sources now fail), nothing changes
    monkeypatch.setattr(shared, "TIKTOKEN_CHILD", _fake_tiktoken_download(None) + child)
    shared.main(["--to", str(to), "--url", (tmp_path / "nowhere.txt").as_uri()])
    assert capsys.readouterr().out.count("already there") == 2
    assert sorted(p.relative_to(to).as_posix() for p in to.rglob("*")) == layout


def test_shared_offline_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    from prepare import shared

    to = tmp_path / "shared"
    proc = run("prepare/shared.py", "--to", str(to), "--url", (tmp_path / "missing.txt").as_uri(), env=NO_NETWORK)
    assert_one_line_error(proc, "could not download", "missing.txt", "network")
    assert not (to / "data" / "tinyshakespeare.txt").exists()

    # tiktoken's download fails: the text already there is kept, no cache file nor temporary folder stays
    (to / "data").mkdir(parents=True, exist_ok=True)
    (to / "data" / "tinyshakespeare.txt").write_text("First Citizen:\n")
    monkeypatch.setattr(shared, "TIKTOKEN_CHILD", _fake_tiktoken_download(None) + shared.TIKTOKEN_CHILD)
    with pytest.raises(UserError) as err:
        shared.main(["--to", str(to), "--url", (tmp_path / "missing.txt").as_uri()])
    msg = str(err.value)
    assert "r50k_base" in msg and "network" in msg and "\n" not in msg
    assert sorted(p.relative_to(to).as_posix() for p in to.rglob("*")) == ["data", "data/tinyshakespeare.txt"]
