"""Conversations for finetuning: read them from JSONL, prepare a dataset of them, score a model on them.

    from smallgpt.conversations import prepare_conversations
    meta = prepare_conversations(["chats.jsonl"], "data/chats", tokenizer_from="out-python-stdlib")

The input is the chat format of OpenAI's and Hugging Face's tools, one conversation per line:
    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
in files, folders (every .jsonl / .jsonl.gz under them) or globs, gzip understood. A bad line
(not JSON, no messages, an unknown role, no assistant message, text the tokenizer cannot encode) is
one UserError naming the file and line, or, with skip_bad, left out and counted.

`prepare_conversations` (prepare/chat.py; the conversations are held in memory) writes train.bin / val.bin (the tokens, rendered by
tokenizer.render_chat), train.mask.bin / val.mask.bin (one uint8 per token: bit 1 = the token is
trained on, bit 2 = it starts a conversation) and meta.json, whose "chat" entry holds the markers
and describes the masks. About val_fraction of the conversations go to val (seeded, never one cut
in two). The write is atomic, as smallgpt/prepare.py's: a failure leaves the folder as it was.

`score_conversations` (eval.py --conversations) measures the loss on the answers' tokens and the
exact-match rate of greedy answers.
"""

import gzip
import json
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np

from smallgpt.bpe import DEFAULT_SAMPLE_BYTES
from smallgpt.errors import UserError
from smallgpt.prepare import _is_val, _Passes, _choose_tokenizer, expand_inputs
from smallgpt.tokenizer import (BPE_RANKS_FILE, CHAT_ROLES, ChatTokenizer, encode_content, make_meta, render_chat,
                                write_meta)

TRAINED, STARTS = 1, 2  # the bits of a mask byte
MASK_NOTE = "{split}.mask.bin: a uint8 per token of {split}.bin; +1: trained on (an answer's token), +2: starts a conversation"


def conversation_files(inputs) -> list[Path]:
    """The JSONL files `inputs` names: files as given; in folders and globs, *.jsonl and *.jsonl.gz."""
    files = expand_inputs(inputs, include=None)
    named = {Path(i) for i in map(str, inputs) if Path(i).is_file()}
    files = [f for f in files if f in named or f.name.endswith((".jsonl", ".jsonl.gz"))]
    if not files:
        raise UserError(f"no .jsonl or .jsonl.gz files in {', '.join(map(str, inputs))}; give conversation files")
    return files


def line_problem(line: str) -> tuple[list | None, str]:
    """(messages, "") for a good line, (None, why) for a bad one."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"is not valid JSON ({e.msg})"
    messages = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(messages, list) or not messages:
        return None, 'has no "messages" list (one conversation per line: {"messages": [{"role": ..., "content": ...}]})'
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            return None, f'message {i} is not {{"role": ..., "content": "text"}}'
        if m.get("role") not in CHAT_ROLES:
            return None, f"message {i} has role {m.get('role')!r}; roles are {', '.join(CHAT_ROLES)}"
    if not any(m["role"] == "assistant" for m in messages):
        return None, "has no assistant message (nothing to learn or score)"
    return [{"role": m["role"], "content": m["content"]} for m in messages], ""


def iter_conversations(files, skip_bad: bool, skipped: list):
    """(where, messages) for each conversation in the files, in order; bad lines raise, or with skip_bad
    are appended to `skipped` as "path:line why" and left out."""
    for path in files:
        try:
            with open(path, "rb") as raw:
                stream = gzip.GzipFile(fileobj=raw, mode="rb") if path.name.endswith(".gz") else raw
                for lineno, line in enumerate(stream, 1):
                    try:
                        line = line.decode("utf-8")
                    except UnicodeDecodeError:
                        bad(f"{path}:{lineno} is not valid UTF-8 text", skip_bad, skipped)
                        continue
                    if not line.strip():
                        continue
                    messages, why = line_problem(line)
                    if messages is None:
                        bad(f"{path}:{lineno} {why}", skip_bad, skipped)
                    else:
                        yield f"{path}:{lineno}", messages
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise UserError(f"{path} is not a valid gzip file ({e}); fix or remove it") from None


def bad(problem: str, skip_bad: bool, skipped: list) -> None:
    if not skip_bad:
        raise UserError(f"{problem}; fix the line, or pass --skip_bad to leave bad lines out (they are counted)")
    skipped.append(problem)


def render_checked(tok, where: str, messages: list, skip_bad: bool, skipped: list):
    """render_chat's (ids, trained), or None for a conversation the tokenizer cannot encode (skip_bad)."""
    try:
        return render_chat(tok, messages)
    except UserError as e:
        bad(f"{where}: {str(e).split(';')[0]}", skip_bad, skipped)
        return None


def read_conversations(inputs, skip_bad: bool = False) -> tuple[list, list]:
    """(every good conversation as (where, messages), the skipped lines) of the files `inputs` names."""
    skipped: list = []
    return list(iter_conversations(conversation_files(inputs), skip_bad, skipped)), skipped


# ----------------------------------------------------------------------------- preparing a dataset

def prepare_conversations(inputs, out_dir, tokenizer: str | None = None, *, tokenizer_from=None,
                          val_fraction: float = 0.1, seed: int = 1337, skip_bad: bool = False,
                          vocab_size: int | None = None, bpe_pattern: str = "gpt4",
                          bpe_sample_bytes: int = DEFAULT_SAMPLE_BYTES, log=print) -> dict:
    """Tokenize conversations into out_dir (see the module docstring); return the meta dict.

    tokenizer: char, byte, gpt2 or bpe (trained here on the messages' text); tokenizer_from: a dataset
    or run folder whose tokenizer to use instead (a finetune's: the ids of the model it starts from).
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    conversations, skipped = read_conversations(inputs, skip_bad)
    if not conversations:
        raise UserError(f"no conversations in {', '.join(map(str, inputs))}" + (f" ({len(skipped)} bad lines skipped)"
                                                                                if skipped else ""))

    def documents(bar):  # the messages' text, one document per conversation: a char vocabulary, a bpe
        return (iter(("\n".join(m["content"] for m in messages) + "\n",)) for _, messages in conversations)

    passes = _Passes(documents, 0, False, val_fraction, seed)
    base, _ = _choose_tokenizer(passes, tokenizer, tokenizer_from, vocab_size, bpe_pattern, bpe_sample_bytes)
    tok = base if hasattr(base, "markers") else ChatTokenizer(base)  # (a chat run's tokenizer has them already)
    rendered = [(i, r) for i, (where, messages) in enumerate(conversations)
                if (r := render_checked(tok, where, messages, skip_bad, skipped)) is not None]
    val = [_is_val(seed, i, val_fraction) for i, _ in rendered]
    if len(rendered) < 2:
        raise UserError(f"{len(rendered)} conversation(s): too few for a train and a val split; add conversations")
    if not any(val):
        val[-1] = True
        log(f"no conversation fell in the {val_fraction} val split by chance: the last one is val")
    if all(val):
        raise UserError(f"the {val_fraction} val split took every conversation; lower --val_fraction")
    meta = make_meta(tok, source=f"{len(rendered)} conversations: {', '.join(map(str, inputs))}"[:200])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
    try:
        counts = write_splits(tmp, [r for _, r in rendered], val, np.dtype(meta["dtype"]))
        meta.update(train_tokens=counts["train"][0], val_tokens=counts["val"][0],
                    documents={s: counts[s][1] for s in ("train", "val")})
        meta["chat"].update(mask=MASK_NOTE, trained_tokens={s: counts[s][2] for s in ("train", "val")},
                            skipped_lines=len(skipped))
        names = write_meta(tmp, meta)
        for name in ("train.bin", "val.bin", "train.mask.bin", "val.mask.bin", *names):  # meta.json last
            os.replace(tmp / name, out / name)
        if meta["tokenizer"] != "bpe" and (out / BPE_RANKS_FILE).is_file():
            (out / BPE_RANKS_FILE).unlink()  # an earlier bpe dataset's, no longer meant
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if skipped:
        log(f"skipped {len(skipped)} bad line(s) (--skip_bad); the first: {skipped[0]}")
    return meta


def write_splits(folder: Path, rendered: list, val: list, dtype) -> dict:
    """Write each rendered conversation to its split's token and mask files; {split: (tokens, conversations,
    trained tokens)}."""
    counts = {}
    for split, want in (("train", False), ("val", True)):
        chosen = [r for r, v in zip(rendered, val) if v == want]
        ids = np.concatenate([np.asarray(i, dtype=dtype) for i, _ in chosen])
        mask = np.concatenate([np.asarray(t, dtype=np.uint8) for _, t in chosen])
        mask[np.cumsum([0] + [len(i) for i, _ in chosen[:-1]])] |= STARTS
        ids.tofile(folder / f"{split}.bin")
        mask.tofile(folder / f"{split}.mask.bin")
        counts[split] = (len(ids), len(chosen), int((mask & TRAINED).astype(bool).sum()))
    return counts


# ----------------------------------------------------------------------------- scoring a model on them

def answer_loss(model, tok, conversations: list, block_size: int, batch_size: int = 8) -> tuple[float, int]:
    """(summed nats, tokens) of the model's loss on the answers' tokens (the trained ones), each
    conversation on its own (its first block_size + 1 tokens), batch_size padded rows at a time."""
    import torch

    device = next(model.parameters()).device
    rows = [render_chat(tok, messages) for _, messages in conversations]
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = [(ids[:block_size + 1], t[:block_size + 1]) for ids, t in rows[start:start + batch_size]]
        width = max(len(ids) for ids, _ in chunk) - 1
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        y = torch.full((len(chunk), width), -1, dtype=torch.long)
        for r, (ids, trained) in enumerate(chunk):
            x[r, :len(ids) - 1] = torch.tensor(ids[:-1])
            y[r, :len(ids) - 1] = torch.tensor([i if t else -1 for i, t in zip(ids[1:], trained[1:])])
        n = int((y >= 0).sum())
        if n:
            with torch.inference_mode():
                _, loss = model(x.to(device), y.to(device))
            total, count = total + float(loss) * n, count + n
    return total, count


def greedy_answers(model, tok, prompts: list[list[int]], references: list[str], max_new_tokens: int,
                   batch_size: int = 64) -> list[str]:
    """The model's greedy answer to each prompt (ids ending with <|assistant|>), up to a marker or
    max_new_tokens. Prompts of one length run together as a batch; an answer stops early once it can
    no longer equal its reference (whitespace trimmed), since more tokens only add text."""
    import torch

    from smallgpt.inference import SampleText

    device = next(model.parameters()).device
    answers = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    groups = [ids[k:k + batch_size] for ids in by_length.values() for k in range(0, len(ids), batch_size)]
    for group in groups:
        texts = [SampleText(tok, eot_token=tok.end_token) for _ in group]
        idx = torch.tensor([prompts[i] for i in group], dtype=torch.long, device=device)
        stream = model.generate_stream(idx, max_new_tokens, temperature=0)
        for seq in stream:
            for text, token, i in zip(texts, seq[:, -1].tolist(), group):
                if token in tok.marker_names or token == tok.eot_token:  # any marker ends the answer
                    text.finish()
                elif not text.done:
                    text.push(token)
                    if not references[i].strip().startswith(text.text.strip()):
                        text.finish()  # it can no longer match
            if all(text.done for text in texts):
                break
        stream.close()
        for text, i in zip(texts, group):
            text.finish()
            answers[i] = text.text
    return answers


def score_conversations(model, tok, conversations: list, max_new_tokens: int, batch_size: int = 8) -> dict:
    """The loss on the answers' tokens and the exact-match rate of greedy answers: each assistant message
    is answered after the conversation's messages before it (the reference history), and matches when
    equal to the reference with whitespace trimmed. A prompt longer than the window keeps its end."""
    block_size = model.config.block_size
    nats, tokens = answer_loss(model, tok, conversations, block_size, batch_size)
    cut = 0
    prompts, references = [], []
    for _, messages in conversations:
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                prompt, _ = render_chat(tok, messages[:i], add_generation_prompt=True)
                room = max(1, block_size - len(encode_content(tok, message["content"])) - 1)  # the answer fits after it
                prompts.append(prompt[-room:])
                references.append(message["content"])
                cut += len(prompt) > room
    answers = greedy_answers(model, tok, prompts, references, max_new_tokens)
    matches = sum(a.strip() == r.strip() for a, r in zip(answers, references))
    examples = [{"reference": r, "answer": a} for a, r in zip(answers[:3], references)]
    return {"answer_loss": nats / tokens if tokens else math.nan, "answer_tokens": tokens,
            "exact_match": matches / len(answers), "answers": len(answers), "matches": matches,
            "conversations": len(conversations), "prompts_cut": cut, "examples": examples}
