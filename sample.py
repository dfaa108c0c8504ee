"""Generate text from a trained checkpoint.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=200
    python sample.py --out_dir=out --start=FILE:prompt.txt --temperature=0      # greedy
    python sample.py --out_dir=out --top_p=0.9 --stop=$'\\n\\n'                   # nucleus; stop at a blank line
    python sample.py --init_from=gpt2 --start="Hello, I'm a language model,"   # OpenAI's GPT-2
    python sample.py --init_from=path/to/hf_folder        # a Hugging Face GPT-2 layout folder
    python sample.py --help

Each sample is printed as prompt + generated text, followed by a separator line. With one sample
the text is streamed: it appears token by token as it is generated (only whole characters are
printed, so a token that ends inside a UTF-8 character waits for the rest of it). Several samples
are generated together as one batch and printed when they are done.

A sample ends after max_new_tokens tokens, at the end-of-text token of tokenizers that have one
(<|endoftext|> of GPT-2 BPE or a trained bpe, which is not printed; --stop_at_eot=false to go on),
or where the generated text first contains --stop (the stop text is searched in the generated text
only, not in the prompt, and is not printed). Generation ends as soon as every sample of the batch has ended.

The same seed gives the same text. The tokenizer comes from the checkpoint itself (a trained bpe's
ranks included), so the dataset folder is not needed. With --init_from (a GPT-2 hub name or a
folder in the Hugging Face GPT-2 layout, see hf.py) the weights come from there instead of --out_dir, with GPT-2's BPE (or, for a
folder that `python -m smallgpt.interop.hf export` wrote, its run's tokenizer from smallgpt_meta.json). This script imports
neither train.py nor tiktoken (unless the checkpoint uses a BPE), to start quickly.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from smallgpt.cli import option, parse_config, run_main, usable_threads
from smallgpt.device import cpu_snapshot  # imports torch: the first slow import, so the measurement starts here
from smallgpt.errors import UserError

STARTED = cpu_snapshot()  # how busy the other processes keep the CPU is measured from here

import torch  # noqa: E402

from model import GPT  # noqa: E402
from smallgpt.checkpoint import load_model  # noqa: E402
from smallgpt.device import free_cpu_threads, inference_dtype, resolve_device  # noqa: E402
from smallgpt.inference import SampleText, row_split_is_faster, use_row_split  # noqa: E402
from smallgpt.tokenizer import tokenizer_from_meta  # noqa: E402

SEPARATOR = "---------------"


@dataclass
class SampleConfig:
    out_dir: str = option("out", "folder holding ckpt.pt (or the checkpoint file itself); ours or nanoGPT's")
    dataset: str = option("", "for a nanoGPT run: the folder holding its meta.pkl, if not found where nanoGPT "
                          "looks (data/<dataset>/ here, or beside the run's checkout)")
    init_from: str = option("", "instead of out_dir: gpt2|gpt2-medium|gpt2-large|gpt2-xl (Hugging Face "
                            "hub) or a folder in the Hugging Face GPT-2 layout; GPT-2 BPE tokenizer")
    start: str = option("\n", "prompt text, or FILE:path to read the prompt from a file")
    num_samples: int = option(1, "number of samples, generated together as one batch", at_least=1, at_most=1024)
    max_new_tokens: int = option(500, "tokens to generate per sample (at most)", at_least=0, at_most=1 << 20)
    temperature: float = option(0.8, "softmax temperature; 0 means greedy (argmax)", at_least=0)
    top_k: int = option(200, "sample only among the k most likely tokens; 0 disables", at_least=0)
    top_p: float = option(1.0, "sample from the smallest set of likeliest tokens whose probability reaches p; 1 disables",
                          above=0, at_most=1)
    stop: str = option("", "end a sample where its generated text first contains this text (not printed); empty: none")
    stop_at_eot: bool = option(True, "end a sample at the tokenizer's end-of-text token (gpt2, bpe), if it has one")
    stream: bool = option(True, "with one sample, print the text token by token as it is generated")
    seed: int = option(1337, "random seed: the same seed gives the same samples", at_least=0)
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto (float32 on CPU, bf16/fp16 on GPU: device.inference_dtype), float32, bfloat16 or float16",
                        ["auto", "float32", "bfloat16", "float16"])
    use_cache: bool = option(True, "use the key/value cache (false: recompute the context each token)")
    threads: int = option(0, "CPU threads; 0: one per core not kept busy by other processes (measured while "
                             "sample.py starts); at most the usable cores", at_least=0)


def read_prompt(start: str) -> str:
    if start.startswith("FILE:"):
        path = Path(start[5:])
        if not path.is_file():
            raise UserError(f"prompt file not found: {path} (fix the path after FILE:)")
        return path.read_text(encoding="utf-8", errors="replace")
    return start


# ----------------------------------------------------------------------------- generation

def generate_text(model: GPT, tokenizer, prompt_ids: list[int], cfg: SampleConfig, eot_token=None,
                  write=None) -> list[str]:
    """Generate cfg.num_samples samples as one batch; returns each sample's generated text.

    `write(text)`, if given, receives the first sample's text piece by piece as it is generated
    (for streaming; use it with one sample). Generation stops early once every sample has ended.
    """
    device = next(model.parameters()).device
    idx = torch.tensor([prompt_ids] * cfg.num_samples, dtype=torch.long, device=device)  # (N, T)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    samples = [SampleText(tokenizer, cfg.stop, eot_token) for _ in range(cfg.num_samples)]
    stream = model.generate_stream(idx, cfg.max_new_tokens, temperature=cfg.temperature,
                                   top_k=cfg.top_k or None, top_p=cfg.top_p, generator=generator,
                                   use_cache=cfg.use_cache)
    for seq in stream:
        for sample, token in zip(samples, seq[:, -1].tolist()):
            piece = sample.push(token)
            if write is not None and piece and sample is samples[0]:
                write(piece)
        if all(sample.done for sample in samples):
            break
    stream.close()
    for sample in samples:
        piece = sample.finish()
        if write is not None and piece and sample is samples[0]:
            write(piece)
    return [sample.text for sample in samples]


def main(argv: list[str]) -> None:
    cfg = parse_config(SampleConfig, argv, __doc__, nanogpt="sample", log=lambda line: print(line, file=sys.stderr))
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        if cfg.init_from in ("scratch", "resume"):
            raise UserError(f"--init_from={cfg.init_from} has no meaning here: leave it out to sample from "
                            f"--out_dir, or give gpt2|gpt2-medium|gpt2-large|gpt2-xl|PATH")
        from smallgpt.interop import hf  # optional dependencies, needed only here
        model = hf.load_pretrained(cfg.init_from).to(device).eval()
        ckpt = {"meta": hf.pretrained_meta(cfg.init_from)}
    else:
        model, ckpt = load_model(cfg.out_dir, device, dataset=cfg.dataset or None)
        if "nanogpt_vocabulary" in ckpt:
            print(f"{cfg.out_dir} is a nanoGPT run: {ckpt['nanogpt_vocabulary']}", file=sys.stderr)
    model = model.to(inference_dtype(cfg.dtype, device))
    meta = ckpt.get("meta") or {}
    tokenizer = tokenizer_from_meta(meta, where=cfg.init_from or cfg.out_dir)
    eot_token = meta.get("eot_token", tokenizer.eot_token) if cfg.stop_at_eot else None

    try:
        prompt_ids = tokenizer.encode(read_prompt(cfg.start))
    except UserError as e:  # (a file not found, characters the vocabulary lacks)
        raise UserError(f"--start: {e}") from None
    if not prompt_ids:
        raise UserError("the prompt is empty: give --start=TEXT with at least one character")
    if max(prompt_ids) >= model.config.vocab_size:
        raise UserError(f"the prompt has token id {max(prompt_ids)} but the model knows only "
                        f"{model.config.vocab_size} tokens; the model was not trained on this tokenizer")
    prompt_text = tokenizer.decode(prompt_ids)
    if device.type == "cpu":  # chosen last, so that the measurement of the other processes is longest
        torch.set_num_threads(usable_threads(cfg.threads, lambda line: print(line, file=sys.stderr)) if cfg.threads
                              else free_cpu_threads(torch.get_num_threads(), STARTED))
        if row_split_is_faster(model.transformer.h[0].mlp.c_fc):  # this CPU's faster matrix-vector product
            use_row_split(model)
    if cfg.stream and cfg.num_samples == 1:
        def write(text):
            sys.stdout.write(text)
            sys.stdout.flush()

        write(prompt_text)
        generate_text(model, tokenizer, prompt_ids, cfg, eot_token, write)
        print()
        print(SEPARATOR, flush=True)
        return
    for text in generate_text(model, tokenizer, prompt_ids, cfg, eot_token):
        print(prompt_text + text)
        print(SEPARATOR, flush=True)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
