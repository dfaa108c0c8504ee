"""A byte-level BPE trained on the corpus (prepare --tokenizer=bpe): training on the train split only,
the files it writes and their checks, parallel output, --tokenizer_from, and a run on it end to end
(train, resume, sample and eval from the run folder alone, Hugging Face tokenizer.json export).

Needs rustbpe (the optional extra .[bpe]); the tests that train skip, saying so, without it.
"""

import base64
import importlib.util
import json
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, SHAKESPEARE, run_script
from smallgpt.errors import UserError
from smallgpt.tokenizer import (BPE_PATTERNS, EOT_TEXT, BPETokenizer, parse_ranks, read_meta, same_vocabulary,
                                tokenizer_from_meta)

from smallgpt.prepare import prepare_dataset

MIXED = ["def f(x):\n    return {'a': x ** 2}  # naïve café\n\n\n\t\tpass   \n",
         "héllo wörld ✓ 日本語のテキスト 🙂🙂 👩‍👩‍👧 12345678 it's DON'T they'll",
         "  \u00a0 \r\n\r\n  x\u2028y  \x00\x7f  <|endoftext|> end",
         "Ünïcödé ÅÄÖ ñ ß Ω жизнь مرحبا שלום ☃ ∑ ≥ €100.00\n" * 3]


@pytest.fixture(scope="module")
def rustbpe():
    return pytest.importorskip("rustbpe", reason='rustbpe is not installed (pip install -e ".[bpe]")')


def make_docs(n: int, seed: int = 0) -> list[str]:
    """Documents of code-like text, each with a marker word of its own repeated 40 times."""
    rng = random.Random(seed)
    words = ["def", "return", "self", "value", "import", "class", "None", "print", "if", "for", "in", "x", "y"]
    docs = []
    for i in range(n):
        marker = "".join(rng.choice("bcdfghjklmnpqrstvwz") for _ in range(7))
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))) for _ in range(rng.randint(3, 12))]
        docs.append("\n".join(lines) + "\n" + (" " + marker) * 40 + "\n")
    return docs


def marker_of(doc: str) -> str:
    return doc.rstrip("\n").rsplit(" ", 1)[1]


def trained(rustbpe, texts, vocab_size=600, pattern="gpt4") -> BPETokenizer:
    from smallgpt.bpe import train_bpe

    return train_bpe(iter(texts), vocab_size, BPE_PATTERNS[pattern])


# ---------------------------------------------------------------------------------------------
# the tokenizer and its file


def test_bpe_round_trip_and_ranks_file(rustbpe, tmp_path, monkeypatch):
    tok = trained(rustbpe, MIXED * 50 + make_docs(60))
    assert tok.kind == "bpe" and tok.vocab_size == 600 and tok.eot_token == 599 and len(tok.tokens) == 599
    assert tok.tokens[:256] == [bytes([b]) for b in range(256)]  # single bytes first, then the merges
    for text in MIXED:
        ids = tok.encode(text)
        assert tok.decode(ids) == text and tok.encode_array(text).tolist() == ids
        assert tok.eot_token not in ids  # "<|endoftext|>" written in a text is ordinary text
    assert len(tok.encode(MIXED[0])) < len(MIXED[0].encode()) / 2  # it learned merges
    # the ranks file is tiktoken's own format: tiktoken reads it as it is
    import tiktoken.load

    (tmp_path / "tokenizer.tiktoken").write_text(tok.ranks_text())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # (no cache: nothing written anywhere)
    ranks = tiktoken.load.load_tiktoken_bpe(str(tmp_path / "tokenizer.tiktoken"))
    assert ranks == {t: i for i, t in enumerate(tok.tokens)}
    assert parse_ranks(tok.ranks_text(), "x") == tok.tokens


def test_damaged_ranks_text_is_a_one_line_error(rustbpe):
    good = trained(rustbpe, MIXED * 5).ranks_text()
    lines = good.splitlines(keepends=True)
    damaged = {"not two fields": lines[:3] + ["garbage\n"] + lines[4:],
               "not base64": lines[:3] + ["@@@@ 3\n"] + lines[4:],
               "rank out of order": lines[:3] + lines[4:],
               "a byte missing": lines[1:],
               "a token twice": lines + [lines[300].split()[0] + f" {len(lines)}\n"]}
    for what, text in damaged.items():
        with pytest.raises(UserError) as err:
            parse_ranks("".join(text), "data/x/tokenizer.tiktoken")
        assert "data/x/tokenizer.tiktoken" in str(err.value) and "\n" not in str(err.value), what


def assert_split_by_document(folder, meta, expected: list[list[int]]) -> None:
    """train.bin and val.bin hold each document's expected tokens whole, in order, each in one of them."""
    rest = {split: np.fromfile(folder / f"{split}.bin", dtype=meta["dtype"]).tolist() for split in ("train", "val")}
    counts = {"train": 0, "val": 0}
    for ids in expected:
        split = next((s for s, left in rest.items() if left[:len(ids)] == ids), None)
        assert split is not None, f"document {sum(counts.values())} is not next in train.bin or val.bin"
        rest[split] = rest[split][len(ids):]
        counts[split] += 1
    assert rest == {"train": [], "val": []} and counts == meta["documents"], counts


@pytest.mark.parametrize("pattern", sorted(BPE_PATTERNS))
def test_pieces_cut_anywhere_allowed_keep_bpe_tokens(tmp_path, rustbpe, pattern):
    """Documents are cut into pieces for parallel encoding only where the pre-split pattern cuts anyway:
    with pieces of a few characters (a cut at every allowed point), a trained bpe's tokens are those of
    a one-call encode of each document, whichever pattern."""
    alphabet = ["a", "b", " ", "  ", "\n", "\n\n", "\t", "'", "'s", "'LL", "1", "2345", ".", "!?", "é", "日", "\u00a0",
                "\r\n", "\r", "\x1c", "\u2028", "🙂", "(", "_x", "-"]
    rng = random.Random(1)
    docs = ["".join(rng.choice(alphabet) for _ in range(rng.randint(2, 300))) for _ in range(150)] + MIXED
    meta = prepare_dataset(lambda: iter(docs), tmp_path / "out", "bpe", vocab_size=800, bpe_pattern=pattern,
                           workers=3, piece_chars=8, progress=False)
    tok = tokenizer_from_meta(meta)
    assert_split_by_document(tmp_path / "out", meta, [tok.encode(d) + [tok.eot_token] for d in docs])


def test_same_vocabulary_compares_ranks(rustbpe):
    def meta_of(tok):
        from smallgpt.tokenizer import bpe_meta

        return {"tokenizer": "bpe", "vocab_size": tok.vocab_size, "bpe": bpe_meta(tok)}

    a, b = trained(rustbpe, MIXED * 5), trained(rustbpe, make_docs(30))
    assert same_vocabulary(meta_of(a), meta_of(a)) and not same_vocabulary(meta_of(a), meta_of(b))
    assert tokenizer_from_meta(meta_of(a)).tokens == a.tokens
    broken = meta_of(a)
    broken["bpe"]["ranks"] = broken["bpe"]["ranks"].replace(" 300\n", " 300\n", 1)[:-20]
    with pytest.raises(UserError, match="SHA-256"):
        tokenizer_from_meta(broken, where="run/ckpt.pt")


# ---------------------------------------------------------------------------------------------
# prepare


def test_bpe_learns_from_train_documents_only(rustbpe, tmp_path, capsys):
    docs = make_docs(300, seed=4)
    meta = prepare_dataset(lambda: iter(docs), tmp_path / "out", "bpe", vocab_size=2000, workers=2, progress=False)
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] <= 2000 and meta["eot_token"] == meta["vocab_size"] - 1
    assert "bpe: learned" in capsys.readouterr().out
    read = read_meta(tmp_path / "out")
    tok = tokenizer_from_meta(read)
    train = np.fromfile(tmp_path / "out" / "train.bin", dtype=meta["dtype"])
    val = np.fromfile(tmp_path / "out" / "val.bin", dtype=meta["dtype"])
    val_docs = tok.decode(val).split(EOT_TEXT)[:-1]
    train_docs = tok.decode(train).split(EOT_TEXT)[:-1]
    assert sorted(train_docs + val_docs) == sorted(docs) and 15 <= len(val_docs) <= 50
    assert meta["documents"] == {"train": len(train_docs), "val": len(val_docs)}
    vocab = set(tok.tokens)
    learned = [(" " + marker_of(d)).encode() in vocab for d in train_docs]
    assert sum(learned) > 0.9 * len(train_docs)  # a train document's marker became a token
    assert not any((" " + marker_of(d)).encode() in vocab for d in val_docs)  # never a val document's


def test_bpe_splits_few_documents_by_characters(rustbpe, tmp_path, shakespeare_text):
    """One document: val is the text's last 10%, tokenized on its own, and the bpe never saw it."""
    tail_words = " ".join(["zyzzogeton"] * 300)
    text = shakespeare_text[:200_000] + tail_words + "\n"
    (tmp_path / "one.txt").write_text(text)
    meta = prepare_dataset([tmp_path / "one.txt"], tmp_path / "out", "bpe", vocab_size=1000, workers=2,
                           progress=False)
    tok = tokenizer_from_meta(read_meta(tmp_path / "out"))
    train = np.fromfile(tmp_path / "out" / "train.bin", dtype=meta["dtype"]).tolist()
    val = np.fromfile(tmp_path / "out" / "val.bin", dtype=meta["dtype"]).tolist()
    cut = int(len(text) * 0.9)
    assert train == tok.encode(text[:cut]) and val == tok.encode(text[cut:]) + [tok.eot_token]
    assert meta["documents"] == {"train": 1, "val": 1}
    assert b" zyzzogeton" not in set(tok.tokens) and len(tok.encode(" zyzzogeton")) > 2


def test_parallel_bpe_output_is_byte_identical(tmp_path, rustbpe, shakespeare_text):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_shakespeare.txt").write_text(shakespeare_text[:300_000])
    for i, d in enumerate(make_docs(120, seed=9) + MIXED):
        (folder / f"b{i:03d}.txt").write_text(d)
    outputs = []
    for workers in (1, 2, 5):
        out = tmp_path / f"w{workers}"
        prepare_dataset([folder], out, "bpe", vocab_size=1500, workers=workers, piece_chars=10_000, progress=False)
        outputs.append([(out / n).read_bytes() for n in ("train.bin", "val.bin", "meta.json", "tokenizer.tiktoken")])
    assert outputs[0] == outputs[1] == outputs[2]
    # pieces cut at safe points: each document's tokens are those of a one-call encode
    meta = read_meta(tmp_path / "w1")
    tok = tokenizer_from_meta(meta)
    expected = []
    for f in sorted(folder.iterdir()):  # 125 documents: split by document
        with open(f, encoding="utf-8", newline="") as doc:  # "\r\n" kept, as prepare reads it
            expected.append(tok.encode(doc.read()) + [tok.eot_token])
    assert_split_by_document(tmp_path / "w1", meta, expected)


def test_sampled_training_text_is_seeded_and_bounded(rustbpe, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, d in enumerate(make_docs(400, seed=2)):
        (folder / f"{i:03d}.txt").write_text(d)
    size = sum(f.stat().st_size for f in folder.iterdir())
    budget = size // 4
    for out in ("a", "b"):
        prepare_dataset([folder], tmp_path / out, "bpe", vocab_size=1200, bpe_sample_bytes=budget, progress=False)
    said = capsys.readouterr().out
    assert "seeded sample" in said and "--bpe_sample_bytes" in said
    learned = re.search(r"from ([\d.]+) kB of training text", said)
    assert learned and 0.5 * budget / 1e3 <= float(learned[1]) <= budget / 1e3 + 0.05, said
    assert (tmp_path / "a" / "tokenizer.tiktoken").read_bytes() == (tmp_path / "b" / "tokenizer.tiktoken").read_bytes()
    prepare_dataset([folder], tmp_path / "c", "bpe", vocab_size=1200, bpe_sample_bytes=budget, seed=5, progress=False)
    assert (tmp_path / "a" / "tokenizer.tiktoken").read_bytes() != (tmp_path / "c" / "tokenizer.tiktoken").read_bytes()


@pytest.mark.parametrize("vocab_size, rule", [("0", "must be at least 257"), ("5000000000", "must be at most 1,048,576")])
def test_a_vocab_size_out_of_range_is_one_line_before_any_work(vocab_size, rule, tmp_path, capsys, monkeypatch):
    """--vocab_size 0 once trained the default 4,096 ids without a word; 5e9 was rustbpe's OverflowError."""
    from smallgpt.cli import run_main

    monkeypatch.setattr(sys, "argv", ["text.py"])  # run_main looks for --debug there
    source = tmp_path / "in.txt"
    source.write_text("some text to learn from\n" * 100)
    argv = ["--input", str(source), "--out_dir", str(tmp_path / "out"), "--tokenizer", "bpe", "--vocab_size", vocab_size]
    with pytest.raises(SystemExit) as info:
        run_main(prepare_script("text").main, argv)
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: argument --vocab_size: {vocab_size} ({rule})"), err
    assert not (tmp_path / "out").exists()


def prepare_script(name: str):
    spec = importlib.util.spec_from_file_location(f"prepare_{name}", REPO_ROOT / "prepare" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tokenizer_from_reuses_the_ids(rustbpe, tmp_path):
    docs = make_docs(150, seed=6)
    prepare_dataset(lambda: iter(docs), tmp_path / "first", "bpe", vocab_size=800, progress=False)
    other = make_docs(40, seed=7)
    meta = prepare_dataset(lambda: iter(other), tmp_path / "second", tokenizer=None, tokenizer_from=tmp_path / "first",
                           progress=False)
    first = read_meta(tmp_path / "first")
    assert same_vocabulary(first, read_meta(tmp_path / "second")) and meta["vocab_size"] == first["vocab_size"]
    ranks = [(tmp_path / name / "tokenizer.tiktoken").read_bytes() for name in ("first", "second")]
    assert ranks[0] == ranks[1]
    with pytest.raises(UserError, match="holds a bpe tokenizer"):
        prepare_dataset(lambda: iter(other), tmp_path / "x", "char", tokenizer_from=tmp_path / "first", progress=False)
    with pytest.raises(UserError, match="--vocab_size"):
        prepare_dataset(lambda: iter(other), tmp_path / "x", None, vocab_size=500, tokenizer_from=tmp_path / "first",
                        progress=False)
    with pytest.raises(UserError, match="--vocab_size"):
        prepare_dataset(lambda: iter(other), tmp_path / "x", "byte", vocab_size=500, progress=False)
    with pytest.raises(UserError, match="neither meta.json"):
        prepare_dataset(lambda: iter(other), tmp_path / "x", None, tokenizer_from=tmp_path, progress=False)
    # a byte dataset written over a bpe one leaves no stale ranks file
    prepare_dataset(lambda: iter(other), tmp_path / "second", "byte", progress=False)
    assert not (tmp_path / "second" / "tokenizer.tiktoken").exists()


@pytest.mark.slow
def test_damaged_tokenizer_file_is_a_one_line_error(rustbpe, tmp_path):
    data = tmp_path / "data"
    prepare_dataset(lambda: iter(make_docs(120, seed=8)), data, "bpe", vocab_size=700, progress=False)
    ranks = data / "tokenizer.tiktoken"
    good = ranks.read_text()
    lines = good.splitlines(keepends=True)
    token, rank = lines[400].split()
    other = base64.b64encode(base64.b64decode(token) + b"!").decode()
    damaged = {"a bad line": "".join(lines[:5] + ["xx\n"] + lines[6:]),
               "too few ranks": "".join(lines[:-10]),
               "another token (hash)": "".join(lines[:400] + [f"{other} {rank}\n"] + lines[401:])}
    for what, text in damaged.items():
        ranks.write_text(text)
        with pytest.raises(UserError) as err:
            read_meta(data)
        assert str(ranks) in str(err.value) and "\n" not in str(err.value), what
    ranks.unlink()
    with pytest.raises(UserError, match="not found"):
        read_meta(data)
    ranks.write_text("".join(lines[:5] + ["xx\n"] + lines[6:]))
    proc = run_script("train.py", f"--dataset={data}", f"--out_dir={tmp_path / 'run'}", "--max_iters=1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(ranks) in proc.stderr.strip().splitlines()[-1]
    ranks.write_text(good)
    assert read_meta(data)["bpe"]["ranks"] == good


@pytest.mark.parametrize("args, vocab, merges, bytes_per_token", [
    ([], 1024, 767, 2.3),  # the quick start's default
    (["--tokenizer=bpe", "--vocab_size=4096"], 4096, 3839, 3),
], ids=["default", "4096"])
@pytest.mark.slow
def test_python_stdlib_bpe(rustbpe, tmp_path, args, vocab, merges, bytes_per_token):
    """The stdlib corpus with a bpe (the quick start's 1,024 ids by default), the files beside train.bin."""
    proc = run_script("prepare/python_stdlib.py", *args, f"--out_dir={tmp_path / 'std'}", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"bpe: learned {merges:,} merges" in proc.stdout and "tokenizer.tiktoken" in proc.stdout
    meta = read_meta(tmp_path / "std")
    assert sorted(p.name for p in (tmp_path / "std").iterdir()) == ["meta.json", "tokenizer.tiktoken", "train.bin",
                                                                    "val.bin"]
    on_disk = json.loads((tmp_path / "std" / "meta.json").read_text())
    assert "ranks" not in on_disk["bpe"] and on_disk["bpe"]["pattern"] == BPE_PATTERNS["gpt4"]
    assert meta["vocab_size"] == vocab and meta["eot_token"] == vocab - 1 and meta["dtype"] == "uint16"
    tok = tokenizer_from_meta(meta)
    val = np.fromfile(tmp_path / "std" / "val.bin", dtype=np.uint16)
    text = tok.decode(val)
    assert text.count(EOT_TEXT) == meta["documents"]["val"]
    assert len(text.encode()) / len(val) > bytes_per_token  # code: 2.5 bytes a token at 1,024 ids, 3.3 at 4,096


def test_python_stdlib_without_rustbpe_says_what_to_do(tmp_path, monkeypatch):
    """The quick start's default needs rustbpe; without it, one line names the install and the way around."""
    from prepare import python_stdlib

    monkeypatch.setitem(sys.modules, "rustbpe", None)  # as if not installed
    with pytest.raises(UserError, match=r'pip install -e "\.\[dev\]".*--tokenizer=byte'):
        python_stdlib.main([f"--out_dir={tmp_path / 'std'}"])
    assert not (tmp_path / "std").exists()


# ---------------------------------------------------------------------------------------------
# a run on a bpe dataset: train, resume, sample, eval, export


@pytest.fixture(scope="module")
def bpe_run(rustbpe, tmp_path_factory):
    """A tiny GPT-2-shaped model trained 10 iterations on a bpe dataset; (dataset folder, run folder)."""
    root = tmp_path_factory.mktemp("bpe_run")
    docs = make_docs(200, seed=11) + MIXED * 10
    prepare_dataset(lambda: iter(docs), root / "data", "bpe", vocab_size=700, progress=False)
    import train

    train.main([f"--dataset={root / 'data'}", f"--out_dir={root / 'run'}", "--n_layer=1", "--n_head=2", "--n_embd=32",
                "--block_size=32", "--batch_size=4", "--max_iters=10", "--eval_interval=5", "--eval_iters=2",
                "--device=cpu", "--dtype=float32", "--compile=false", "--log_interval=5"])
    return root / "data", root / "run"


def test_run_folder_alone_samples_and_evaluates(bpe_run, tmp_path, capsys):
    import eval as eval_mod
    import sample
    from smallgpt.checkpoint import load_checkpoint

    data, run = bpe_run
    alone = tmp_path / "alone"
    shutil.copytree(run, alone)  # no dataset folder beside it, none named
    ckpt = load_checkpoint(alone)
    assert ckpt["meta"]["bpe"]["ranks"] == (data / "tokenizer.tiktoken").read_text()
    capsys.readouterr()
    sample.main([f"--out_dir={alone}", "--start=def ", "--max_new_tokens=20", "--num_samples=2", "--seed=3"])
    assert capsys.readouterr().out.startswith("def ")
    (tmp_path / "t.txt").write_text(MIXED[1])
    result = eval_mod.main([f"--out_dir={alone}", f"--input={tmp_path / 't.txt'}", "--json"])
    tok = tokenizer_from_meta(ckpt["meta"])
    ids = tok.encode(MIXED[1])
    assert result["tokens"] == len(ids)  # every token after the first is scored, then <|endoftext|>
    assert result["bytes"] == len(MIXED[1].encode()) - len(tok.token_bytes(ids[0]))  # eot counts no bytes


def test_resume_and_a_different_bpe_dataset(bpe_run, tmp_path):
    import train

    data, run = bpe_run
    resumed = tmp_path / "run"
    shutil.copytree(run, resumed)
    train.main([f"--out_dir={resumed}", "--init_from=resume", "--max_iters=12", f"--dataset={data}"])
    other = tmp_path / "other"
    prepare_dataset(lambda: iter(make_docs(200, seed=12)), other, "bpe", vocab_size=700, progress=False)
    assert read_meta(other)["vocab_size"] == read_meta(data)["vocab_size"]  # same size, other ids
    with pytest.raises(UserError, match="cannot resume.*ranks"):
        train.main([f"--out_dir={resumed}", "--init_from=resume", "--max_iters=14", f"--dataset={other}"])
    with pytest.raises(UserError, match="--tokenizer_from"):
        train.main([f"--out_dir={tmp_path / 'ft'}", f"--init_from={run}", f"--dataset={other}", "--max_iters=1",
                    "--device=cpu", "--compile=false"])
    again = tmp_path / "again"
    prepare_dataset(lambda: iter(make_docs(50, seed=13)), again, None, tokenizer_from=run, progress=False)
    assert same_vocabulary(read_meta(again), read_meta(data))


def test_sample_text_streams_bpe_tokens_that_end_inside_a_character(rustbpe):
    from sample import SampleText

    tok = trained(rustbpe, make_docs(30), vocab_size=400)  # CJK and emoji stay as single bytes here
    text = MIXED[1] + MIXED[3]
    ids = tok.encode(text)
    assert any(tok.token_bytes(i).decode("utf-8", "replace").endswith("\ufffd") for i in ids)  # mid-character
    streamed = SampleText(tok)
    parts = [streamed.push(i) for i in ids] + [streamed.finish()]
    assert "".join(parts) == text and not any("\ufffd" in p for p in parts)
    stopped = SampleText(tok, stop="のテ")
    out = "".join(stopped.push(i) for i in ids) + stopped.finish()
    assert out == text[:text.index("のテ")] and stopped.done


def test_hf_export_tokenizer_json_encodes_like_tiktoken(bpe_run, tmp_path):
    transformers = pytest.importorskip("transformers", reason='transformers is not installed (pip install -e ".[hf]")')
    from smallgpt.interop import hf

    data, run = bpe_run
    hf.export_checkpoint(str(run), str(tmp_path / "export"))
    names = {p.name for p in (tmp_path / "export").iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "tokenizer.tiktoken", "smallgpt_meta.json"} <= names
    assert (tmp_path / "export" / "tokenizer.tiktoken").read_text() == (data / "tokenizer.tiktoken").read_text()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "export" / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    ours = tokenizer_from_meta(read_meta(data))
    texts = MIXED + [Path(REPO_ROOT / "prepare" / "text.py").read_text()[:30_000]]
    if SHAKESPEARE.is_file():
        texts.append(SHAKESPEARE.read_text()[:20_000])
    for text in texts:
        ids = ours.encode(text)
        # split_special_tokens: like ours, HF then reads "<|endoftext|>" in text as ordinary characters
        assert fast(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == ids
        assert auto(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == ids
        assert fast.decode(ids) == text
    assert auto.eos_token_id == ours.eot_token and len(auto) == ours.vocab_size
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["eos_token_id"] == ours.eot_token and config["vocab_size"] == ours.vocab_size
    assert hf.pretrained_meta(str(tmp_path / "export"))["bpe"]["ranks"] == ours.ranks_text()  # init_from=EXPORT works

