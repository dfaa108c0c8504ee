"""A model's loss on any text: nats per token, bits per byte and perplexity.

    python eval.py --out_dir=out-shakespeare-char --input=notes/              # files, folders, globs
    python eval.py --out_dir=out-shakespeare-char --dataset=shakespeare_char --split=val
    python eval.py --out_dir=out-shakespeare-char        # the run's own dataset, val split
    python eval.py --init_from=gpt2 --input=book.txt --json                  # OpenAI's GPT-2 (Hugging Face)
    python eval.py --out_dir=../nanoGPT/out-shakespeare-char --input=book.txt  # a nanoGPT run
    python eval.py --out_dir=out-python-stdlib-chat --conversations=data/python_stdlib_chat/heldout.jsonl
    python eval.py --help

The model: one of our checkpoints or a nanoGPT run (--out_dir; a nanoGPT run's meta.pkl is found
where nanoGPT's sample.py finds it, or give --dataset=FOLDER holding it), or GPT-2 in the Hugging
Face layout (--init_from=gpt2|gpt2-medium|gpt2-large|gpt2-xl|FOLDER, needs the .[hf] extra).

The text: --input is read as prepare/text.py reads it (files, folders with --include, globs; .jsonl
lines and .gz files; each file or .jsonl line one document) and tokenized with the model's tokenizer
as prepare would (GPT-2 BPE puts <|endoftext|> after each document). Or --dataset with --split: the
tokens of a prepared dataset folder, ours or nanoGPT's (--max_tokens scores only the first N). With
neither, a run of ours is scored on --split of the dataset it trained on (as its checkpoint names it).

Scoring: the tokens are read in windows of up to block_size tokens (the model's inputs), run as
batches of --batch_size windows. Each window scores only the tokens that no earlier window scored,
and each of those sees at least --context tokens before it (default block_size // 2; tokens near the
start see all there is). Every token but the very first (which has no context) is scored exactly
once. --context=1 gives disjoint windows (fastest, least context); --context=block_size a sliding
window of one new token per window, each token seeing the full block_size tokens before it (slowest).

Conversations (--conversations=FILE, JSONL as prepare/chat.py reads it): the loss in nats per answer
token (the assistant's content and its <|end|>, each conversation on its own, rendered as the
finetune renders it), and the exact-match rate of greedy answers: each assistant message is
answered after the reference messages before it, and matches when the answer equals the reference
once whitespace is trimmed at both ends. A model trained without the chat markers (before a
finetune) gets them as a finetune does (mean rows), so before and after are measured alike.

Printed: the mean loss in nats per scored token, bits per byte (total nats / ln 2 / the UTF-8 bytes
of the text the scored tokens stand for; the <|endoftext|> separator counts no bytes), perplexity
(e^loss), and the numbers of tokens and bytes scored. --json prints one JSON object instead. A
progress bar is drawn on a terminal only (plain lines in a log, see progress.py).
"""

import contextlib
import glob
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from smallgpt.device import cpu_snapshot  # imports torch: the first slow import, so the measurement starts here

STARTED = cpu_snapshot()  # how busy other programs keep the CPU is measured from here (the threads' choice)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from smallgpt import checkpoint  # noqa: E402
from smallgpt.cli import option, parse_config, run_main, usable_threads  # noqa: E402
from smallgpt.data import load_dataset  # noqa: E402
from smallgpt.device import free_cpu_threads, inference_dtype, resolve_device  # noqa: E402
from smallgpt.errors import UserError
from smallgpt.progress import progress  # noqa: E402
from smallgpt.tokenizer import same_vocabulary, token_byte_lengths, tokenizer_from_meta, vocabulary_name  # noqa: E402


@dataclass
class EvalConfig:
    out_dir: str = option("out", "run folder holding ckpt.pt (ours or nanoGPT's), or the checkpoint file")
    init_from: str = option("", "instead of out_dir: gpt2|gpt2-medium|gpt2-large|gpt2-xl (Hugging Face hub) "
                            "or a folder in the Hugging Face GPT-2 layout")
    input: str = option("", "text to score: a file, a folder (recursive) or a glob pattern (quote it)")
    conversations: str = option("", "instead of text: a JSONL file (or folder, .gz) of conversations; scores the "
                                "answers' loss and the exact-match rate of greedy answers")
    max_new_tokens: int = option(128, "with --conversations: the longest greedy answer, in tokens", at_least=1)
    include: str = option("", "with a folder --input: only files whose name matches this glob, e.g. '*.md'")
    text_field: str = option("text", "the JSON field holding the text in .jsonl files")
    errors: str = option("strict", "undecodable bytes: strict stops naming the file; replace substitutes U+FFFD",
                         ["strict", "replace"])
    dataset: str = option("", "a prepared dataset folder or name to score (with --split); for a nanoGPT run "
                          "also where its meta.pkl is")
    split: str = option("val", "which token file of --dataset to score", ["train", "val"])
    max_tokens: int = option(0, "score only the first this many tokens of the text (0: all)", at_least=0,
                             at_most=10**15)
    block_size: int = option(0, "window length in tokens (0: the model's block_size)", at_least=0)
    context: int = option(0, "tokens of context each scored token sees at least (0: block_size // 2)", at_least=0)
    batch_size: int = option(8, "windows per forward pass (lower it if memory runs short)", at_least=1,
                             at_most=1 << 16)
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto (float32 on CPU, bf16/fp16 on GPU), float32, bfloat16 or float16",
                        ["auto", "float32", "bfloat16", "float16"])
    json: bool = option(False, "print one JSON object instead of text")
    threads: int = option(0, "CPU threads; 0: one per core not kept busy by other programs (measured while "
                             "eval.py starts); at most the usable cores", at_least=0)


def note(text: str) -> None:
    """Side remarks go to stderr, so that stdout holds only the result (--json stays parseable)."""
    print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- scoring

def windows(n_tokens: int, block_size: int, context: int) -> list[tuple[int, int, int]]:
    """The windows that score a stream of n_tokens: (start, length, first) each.

    A window's inputs are tokens[start : start + length] (length <= block_size) and its targets
    tokens[start + 1 : start + length + 1]; it scores the targets from index `first` on, i.e. the
    positions start + first + 1 .. start + length. Positions 1 .. n_tokens - 1 are each scored once,
    in order, and a scored position p sees min(p, >= context) tokens before it.
    """
    if not 1 <= context <= block_size:
        raise ValueError(f"context must be in 1..block_size ({block_size}), got {context}")
    out = []
    next_pos = 1  # the first position not scored yet; position 0 has no context and is never scored
    while next_pos < n_tokens:
        start = max(0, next_pos - context)
        length = min(block_size, n_tokens - 1 - start)
        out.append((start, length, next_pos - start - 1))
        next_pos = start + length + 1
    return out


@torch.inference_mode()
def score_tokens(model, tokens, block_size: int, context: int, batch_size: int, *, autocast=None,
                 show_progress: bool = False) -> tuple[float, int]:
    """(sum of the negative log-likelihoods in nats, number of tokens scored) of a token stream.

    tokens: a 1-D array or tensor of ids. The windows are those of `windows(...)`; windows of the
    same length run together, batch_size at a time, on the model's device. The loss of each batch is
    the model's own (its forward with targets, unscored targets set to -1), so whatever the model
    does to its logits (soft-capping, padded vocabularies) is what is scored.
    """
    tokens = np.asarray(tokens)  # (N,); a memory-mapped split stays mapped, windows are read as needed
    device = next(model.parameters()).device
    spans = windows(len(tokens), block_size, context)
    autocast = autocast or contextlib.nullcontext()
    model.eval()
    total_nll, n_scored = 0.0, 0
    bar = progress(len(spans), "scoring", "windows", enabled=show_progress)
    i = 0
    while i < len(spans):
        length = spans[i][1]
        group = [spans[i]]
        while i + len(group) < len(spans) and len(group) < batch_size and spans[i + len(group)][1] == length:
            group.append(spans[i + len(group)])
        starts = np.array([s for s, _, _ in group])
        window = torch.from_numpy(tokens[starts[:, None] + np.arange(length + 1)].astype(np.int64))  # (B, length + 1)
        x, y = window[:, :-1], window[:, 1:]  # (B, length) each: inputs, next tokens
        first = torch.tensor([f for _, _, f in group])
        y = y.masked_fill(torch.arange(length)[None, :] < first[:, None], -1)  # -1: scored by an earlier window
        n = int((y >= 0).sum())
        with autocast:
            _, loss = model(x.to(device), y.to(device))
        total_nll += float(loss) * n  # the model's loss is the mean over the scored targets
        n_scored += n
        bar.update(len(group))
        i += len(group)
    bar.close()
    return total_nll, n_scored


def evaluate(model, tokens, byte_lengths, block_size: int, context: int, batch_size: int, *, autocast=None,
             show_progress: bool = False) -> dict:
    """Loss in nats per token, bits per byte, perplexity, and the tokens and bytes scored."""
    tokens = np.asarray(tokens)
    nll, n = score_tokens(model, tokens, block_size, context, batch_size, autocast=autocast,
                          show_progress=show_progress)
    n_bytes = 0  # every token but the first is scored; counted in chunks, a split may be memory-mapped
    for start in range(1, len(tokens), 1 << 24):
        n_bytes += int(byte_lengths[tokens[start:start + (1 << 24)]].sum())
    loss = nll / n
    return {"nats_per_token": loss, "bits_per_byte": nll / math.log(2) / n_bytes if n_bytes else None,
            "perplexity": math.exp(loss) if loss < 700 else float("inf"), "tokens": n, "bytes": n_bytes,
            "total_nats": nll}


# ----------------------------------------------------------------------------- model and text

def load_model(cfg: EvalConfig, dataset_folder: Path | None):
    """(model on the CPU, its tokenizer meta, a name for it, the dataset it trained on or "") for
    --init_from or --out_dir (the dataset as a run of ours saved it in its checkpoint)."""
    if cfg.init_from:
        from smallgpt.interop import hf  # optional dependencies, needed only here

        return hf.load_pretrained(cfg.init_from), hf.pretrained_meta(cfg.init_from), cfg.init_from, ""
    model, ckpt = checkpoint.load_model(cfg.out_dir, dataset=dataset_folder)
    if "nanogpt_vocabulary" in ckpt:
        note(f"{cfg.out_dir} is a nanoGPT run: {ckpt['nanogpt_vocabulary']}")
    return model, ckpt.get("meta") or {}, cfg.out_dir, (ckpt.get("train_config") or {}).get("dataset", "")


def input_tokens(cfg: EvalConfig, tokenizer) -> tuple[np.ndarray, str]:
    """The --input text tokenized as prepare/text.py would (eot after each document for GPT-2)."""
    from smallgpt.prepare import iter_documents

    arrays, n_docs = [], 0
    eot = np.array([tokenizer.eot_token], dtype=np.int64) if tokenizer.eot_token is not None else None
    for text in iter_documents([cfg.input], cfg.include or None, cfg.text_field, cfg.errors):
        try:
            ids = np.asarray(tokenizer.encode_array(text), dtype=np.int64)
        except UserError as e:
            reason = str(e).split(";")[0]
            raise UserError(f"cannot score {cfg.input} with this model's {tokenizer.kind} vocabulary: {reason}; "
                            f"a char model scores only text made of the characters it was trained on") from None
        arrays += [ids, eot] if eot is not None else [ids]
        n_docs += 1
        if cfg.max_tokens and sum(len(a) for a in arrays) >= cfg.max_tokens:
            break
    if not arrays:
        raise UserError(f"{cfg.input} holds no text to score (empty files are skipped)")
    return np.concatenate(arrays), f"{cfg.input} ({n_docs} document{'s' if n_docs != 1 else ''})"


def dataset_tokens(folder: Path, meta: dict, split: str, max_tokens: int) -> np.ndarray:
    """The split's tokens, memory-mapped (read as the windows need them), the first max_tokens if given."""
    data = np.memmap(folder / f"{split}.bin", dtype=meta["dtype"], mode="r")
    return data[:max_tokens] if max_tokens else data


NOTHING_TO_SCORE = "nothing to score: give --input=FILE_OR_FOLDER, or --dataset=FOLDER (with --split)"


def validate(cfg: EvalConfig) -> None:
    if cfg.conversations and (cfg.input or cfg.dataset):
        raise UserError("give --conversations alone, or --input / --dataset: they score different things")
    if cfg.conversations and not (Path(cfg.conversations).exists() or glob.glob(cfg.conversations, recursive=True)):
        raise UserError(f"--conversations={cfg.conversations}: no such file or folder, and no file matches it as a "
                        f"glob; give a JSONL file (or folder, .gz) of conversations")
    if not cfg.input and not cfg.dataset and cfg.init_from and not cfg.conversations:  # (a run of ours names its dataset)
        raise UserError(f"{NOTHING_TO_SCORE} (--init_from's weights name no dataset)")
    if cfg.init_from in ("scratch", "resume"):
        raise UserError(f"--init_from={cfg.init_from} has no meaning here: leave it out to score the model in "
                        f"--out_dir, or give gpt2|gpt2-medium|gpt2-large|gpt2-xl|PATH")


def conversations_main(cfg: EvalConfig, device) -> dict:
    """--conversations: the answers' loss and the exact-match rate (see the module docstring)."""
    from smallgpt.conversations import read_conversations, score_conversations
    from smallgpt.init_from import add_chat_markers
    from smallgpt.tokenizer import ChatTokenizer, make_meta

    conversations, _ = read_conversations([cfg.conversations])
    model, meta, name, _ = load_model(cfg, None)
    tokenizer = tokenizer_from_meta(meta, where=str(name))
    if not hasattr(tokenizer, "markers"):  # a model before its finetune: the markers get rows as a finetune gives them
        tokenizer = ChatTokenizer(tokenizer)
        add_chat_markers(model, meta, make_meta(tokenizer), str(name), log=note)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or free_cpu_threads(torch.get_num_threads(), STARTED))
    result = score_conversations(model.to(device).eval(), tokenizer, conversations, cfg.max_new_tokens, cfg.batch_size)
    result.update({"model": str(name), "conversations_file": cfg.conversations})
    if cfg.json:
        print(json.dumps(result))
        return result
    print(f"{name} on {cfg.conversations}: {result['conversations']:,} conversations, {result['answers']:,} answers")
    print(f"answer loss {result['answer_loss']:.4f} nats/token over {result['answer_tokens']:,} answer tokens; exact "
          f"match {result['matches']:,}/{result['answers']:,} = {result['exact_match']:.1%} (greedy, whitespace trimmed)"
          + (f"; {result['prompts_cut']} prompt(s) longer than the window kept their end" if result["prompts_cut"] else ""))
    return result


def main(argv: list[str]) -> dict:
    cfg = parse_config(EvalConfig, argv, __doc__)
    validate(cfg)
    device = resolve_device(cfg.device)
    dtype = inference_dtype(cfg.dtype, device)
    if cfg.conversations:
        return conversations_main(cfg, device)

    folder, data_meta = None, None
    if cfg.dataset:
        folder, data_meta = load_dataset(cfg.dataset, log=note)
    model, model_meta, model_name, trained_on = load_model(cfg, folder)
    model = model.to(device).eval()
    if not cfg.input and not cfg.dataset:  # a run of ours alone: --split of the dataset it trained on
        if not trained_on:
            raise UserError(NOTHING_TO_SCORE)
        cfg.dataset = trained_on
        folder, data_meta = load_dataset(cfg.dataset, log=note)

    if cfg.input:  # --dataset, if given too, only said where a nanoGPT run's vocabulary is
        tokenizer = tokenizer_from_meta(model_meta, where=str(model_name))
        tokens, described = input_tokens(cfg, tokenizer)
    else:
        if model_meta.get("tokenizer") and not same_vocabulary(model_meta, data_meta):
            raise UserError(f"dataset {cfg.dataset} is tokenized with {vocabulary_name(data_meta)} but the model "
                            f"{model_name} with {vocabulary_name(model_meta)}; score a dataset prepared like the "
                            f"model's (prepare/text.py --tokenizer_from={model_name}), or the text itself with --input")
        tokenizer = tokenizer_from_meta(data_meta, where=str(folder))
        tokens = dataset_tokens(folder, data_meta, cfg.split, cfg.max_tokens)
        described = f"{folder / (cfg.split + '.bin')}"
    if cfg.max_tokens:
        tokens = tokens[:cfg.max_tokens]
    if len(tokens) < 2:
        raise UserError(f"{described} is {len(tokens)} token(s) long{f' with --max_tokens={cfg.max_tokens}' if cfg.max_tokens else ''}: "
                        f"nothing to score (the first token has no context); give more text")
    if int(tokens.max()) >= model.config.vocab_size:
        raise UserError(f"{described} has token id {int(tokens.max())} but the model {model_name} knows only "
                        f"{model.config.vocab_size}; it was not trained on this tokenizer")

    block_size = cfg.block_size or model.config.block_size
    if block_size > model.config.block_size:
        raise UserError(f"block_size {block_size} exceeds the model's {model.config.block_size} positions; "
                        f"use --block_size={model.config.block_size} or less")
    context = cfg.context or max(1, block_size // 2)
    if context > block_size:
        raise UserError(f"bad value for context: {context} (must be 1..block_size, {block_size})")
    if device.type == "cpu":  # chosen last, so that the measurement of the other programs is longest
        torch.set_num_threads(usable_threads(cfg.threads, note) if cfg.threads
                              else free_cpu_threads(torch.get_num_threads(), STARTED))
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else None)
    result = evaluate(model, tokens, token_byte_lengths(tokenizer), block_size, context, cfg.batch_size,
                      autocast=autocast, show_progress=True)
    result.update({"model": str(model_name), "text": described, "block_size": block_size, "context": context})
    if cfg.json:
        print(json.dumps(result))
    else:
        bpb = f"{result['bits_per_byte']:.4f}" if result["bits_per_byte"] is not None else "n/a (no bytes)"
        print(f"{model_name} on {described}: {result['tokens']:,} tokens ({result['bytes']:,} bytes) scored in "
              f"windows of {block_size} tokens with at least {context} tokens of context")
        print(f"loss {result['nats_per_token']:.4f} nats/token, {bpb} bits/byte, "
              f"perplexity {result['perplexity']:.3f}")
    return result


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
