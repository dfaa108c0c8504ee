"""Finetuning on conversations and talking to the result: rendering, prepare/chat.py, the packed and
masked batches, the markers' rows, chat.py's cache across turns, eval.py --conversations, and the
Hugging Face export's chat template and special-token text (issue 37's "every text" included).

    python -m pytest tests/test_chat.py -q

Tiny random or briefly trained models; conversations are made up here. The in-process tests run in
well under a second each; the end-to-end ones (subprocesses, training) are in the slow tier.
"""

import gzip
import json
import random
import subprocess

import numpy as np
import pytest
import torch

import chat
from conftest import REPO_ROOT, TIKTOKEN_CACHE, records, run_script, torchrun_command
from model import GPT, GPTConfig
from smallgpt.checkpoint import load_checkpoint
from smallgpt.conversations import prepare_conversations, score_conversations
from smallgpt.data import ConversationSampler, make_samplers
from smallgpt.errors import UserError
from smallgpt.tokenizer import (CHAT_MARKERS, EOT_TEXT, ByteTokenizer, CharTokenizer, ChatTokenizer, build_tokenizer,
                                encode_content, read_meta, render_chat, tokenizer_from_meta)

SPELLINGS = [*CHAT_MARKERS, EOT_TEXT, "<|", "|>", "<|end", "<|assistant|"]  # whole and broken spellings


def conversation(i: int) -> dict:
    """A made-up conversation: a question about two numbers, sometimes a system prompt, sometimes two turns."""
    a, b = i % 7, i % 5
    messages = [{"role": "system", "content": "Be brief."}] if i % 3 == 0 else []
    messages += [{"role": "user", "content": f"What is {a} plus {b}?"}, {"role": "assistant", "content": str(a + b)}]
    if i % 2:
        messages += [{"role": "user", "content": "And times?"}, {"role": "assistant", "content": str(a * b)}]
    return {"messages": messages}


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    """A byte-tokenized conversations dataset of 60 conversations: (folder, meta, the jsonl file)."""
    folder = tmp_path_factory.mktemp("chat_data")
    source = write_jsonl(folder / "chats.jsonl", [conversation(i) for i in range(60)])
    meta = prepare_conversations([source], folder / "data", "byte", val_fraction=0.2, log=lambda line: None)
    return folder / "data", meta, source


def byte_chat() -> ChatTokenizer:
    return ChatTokenizer(ByteTokenizer())


def tiny_model(vocab_size=260, block_size=64, seed=0, **switches) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=vocab_size, **switches))
    with torch.no_grad():  # larger weights: the greedy output then depends on the context
        for p in model.transformer.h.parameters():
            p.mul_(3.0) if p.dim() >= 2 else None
        if model.config.prev_token_mix:
            model.prev_token_weight.normal_()
    return model.eval()


# ----------------------------------------------------------------------------- markers and rendering

def test_render_trains_on_the_answers_and_their_end_only():
    tok = byte_chat()
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"},
                {"role": "assistant", "content": "A!"}]
    ids, trained = render_chat(tok, messages)
    m = tok.markers
    assert ids == [m["<|system|>"], 83, m["<|end|>"], m["<|user|>"], 81, 63, m["<|end|>"],
                   m["<|assistant|>"], 65, 33, m["<|end|>"]]
    assert trained == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]  # "A!" and the <|end|> after it
    prompt, _ = render_chat(tok, messages[:2], add_generation_prompt=True)
    assert prompt == ids[:8]  # what the model answers after: up to <|assistant|>
    assert tok.decode(ids) == "<|system|>S<|end|><|user|>Q?<|end|><|assistant|>A!<|end|>"


@pytest.mark.parametrize("kind", ["char", "byte", "gpt2"])
def test_text_that_spells_a_marker_is_text_for_every_tokenizer(kind, monkeypatch):
    if kind == "gpt2" and not (TIKTOKEN_CACHE.is_dir() and any(TIKTOKEN_CACHE.iterdir())):
        pytest.skip(f"no GPT-2 BPE cache at {TIKTOKEN_CACHE} (expected ../shared beside the checkout)")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
    text = "Say <|assistant|> then <|end|><|user|> and <|endoftext|>."
    base = CharTokenizer(sorted(set(text))) if kind == "char" else build_tokenizer(kind)
    tok = ChatTokenizer(base)
    assert tok.vocab_size == base.vocab_size + 4 and min(tok.markers.values()) == base.vocab_size
    ids, trained = render_chat(tok, [{"role": "user", "content": text}, {"role": "assistant", "content": text}])
    markers = [i for i in ids if i in tok.marker_names]
    assert [tok.marker_names[i] for i in markers] == ["<|user|>", "<|end|>", "<|assistant|>", "<|end|>"]
    assert base.eot_token is None or base.eot_token not in ids
    assert tok.decode(ids) == f"<|user|>{text}<|end|><|assistant|>{text}<|end|>"
    assert sum(trained) == len(encode_content(tok, text)) + 1  # the answer's text and its <|end|>


def test_chat_dataset_meta_is_checked(chat_data, tmp_path):
    folder, meta, _ = chat_data
    assert meta["vocab_size"] == 260 and meta["chat"]["markers"]["<|system|>"] == 256
    assert read_meta(folder)["chat"] == meta["chat"] and hasattr(tokenizer_from_meta(meta), "markers")
    bad = json.loads((folder / "meta.json").read_text())
    bad["chat"]["markers"]["<|end|>"] = 12
    (tmp_path / "meta.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="chat.*markers"):
        read_meta(tmp_path)


# ----------------------------------------------------------------------------- prepare/chat.py

def test_prepare_writes_tokens_masks_and_counts(chat_data):
    folder, meta, _ = chat_data
    assert meta["documents"]["train"] + meta["documents"]["val"] == 60
    for split in ("train", "val"):
        ids = np.fromfile(folder / f"{split}.bin", dtype=meta["dtype"])
        flags = np.fromfile(folder / f"{split}.mask.bin", dtype=np.uint8)
        assert len(ids) == len(flags) == meta[f"{split}_tokens"]
        starts = np.flatnonzero(flags & 2)
        assert len(starts) == meta["documents"][split] and starts[0] == 0
        assert set(ids[starts].tolist()) <= {256, 257}  # each conversation starts with <|system|> or <|user|>
        assert int((flags & 1).astype(bool).sum()) == meta["chat"]["trained_tokens"][split]
        assert set(ids[(flags & 1).astype(bool)].tolist()) <= set(b"0123456789") | {259}  # answers and <|end|>


@pytest.mark.parametrize("bad, why", [
    ("{not json", "not valid JSON"), ('{"text": "hi"}', 'no "messages"'),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "role 'bot'"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message"),
    ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}', "message 1"),
])
def test_a_bad_line_is_one_error_with_its_line_number_and_nothing_is_written(tmp_path, bad, why):
    rows = [conversation(i) for i in range(20)]
    rows.insert(6, bad)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=f"in.jsonl:7 .*{why}.*--skip_bad"):
        prepare_conversations([source], out, "byte")
    assert not out.exists() or not any(out.iterdir())
    meta = prepare_conversations([source], out, "byte", skip_bad=True, log=lambda line: None)
    assert meta["chat"]["skipped_lines"] == 1 and sum(meta["documents"].values()) == 20


def test_folders_and_gzip_are_read_and_a_char_vocabulary_covers_the_messages(tmp_path):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", [conversation(i) for i in range(10)])
    with gzip.open(tmp_path / "in" / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(conversation(i)) + "\n" for i in range(10, 30)))
    meta = prepare_conversations([tmp_path / "in"], tmp_path / "out", "char", log=lambda line: None)
    assert sum(meta["documents"].values()) == 30 and meta["vocab_size"] == len(meta["vocab"]) + 4


@pytest.mark.slow
def test_prepare_cli_one_line_error_for_a_bad_line(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [conversation(0), "[1, 2]", conversation(1)])
    run = run_script("prepare/chat.py", "--input", source, "--out_dir", str(tmp_path / "out"), "--tokenizer", "byte")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and "in.jsonl:2" in run.stderr, run.stderr
    assert not (tmp_path / "out" / "meta.json").exists()


# ----------------------------------------------------------------------------- batches and the loss

def test_rows_pack_whole_conversations_and_target_only_answers(chat_data):
    folder, meta, _ = chat_data
    sampler = ConversationSampler(folder / "train.bin", meta["dtype"], 64, seed=0)
    firsts = sampler.draw_offsets(16)
    x, y, segments = sampler.batch(firsts)
    assert x.shape == y.shape == segments.shape == (16, 64)
    flags = np.fromfile(folder / "train.mask.bin", dtype=np.uint8)
    ids = np.fromfile(folder / "train.bin", dtype=meta["dtype"])
    for r, first in enumerate(firsts):
        row = sampler.row(int(first))
        assert row[0] == first and sum(sampler.lengths[c] for c in row) <= 65
        expected_x, expected_y = [], []
        for c in row:
            span = slice(sampler.starts[c], sampler.starts[c] + sampler.lengths[c])
            expected_x += ids[span].tolist()
            expected_y += [int(t) if f & 1 else -1 for t, f in zip(ids[span], flags[span])][1:] + [-1]
        n = len(expected_x)
        assert x[r, :n].tolist() == expected_x  # whole conversations, one after another
        assert y[r, :n - 1].tolist() == expected_y[:n - 1] and (y[r, n - 1:] == -1).all()
        assert segments[r, :n].tolist() == [k for k, c in enumerate(row) for _ in range(sampler.lengths[c])]


def test_prompt_tokens_carry_no_gradient(chat_data):
    """The loss's gradient is zero at every position whose target is a prompt's token (or padding), and
    not zero at the answers'; training on the prompts' tokens too would change the weights' gradient."""
    folder, meta, _ = chat_data
    sampler = ConversationSampler(folder / "train.bin", meta["dtype"], 64, seed=1)
    x, y, segments = sampler.batch(sampler.draw_offsets(8))
    model = tiny_model().train()
    logits, loss = model(x, y, segments=segments)
    logits.retain_grad()
    loss.backward()
    per_position = logits.grad.abs().sum(-1)  # (B, T)
    assert (y == -1).float().mean() > 0.5  # most targets are prompts (and padding) here
    assert (per_position[y == -1] == 0).all() and (per_position[y >= 0] > 0).all()
    masked = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    _, unmasked = model(x, torch.where(y == -1, x.roll(-1, dims=1), y), segments=segments)
    unmasked.backward()
    assert not all(torch.equal(g, p.grad) for g, p in zip(masked, model.parameters()))


@pytest.mark.parametrize("switches", [{}, {"pos_embedding": "rope", "prev_token_mix": True, "value_embeds": True}])
def test_a_packed_row_scores_each_conversation_as_if_it_were_alone(chat_data, switches):
    folder, meta, _ = chat_data
    sampler = ConversationSampler(folder / "train.bin", meta["dtype"], 64, seed=2)
    model = tiny_model(**switches)
    first = next(f for f in sampler.draw_offsets(50) if len(sampler.row(int(f))) >= 2)
    x, y, segments = sampler.batch(np.array([first]))
    logits, _ = model(x, y, segments=segments)
    at = 0
    for c in sampler.row(int(first)):
        n = int(sampler.lengths[c])
        alone, _ = model(x[:, at:at + n], y[:, at:at + n])  # the conversation alone, from position 0
        assert (logits[:, at:at + n] - alone).abs().max() < 1e-5
        at += n


def test_the_markers_take_spare_rows_or_new_ones():
    gpt2_like = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=50257))
    assert gpt2_like.add_tokens(50261) == 0 and gpt2_like.transformer.wte.weight.shape[0] == 50304
    full = tiny_model(vocab_size=256)  # bytes: 256 rows, none spare
    idx = torch.randint(0, 256, (2, 16))
    before, _ = full(idx, idx)
    assert full.add_tokens(260) == 64 and full.lm_head.weight is full.transformer.wte.weight
    after, _ = full(idx, idx)
    assert (after[..., :256] - before).abs().max() < 1e-6  # the old ids' logits are unchanged
    mean = full.transformer.wte.weight[:256].mean(0)
    assert torch.equal(full.transformer.wte.weight[256], mean) and after.shape[-1] == 260


# ----------------------------------------------------------------------------- chat.py

def cost_counter(model):
    """A list that collects the number of positions of each forward call."""
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(args[0].size(1)), with_kwargs=True)
    return calls


@pytest.mark.parametrize("switches", [{}, {"pos_embedding": "rope", "prev_token_mix": True}])
def test_a_new_turn_costs_its_own_tokens_and_answers_as_recomputing_would(switches):
    tok, model = byte_chat(), tiny_model(block_size=128, **switches)
    conversation = chat.Conversation(model, tok, system="Hi.")
    calls = cost_counter(model)
    answers, prompts = [], []
    for message in ("One?", "Two?"):
        calls.clear()
        before, in_cache = len(conversation.ids), conversation.cache.pos
        conversation.reply(message, 12)
        turn = render_chat(tok, [{"role": "user", "content": message}], add_generation_prompt=True)[0]
        prompts.append(conversation.ids[:before + len(turn)])
        answers.append(conversation.ids[before + len(turn):-1])
        assert conversation.ids[-1] == tok.end_token
        # the positions run through the model are the new ones only: what the cache lacked before (the
        # system prompt, then the last answer's end), this message and its answer; the history stays cached
        assert sum(calls) == conversation.cache.pos - in_cache <= before - in_cache + len(turn) + len(answers[-1])
    assert before - in_cache <= 2 and in_cache > 4 + len(answers[0])  # turn 2 had a history and did not pay for it
    for prompt, answer in zip(prompts, answers):  # the same answers with the whole conversation recomputed
        out = model.generate(torch.tensor([prompt]), 12, temperature=0, use_cache=False)[0, len(prompt):].tolist()
        assert out[:len(answer)] == answer and (len(answer) == 12 or out[len(answer)] in tok.marker_names)


def test_a_long_conversation_forgets_its_oldest_turns_with_a_note():
    tok, model = byte_chat(), tiny_model(block_size=64)
    conversation = chat.Conversation(model, tok, system="S")
    notes = []
    for i in range(6):
        conversation.reply(f"Turn {i}?", 8, note=notes.append)
        assert conversation.cache.pos <= 64 and conversation.ids[:3] == conversation.system
    assert any("forgotten" in n and "system prompt is kept" in n for n in notes)
    with pytest.raises(UserError, match="does not fit"):
        conversation.reply("x" * 80, 8)


# ----------------------------------------------------------------------------- eval

class AnswersSeven(torch.nn.Module):
    """A stand-in model for score_conversations: loss 1.0 on anything, and every greedy answer is "7"."""

    def __init__(self, end_token: int):
        super().__init__()
        self.config, self.end_token = GPTConfig(block_size=64, vocab_size=260), end_token
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None):
        return None, torch.tensor(1.0)

    def generate_stream(self, idx, max_new_tokens, temperature=0.0):
        for token in (ord("7"), self.end_token, ord("7")):
            idx = torch.cat([idx, torch.full((idx.size(0), 1), token)], dim=1)
            yield idx


def test_exact_match_counts_the_answers_equal_to_the_reference():
    tok = byte_chat()
    convs = [("x", conversation(i)["messages"]) for i in range(12)]
    result = score_conversations(AnswersSeven(tok.end_token), tok, convs, max_new_tokens=4)
    references = [m["content"] for _, ms in convs for m in ms if m["role"] == "assistant"]
    assert result["answers"] == len(references) == 18 and result["answer_loss"] == 1.0
    assert result["matches"] == references.count("7") > 0  # "7", ended by <|end|>; nothing after it counts
    real = score_conversations(tiny_model(), tok, convs, max_new_tokens=4)  # a real model runs through it
    assert real["answers"] == 18 and real["answer_loss"] > 0


# ----------------------------------------------------------------------------- the Hugging Face export

def random_text(rng: random.Random, length: int = 60) -> str:
    """Text of many scripts, whitespace and punctuation, with special-token spellings (whole and broken) in it."""
    alphabet = "abc xyz XYZ 0123 .,;:!?'\"()[]{}<>|_-=+*/\\ \t\n\n  éüßñ 日本語 🙂 αβγ жизнь \u00a0\u3000"
    parts = []
    for _ in range(length):
        r = rng.random()
        parts.append(rng.choice(SPELLINGS) if r < 0.1 else rng.choice([" ", "\n", ""]) + rng.choice(SPELLINGS)
                     if r < 0.15 else rng.choice(alphabet))
    return "".join(parts)


def hf_tokenizer(meta: dict, folder):
    """transformers' AutoTokenizer for the tokenizer files the export writes for `meta`."""
    from smallgpt.interop import hf

    transformers = pytest.importorskip("transformers", reason='transformers is not installed (pip install -e ".[hf]")')
    folder.mkdir()
    for name, text in hf.tokenizer_files(meta, 128).items():
        (folder / name).write_text(text, encoding="utf-8", newline="")
    return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def bpe_chat(tmp_path_factory):
    """A bpe trained on conversations whose text spells markers: (plain meta, chat meta)."""
    pytest.importorskip("rustbpe", reason='rustbpe is not installed (pip install -e ".[bpe]")')
    rng = random.Random(0)
    rows = [{"messages": [{"role": "user", "content": random_text(rng, 80)},
                          {"role": "assistant", "content": random_text(rng, 40)}]} for _ in range(150)]
    folder = tmp_path_factory.mktemp("bpe_chat")
    source = write_jsonl(folder / "chats.jsonl", rows)
    meta = prepare_conversations([source], folder / "data", "bpe", vocab_size=400, log=lambda line: None)
    meta = read_meta(folder / "data")
    plain = {k: v for k, v in meta.items() if k != "chat"}
    plain["vocab_size"] -= 4
    return plain, meta


def check_export_agrees(plain_meta, chat_meta, tmp_path, n_texts=150):
    """Issue 37's "every text": the exported tokenizer gives our ids for random text with special-token
    spellings in it (a plain export by default; a chat export with split_special_tokens), and a chat
    export's apply_chat_template gives render_chat's ids and mask (sanitize_control_tokens=True where a
    message spells a special token)."""
    plain, chatty = hf_tokenizer(plain_meta, tmp_path / "plain"), hf_tokenizer(chat_meta, tmp_path / "chat")
    ours_plain, ours = tokenizer_from_meta(plain_meta), tokenizer_from_meta(chat_meta)
    rng = random.Random(1)
    for _ in range(n_texts):
        text = random_text(rng)
        ids = ours.encode(text)
        assert plain(text)["input_ids"] == ours_plain.encode(text) == ids, text
        assert chatty(text, split_special_tokens=True)["input_ids"] == ids, text
        assert plain.decode(ids) == text
    for n in range(40):
        words = [rng.choice(["def f(x):", "What is it?", "x, y", " ok ", "\n", "é🙂", "42"]) for _ in range(6)]
        messages = [{"role": role, "content": "".join(rng.sample(words, 3))}
                    for role in (["system"] if n % 3 == 0 else []) + ["user", "assistant", "user", "assistant"]]
        ids, trained = render_chat(ours, messages)
        theirs = chatty.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        assert theirs["input_ids"] == ids and theirs["assistant_masks"] == trained, messages
        prompt = render_chat(ours, messages[:-1], add_generation_prompt=True)[0]
        assert chatty.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=False) == prompt
        spelled = [{**m, "content": random_text(rng, 20)} for m in messages]
        assert chatty.apply_chat_template(spelled, sanitize_control_tokens=True, return_dict=False) == \
            render_chat(ours, spelled)[0], spelled


@pytest.mark.slow
def test_bpe_export_agrees_on_every_text_and_renders_chats_as_we_do(bpe_chat, tmp_path):
    check_export_agrees(*bpe_chat, tmp_path)
    from tokenizers import Tokenizer  # tokenizer.json alone, read by the tokenizers library

    raw = Tokenizer.from_file(str(tmp_path / "plain" / "tokenizer.json"))
    raw.encode_special_tokens = True  # (what split_special_tokens sets; the file cannot hold it)
    ours, rng = tokenizer_from_meta(bpe_chat[0]), random.Random(2)
    for text in (random_text(rng) for _ in range(50)):
        assert raw.encode(text).ids == ours.encode(text), text


@pytest.mark.slow
def test_gpt2_export_agrees_on_every_text_and_renders_chats_as_we_do(tmp_path, monkeypatch):
    if not (TIKTOKEN_CACHE.is_dir() and any(TIKTOKEN_CACHE.iterdir())):
        pytest.skip(f"no GPT-2 BPE cache at {TIKTOKEN_CACHE} (expected ../shared beside the checkout)")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
    from smallgpt.tokenizer import make_meta

    gpt2 = build_tokenizer("gpt2")
    check_export_agrees(make_meta(gpt2), make_meta(ChatTokenizer(gpt2)), tmp_path, n_texts=60)


# ----------------------------------------------------------------------------- end to end

TINY = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=64", "--batch_size=4", "--device=cpu",
        "--dtype=float32", "--compile=false", "--eval_iters=2", "--log_interval=5", "--warmup_iters=2",
        "--learning_rate=3e-3"]


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory, shakespeare_text):
    """A tiny model pretrained a few steps on bytes (no spare rows for the markers): its run folder."""
    import train
    from smallgpt.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("byte_run")
    prepare_dataset(lambda: iter([shakespeare_text[:30_000]]), root / "text", "byte", progress=False)
    train.main([f"--dataset={root / 'text'}", f"--out_dir={root / 'run'}", *TINY, "--max_iters=6", "--eval_interval=6"])
    return root / "run"


@pytest.mark.slow
def test_finetune_a_run_then_chat_and_evaluate(byte_run, chat_data, tmp_path):
    """prepare/chat.py -> train.py --init_from=RUN (the markers' rows added, said in one line) -> chat.py
    --prompt and eval.py --conversations; chat.py refuses a run that was not finetuned."""
    folder, meta, source = chat_data
    out = tmp_path / "ft"
    run = run_script("train.py", f"--init_from={byte_run}", f"--dataset={folder}", f"--out_dir={out}", *TINY,
                     "--max_iters=30", "--eval_interval=15")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "chat markers: ids 256..259 are new" in run.stdout and "grow from 256 to 320 rows" in run.stdout
    assert "conversations: " in run.stdout and "the loss on the answers only" in run.stdout
    assert [r["iter"] for r in records(out)] == [0, 15, 30] and records(out)[-1]["val_loss"] < records(out)[0]["val_loss"]
    ckpt = load_checkpoint(out)
    assert ckpt["model_config"]["vocab_size"] == 260 and ckpt["meta"]["chat"]["markers"]["<|end|>"] == 259
    talk = run_script("chat.py", f"--out_dir={out}", "--prompt", "What is 2 plus 3?", "--temperature=0",
                      "--max_new_tokens=8")
    assert talk.returncode == 0 and talk.stdout.endswith("\n"), talk.stderr
    scored = run_script("eval.py", f"--out_dir={out}", f"--conversations={source}", "--json", "--max_new_tokens=4")
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    assert result["answers"] == 90 and 0 <= result["exact_match"] <= 1 and result["answer_loss"] < 5.6
    before = run_script("eval.py", f"--out_dir={byte_run}", f"--conversations={source}", "--json", "--max_new_tokens=4")
    assert before.returncode == 0 and "chat markers: ids 256..259 are new" in before.stderr
    assert json.loads(before.stdout)["answer_loss"] > result["answer_loss"]
    refused = run_script("chat.py", f"--out_dir={byte_run}", "--prompt=hi")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "not finetuned" in refused.stderr


@pytest.mark.slow
def test_a_chat_finetune_resumes_exactly(chat_data, tmp_path):
    import train
    from test_resume import assert_same_state, comparable, stop_after_update

    folder, _, _ = chat_data
    args = [f"--dataset={folder}", *TINY, "--max_iters=8", "--lr_decay_iters=8", "--eval_interval=4", "--dropout=0.1"]
    train.main([*args, f"--out_dir={tmp_path / 'straight'}"])
    train.main([*args, f"--out_dir={tmp_path / 'split'}"], hook=stop_after_update(5))
    assert load_checkpoint(tmp_path / "split")["iter_num"] == 5
    train.main([*args, f"--out_dir={tmp_path / 'split'}", "--init_from=resume"])
    assert_same_state(comparable(load_checkpoint(tmp_path / "split")), comparable(load_checkpoint(tmp_path / "straight")))
    strip = [{k: r[k] for k in ("iter", "train_loss", "val_loss")} for r in records(tmp_path / "split")]
    assert strip == [{k: r[k] for k in ("iter", "train_loss", "val_loss")} for r in records(tmp_path / "straight")]


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_on_conversations_match_one_process(chat_data, tmp_path, parallel):
    folder, _, _ = chat_data
    common = [f"--dataset={folder}", *TINY, "--max_iters=4", "--eval_interval=4", "--gradient_accumulation_steps=2"]
    single = run_script("train.py", *common, f"--out_dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr[-2000:]
    cmd, env = torchrun_command("train.py", *common, f"--out_dir={tmp_path / 'ddp'}", f"--parallel={parallel}")
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "single"), load_checkpoint(tmp_path / "ddp")
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5)


def test_make_samplers_picks_conversations_and_says_so(chat_data, small_char_dataset):
    folder, meta, _ = chat_data
    lines = []
    splits = make_samplers(folder, meta, 64, 0, "cpu", log=lines.append)
    assert all(isinstance(s, ConversationSampler) for s in splits.values()) and "conversations: " in lines[0]
    plain = make_samplers(small_char_dataset, read_meta(small_char_dataset), 64, 0, "cpu", log=lines.append)
    assert not any(isinstance(s, ConversationSampler) for s in plain.values()) and len(lines) == 1


@pytest.mark.slow
def test_gpt2_weights_finetune_on_conversations_in_spare_rows_and_export_a_chat_template(tmp_path, monkeypatch):
    """init_from a GPT-2 folder: the markers take spare rows of GPT-2's padded vocabulary (no resize);
    the finetuned run exports with a chat template whose ids transformers' model scores as ours does."""
    transformers = pytest.importorskip("transformers", reason='transformers is not installed (pip install -e ".[hf]")')
    if not (TIKTOKEN_CACHE.is_dir() and any(TIKTOKEN_CACHE.iterdir())):
        pytest.skip(f"no GPT-2 BPE cache at {TIKTOKEN_CACHE} (expected ../shared beside the checkout)")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
    from smallgpt.checkpoint import load_model
    from smallgpt.interop import hf
    from test_hf import save_hf_folder, tiny_hf_model

    folder = save_hf_folder(tiny_hf_model(vocab_size=50257, n_positions=64), tmp_path / "hf", "safetensors")
    source = write_jsonl(tmp_path / "chats.jsonl", [conversation(i) for i in range(40)])
    prepare_conversations([source], tmp_path / "data", "gpt2", log=lambda line: None)
    out = tmp_path / "ft"
    run = run_script("train.py", f"--init_from={folder}", f"--dataset={tmp_path / 'data'}", f"--out_dir={out}",
                     *TINY[3:], "--max_iters=4", "--eval_interval=4")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ids 50257..50260 are new" in run.stdout and "spare rows of its padded vocabulary (50304 rows, no resize)" \
        in run.stdout
    exported = hf.export_checkpoint(str(out), str(tmp_path / "export"))
    tok = transformers.AutoTokenizer.from_pretrained(exported)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(exported).eval()
    model, ckpt = load_model(out)
    ours = tokenizer_from_meta(ckpt["meta"])
    messages = conversation(3)["messages"]
    ids = tok.apply_chat_template(messages, return_dict=False)
    assert ids == render_chat(ours, messages)[0] and max(ids) == 50260
    idx = torch.tensor([ids])
    with torch.no_grad():
        assert (model(idx, idx)[0] - theirs(idx).logits).abs().max() < 1e-4
    assert "apply_chat_template" in (exported / "README.md").read_text()


@pytest.mark.parametrize("bad", ["--temperature=nan", "--temperature=-1", "--top_p=0", "--top_p=nan",
                                 "--max_new_tokens=0", "--top_k=-1"])
def test_chat_options_are_checked_before_anything_loads(bad, tmp_path):
    with pytest.raises(UserError, match=bad.split("=")[0].removeprefix("--")):
        chat.main([f"--out_dir={tmp_path}", "--prompt", "hi", bad])
