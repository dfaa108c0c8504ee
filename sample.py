"""Generate text from a trained checkpoint.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=200
    python sample.py --out_dir=out --start=FILE:prompt.txt --temperature=0      # greedy
    python sample.py --init_from=gpt2 --start="Hello, I'm a language model,"   # OpenAI's GPT-2
    python sample.py --init_from=path/to/hf_folder        # a Hugging Face GPT-2 layout folder
    python sample.py --help

Samples print to stdout; the same seed gives the same text. The tokenizer comes from the
checkpoint itself, so the dataset folder is not needed. With --init_from (a GPT-2 hub name or a
folder in the Hugging Face GPT-2 layout, see hf.py) the weights come from there instead of
--out_dir, and the tokenizer is GPT-2's BPE.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from checkpoint import load_checkpoint
from cli import UserError, option, parse_config, resolve_device, run_main
from model import GPT, GPTConfig
from tokenizer import tokenizer_from_meta

SEPARATOR = "\n---------------"


@dataclass
class SampleConfig:
    out_dir: str = option("out", "folder holding ckpt.pt (or the checkpoint file itself)")
    init_from: str = option("", "instead of out_dir: gpt2|gpt2-medium|gpt2-large|gpt2-xl (Hugging Face "
                            "hub) or a folder in the Hugging Face GPT-2 layout; GPT-2 BPE tokenizer")
    start: str = option("\n", "prompt text, or FILE:path to read the prompt from a file")
    num_samples: int = option(1, "number of samples, generated together as one batch")
    max_new_tokens: int = option(500, "tokens to generate per sample")
    temperature: float = option(0.8, "softmax temperature; 0 means greedy (argmax)")
    top_k: int = option(200, "sample only among the k most likely tokens; 0 disables")
    top_p: float = option(1.0, "sample from the smallest set of tokens whose probability reaches p")
    seed: int = option(1337, "random seed: the same seed gives the same samples")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto, float32, bfloat16 or float16", ["auto", "float32", "bfloat16", "float16"])
    use_cache: bool = option(True, "use the key/value cache (false: recompute the context each token)")


def read_prompt(start: str) -> str:
    if start.startswith("FILE:"):
        path = Path(start[5:])
        if not path.is_file():
            raise UserError(f"prompt file not found: {path} (fix the path after FILE:)")
        return path.read_text(encoding="utf-8", errors="replace")
    return start


def load_model(out_dir: str, device: torch.device) -> tuple[GPT, dict]:
    ckpt = load_checkpoint(out_dir, map_location="cpu")
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def main(argv: list[str]) -> None:
    cfg = parse_config(SampleConfig, argv, __doc__)
    if cfg.num_samples < 1:
        raise UserError(f"bad value for num_samples: {cfg.num_samples} (must be at least 1)")
    if cfg.max_new_tokens < 0:
        raise UserError(f"bad value for max_new_tokens: {cfg.max_new_tokens} (must be >= 0)")
    if cfg.temperature < 0:
        raise UserError(f"bad value for temperature: {cfg.temperature} (must be >= 0; 0 means greedy)")
    if not 0 < cfg.top_p <= 1:
        raise UserError(f"bad value for top_p: {cfg.top_p} (must be in (0, 1])")
    if cfg.top_k < 0:
        raise UserError(f"bad value for top_k: {cfg.top_k} (must be >= 0; 0 disables)")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        if cfg.init_from in ("scratch", "resume"):
            raise UserError(f"--init_from={cfg.init_from} has no meaning here: leave it out to sample from "
                            f"--out_dir, or give gpt2|gpt2-medium|gpt2-large|gpt2-xl|PATH")
        import hf  # optional dependencies, needed only here
        model = hf.load_pretrained(cfg.init_from).to(device).eval()
        ckpt = {"meta": {"tokenizer": "gpt2"}}
    else:
        model, ckpt = load_model(cfg.out_dir, device)
    if cfg.dtype != "auto" and cfg.dtype != "float32":
        model = model.to(getattr(torch, cfg.dtype))
    elif cfg.dtype == "auto" and device.type == "cuda":
        model = model.to(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    tokenizer = tokenizer_from_meta(ckpt["meta"])

    prompt_ids = tokenizer.encode(read_prompt(cfg.start))
    if not prompt_ids:
        raise UserError("the prompt is empty: give --start=TEXT with at least one character")
    if max(prompt_ids) >= model.config.vocab_size:
        raise UserError(f"the prompt has token id {max(prompt_ids)} but the model knows only "
                        f"{model.config.vocab_size} tokens; the model was not trained on this tokenizer")
    idx = torch.tensor([prompt_ids] * cfg.num_samples, dtype=torch.long, device=device)  # (N, T)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    top_k = cfg.top_k or None
    out = model.generate(idx, cfg.max_new_tokens, temperature=cfg.temperature, top_k=top_k,
                         top_p=cfg.top_p, generator=generator, use_cache=cfg.use_cache)
    for row in out.tolist():
        print(tokenizer.decode(row))
        print(SEPARATOR)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
