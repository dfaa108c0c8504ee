"""eval.py: loss, bits per byte and perplexity of a model on any text, checked by brute force.

  * the windows score every token but the first exactly once, each with the context promised
  * bits per byte equal a hand computation from full-context forward passes, one per token
  * when the text fits one window, context and batch size change nothing; on longer texts every
    token is counted once and context = block_size equals the brute-force sliding window
  * --dataset scores a split's tokens (bytes = its decoded text); GPT-2 BPE input gets
    <|endoftext|> between documents, counted as no bytes
  * the same numbers for our checkpoint, its Hugging Face export and a nanoGPT run; bad input is
    one line

    python -m pytest tests/test_eval.py -q
"""

import json
import math
import sys

import numpy as np
import pytest
import torch

import eval as eval_script
from conftest import TIKTOKEN_CACHE, write_char_dataset
from model import GPT, GPTConfig
from smallgpt.checkpoint import build_checkpoint, save_checkpoint
from smallgpt.cli import run_main
from smallgpt.tokenizer import tokenizer_from_meta

TEXT = "Ça, Æsir: ðø þæ!\nHear me speak. Before we proceed — any further, hear me.\n"


def jittered_model(config: GPTConfig, seed: int = 0) -> GPT:
    """A random GPT whose predictions depend strongly on context (weights far from an init's scale)."""
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def char_meta(text: str) -> dict:
    vocab = sorted(set(text))
    return {"format_version": 1, "tokenizer": "char", "vocab_size": len(vocab), "dtype": "uint16",
            "train_tokens": 0, "val_tokens": 0, "vocab": vocab, "eot_token": None, "documents": {}, "source": "test"}


def save_run(model: GPT, meta: dict, run_dir) -> None:
    save_checkpoint(build_checkpoint(model, meta=meta), run_dir / "ckpt.pt")


@torch.no_grad()
def brute_force_nll(model: GPT, ids, max_context: int | None = None) -> list[float]:
    """-log p(token p | the tokens before it), one forward pass per token (position 0 not scored).

    max_context: how many preceding tokens each prediction sees (None: all of them).
    """
    out = []
    for p in range(1, len(ids)):
        start = 0 if max_context is None else max(0, p - max_context)
        logits, _ = model(torch.tensor([ids[start:p]]))  # the last position's logits only
        out.append(-torch.log_softmax(logits[0, -1].double(), -1)[ids[p]].item())
    return out


def run_eval(argv, capsys) -> dict:
    """eval.main in this process with --json; returns the parsed result."""
    result = eval_script.main([*argv, "--json", "--device=cpu"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["tokens"] == result["tokens"]
    return printed


# ----------------------------------------------------------------------------- windows

@pytest.mark.parametrize("block_size", [1, 2, 5, 16])
def test_windows_score_every_token_once_with_the_promised_context(block_size):
    for n in [1, 2, 3, block_size, block_size + 1, 3 * block_size + 2, 50]:
        for context in range(1, block_size + 1):
            scored = []
            for start, length, first in eval_script.windows(n, block_size, context):
                assert 1 <= length <= block_size and 0 <= first < length and start + length < n
                for p in range(start + first + 1, start + length + 1):
                    assert p - start >= min(p, context)  # tokens of context this position sees
                    scored.append(p)
            assert scored == list(range(1, n)), (n, block_size, context)


def test_context_outside_1_to_block_size_is_refused():
    for context in (0, 9):
        with pytest.raises(ValueError, match="context must be in 1..block_size"):
            eval_script.windows(100, 8, context)


# ----------------------------------------------------------------------------- against brute force

def test_bits_per_byte_equal_a_hand_computation(tmp_path, capsys):
    meta = char_meta(TEXT)
    ids = tokenizer_from_meta(meta).encode(TEXT)
    model = jittered_model(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=len(ids), vocab_size=len(meta["vocab"])))
    save_run(model, meta, tmp_path / "run")
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    nll = brute_force_nll(model, ids)
    n_bytes = len(TEXT.encode("utf-8")) - len(TEXT[0].encode("utf-8"))  # all but the first character
    assert n_bytes > len(ids) - 1  # the text has multi-byte characters: bytes and tokens differ
    expected_bpb = sum(nll) / math.log(2) / n_bytes

    result = run_eval([f"--out_dir={tmp_path / 'run'}", f"--input={tmp_path / 'text.txt'}"], capsys)
    assert result["tokens"] == len(ids) - 1 and result["bytes"] == n_bytes
    assert result["bits_per_byte"] == pytest.approx(expected_bpb, rel=1e-5)
    assert result["nats_per_token"] == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)
    # the text fits one window: neither the context nor the batch size changes anything
    for context, batch_size in [(1, 1), (3, 2), (len(ids) - 1, 4), (len(ids), 3)]:
        again = run_eval([f"--out_dir={tmp_path / 'run'}", f"--input={tmp_path / 'text.txt'}",
                          f"--context={context}", f"--batch_size={batch_size}"], capsys)
        assert again["total_nats"] == pytest.approx(result["total_nats"], rel=1e-6)
        assert (again["tokens"], again["bytes"]) == (result["tokens"], result["bytes"])


def test_longer_texts_count_every_token_once_and_slide_like_brute_force():
    block_size = 8
    meta = char_meta(TEXT)
    ids = tokenizer_from_meta(meta).encode(TEXT * 2)
    model = jittered_model(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=block_size,
                                     vocab_size=len(meta["vocab"])))
    for context in range(1, block_size + 1):
        for batch_size in (1, 5):
            nll, n = eval_script.score_tokens(model, ids, block_size, context, batch_size)
            assert n == len(ids) - 1
    sliding = brute_force_nll(model, ids, max_context=block_size)  # each token sees the block_size before it
    for batch_size in (1, 4, 64):
        nll, n = eval_script.score_tokens(model, ids, block_size, block_size, batch_size)
        assert nll == pytest.approx(sum(sliding), rel=1e-5)
    # disjoint windows (context 1) see less: their total differs from the sliding window's
    disjoint, _ = eval_script.score_tokens(model, ids, block_size, 1, 4)
    assert abs(disjoint - sum(sliding)) > 1e-3 * sum(sliding)


def test_dataset_split_scores_its_tokens_and_their_decoded_bytes(tmp_path, capsys):
    text = TEXT * 20
    meta = write_char_dataset(tmp_path / "ds", text)
    model = jittered_model(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=meta["vocab_size"]))
    save_run(model, meta, tmp_path / "run")
    val = np.fromfile(tmp_path / "ds" / "val.bin", dtype=np.uint16).astype(np.int64)
    result = run_eval([f"--out_dir={tmp_path / 'run'}", f"--dataset={tmp_path / 'ds'}", "--split=val"], capsys)
    decoded = tokenizer_from_meta(meta).decode(val[1:])
    assert result["tokens"] == len(val) - 1 and result["bytes"] == len(decoded.encode("utf-8"))
    nll, _ = eval_script.score_tokens(model, val, 16, 8, 8)
    assert result["total_nats"] == pytest.approx(nll, rel=1e-6)
    first = run_eval([f"--out_dir={tmp_path / 'run'}", f"--dataset={tmp_path / 'ds'}", "--split=train",
                      "--max_tokens=50"], capsys)
    assert first["tokens"] == 49


def test_gpt2_documents_end_with_eot_which_counts_no_bytes(tmp_path, capsys, monkeypatch):
    if not TIKTOKEN_CACHE.is_dir():
        pytest.skip(f"GPT-2 BPE cache not found at {TIKTOKEN_CACHE}")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
    meta = {"format_version": 1, "tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16", "train_tokens": 0,
            "val_tokens": 0, "eot_token": 50256, "documents": {}, "source": "test"}
    tok = tokenizer_from_meta(meta)
    model = jittered_model(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=64, vocab_size=50257))
    save_run(model, meta, tmp_path / "run")
    docs = {"a.txt": "Hello, world — 日本語のテキスト.", "b.txt": "Second document: naïve café."}
    for name, text in docs.items():
        (tmp_path / "docs" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "docs" / name).write_text(text, encoding="utf-8")
    ids = tok.encode(docs["a.txt"]) + [50256] + tok.encode(docs["b.txt"]) + [50256]
    result = run_eval([f"--out_dir={tmp_path / 'run'}", f"--input={tmp_path / 'docs'}"], capsys)
    first_bytes = len(tok.enc.decode_single_token_bytes(ids[0]))
    assert result["tokens"] == len(ids) - 1
    assert result["bytes"] == len("".join(docs.values()).encode("utf-8")) - first_bytes
    assert result["total_nats"] == pytest.approx(sum(brute_force_nll(model, ids)), rel=1e-5)


# ----------------------------------------------------------------------------- model sources

def test_hugging_face_folder_scores_like_our_checkpoint(tmp_path, capsys):
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors is not installed (.[hf])")
    from smallgpt.interop import hf

    meta = char_meta(TEXT)
    model = jittered_model(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=len(meta["vocab"])))
    save_run(model, meta, tmp_path / "run")
    folder = tmp_path / "hf"
    folder.mkdir()
    safetensors_torch.save_file(hf.state_dict_to_hf(model), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf.hf_config_from_gpt(model.config, "char")))
    ids = tokenizer_from_meta(meta).encode(TEXT)
    ours = eval_script.score_tokens(model, ids, 32, 16, 4)
    theirs = eval_script.score_tokens(hf.load_pretrained(str(folder)), ids, 32, 16, 4)
    assert theirs[1] == ours[1] and theirs[0] == pytest.approx(ours[0], rel=1e-6)


def test_nanogpt_run_scores_like_nanogpt_math(tmp_path, capsys, monkeypatch):
    from nanogpt_files import model_args_for, nanogpt_weights, write_meta_pkl, write_nanogpt_checkpoint
    from test_nanogpt import nanogpt_reference_logits

    vocab = sorted(set(TEXT))
    weights = nanogpt_weights(n_layer=2, n_head=2, n_embd=16, block_size=128, vocab_size=len(vocab))
    root = tmp_path / "nanoGPT"
    write_meta_pkl(root / "data" / "shakespeare_char" / "meta.pkl", vocab)
    write_nanogpt_checkpoint(root / "out-shakespeare-char" / "ckpt.pt", weights, model_args_for(weights, 2))
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    monkeypatch.chdir(root)  # as nanoGPT's sample.py is run
    result = run_eval(["--out_dir=out-shakespeare-char", f"--input={tmp_path / 'text.txt'}"], capsys)
    ids = torch.tensor([[vocab.index(c) for c in TEXT]])
    logp = torch.log_softmax(nanogpt_reference_logits(weights, 2, ids)[0], -1)  # (T, vocab), full context
    expected = -logp[torch.arange(ids.size(1) - 1), ids[0, 1:]].sum().item()
    assert result["tokens"] == ids.size(1) - 1
    assert result["total_nats"] == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- bad input

@pytest.fixture
def char_run(tmp_path):
    meta = char_meta(TEXT)
    model = jittered_model(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=len(meta["vocab"])))
    save_run(model, meta, tmp_path / "run")
    (tmp_path / "ok.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "latin.txt").write_text("xyz QRS", encoding="utf-8")
    (tmp_path / "one.txt").write_text("Ç", encoding="utf-8")
    write_char_dataset(tmp_path / "other_ds", "abcdefghij" * 50)
    return tmp_path


@pytest.mark.parametrize("args, fragment", [
    ([], "nothing to score"),
    (["--input={root}/nope.txt"], "input not found"),
    (["--input={root}/latin.txt"], "not in this char vocabulary"),
    (["--input={root}/one.txt"], "nothing to score (the first token has no context)"),
    (["--input={root}/ok.txt", "--block_size=17"], "exceeds the model's 16 positions"),
    (["--input={root}/ok.txt", "--context=17"], "must be 1..block_size"),
    (["--input={root}/ok.txt", "--batch_size=0"], "batch_size"),
    (["--dataset={root}/other_ds"], "tokenized with the char tokenizer (vocab 10) but the model"),
    (["--dataset={root}/no_ds"], "dataset"),
    (["--input={root}/ok.txt", "--init_from=resume"], "has no meaning here"),
    (["--input={root}/ok.txt", "--out_dir={root}/nothing"], "no checkpoint at"),
])
def test_bad_input_is_one_line(char_run, args, fragment, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["eval.py"])
    monkeypatch.delenv("GPT_DEBUG", raising=False)
    argv = [f"--out_dir={char_run / 'run'}", "--device=cpu", *[a.format(root=char_run) for a in args]]
    with pytest.raises(SystemExit) as info:
        run_main(eval_script.main, argv)
    err = capsys.readouterr().err
    assert info.value.code == 1 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert fragment in err


def test_script_output_in_a_log(char_run):
    """Run as a script with its output piped: the result on stdout, plain lines (no '\\r') on stderr."""
    from conftest import run_script

    result = run_script("eval.py", f"--out_dir={char_run / 'run'}", f"--input={char_run / 'ok.txt'}",
                        "--device=cpu", env={"CI": ""})
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr
    assert result.stderr.splitlines()[-1].startswith("scoring: done")
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and "nats/token" in lines[1] and "bits/byte" in lines[1] and "perplexity" in lines[1]
    assert f"{len(TEXT) - 1:,} tokens ({len(TEXT.encode('utf-8')) - len(TEXT[0].encode('utf-8')):,} bytes)" in lines[0]


def test_a_run_alone_is_scored_on_its_own_dataset(tmp_path):
    """`eval.py --out_dir=RUN` with no text: the val (or --split) tokens of the dataset the run trained on."""
    import train

    write_char_dataset(tmp_path / "ds", TEXT * 20)
    train.main([f"--dataset={tmp_path / 'ds'}", f"--out_dir={tmp_path / 'run'}", "--n_layer=1", "--n_head=2",
                "--n_embd=16", "--block_size=16", "--batch_size=4", "--max_iters=4", "--eval_interval=4",
                "--eval_iters=1", "--device=cpu", "--dtype=float32", "--compile=false"])
    common = [f"--out_dir={tmp_path / 'run'}", "--device=cpu", "--json"]
    for split in ("val", "train"):
        alone = eval_script.main([*common, f"--split={split}"])
        named = eval_script.main([*common, f"--dataset={tmp_path / 'ds'}", f"--split={split}"])
        assert alone == named and alone["text"].endswith(f"{split}.bin")
    assert eval_script.main(common)["text"].endswith("val.bin")  # val is the default split
