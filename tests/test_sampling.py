"""Sampling: the key/value cache against full recompute, past-block_size behaviour, top-p and
temperature, streamed text (split UTF-8 characters, stop text), and sample.py end to end.

Checkpoints are tiny random models saved with the same keys train.py writes; nothing is trained.
"""

import copy
import os
import random
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import sample
from conftest import REPO_ROOT, TIKTOKEN_CACHE, model_switches, run_script, switch_id
from model import GPT, GPTConfig, KVCache
from smallgpt.checkpoint import build_checkpoint, load_model, save_checkpoint
from smallgpt import inference
from smallgpt.errors import UserError
from smallgpt.tokenizer import ByteTokenizer, CharTokenizer

LEARNED = dict(pos_embedding="learned")
ROPE = dict(pos_embedding="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", tie_embeddings=False,
            logit_softcap=30.0, bias=False, prev_token_mix=True)
PADDED = dict(vocab_multiple=64, seed=3)  # 65 ids in 128 rows (seed: one whose greedy output varies, see tiny)
VARIANTS = {"learned": LEARNED, "rope": ROPE, "padded": PADDED}
SWITCHES = {**VARIANTS, **{switch_id(s): s for s in model_switches()}}  # and every switch of GPTConfig alone
VOCAB = list("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")  # 65 characters


def tiny(seed=0, **overrides) -> GPT:
    """A tiny random model whose greedy output depends on its context.

    (At GPT-2's init a tiny tied model repeats one token forever, which would make "same greedy
    tokens" trivially true; larger block weights make its choices differ from step to step.)
    """
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=len(VOCAB), vocab_multiple=1)
    cfg.update(overrides)
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.transformer.h.named_parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
        if model.config.prev_token_mix:  # 0 at init: weights that make the cache's last token matter
            model.prev_token_weight.normal_()
    return model


def char_meta() -> dict:
    return {"format_version": 1, "tokenizer": "char", "vocab_size": len(VOCAB), "dtype": "uint16",
            "train_tokens": 0, "val_tokens": 0, "vocab": VOCAB, "eot_token": None,
            "documents": {"train": 1, "val": 1}, "source": "test"}


def save_like_train(model: GPT, meta: dict, out_dir) -> None:
    """A checkpoint of an untrained model, in the format train.py writes."""
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    save_checkpoint(build_checkpoint(model, meta=meta, optimizer=optimizer), out_dir / "ckpt.pt")


@pytest.fixture(scope="module")
def char_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("char_ckpt")
    save_like_train(tiny(), char_meta(), out)
    return out


# ----------------------------------------------------------------------------- cache vs recompute

@pytest.mark.parametrize("variant", SWITCHES)
def test_cached_logits_match_full_recompute_at_every_step(variant):
    model = tiny(**SWITCHES[variant])
    seq = torch.randint(0, len(VOCAB), (3, 32))  # fills the whole block
    cache = KVCache(model.config, 3, "cpu", torch.float32)
    with torch.no_grad():
        logits, _ = model(seq[:, :5], cache=cache)  # prefill
        for n in range(5, 33):
            full, _ = model(seq[:, :n])
            torch.testing.assert_close(logits, full, atol=1e-5, rtol=0)
            assert cache.pos == n
            if n < 32:
                logits, _ = model(seq[:, n:n + 1], cache=cache)


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_one_through_the_row_split_matches_recompute(variant):
    """Batch 1 on two threads through sample.py's row-split Linears (use_row_split): the logits of
    the plain model's full recompute at every step, and its greedy tokens."""
    model = tiny(n_embd=384, n_head=6, **VARIANTS[variant])  # wide enough for the path
    split = copy.deepcopy(model)
    inference.use_row_split(split)
    torch.set_num_threads(2)
    fc = split.transformer.h[0].mlp.c_fc
    assert isinstance(fc, inference.RowSplitLinear) and inference.row_splits(torch.zeros(1, fc.in_features), fc.weight) == 2
    seq = torch.randint(0, len(VOCAB), (1, 32))
    cache = KVCache(split.config, 1, "cpu", torch.float32)
    with torch.no_grad():
        logits, _ = split(seq[:, :1], cache=cache)
        for n in range(1, 33):
            full, _ = model(seq[:, :n])
            torch.testing.assert_close(logits, full, atol=1e-5, rtol=0)
            if n < 32:
                logits, _ = split(seq[:, n:n + 1], cache=cache)
    greedy = [m.generate(seq[:, :3], 29, temperature=0, use_cache=c) for m, c in ((split, True), (model, False))]
    assert torch.equal(greedy[0], greedy[1])


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_row_split_linear_matches_f_linear(threads, bias):
    """One row as row blocks of the weight in one batched matmul: F.linear's result, any leading shape."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 6 * 100, bias=bias)  # 153,600 weights: above the size where the path starts
    torch.set_num_threads(threads)
    for shape in [(1, 256), (1, 1, 256), (256,)]:
        x = torch.randn(shape)
        assert inference.row_splits(x, layer.weight) == threads
        y = inference.row_split_linear(x, layer.weight, layer.bias, threads)
        assert y.shape == shape[:-1] + (600,)
        torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), atol=1e-6, rtol=1e-5)
    # the split does not apply to several rows, rows that do not divide by the threads, or small weights
    assert inference.row_splits(torch.randn(4, 1, 256), layer.weight) == 0
    assert inference.row_splits(torch.randn(1, 256), torch.nn.Linear(256, 601).weight) == 0
    assert inference.row_splits(torch.randn(1, 64), torch.nn.Linear(64, 60).weight) == 0
    torch.set_num_threads(1)
    assert inference.row_splits(torch.randn(1, 256), layer.weight) == 0


def test_use_row_split_keeps_the_weights_and_the_plain_path_for_several_rows():
    model = tiny(n_embd=384, n_head=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inference.use_row_split(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is inference.RowSplitLinear for m in linears)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    torch.set_num_threads(2)
    x = torch.randn(4, 3, 384)  # several rows: F.linear itself, bitwise
    fc = model.transformer.h[0].mlp.c_fc
    assert torch.equal(fc(x), F.linear(x, fc.weight, fc.bias))


def test_row_split_is_chosen_by_timing():
    torch.set_num_threads(2)
    assert isinstance(inference.row_split_is_faster(torch.nn.Linear(256, 600), repeats=5), bool)
    assert inference.row_split_is_faster(torch.nn.Linear(64, 60), repeats=5) is False  # too small to split


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_in_chunks_matches_one_prefill(variant):
    """A multi-token forward into a non-empty cache (the masked branch) is exact too."""
    model = tiny(**VARIANTS[variant])
    seq = torch.randint(0, len(VOCAB), (2, 20))
    cache = KVCache(model.config, 2, "cpu", torch.float32)
    with torch.no_grad():
        model(seq[:, :7], cache=cache)
        chunked, _ = model(seq[:, 7:20], cache=cache)
        full, _ = model(seq)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", SWITCHES)
@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0),
                                      dict(temperature=0.8, top_k=10, top_p=0.9)])
def test_cache_gives_the_same_tokens_as_recompute(variant, sampling):
    model = tiny(**SWITCHES[variant])
    prompt = torch.randint(0, len(VOCAB), (4, 3))
    outs = []
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(7)
        outs.append(model.generate(prompt, 29, generator=gen, use_cache=use_cache, **sampling))  # 32 in all
    assert outs[0].shape == (4, 32)
    assert torch.equal(outs[0][:, :3], prompt)
    assert torch.equal(outs[0], outs[1])
    assert len(set(outs[0][:, 3:].flatten().tolist())) > 4  # not one token repeated: the comparison means something
    if sampling["temperature"] > 0:
        assert not all(torch.equal(outs[0][0], row) for row in outs[0][1:])  # rows are distinct samples


def test_greedy_generation_is_argmax_of_recomputed_logits():
    model = tiny()
    out = model.generate(torch.tensor([[1, 2, 3]]), 10, temperature=0)
    for n in range(3, 13):
        logits, _ = model(out[:, :n])
        assert out[0, n] == logits[0, -1].argmax()


# ----------------------------------------------------------------------------- past block_size

def record_forwards(model: GPT) -> list:
    """Record (start position, length, cache) of every forward the model runs."""
    calls = []

    def hook(module, args, kwargs):
        cache = kwargs.get("cache")
        calls.append((cache.pos if cache is not None else 0, args[0].size(1), cache))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("prompt_len", [5, 40])  # 40: a prompt longer than block_size (16)
def test_past_block_size_no_position_beyond_the_block_and_flat_cache(variant, prompt_len):
    model = tiny(block_size=16, **VARIANTS[variant])
    calls = record_forwards(model)
    positions = []
    if "wpe" in model.transformer:
        model.transformer.wpe.register_forward_pre_hook(lambda m, args: positions.append(int(args[0].max())))
    prompt = torch.randint(0, len(VOCAB), (2, prompt_len))
    new = 3 * 16
    out = model.generate(prompt, new, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, prompt_len + new)
    assert torch.equal(out[:, :prompt_len], prompt)
    assert len(calls) == new
    assert all(start + length <= 16 for start, length, _ in calls)
    assert positions == [] or max(positions) == 15  # learned positions: 0..15 used, never 16
    caches = {id(cache) for _, _, cache in calls}
    assert len(caches) == 1  # one cache for the whole run...
    cache = calls[0][2]
    assert cache.k.shape == cache.v.shape == (2, 2, 2, 16, 16)  # ...allocated once at block_size
    assert cache.k.data_ptr() == calls[-1][2].k.data_ptr()
    restarts = [length for start, length, _ in calls[1:] if start == 0]
    assert restarts and set(restarts) == {8}  # refills from the last block_size // 2 tokens
    assert calls[0][1] == min(prompt_len, 16)  # a long prompt is cropped to the block


@pytest.mark.parametrize("variant", VARIANTS)
def test_past_block_size_follows_the_documented_context_rule(variant):
    """Greedy tokens equal recompute on exactly the context the docstring describes."""
    block, keep = 16, 8
    model = tiny(block_size=block, **VARIANTS[variant])
    prompt = torch.randint(0, len(VOCAB), (2, 5))
    out = model.generate(prompt, 3 * block, temperature=0)
    assert all(len(set(row[5:].tolist())) > 2 for row in out)
    start = 0
    for n in range(5, 5 + 3 * block):
        if n - start > block:  # the window is full: restart on the last `keep` tokens
            start = n - keep
        logits, _ = model(out[:, start:n])
        assert torch.equal(out[:, n], logits[:, -1].argmax(-1)), f"token {n}"


# ----------------------------------------------------------------------------- sample_next_token

def test_temperature_zero_is_argmax():
    logits = torch.randn(16, 65)
    assert torch.equal(GPT.sample_next_token(logits, temperature=0), logits.argmax(-1, keepdim=True))


def test_tiny_top_p_is_greedy_and_top_p_one_is_plain_sampling():
    logits = torch.randn(64, 65) * 3
    greedy = GPT.sample_next_token(logits, temperature=1.0, top_p=1e-6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(greedy, logits.argmax(-1, keepdim=True))
    plain = GPT.sample_next_token(logits, temperature=1.0, generator=torch.Generator().manual_seed(1))
    with_p1 = GPT.sample_next_token(logits, temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain, with_p1)
    assert not torch.equal(plain, greedy)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.1, 0.4, 0.2, 0.3])  # sorted: 0.4 (id 1), 0.3 (id 3), 0.2, 0.1
    logits = probs.log().expand(4000, 4)
    gen = torch.Generator().manual_seed(0)
    tokens = GPT.sample_next_token(logits, top_p=0.5, generator=gen).flatten()
    counts = torch.bincount(tokens, minlength=4)
    assert counts[0] == counts[2] == 0  # 0.4 + 0.3 reach 0.5: only ids 1 and 3 remain
    assert abs(counts[1] / 4000 - 4 / 7) < 0.04  # renormalised 0.4 : 0.3
    tokens = GPT.sample_next_token(logits, top_p=0.75, generator=gen).flatten()
    assert set(tokens.tolist()) == {1, 3, 2}  # 0.7 < 0.75, so the third token is needed


def test_top_k_keeps_k_tokens():
    logits = torch.randn(1, 65).expand(2000, 65)
    tokens = GPT.sample_next_token(logits, temperature=2.0, top_k=3, generator=torch.Generator().manual_seed(0))
    assert set(tokens.flatten().tolist()) == set(logits[0].topk(3).indices.tolist())


@pytest.mark.parametrize("bad", [dict(temperature=-0.5), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0)])
def test_sample_next_token_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        GPT.sample_next_token(torch.randn(2, 10), **bad)


# ----------------------------------------------------------------------------- streamed text

def stream_pieces(tokenizer, tokens, stop=""):
    text = inference.SampleText(tokenizer, stop)
    pieces = [text.push(t) for t in tokens]
    pieces.append(text.finish())
    return pieces, text


def test_split_utf8_characters_are_printed_whole():
    tok = ByteTokenizer()
    message = "héllo wörld €uro 🎉 end"
    pieces, text = stream_pieces(tok, list(message.encode("utf-8")))
    assert "".join(pieces) == message == text.text
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if p) > 10  # streamed, not printed in one go


def test_streamed_bytes_always_equal_decoding_everything_at_once():
    tok = ByteTokenizer()
    rng = random.Random(0)
    pieces_of_text = ["a", "é", "€", "🎉"]
    for _ in range(200):  # valid characters mixed with stray and truncated bytes
        data = b""
        for _ in range(rng.randint(0, 30)):
            r = rng.random()
            if r < 0.6:
                data += rng.choice(pieces_of_text).encode()
            elif r < 0.8:
                data += bytes([rng.choice([0x80, 0xbf, 0xe2, 0xf0, 0xff])])
            else:
                data += bytes([0xff] * rng.randint(1, 12))
        pieces, _ = stream_pieces(tok, list(data))
        assert "".join(pieces) == data.decode("utf-8", errors="replace"), data


def test_stop_text_is_cut_and_never_printed():
    tok = CharTokenizer(VOCAB)
    pieces, text = stream_pieces(tok, tok.encode("xa ab END more"), stop="END")
    assert text.text == "xa ab " and text.done
    assert "".join(pieces) == "xa ab "
    pieces, text = stream_pieces(tok, tok.encode("xEN yEN"), stop="END")  # partial matches only
    assert "".join(pieces) == "xEN yEN" and text.text == "xEN yEN"
    assert "EN" not in pieces[:-1][-1]  # the trailing "EN" was held back until the end


def test_end_of_text_token_ends_a_sample_and_is_not_printed():
    tok = CharTokenizer(VOCAB)
    eot = tok.encode("Z")[0]
    text = inference.SampleText(tok, eot_token=eot)
    pieces = [text.push(t) for t in tok.encode("abcZdef")]
    assert "".join(pieces) == "abc" and text.done and text.text == "abc"


def constant_model(token: int, vocab_size: int = len(VOCAB)) -> GPT:
    """A model whose logits are the same at every position, with `token` far ahead (greedy picks it)."""
    model = tiny(tie_embeddings=False, vocab_size=vocab_size)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)  # ln_f output is all ones, whatever the input
        model.lm_head.weight.zero_()
        model.lm_head.weight[token] = 1.0  # logit n_embd for `token`, 0 for the rest
    return model


def test_generation_stops_once_every_sample_has_ended():
    tok = CharTokenizer(VOCAB)
    eot = tok.encode("Z")[0]
    model = constant_model(eot)
    steps = []
    original = model.generate_stream

    def counting_stream(*args, **kwargs):
        for seq in original(*args, **kwargs):
            steps.append(seq.size(1))
            yield seq

    model.generate_stream = counting_stream
    cfg = sample.SampleConfig(num_samples=3, max_new_tokens=50, temperature=0)
    texts = sample.generate_text(model, tok, tok.encode("ab"), cfg, eot_token=eot)
    assert texts == ["", "", ""] and len(steps) == 1


def test_generate_text_streams_as_tokens_arrive():
    tok = CharTokenizer(VOCAB)
    model = tiny()
    step = [0]
    original = model.generate_stream

    def counting_stream(*args, **kwargs):
        for seq in original(*args, **kwargs):
            step[0] += 1
            yield seq

    model.generate_stream = counting_stream
    written = []
    cfg = sample.SampleConfig(num_samples=1, max_new_tokens=20, seed=3)
    (text,) = sample.generate_text(model, tok, tok.encode("ab"), cfg, write=lambda s: written.append((step[0], s)))
    assert "".join(s for _, s in written) == text and len(text) == 20
    assert [n for n, _ in written] == list(range(1, 21))  # one character written after each token


# ----------------------------------------------------------------------------- sample.py

def test_load_model_rebuilds_the_saved_model_exactly(tmp_path):
    for variant in VARIANTS.values():
        model = tiny(**{"seed": 3, **variant})
        save_like_train(model, char_meta(), tmp_path)
        loaded, _ = load_model(str(tmp_path), torch.device("cpu"))
        idx = torch.randint(0, len(VOCAB), (2, 20))
        assert torch.equal(loaded(idx, idx)[0], model(idx, idx)[0])
        if model.config.tie_embeddings:
            assert loaded.lm_head.weight is loaded.transformer.wte.weight


@pytest.mark.slow
def test_cli_same_seed_same_text_other_seed_other_text(char_ckpt):
    args = [f"--out_dir={char_ckpt}", "--max_new_tokens=60", "--start=ROMEO:"]
    first = run_script("sample.py", *args, "--seed=5")
    again = run_script("sample.py", *args, "--seed=5")
    other = run_script("sample.py", *args, "--seed=6", "--num_samples=2")  # batched, not streamed
    for run in (first, again, other):
        assert run.returncode == 0, run.stderr
    assert first.stdout == again.stdout
    assert first.stdout.startswith("ROMEO:") and first.stdout.endswith(sample.SEPARATOR + "\n")
    assert len(first.stdout) == len("ROMEO:") + 60 + len(sample.SEPARATOR) + 2
    samples = other.stdout.split(sample.SEPARATOR + "\n")
    assert len(samples) == 3 and samples[2] == ""
    assert samples[0] != samples[1] and first.stdout.split(sample.SEPARATOR)[0] not in samples[:2]


@pytest.mark.slow
def test_cli_stop_text_ends_the_sample(char_ckpt):
    tok = CharTokenizer(VOCAB)
    model, _ = load_model(str(char_ckpt), torch.device("cpu"))
    cfg = sample.SampleConfig(max_new_tokens=60, temperature=0)
    (greedy,) = sample.generate_text(model, tok, tok.encode("ROMEO:"), cfg)
    stop = greedy[10:13]
    cut = greedy[:greedy.find(stop)]
    assert cut  # the stop text first appears after some generated text
    run = run_script("sample.py", f"--out_dir={char_ckpt}", "--max_new_tokens=60", "--start=ROMEO:",
                     "--temperature=0", f"--stop={stop}", "--device=cpu")  # float32, as the greedy reference
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"ROMEO:{cut}\n{sample.SEPARATOR}\n"


@pytest.mark.slow
def test_cli_gpt2_checkpoint_stops_at_end_of_text(tmp_path):
    if not (TIKTOKEN_CACHE.is_dir() and any(TIKTOKEN_CACHE.iterdir())):
        pytest.skip(f"no GPT-2 BPE cache at {TIKTOKEN_CACHE} (expected ../shared beside the checkout)")
    eot, hello = 50256, 31373  # <|endoftext|> and "hello" in GPT-2 BPE
    model = constant_model(eot, vocab_size=50257)
    with torch.no_grad():
        model.lm_head.weight[hello] = 1.0  # logit 32 for both eot and "hello", 0 for the rest:
                                           # each step draws one of the two, half and half
    meta = {"format_version": 1, "tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16",
            "train_tokens": 0, "val_tokens": 0, "eot_token": eot, "documents": {"train": 1, "val": 1},
            "source": "test"}
    save_like_train(model, meta, tmp_path)
    args = [f"--out_dir={tmp_path}", "--max_new_tokens=200", "--start=Say", "--top_k=0", "--seed=2"]
    run = run_script("sample.py", *args)
    assert run.returncode == 0, run.stderr
    text = run.stdout.removesuffix(f"\n{sample.SEPARATOR}\n")
    assert text.startswith("Say") and "<|endoftext|>" not in text
    assert text.replace("hello", "") == "Say"  # only "hello" tokens, then the end-of-text token
    assert len(text) < 3 + 5 * 200  # ended early: 200 draws of only "hello" are out of reach
    go_on = run_script("sample.py", *args, "--stop_at_eot=false", "--max_new_tokens=30")
    assert go_on.returncode == 0, go_on.stderr
    assert "<|endoftext|>" in go_on.stdout


def test_cli_streams_before_the_process_ends(char_ckpt):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("GPT_DEBUG", None)
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "sample.py"), f"--out_dir={char_ckpt}",
                             "--start=ROMEO:", "--max_new_tokens=1000000"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        received = b""
        deadline = time.monotonic() + 120
        while len(received) < len("ROMEO:") + 20 and time.monotonic() < deadline:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            received += chunk
        assert received.startswith(b"ROMEO:") and len(received) >= len("ROMEO:") + 20, proc.stderr.read()
        assert proc.poll() is None  # a million tokens are far from done: the text came as it was made
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("bad, message", [
    ("--top_p=0", "top_p"), ("--top_p=1.5", "top_p"), ("--temperature=-1", "temperature"),
    ("--num_samples=0", "num_samples"), ("--max_new_tokens=-2", "max_new_tokens"), ("--top_k=-1", "top_k"),
    ("--temperature=nan", "temperature"), ("--threads=-1", "threads"),
])
def test_invalid_options_are_one_line_errors(bad, message, char_ckpt):
    with pytest.raises(UserError, match=message):
        sample.main([f"--out_dir={char_ckpt}", bad])


@pytest.mark.slow
def test_invalid_option_from_the_command_line_exits_with_one_line(char_ckpt):
    run = run_script("sample.py", f"--out_dir={char_ckpt}", "--top_p=2")
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: bad value for top_p")
    assert "Traceback" not in run.stderr


@pytest.mark.slow
def test_sample_py_does_not_import_train_tqdm_or_tiktoken(char_ckpt):
    """(torch itself may import tqdm; sample.py must add none of the three.)"""
    code = ("import sys, runpy, torch; names = ('train', 'tqdm', 'tiktoken');"
            "before = {m for m in names if m in sys.modules};"
            "sys.argv = ['sample.py', '--out_dir=%s', '--max_new_tokens=3'];"
            "runpy.run_path('sample.py', run_name='__main__');"
            "print(sorted(m for m in names if m in sys.modules and m not in before))") % char_ckpt
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("[]")
