"""Talk to a finetuned model in the terminal: answers streamed, the conversation kept in the KV cache.

    python chat.py --out_dir=out-python-stdlib-chat
    python chat.py --out_dir=out-python-stdlib-chat --system="Answer in one word." --temperature=0
    python chat.py --out_dir=RUN --prompt "What is 2 + 2?"     # answer once, print it, exit (for scripts)
    python chat.py --help

The model is a run finetuned on conversations (prepare/chat.py, then train.py): its checkpoint holds
the tokenizer and the turn markers. Each message is rendered as the finetune rendered its data
(<|user|> text <|end|> <|assistant|>, tokenizer.render_chat), so text that spells a marker stays text.
An answer ends at the model's <|end|> (or any other marker, or <|endoftext|>), after --max_new_tokens
tokens, or where the model's window is full.

Every token of the conversation stays in the model's key/value cache, so a new turn costs only its
own tokens (the message, the answer), not the history. When the next turn would not fit in the
window (block_size tokens), the oldest turns are forgotten (the system prompt is kept) and a line in
brackets says so; that turn then runs the kept history through the model once. Type /reset to start
over, /quit (or Ctrl-D) to leave; Ctrl-C stops an answer; a line ending in a backslash goes on on the
next line (one message of several lines).
"""

import sys
from dataclasses import dataclass

from smallgpt.cli import option, parse_config, run_main
from smallgpt.device import cpu_snapshot  # imports torch: the first slow import, so the measurement starts here
from smallgpt.errors import UserError

STARTED = cpu_snapshot()  # how busy the other processes keep the CPU is measured from here

import torch  # noqa: E402

from model import GPT, KVCache  # noqa: E402
from smallgpt.checkpoint import load_model  # noqa: E402
from smallgpt.device import free_cpu_threads, inference_dtype, resolve_device  # noqa: E402
from smallgpt.inference import SampleText, row_split_is_faster, use_row_split  # noqa: E402
from smallgpt.tokenizer import render_chat, tokenizer_from_meta  # noqa: E402


@dataclass
class ChatConfig:
    out_dir: str = option("out", "run folder holding ckpt.pt (a model finetuned on conversations)")
    system: str = option("", "system prompt: a first message the model sees before the conversation")
    prompt: str = option("", "answer this one message, print the answer and exit (no interactive chat)")
    max_new_tokens: int = option(256, "the longest answer, in tokens", at_least=1)
    temperature: float = option(0.6, "softmax temperature; 0 means greedy (argmax)", at_least=0)
    top_k: int = option(50, "sample only among the k most likely tokens; 0 disables", at_least=0)
    top_p: float = option(1.0, "sample from the smallest set of likeliest tokens whose probability reaches p; "
                          "1 disables", above=0, at_most=1)
    seed: int = option(1337, "random seed: the same seed and messages give the same answers", at_least=0)
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto (float32 on CPU, bf16/fp16 on GPU), float32, bfloat16 or float16",
                        ["auto", "float32", "bfloat16", "float16"])
    threads: int = option(0, "CPU threads; 0: one per core not kept busy by other processes", at_least=0)


class Conversation:
    """A conversation with a model whose tokens stay in its KV cache.

    `ids` is the whole conversation so far; the cache holds its first `cache.pos` tokens and the rest
    (the last answer's end) goes through the model with the next message. `reply` adds a message and
    generates the answer.
    """

    def __init__(self, model: GPT, tok, system: str = ""):
        self.model, self.tok = model, tok
        param = next(model.parameters())
        self.cache = KVCache(model.config, 1, param.device, param.dtype)
        self.system = render_chat(tok, [{"role": "system", "content": system}])[0] if system else []
        self.ids, self.turn_starts = list(self.system), []  # where each user message starts in ids
        if len(self.system) >= model.config.block_size // 2:
            raise UserError(f"the system prompt is {len(self.system)} tokens: keep it under half the model's window "
                            f"({model.config.block_size} tokens)")

    def reset(self) -> None:
        self.ids, self.turn_starts = list(self.system), []
        self.cache.reset()

    def make_room(self, turn: list[int], answer_room: int) -> str:
        """Forget the oldest turns when this one would not fit; returns a note saying so ("" if nothing went)."""
        block_size = self.model.config.block_size
        if len(self.ids) + len(turn) + answer_room <= block_size:
            return ""
        kept = [s for s in self.turn_starts if len(self.system) + len(self.ids) - s + len(turn) + answer_room
                <= block_size // 2 + len(self.system)]  # the recent turns that fit in half the window
        forgotten = len(self.turn_starts) - len(kept)
        tail = self.ids[kept[0]:] if kept else []
        self.ids = self.system + tail
        self.turn_starts = [s - (kept[0] - len(self.system)) for s in kept] if kept else []
        self.cache.reset()  # (the kept tokens go through the model again, once)
        return (f"[the conversation outgrew the model's window of {block_size} tokens: the oldest "
                f"{forgotten} turn(s) are forgotten{', the system prompt is kept' if self.system else ''}]")

    def reply(self, text: str, max_new_tokens: int, write=None, note=None, temperature: float = 0.0,
              top_k: int | None = None, top_p: float | None = None, generator=None) -> str:
        """The model's answer to `text`, streamed piece by piece to write(piece); note(line) hears of
        forgotten turns and of answers cut short."""
        tok, block_size = self.tok, self.model.config.block_size
        turn, _ = render_chat(tok, [{"role": "user", "content": text}], add_generation_prompt=True)
        if len(self.system) + len(turn) >= block_size:
            raise UserError(f"the message is {len(turn)} tokens: with the system prompt it does not fit the model's "
                            f"window of {block_size} tokens; shorten it")
        forgot = self.make_room(turn, min(max_new_tokens, block_size // 4))
        if forgot and note:
            note(forgot)
        self.turn_starts.append(len(self.ids))
        self.ids += turn
        new = torch.tensor([self.ids[self.cache.pos:]], dtype=torch.long, device=self.cache.k.device)
        answer = SampleText(tok)
        ended, generated = False, 0
        stream = self.model.generate_stream(new, max_new_tokens, temperature, top_k, top_p, generator,
                                            cache=self.cache)
        try:
            for seq in stream:
                token, generated = int(seq[0, -1]), generated + 1
                if token in tok.marker_names or token == tok.eot_token:
                    ended = True
                    break
                self.ids.append(token)
                piece = answer.push(token)
                if write and piece:
                    write(piece)
        except KeyboardInterrupt:  # the answer so far is kept; the cache may be half-written: rebuilt next turn
            self.cache.reset()
            ended = True
        finally:
            stream.close()
        rest = answer.finish()
        if write and rest:
            write(rest)
        self.ids.append(tok.end_token)  # the turn's end, as in training
        if not ended and note:
            why = "--max_new_tokens" if generated == max_new_tokens else f"the model's window of {block_size} tokens"
            note(f"[the answer was cut at {why}]")
        return answer.text


def load_chat_model(cfg: ChatConfig):
    """(model, tokenizer) of the run in cfg.out_dir, checked to know the chat markers."""
    device = resolve_device(cfg.device)
    model, ckpt = load_model(cfg.out_dir, device)
    model = model.to(inference_dtype(cfg.dtype, device))
    tok = tokenizer_from_meta(ckpt.get("meta") or {}, where=cfg.out_dir)
    if not hasattr(tok, "markers"):
        raise UserError(f"{cfg.out_dir} was not finetuned on conversations (its tokenizer has no turn markers): "
                        f"finetune it first (prepare/chat.py, then train.py --init_from={cfg.out_dir}; "
                        f"config/python_stdlib_chat.toml is an example), or use sample.py")
    if device.type == "cpu":  # chosen last, so that the measurement of the other processes is longest
        torch.set_num_threads(cfg.threads or free_cpu_threads(torch.get_num_threads(), STARTED))
        if row_split_is_faster(model.transformer.h[0].mlp.c_fc):  # this CPU's faster matrix-vector product
            use_row_split(model)
    return model, tok


def read_message() -> str:
    """One message from the terminal: a line, or several when each but the last ends in a backslash."""
    lines = [input("> ")]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(input(". "))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    # --prompt "text" and --system "text" as well as --prompt="text": a message is easier to quote as its own word
    argv = [f"{a}={argv[i + 1]}" if a in ("--prompt", "--system") and i + 1 < len(argv) else a
            for i, a in enumerate(argv) if i == 0 or argv[i - 1] not in ("--prompt", "--system")]
    cfg = parse_config(ChatConfig, argv, __doc__, log=lambda line: print(line, file=sys.stderr))
    model, tok = load_chat_model(cfg)
    conversation = Conversation(model, tok, cfg.system)
    generator = torch.Generator(device=conversation.cache.k.device).manual_seed(cfg.seed)
    sampling = dict(temperature=cfg.temperature, top_k=cfg.top_k or None, top_p=cfg.top_p, generator=generator)

    def write(text):
        sys.stdout.write(text)
        sys.stdout.flush()

    def note(line):
        print(line, file=sys.stderr, flush=True)

    if cfg.prompt:
        conversation.reply(cfg.prompt, cfg.max_new_tokens, write, note, **sampling)
        print()
        return
    print(f"chatting with {cfg.out_dir} (window {model.config.block_size} tokens); /reset starts over, /quit leaves",
          file=sys.stderr)
    while True:
        try:
            text = read_message()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if text.strip() in ("/quit", "/exit"):
            return
        if text.strip() == "/reset":
            conversation.reset()
            note("[a new conversation]")
            continue
        if text.strip():
            try:
                conversation.reply(text, cfg.max_new_tokens, write, note, **sampling)
            except UserError as e:
                note(f"[{e}]")
            print()


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
