"""nanoGPT's checkpoints, data folders and meta.pkl, read safely (nanogpt.py, data.py).

  * a converted nanoGPT checkpoint (compiled `_orig_mod.` keys, attn.bias mask buffers) gives the
    logits of a reference forward written here from nanoGPT's math: manual causal attention, exact
    GELU, LayerNorm eps 1e-5, tied head; tanh GELU would not
  * the vocabulary: meta.pkl where nanoGPT's sample.py looks, then in the run's checkout, an
    explicit folder overriding both; GPT-2 BPE without one (padded 50304 rows); else one line
  * a nanoGPT data folder's tokens arrive byte for byte, with the tokenizer named
  * a meta.pkl or ckpt.pt that carries code is refused with one line and the code never runs

    python -m pytest tests/test_nanogpt.py -q
"""

import dataclasses
import io
import math
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from nanogpt_files import model_args_for, nanogpt_weights, write_meta_pkl, write_nanogpt_checkpoint, write_nanogpt_data

import train
from conftest import run_script
from model import GPTConfig
from smallgpt import init_from
from smallgpt.checkpoint import load_checkpoint, model_from_checkpoint
from smallgpt.data import BatchSampler, load_dataset
from smallgpt.errors import UserError
from smallgpt.interop import nanogpt
from smallgpt.tokenizer import tokenizer_from_meta

HAS_VOCAB_MULTIPLE = "vocab_multiple" in {f.name for f in dataclasses.fields(GPTConfig)}
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak. Ça va? Æsir ðø!\n" * 3


def char_vocab(text: str, seed: int = 0) -> list[str]:
    """The text's characters in a shuffled order: ids that are not sorted catch an order mix-up."""
    vocab = sorted(set(text))
    random.Random(seed).shuffle(vocab)
    return vocab


# ----------------------------------------------------------------------------- the reference

def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as nn.LayerNorm
    out = (x - mean) / torch.sqrt(var + eps) * weight
    return out + bias if bias is not None else out


def nanogpt_reference_logits(weights: dict, n_head: int, idx: torch.Tensor) -> torch.Tensor:
    """nanoGPT's forward written out in float64 from its model.py math, on its own key names."""
    w = {k: v.double() for k, v in weights.items()}
    B, T = idx.shape
    C = w["transformer.wte.weight"].shape[1]
    hs = C // n_head
    x = w["transformer.wte.weight"][idx] + w["transformer.wpe.weight"][:T]  # (B, T, C)
    n_layer = len({k.split(".")[2] for k in w if k.startswith("transformer.h.")})
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        h = layer_norm(x, w[p + "ln_1.weight"], w.get(p + "ln_1.bias"))
        qkv = h @ w[p + "attn.c_attn.weight"].T + w.get(p + "attn.c_attn.bias", 0)  # (B, T, 3C)
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (t.view(B, T, n_head, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ w[p + "attn.c_proj.weight"].T + w.get(p + "attn.c_proj.bias", 0)
        h = layer_norm(x, w[p + "ln_2.weight"], w.get(p + "ln_2.bias"))
        h = h @ w[p + "mlp.c_fc.weight"].T + w.get(p + "mlp.c_fc.bias", 0)
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU, nn.GELU()
        x = x + h @ w[p + "mlp.c_proj.weight"].T + w.get(p + "mlp.c_proj.bias", 0)
    x = layer_norm(x, w["transformer.ln_f.weight"], w.get("transformer.ln_f.bias"))
    return x @ w["lm_head.weight"].T  # (B, T, vocab); the head is wte (tied)


def full_logits(model, idx):
    """Our model's logits at every position (forward returns them all when given targets)."""
    with torch.no_grad():
        logits, _ = model(idx, targets=idx)
    return logits


@pytest.fixture
def nanogpt_checkout(tmp_path):
    """<tmp>/nanoGPT with data/shakespeare_char/meta.pkl and out-shakespeare-char/ckpt.pt (compiled)."""
    root = tmp_path / "nanoGPT"
    vocab = char_vocab(TEXT)
    stoi = {c: i for i, c in enumerate(vocab)}
    write_nanogpt_data(root / "data" / "shakespeare_char", [stoi[c] for c in TEXT], vocab)
    weights = nanogpt_weights(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=len(vocab))
    args = model_args_for(weights, n_head=2)
    ckpt = write_nanogpt_checkpoint(root / "out-shakespeare-char" / "ckpt.pt", weights, args)
    return {"root": root, "vocab": vocab, "weights": weights, "args": args, "ckpt": ckpt}


# ----------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("bias", [True, False])
def test_converted_checkpoint_gives_nanogpt_logits(tmp_path, bias, monkeypatch):
    vocab = char_vocab(TEXT)
    weights = nanogpt_weights(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=len(vocab), bias=bias)
    args = model_args_for(weights, n_head=2, bias=bias)
    write_meta_pkl(tmp_path / "data" / "shakespeare_char" / "meta.pkl", vocab)
    path = write_nanogpt_checkpoint(tmp_path / "out" / "ckpt.pt", weights, args)
    monkeypatch.chdir(tmp_path)  # where nanoGPT's sample.py runs: data/<dataset>/meta.pkl
    raw = torch.load(path, weights_only=True)
    assert nanogpt.is_nanogpt_checkpoint(raw)
    assert any(k.startswith("_orig_mod.") for k in raw["model"]) and any(k.endswith(".attn.bias") for k in raw["model"])

    ckpt = load_checkpoint(path)
    assert not nanogpt.is_nanogpt_checkpoint(ckpt)
    assert not any(k.startswith("_orig_mod.") or k.endswith(".attn.bias") for k in ckpt["model"])
    assert ckpt["model_config"]["mlp"] == "gelu_exact" and ckpt["model_config"]["bias"] is bias
    assert ckpt["meta"]["tokenizer"] == "char" and ckpt["meta"]["vocab"] == vocab  # itos in id order
    assert ckpt["iter_num"] == 250 and ckpt["best_val_loss"] == pytest.approx(1.4697)
    assert isinstance(ckpt["best_val_loss"], float) and ckpt["nanogpt_source"] == str(path)

    model = model_from_checkpoint(ckpt, path).eval()
    idx = torch.randint(0, len(vocab), (3, 32), generator=torch.Generator().manual_seed(1))
    expected = nanogpt_reference_logits(weights, 2, idx)
    got = full_logits(model, idx).double()
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)  # float32 against float64
    # the test can tell the GELUs apart: the tanh approximation misses by far more than the tolerance
    tanh = model_from_checkpoint({**ckpt, "model_config": {**ckpt["model_config"], "mlp": "gelu"}}, path).eval()
    assert (full_logits(tanh, idx).double() - expected).abs().max() > 2e-4


def test_tokens_decode_with_the_meta_pkl_vocabulary(nanogpt_checkout, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: found through <run>/../data/<dataset>
    ckpt = load_checkpoint(nanogpt_checkout["ckpt"].parent)
    tok = tokenizer_from_meta(ckpt["meta"])
    stoi = {c: i for i, c in enumerate(nanogpt_checkout["vocab"])}
    assert tok.encode(TEXT) == [stoi[c] for c in TEXT]
    assert "out-shakespeare-char" in ckpt["nanogpt_source"] and "meta.pkl" in ckpt["nanogpt_vocabulary"]


def test_vocabulary_search_order(nanogpt_checkout, tmp_path, monkeypatch):
    root, vocab = nanogpt_checkout["root"], nanogpt_checkout["vocab"]
    other = char_vocab(TEXT, seed=1)  # same characters, other ids: tells the sources apart
    explicit = char_vocab(TEXT, seed=2)
    assert len({tuple(vocab), tuple(other), tuple(explicit)}) == 3
    elsewhere = tmp_path / "elsewhere"
    write_meta_pkl(elsewhere / "data" / "shakespeare_char" / "meta.pkl", other)
    write_meta_pkl(tmp_path / "mine" / "meta.pkl", explicit)

    # 1. the current folder's data/<dataset>/meta.pkl, where nanoGPT's sample.py looks
    assert load_checkpoint(root / "out-shakespeare-char", cwd=elsewhere)["meta"]["vocab"] == other
    # 2. otherwise the checkout the run folder sits in
    assert load_checkpoint(root / "out-shakespeare-char", cwd=tmp_path)["meta"]["vocab"] == vocab
    # 3. an explicit folder (or the meta.pkl itself) overrides both
    for hint in (tmp_path / "mine", tmp_path / "mine" / "meta.pkl"):
        converted = load_checkpoint(root / "out-shakespeare-char", dataset=hint, cwd=elsewhere)
        assert converted["meta"]["vocab"] == explicit
    # a dataset name is looked up where nanoGPT keeps datasets
    monkeypatch.chdir(elsewhere)
    assert load_checkpoint(nanogpt_checkout["ckpt"], dataset="shakespeare_char")["meta"]["vocab"] == other


def test_one_of_our_dataset_folders_can_give_the_vocabulary(nanogpt_checkout, tmp_path):
    from conftest import write_char_dataset

    (nanogpt_checkout["root"] / "data" / "shakespeare_char" / "meta.pkl").unlink()
    ours = tmp_path / "ours"
    write_char_dataset(ours, TEXT)  # sorted vocabulary, the same size
    ckpt = load_checkpoint(nanogpt_checkout["ckpt"], dataset=ours, cwd=tmp_path)
    assert ckpt["meta"]["vocab"] == sorted(set(TEXT))


def test_no_meta_pkl_and_a_small_vocabulary_is_one_line_naming_the_fix(nanogpt_checkout, tmp_path):
    (nanogpt_checkout["root"] / "data" / "shakespeare_char" / "meta.pkl").unlink()
    with pytest.raises(UserError) as info:
        load_checkpoint(nanogpt_checkout["ckpt"], cwd=tmp_path)
    message = str(info.value)
    assert "\n" not in message and "--dataset=FOLDER" in message and f"{len(nanogpt_checkout['vocab'])} token ids" in message
    assert str(tmp_path / "data" / "shakespeare_char") in message  # every place tried is named
    assert str(nanogpt_checkout["root"] / "data" / "shakespeare_char") in message


def test_a_meta_pkl_of_other_data_is_refused(nanogpt_checkout, tmp_path):
    write_meta_pkl(tmp_path / "small" / "meta.pkl", list("abcdef"))
    rows = len(nanogpt_checkout["vocab"])
    with pytest.raises(UserError, match=f"has a vocabulary of 6 but the model .* has {rows} token ids"):
        load_checkpoint(nanogpt_checkout["ckpt"], dataset=tmp_path / "small")
    with pytest.raises(UserError, match="dataset 'nowhere' not found"):
        load_checkpoint(nanogpt_checkout["ckpt"], dataset="nowhere", cwd=tmp_path)


def test_gpt2_vocabulary_when_there_is_no_meta_pkl(tmp_path):
    rows = 50304  # nanoGPT pads GPT-2's 50257 to a multiple of 64
    weights = nanogpt_weights(n_layer=1, n_head=2, n_embd=8, block_size=16, vocab_size=rows)
    path = write_nanogpt_checkpoint(tmp_path / "out-owt" / "ckpt.pt", weights, model_args_for(weights, 2),
                                    config={"dataset": "openwebtext"}, compiled=False, mask_buffers=False)
    ckpt = load_checkpoint(path, cwd=tmp_path)
    assert ckpt["meta"]["tokenizer"] == "gpt2" and ckpt["meta"]["vocab_size"] == 50257
    assert ckpt["meta"]["eot_token"] == 50256 and "no meta.pkl" in ckpt["nanogpt_vocabulary"]
    config = ckpt["model_config"]
    if HAS_VOCAB_MULTIPLE:  # the true vocabulary, padded back to nanoGPT's rows
        assert (config["vocab_size"], config["vocab_multiple"]) == (50257, 64)
    else:  # this model.py has no vocab_multiple: the padding rows stay ordinary token ids
        assert config["vocab_size"] == rows
    model = model_from_checkpoint(ckpt, path).eval()
    idx = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(0))
    expected = nanogpt_reference_logits(weights, 2, idx)[..., :model.config.vocab_size]
    torch.testing.assert_close(full_logits(model, idx).double()[..., :expected.size(-1)], expected,
                               atol=2e-5, rtol=0)


def test_vocab_fields_reproduce_the_padded_rows(monkeypatch):
    @dataclasses.dataclass
    class PaddedConfig:  # GPTConfig as main has it: rows = vocab_size rounded up to vocab_multiple
        vocab_size: int = 50304
        vocab_multiple: int = 64

    import model

    monkeypatch.setattr(model, "GPTConfig", PaddedConfig)
    for vocab, rows in [(50257, 50304), (65, 65), (100, 128), (50257, 50257), (1000, 1003)]:
        fields = nanogpt.vocab_fields(vocab, rows)
        m = fields["vocab_multiple"]
        assert fields["vocab_size"] == vocab and -(-vocab // m) * m == rows
    assert nanogpt.vocab_fields(50257, 50304)["vocab_multiple"] == 64
    assert nanogpt.vocab_fields(65, 65)["vocab_multiple"] == 1
    assert nanogpt.vocab_fields(100, 128)["vocab_multiple"] == 32  # the smallest power of two that fits


def test_run_checkpoint_path_tells_runs_from_other_sources(nanogpt_checkout, tmp_path):
    run = nanogpt_checkout["ckpt"].parent
    assert init_from.run_checkpoint_path(run) == run / "ckpt.pt"
    assert init_from.run_checkpoint_path(run / "ckpt.pt") == run / "ckpt.pt"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    for other in ("gpt2", "resume", "scratch", tmp_path / "hf", tmp_path / "nothing"):
        assert init_from.run_checkpoint_path(other) is None


def test_damaged_model_args_are_one_line(nanogpt_checkout):
    raw = torch.load(nanogpt_checkout["ckpt"], weights_only=True)
    damaged = nanogpt_checkout["ckpt"].parent / "damaged.pt"
    torch.save({**raw, "model_args": {k: v for k, v in raw["model_args"].items() if k != "n_head"}}, damaged)
    with pytest.raises(UserError, match="model_args lacks n_head"):
        load_checkpoint(damaged)
    torch.save({**raw, "model_args": {**raw["model_args"], "vocab_size": 99}}, damaged)
    rows = len(nanogpt_checkout["vocab"])
    with pytest.raises(UserError, match=f"vocab_size 99 but the embedding has {rows} rows"):
        load_checkpoint(damaged)


# ----------------------------------------------------------------------------- data folders

def test_nanogpt_char_data_folder_reads_byte_for_byte(tmp_path, capsys):
    vocab = char_vocab(TEXT)
    stoi = {c: i for i, c in enumerate(vocab)}
    ids = [stoi[c] for c in TEXT]
    train_ids, val_ids = write_nanogpt_data(tmp_path / "shakespeare_char", ids, vocab)
    folder, meta = load_dataset(str(tmp_path / "shakespeare_char"))
    said = capsys.readouterr().out
    assert "nanoGPT" in said and "meta.pkl" in said
    assert meta["tokenizer"] == "char" and meta["vocab"] == vocab
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(train_ids), len(val_ids))
    sampler = BatchSampler(folder / "train.bin", meta["dtype"], 8, seed=0)
    x, y, _ = sampler.batch(np.array([0, 5, len(train_ids) - 9]))
    for row, start in zip(x.tolist(), (0, 5, len(train_ids) - 9)):
        assert row == train_ids[start:start + 8].tolist()
    tok = tokenizer_from_meta(meta)
    assert tok.decode(np.fromfile(folder / "val.bin", dtype=meta["dtype"])) == TEXT[len(train_ids):]


def test_load_dataset_says_which_tokenizer_it_assumed(tmp_path, capsys):
    vocab = char_vocab(TEXT)
    write_nanogpt_data(tmp_path / "char", [vocab.index(c) for c in TEXT], vocab)
    write_nanogpt_data(tmp_path / "bpe", np.arange(1000) * 37 % 50257)  # no meta.pkl: GPT-2 BPE
    _, meta = load_dataset(str(tmp_path / "char"))
    said = capsys.readouterr().out
    assert meta["tokenizer"] == "char" and "char vocabulary of" in said and "meta.pkl" in said
    folder, meta = load_dataset(str(tmp_path / "bpe"))
    said = capsys.readouterr().out
    assert meta["tokenizer"] == "gpt2" and "GPT-2 BPE" in said and "no meta.pkl" in said
    assert meta["train_tokens"] == 900 and meta["val_tokens"] == 100
    np.testing.assert_array_equal(np.fromfile(folder / "val.bin", dtype=meta["dtype"]), np.arange(900, 1000) * 37 % 50257)


def test_odd_sized_token_file_is_one_line(tmp_path):
    write_nanogpt_data(tmp_path / "d", np.arange(100) % 50)
    with open(tmp_path / "d" / "val.bin", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(UserError, match="not a whole number of uint16 tokens"):
        load_dataset(str(tmp_path / "d"))


@pytest.mark.parametrize("meta, fragment", [
    ({"vocab_size": 3, "itos": {0: "ab", 1: "c", 2: "d"}, "stoi": {}}, "not one character"),
    ({"vocab_size": 3, "itos": {0: "a", 1: "b", 2: "c"}, "stoi": {"a": 1, "b": 0, "c": 2}}, "stoi is not the inverse"),
    ({"vocab_size": 4, "itos": {0: "a", 1: "b", 2: "c"}}, "itos should map the ids"),
    (["a", "b"], "not nanoGPT's meta.pkl"),
])
def test_meta_pkl_that_is_not_a_char_vocabulary(tmp_path, meta, fragment):
    path = tmp_path / "meta.pkl"
    path.write_bytes(pickle.dumps(meta))
    with pytest.raises(UserError, match=fragment):
        nanogpt.read_meta_pkl(path)


def test_every_pickle_protocol_of_plain_data_is_read(tmp_path):
    vocab = char_vocab(TEXT)
    meta = {"vocab_size": len(vocab), "itos": dict(enumerate(vocab)), "stoi": {c: i for i, c in enumerate(vocab)},
            "extra": [1.5, None, True, (1, 2), -(1 << 70), "é"]}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = dict(meta)
        if protocol >= 3:  # bytes have their own opcodes from protocol 3 (before: a call of _codecs.encode)
            data["bytes"] = b"x\x00"
        if protocol >= 4:  # sets too from protocol 4 (before: a call of builtins.set, refused)
            data["sets"] = [{3}, frozenset({4})]
        path = tmp_path / f"meta{protocol}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        assert nanogpt.load_plain_pickle(path) == data
        assert nanogpt.read_meta_pkl(path)["vocab"] == vocab


# ----------------------------------------------------------------------------- pickled code

class MakesMarker:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_meta_pkl_with_code_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "code_ran"
    vocab = char_vocab(TEXT)
    evil = tmp_path / "data" / "meta.pkl"
    evil.parent.mkdir()
    evil.write_bytes(pickle.dumps({"vocab_size": len(vocab), "itos": dict(enumerate(vocab)),
                                   "stoi": MakesMarker(marker)}, protocol=protocol))
    pickle.loads(evil.read_bytes())  # the file really carries code: a trusting load runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError) as info:
        nanogpt.read_meta_pkl(evil)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"refused to read {evil}") and "system" in message
    assert not marker.exists()
    # the second line of defence alone (no opcode scan) refuses it too
    with pytest.raises(pickle.UnpicklingError):
        nanogpt._NothingImportable(io.BytesIO(evil.read_bytes())).load()
    assert not marker.exists()


@pytest.mark.slow
def test_scripts_refuse_a_meta_pkl_with_code_in_one_line(nanogpt_checkout, tmp_path):
    marker = tmp_path / "code_ran"
    vocab = nanogpt_checkout["vocab"]
    meta_pkl = nanogpt_checkout["root"] / "data" / "shakespeare_char" / "meta.pkl"
    meta_pkl.write_bytes(pickle.dumps({"vocab_size": len(vocab), "itos": dict(enumerate(vocab)),
                                       "stoi": MakesMarker(marker)}))
    (tmp_path / "t.txt").write_text(TEXT)
    for script, args in [("eval.py", [f"--out_dir={nanogpt_checkout['ckpt'].parent}", f"--input={tmp_path / 't.txt'}"]),
                         ("train.py", [f"--dataset={meta_pkl.parent}", f"--out_dir={tmp_path / 'out'}", "--device=cpu",
                                       "--max_iters=1", "--n_layer=1", "--n_head=1", "--n_embd=8", "--block_size=8"])]:
        result = run_script(script, *args, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"error: refused to read {meta_pkl}")
        assert not marker.exists()


@pytest.mark.slow
def test_checkpoint_carrying_a_class_is_refused_and_never_runs(nanogpt_checkout, tmp_path):
    marker = tmp_path / "code_ran"
    weights, args = nanogpt_checkout["weights"], nanogpt_checkout["args"]
    evil = write_nanogpt_checkpoint(tmp_path / "evil" / "ckpt.pt", weights, args,
                                    config={"dataset": "shakespeare_char", "hook": MakesMarker(marker)})
    torch.load(evil, weights_only=False)  # a trusting load runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError) as info:
        load_checkpoint(evil)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"refused to load {evil}")
    assert "GLOBAL posix.system" in str(info.value)
    assert not marker.exists()
    (tmp_path / "t.txt").write_text(TEXT)
    result = run_script("eval.py", f"--out_dir={evil.parent}", f"--input={tmp_path / 't.txt'}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"error: refused to load {evil}")
    assert not marker.exists()


# ----------------------------------------------------------------------------- training on nanoGPT data

def test_train_runs_on_a_nanogpt_data_folder(tmp_path, shakespeare_text):

    text = shakespeare_text[:20_000]
    vocab = sorted(set(text))
    write_nanogpt_data(tmp_path / "shakespeare_char", [vocab.index(c) for c in text], vocab)
    out = tmp_path / "out"
    train.main([f"--dataset={tmp_path / 'shakespeare_char'}", f"--out_dir={out}", "--n_layer=1", "--n_head=2",
                "--n_embd=16", "--block_size=16", "--batch_size=4", "--max_iters=3", "--eval_iters=2",
                "--eval_interval=3", "--warmup_iters=1", "--device=cpu", "--dtype=float32", "--compile=False"])
    saved = torch.load(out / "ckpt.pt", weights_only=True)
    assert saved["meta"]["tokenizer"] == "char" and saved["meta"]["vocab"] == vocab
    assert saved["model_config"]["vocab_size"] == len(vocab)


# ----------------------------------------------------------------------------- the scripts on nanoGPT runs

@pytest.mark.slow
def test_sample_py_samples_from_a_nanogpt_run(nanogpt_checkout):
    """From inside the nanoGPT checkout, as its own sample.py is run: greedy text equals the argmax of
    the reference (nanoGPT-math) logits, step by step."""
    root, vocab = nanogpt_checkout["root"], nanogpt_checkout["vocab"]
    result = run_script("sample.py", "--out_dir=out-shakespeare-char", "--start=First", "--temperature=0",
                        "--max_new_tokens=12", "--device=cpu", cwd=root)
    assert result.returncode == 0, result.stderr
    assert "nanoGPT run" in result.stderr and "meta.pkl" in result.stderr
    ids = [vocab.index(c) for c in "First"]
    for _ in range(12):
        logits = nanogpt_reference_logits(nanogpt_checkout["weights"], 2, torch.tensor([ids[-32:]]))
        ids.append(int(logits[0, -1].argmax()))
    assert result.stdout.splitlines()[0] == "".join(vocab[i] for i in ids).splitlines()[0]
    assert result.stdout.startswith("".join(vocab[i] for i in ids))


@pytest.mark.slow
def test_train_py_starts_from_a_nanogpt_run_on_a_nanogpt_data_folder(nanogpt_checkout, tmp_path):
    root = nanogpt_checkout["root"]
    out = tmp_path / "finetuned"
    result = run_script("train.py", f"--init_from={root / 'out-shakespeare-char'}",
                        f"--dataset={root / 'data' / 'shakespeare_char'}", f"--out_dir={out}", "--device=cpu",
                        "--dtype=float32", "--max_iters=4", "--eval_interval=4", "--eval_iters=2", "--batch_size=2",
                        "--n_layer=7", "--block_size=16", "--warmup_iters=0", "--learning_rate=1e-4")
    assert result.returncode == 0, result.stderr
    assert "char vocabulary" in result.stdout  # which tokenizer the data folder was assumed to use
    assert "ignored: n_layer" in result.stdout  # the shape comes from the run's model_args
    ckpt = load_checkpoint(out)
    assert ckpt["model_config"]["n_layer"] == 2 and ckpt["model_config"]["mlp"] == "gelu_exact"
    assert ckpt["model_config"]["block_size"] == 16  # cropped from the run's 32 positions
    assert ckpt["iter_num"] == 4 and ckpt["pretrained_from"] == str(root / "out-shakespeare-char" / "ckpt.pt")
    start = load_checkpoint(root / "out-shakespeare-char")["model"]
    moved = [k for k in start if not torch.equal(start[k], ckpt["model"][k])]
    assert moved  # trained from those weights: close to them, not equal
    torch.testing.assert_close(ckpt["model"]["transformer.wte.weight"], start["transformer.wte.weight"],
                               atol=5e-3, rtol=0)
