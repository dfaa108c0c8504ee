"""Convert between our GPT (model.py) and the Hugging Face GPT-2 layout, both ways.

The Hugging Face layout is a folder holding config.json (a `GPT2Config`) and the weights in
model.safetensors (or the older pytorch_model.bin). It is what `transformers.GPT2LMHeadModel`
reads and writes, and what most tools that "load GPT-2" expect.

In: OpenAI's GPT-2 from the hub, or any local folder in that layout, becomes our `GPT`:
    python train.py config/finetune_shakespeare.toml            # init_from = "gpt2"
    python train.py config/finetune_shakespeare.toml --init_from=path/to/hf_folder
    python sample.py --init_from=gpt2-medium --start="Hello"
The hub names are gpt2, gpt2-medium, gpt2-large and gpt2-xl; they are fetched once into the hub
cache (HF_HOME) and read from there afterwards, also offline (HF_HUB_OFFLINE=1).

Out: one of our checkpoints becomes such a folder, loadable with
`transformers.GPT2LMHeadModel.from_pretrained(DIR)` and giving the same logits:
    python -m smallgpt.interop.hf export --out_dir=out-shakespeare --to=hf-shakespeare [--overwrite]
    python -m smallgpt.interop.hf --help
The folder gets config.json, model.safetensors, README.md (which tokenizer the ids belong to) and
smallgpt_meta.json (our dataset metadata, e.g. a char vocabulary). A model trained on GPT-2 BPE also
gets vocab.json + merges.txt + tokenizer_config.json, rebuilt offline from tiktoken's ranks, so
`AutoTokenizer.from_pretrained(DIR)` works; one trained on a bpe of its own (prepare/text.py
--tokenizer=bpe) gets tokenizer.json + tokenizer_config.json (a byte-level BPE that encodes the same
ids as our tiktoken encoding) and tokenizer.tiktoken; char and byte vocabularies have no Hugging
Face tokenizer (README.md says how to encode for them). Text that spells a special token
("<|endoftext|>") is ordinary text for smallgpt, and for these files too: tokenizer_config.json sets
split_special_tokens. A run finetuned on conversations (prepare/chat.py) also gets its turn markers
as special tokens and smallgpt's rendering as the chat template, so `apply_chat_template` gives our
ids; its template needs the markers read as markers, so there split_special_tokens is left off and
README.md says which flags give our ids for text that spells one (special_text_note).

Mapping (GPT-2's checkpoint -> ours): HF stores c_attn, c_proj and c_fc as `Conv1D`, whose weight
is (in, out), the transpose of an `nn.Linear` weight (out, in); everything else is copied as is.
The `attn.bias` / `attn.masked_bias` entries of old checkpoints are causal-mask buffers, not weights,
and are skipped. GPT-2 has LayerNorm eps 1e-5, tanh-approximated GELU ("gelu_new"), learned
positions and an output head tied to the token embedding, which is exactly our default model.

Needs the optional packages safetensors and huggingface_hub (pip install -e ".[hf]", which also
installs transformers); nothing here imports transformers itself.
"""

import dataclasses
import difflib
import importlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from model import GPT, GPTConfig
from smallgpt.cli import option, parse_config, run_main
from smallgpt.errors import UserError

# hub repositories of OpenAI's four GPT-2 sizes
PRETRAINED = {
    "gpt2": "openai-community/gpt2",  # 124M
    "gpt2-medium": "openai-community/gpt2-medium",  # 350M
    "gpt2-large": "openai-community/gpt2-large",  # 774M
    "gpt2-xl": "openai-community/gpt2-xl",  # 1558M
}
HF_CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"
GPT2_EOT = 50256  # <|endoftext|> in GPT-2's BPE
LN_EPS = 1e-5  # our LayerNorm's epsilon, the same as GPT-2's
# activations that are the tanh approximation of GELU our MLP computes
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")
EXACT_GELU = "gelu"  # transformers' name for erf GELU: our mlp="gelu_exact" (nanoGPT's)
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # weights stored (in, out)
PER_LAYER = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
             "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
             "mlp.c_proj.weight", "mlp.c_proj.bias")


def require(package: str):
    """Import an optional package, or stop with one line saying how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise UserError(f"the Hugging Face interop needs the package {package.split('.')[0]}: "
                        f'pip install -e ".[hf]" (or pip install transformers safetensors)') from None


def is_pretrained_source(init_from: str) -> bool:
    """True when init_from names hub weights or a local folder rather than scratch/resume."""
    return init_from not in ("scratch", "resume", "")


def check_source(init_from: str) -> None:
    """A one-line error when init_from is neither a hub name nor an existing path (most likely a typo)."""
    if init_from in PRETRAINED or Path(init_from).exists():
        return
    known = ["scratch", "resume", *PRETRAINED]
    close = difflib.get_close_matches(init_from, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise UserError(f"bad value for init_from: {init_from!r} is neither {', '.join(known)} nor an existing "
                    f"Hugging Face folder{hint}")


# ----------------------------------------------------------------------------- configs

def gpt_config_from_hf(hf: dict, dropout: float = 0.0, where: str = "config.json") -> GPTConfig:
    """Our GPTConfig for a GPT2Config dict; anything GPT-2-like we cannot reproduce is an error."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"{where}: model_type {hf.get('model_type')!r} is not gpt2; only GPT-2 layout folders load")
    for key in ("n_layer", "n_head", "n_embd", "vocab_size"):
        if not isinstance(hf.get(key), int):
            raise UserError(f"{where} lacks the integer {key}; is this a GPT-2 config.json?")
    n_positions = hf.get("n_positions", hf.get("n_ctx"))
    if not isinstance(n_positions, int):
        raise UserError(f"{where} lacks the integer n_positions; is this a GPT-2 config.json?")
    problems = []
    activation = hf.get("activation_function", "gelu_new")
    if activation not in (*TANH_GELU, EXACT_GELU):
        problems.append(f"activation_function {activation!r} (gelu_new and gelu are supported)")
    if abs(hf.get("layer_norm_epsilon", LN_EPS) - LN_EPS) > 1e-12:
        problems.append(f"layer_norm_epsilon {hf['layer_norm_epsilon']} (ours is {LN_EPS})")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        problems.append(f"n_inner {hf['n_inner']} (ours is 4 * n_embd)")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        problems.append("non-standard attention scaling")
    if hf.get("add_cross_attention", False):
        problems.append("cross-attention")
    if problems:
        raise UserError(f"{where}: cannot load this GPT-2 variant: {'; '.join(problems)}")
    try:
        return GPTConfig(block_size=n_positions, vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                         n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=dropout, bias=True,
                         mlp="gelu_exact" if activation == EXACT_GELU else "gelu",
                         tie_embeddings=hf.get("tie_word_embeddings", True))
    except ValueError as e:
        raise UserError(f"{where}: invalid model shape: {e}") from None


# GPTConfig fields that GPT-2's layout holds at any value; every other field must have its default
# (which is GPT-2's), or be one of the exceptions in exportable_problem. A new switch is refused by
# name until it is taught here.
ANY_VALUE = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "vocab_multiple", "bias",
             "zero_init_proj")  # (the last: an initialisation, not a part of the model)


def exportable_problem(config: GPTConfig) -> str | None:
    """The first option GPT-2's layout cannot express, as a phrase; None when the model exports."""
    default = GPTConfig()
    for f in dataclasses.fields(GPTConfig):
        name, value = f.name, getattr(config, f.name)
        if name in ANY_VALUE or value == getattr(default, name):
            continue
        if name == "mlp" and value == "gelu_exact":  # transformers' "gelu"
            continue
        if name == "mlp_ratio" and int(value * config.n_embd) == 4 * config.n_embd:
            continue
        if name == "rope_base" and config.pos_embedding == "learned":  # unused without rotary positions
            continue
        return f"{name}={value!r} (GPT-2 has {name}={getattr(default, name)!r})"
    return None


def hf_config_from_gpt(config: GPTConfig, tokenizer: str | None, eot_token: int | None = None) -> dict:
    """The GPT2Config dict for our config (check exportable_problem first); eot_token: a bpe's <|endoftext|>."""
    eot = GPT2_EOT if tokenizer == "gpt2" else eot_token if tokenizer == "bpe" else None
    eot = eot if eot is not None and config.vocab_size > eot else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu_new" if config.mlp == "gelu" else EXACT_GELU,
        "layer_norm_epsilon": LN_EPS,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "use_cache": True,
        "torch_dtype": "float32",
    }


# ----------------------------------------------------------------------------- weights

def state_dict_from_hf(hf_state: dict, config: GPTConfig, where: str = "the weights") -> dict:
    """Our GPT state dict from a GPT2LMHeadModel (or GPT2Model) state dict; every key is accounted for."""
    # GPT2LMHeadModel prefixes "transformer."; OpenAI's hub files (saved from GPT2Model) do not
    hf_state = {k.removeprefix("transformer."): v for k, v in hf_state.items()}
    sources = {"transformer.wte.weight": "wte.weight", "transformer.wpe.weight": "wpe.weight",
               "transformer.ln_f.weight": "ln_f.weight", "transformer.ln_f.bias": "ln_f.bias"}
    for i in range(config.n_layer):
        for name in PER_LAYER:
            sources[f"transformer.h.{i}.{name}"] = f"h.{i}.{name}"
    if not config.tie_embeddings:
        sources["lm_head.weight"] = "lm_head.weight"
    ours = {}
    for our_key, hf_key in sources.items():
        if hf_key not in hf_state:
            raise UserError(f"{where} lack {hf_key}; not a complete GPT-2 checkpoint (or config.json "
                            f"does not match it)")
        tensor = hf_state[hf_key].to(torch.float32)
        if hf_key.endswith(".weight") and hf_key.rsplit(".", 1)[0].split(".", 2)[-1] in CONV1D:
            tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
        ours[our_key] = tensor.contiguous()
    rows = config.padded_vocab_size - config.vocab_size  # our padding rows: never looked up, never scored
    for key in ("transformer.wte.weight", "lm_head.weight"):
        if key in ours and rows:
            ours[key] = torch.cat([ours[key], ours[key].new_zeros(rows, ours[key].size(1))])
    if config.tie_embeddings:
        ours["lm_head.weight"] = ours["transformer.wte.weight"]
    used = set(sources.values()) | {"lm_head.weight"}  # a tied head duplicates wte
    buffers = (".attn.bias", ".attn.masked_bias")  # causal masks of old checkpoints, not weights
    extra = sorted(k for k in hf_state if k not in used and not k.endswith(buffers))
    if extra:
        raise UserError(f"{where} hold unexpected tensors ({', '.join(extra[:3])}...); "
                        f"config.json and the weights disagree about the model's shape")
    return ours


def state_dict_to_hf(model: GPT) -> dict:
    """GPT2LMHeadModel state dict (safetensors-ready, contiguous, no shared tensors) for our model.

    Every tensor of our state dict is placed or accounted for; one GPT-2 has no place for (a switch
    that adds parameters) is refused by name rather than dropped.
    """
    config = model.config
    ours = dict(model.state_dict())
    out = {}

    def put(key: str, bias_width: int = 0):  # the same key in both layouts
        tensor = ours.pop(key, None)
        if tensor is None:  # a model trained with bias=False: a zero bias is exactly no bias
            tensor = torch.zeros(bias_width, dtype=model.transformer.wte.weight.dtype)
        if key.endswith(".weight") and key.rsplit(".", 1)[0].split(".", 3)[-1] in CONV1D:
            tensor = tensor.t()  # Linear (out, in) -> Conv1D (in, out)
        if key == "transformer.wte.weight":
            tensor = tensor[:config.vocab_size]  # without our padding rows
        out[key] = tensor.detach().cpu().contiguous().clone()

    put("transformer.wte.weight")
    put("transformer.wpe.weight")
    for i in range(config.n_layer):
        for name in PER_LAYER:
            module = name.rsplit(".", 1)[0]
            put(f"transformer.h.{i}.{name}",
                {"attn.c_attn": 3 * config.n_embd, "mlp.c_fc": 4 * config.n_embd}.get(module, config.n_embd))
    put("transformer.ln_f.weight")
    put("transformer.ln_f.bias", config.n_embd)
    ours.pop("lm_head.weight")  # tied to wte: transformers re-ties it from tie_word_embeddings
    if ours:
        raise UserError(f"cannot export to the GPT-2 layout: it has no place for {', '.join(sorted(ours)[:3])}"
                        f"{' ...' if len(ours) > 3 else ''}; only GPT-2-shaped models export")
    return out


# ----------------------------------------------------------------------------- loading

def resolve_source(init_from: str) -> Path:
    """The local folder for a hub name (downloaded or from the hub cache) or a folder path."""
    if init_from in PRETRAINED:
        hub = require("huggingface_hub")
        repo = PRETRAINED[init_from]
        try:
            folder = hub.snapshot_download(repo, allow_patterns=[HF_CONFIG_NAME, SAFETENSORS_NAME], etag_timeout=10)
        except Exception as e:  # offline, cache empty, DNS failure, gated proxy...: all the same to the user
            if getattr(hub.constants, "HF_HUB_OFFLINE", False):
                reason = "HF_HUB_OFFLINE is set and the hub cache holds no copy"
            else:
                reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise UserError(f"could not fetch the {init_from} weights from the Hugging Face hub ({repo}: "
                            f"{reason}); connect once to fill the hub cache, or use --init_from=PATH "
                            f"with a local folder holding config.json and model.safetensors") from None
        return Path(folder)
    folder = Path(init_from)
    if not folder.is_dir():
        raise UserError(f"init_from={init_from!r} is neither scratch, resume, {', '.join(PRETRAINED)} nor a "
                        f"folder; give a folder in the Hugging Face GPT-2 layout (config.json + model.safetensors)")
    return folder


def read_json_config(folder: Path) -> dict:
    """The config.json dict of a Hugging Face folder."""
    config_path = folder / HF_CONFIG_NAME
    if not config_path.is_file():
        raise UserError(f"{folder} has no {HF_CONFIG_NAME}; a Hugging Face GPT-2 folder holds config.json "
                        f"and {SAFETENSORS_NAME} (save one with model.save_pretrained(DIR))")
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{config_path} is not valid JSON ({e}); restore the file") from None
    if not isinstance(hf_config, dict):
        raise UserError(f"{config_path} is not a JSON object; restore the file")
    return hf_config


def read_hf_folder(folder: Path) -> tuple[dict, dict]:
    """(config dict, state dict) of a Hugging Face GPT-2 folder; model.safetensors preferred over .bin."""
    hf_config = read_json_config(folder)
    if (folder / SAFETENSORS_NAME).is_file():
        path = folder / SAFETENSORS_NAME
        safetensors_torch = require("safetensors.torch")
        try:
            state = safetensors_torch.load_file(str(path))
        except Exception as e:
            raise UserError(f"{path} is truncated or corrupt ({str(e).splitlines()[0][:120]}); "
                            f"download or save it again") from None
    elif (folder / BIN_NAME).is_file():
        path = folder / BIN_NAME
        try:  # weights_only: a pickle carrying code is refused, the code never runs
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"refused or could not read {path} ({str(e).strip().splitlines()[0][:120]}); "
                            f"use a model.safetensors file or save the model again") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    else:
        raise UserError(f"{folder} has neither {SAFETENSORS_NAME} nor {BIN_NAME} (sharded checkpoints are "
                        f"not supported); save the model with model.save_pretrained(DIR)")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return hf_config, state


def pretrained_config(init_from: str, dropout: float = 0.0) -> GPTConfig:
    """The GPTConfig of a hub GPT-2 or local Hugging Face GPT-2 folder (reads only config.json)."""
    folder = resolve_source(init_from)
    return gpt_config_from_hf(read_json_config(folder), dropout, where=str(folder / HF_CONFIG_NAME))


def pretrained_meta(init_from: str) -> dict:
    """The tokenizer meta of pretrained weights: a folder exported by `python -m smallgpt.interop.hf export` carries its run's
    (smallgpt_meta.json: a char or byte vocabulary, say); hub names and other folders are GPT-2 BPE."""
    meta_path = Path(init_from) / "smallgpt_meta.json"
    if init_from in PRETRAINED or not meta_path.is_file():
        return {"tokenizer": "gpt2"}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"{meta_path} is not readable JSON ({e}); export the folder again") from None
    if not isinstance(meta, dict) or "tokenizer" not in meta:
        raise UserError(f"{meta_path} names no tokenizer; export the folder again")
    return meta


def load_pretrained(init_from: str, dropout: float = 0.0) -> GPT:
    """Our GPT (float32, on the CPU) holding a hub GPT-2 or a local Hugging Face GPT-2 folder."""
    folder = resolve_source(init_from)
    hf_config, hf_state = read_hf_folder(folder)
    config = gpt_config_from_hf(hf_config, dropout, where=str(folder / HF_CONFIG_NAME))
    model = GPT(config, init_weights=False)
    model.load_state_dict(state_dict_from_hf(hf_state, config, where=f"the weights in {folder}"))
    return model


# ----------------------------------------------------------------------------- tokenizer files

def merges_from_ranks(tokens: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The pair each multi-byte token was merged from, in rank order, recovered from tiktoken's ranks.

    tokens: in rank order. A merge is recovered by running BPE on a token's bytes with only the
    merges ranked before it: the last two parts left are the pair that merge made.
    """
    rank_of = {tok: rank for rank, tok in enumerate(tokens)}
    merges = []
    for rank, tok in enumerate(tokens):
        if len(tok) < 2:
            continue
        parts = [bytes([b]) for b in tok]
        while len(parts) > 2:  # apply the lowest-ranked available merge, as BPE does
            best_rank, best_i = min((rank_of.get(parts[i] + parts[i + 1], rank), i) for i in range(len(parts) - 1))
            parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        merges.append((parts[0], parts[1]))
    return merges


def _spelling():
    """Spell a token's bytes as Hugging Face's byte-level vocab and merges files do."""
    from smallgpt.tokenizer import byte_to_unicode

    show = byte_to_unicode()
    return lambda tok: "".join(show[b] for b in tok)


def special_tokens_config(markers: dict, eot: int) -> dict:
    """tokenizer_config.json's keys for the special tokens: <|endoftext|> and a chat run's markers (as
    special tokens, and its chat template); how text spelling one of them is read (see model_card)."""
    from smallgpt.tokenizer import EOT_TEXT, chat_template

    added = {str(i): {"content": text, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
                      "special": True} for text, i in sorted({EOT_TEXT: eot, **markers}.items(), key=lambda kv: kv[1])}
    config = {"added_tokens_decoder": added, "bos_token": EOT_TEXT, "eos_token": EOT_TEXT,
              "split_special_tokens": not markers}  # (a chat template needs its markers read as markers)
    if markers:
        config.update(chat_template=chat_template(), extra_special_tokens=list(markers))
    return config


def gpt2_tokenizer_files(model_max_length: int, markers: dict | None = None) -> dict[str, str] | None:
    """vocab.json, merges.txt and tokenizer_config.json for GPT-2 BPE, rebuilt from tiktoken's ranks
    (markers: a chat run's, as special tokens after GPT-2's ids, with the chat template).

    Needs only the r50k_base file tiktoken has cached (TIKTOKEN_CACHE_DIR works offline); None when
    it cannot be had.
    """
    from smallgpt.tokenizer import build_tokenizer  # the project's tiktoken wrapper and its offline handling

    try:
        enc = build_tokenizer("gpt2").enc
    except UserError:
        return None
    tokens = [enc.decode_single_token_bytes(rank) for rank in range(GPT2_EOT)]  # ranks 0..50255
    spelled = _spelling()
    merges = [f"{spelled(a)} {spelled(b)}" for a, b in merges_from_ranks(tokens)]
    vocab = {spelled(tok): rank for rank, tok in enumerate(tokens)}
    vocab.update({"<|endoftext|>": GPT2_EOT, **(markers or {})})
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length, "add_prefix_space": False,
              "unk_token": "<|endoftext|>", **special_tokens_config(markers or {}, GPT2_EOT)}
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False),
            "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
            "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}


def bpe_tokenizer_files(meta: dict, model_max_length: int) -> dict[str, str]:
    """tokenizer.json (+ tokenizer_config.json, tokenizer.tiktoken) for a bpe trained by prepare/text.py.

    tokenizer.json is a Hugging Face byte-level BPE that encodes as our tiktoken encoding does: the
    same pre-split regex (a Split pre-tokenizer, then ByteLevel without its own regex), the merges
    recovered from the ranks, and ignore_merges, so that a piece which is itself a token is that
    token, as in tiktoken. transformers' PreTrainedTokenizerFast(tokenizer_file=...) and
    AutoTokenizer.from_pretrained(folder) load it. A chat run's markers are special tokens after it.
    """
    from smallgpt.tokenizer import chat_markers, tokenizer_from_meta

    tok = tokenizer_from_meta(meta, where="the checkpoint's metadata")
    specials = special_tokens_config(chat_markers(meta), tok.eot_token)
    spelled = _spelling()
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
             "vocab": {spelled(t): rank for rank, t in enumerate(tok.tokens)},
             "merges": [f"{spelled(a)} {spelled(b)}" for a, b in merges_from_ranks(tok.tokens)]}
    tokenizer_json = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": int(i), **token} for i, token in specials["added_tokens_decoder"].items()],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": model,
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "clean_up_tokenization_spaces": False, **specials}
    return {"tokenizer.json": json.dumps(tokenizer_json, ensure_ascii=False),
            "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            meta["bpe"].get("ranks_file", "tokenizer.tiktoken"): meta["bpe"]["ranks"]}


def tokenizer_files(meta: dict, model_max_length: int) -> dict[str, str] | None:
    """The Hugging Face tokenizer files of a checkpoint's tokenizer; None when it has none (char, byte)."""
    if meta.get("tokenizer") == "gpt2":
        from smallgpt.tokenizer import chat_markers

        return gpt2_tokenizer_files(model_max_length, chat_markers(meta))
    if meta.get("tokenizer") == "bpe":
        return bpe_tokenizer_files(meta, model_max_length)
    return None


# ----------------------------------------------------------------------------- export

def model_card(meta: dict, source: str, with_tokenizer: bool) -> str:
    """README.md for an exported folder: what it is and which tokenizer its ids belong to."""
    kind = meta.get("tokenizer")
    if kind == "gpt2":
        tok = ("Token ids are GPT-2's BPE (tiktoken r50k_base, the same as the `gpt2` tokenizer on the "
               "hub): " + ("this folder holds its files, so `AutoTokenizer.from_pretrained(THIS_FOLDER)` works."
                           if with_tokenizer else
                           "`AutoTokenizer.from_pretrained(\"openai-community/gpt2\")` encodes text for it."))
    elif kind == "bpe":
        tok = ("Token ids are a byte-level BPE trained by smallgpt on its dataset (the last id is <|endoftext|>): "
               "tokenizer.json in this folder encodes them (`AutoTokenizer.from_pretrained(THIS_FOLDER)` or "
               "`PreTrainedTokenizerFast(tokenizer_file=...)`), and tokenizer.tiktoken holds the same ranks in "
               "tiktoken's format (pattern in smallgpt_meta.json).")
    elif kind == "byte":
        tok = ("Token ids are UTF-8 bytes (0..255): encode with `list(text.encode(\"utf-8\"))` and decode "
               "with `bytes(ids).decode(\"utf-8\", errors=\"replace\")`; no Hugging Face tokenizer applies.")
    elif kind == "char":
        tok = ("Token ids index a character vocabulary, listed in order under \"vocab\" in "
               "smallgpt_meta.json (id i is vocab[i]); no Hugging Face tokenizer applies, use smallgpt's "
               "tokenizer.py (`tokenizer_from_meta`) or that list.")
    else:
        tok = "The tokenizer is unknown: the checkpoint carries no dataset metadata."
    return (f"# GPT-2 layout export of a smallgpt checkpoint\n\nExported from `{source}` by `python -m smallgpt.interop.hf export`.\n\n"
            f"    from transformers import GPT2LMHeadModel\n    model = GPT2LMHeadModel.from_pretrained(THIS_FOLDER)\n\n"
            f"{tok}\n" + special_text_note(meta, with_tokenizer))


def special_text_note(meta: dict, with_tokenizer: bool) -> str:
    """The model card's words on chat markers and on text that spells a special token."""
    from smallgpt.tokenizer import CHAT_MARKERS, chat_markers

    markers = chat_markers(meta)
    chat = (f"\nA chat model: the turn markers {', '.join(CHAT_MARKERS)} are ids {min(markers.values())}.."
            f"{max(markers.values())}; each message is <|role|> content <|end|>, and the model answers after "
            f"<|assistant|>, ending its answer with <|end|>.\n") if markers else ""
    if not with_tokenizer:
        return chat
    if not markers:
        return ("\nText that spells a special token (\"<|endoftext|>\") is ordinary text, as in smallgpt: "
                "tokenizer_config.json sets split_special_tokens, so `tokenizer(text)` gives smallgpt's ids for any "
                "text (with the tokenizers library alone, set `encode_special_tokens = True` on the Tokenizer).\n")
    return chat + ("`tokenizer.apply_chat_template(messages, add_generation_prompt=True)` renders smallgpt's ids "
                   "(its chat template is smallgpt's rendering; return_assistant_tokens_mask=True gives the answers' "
                   "tokens). smallgpt encodes text that spells a marker or <|endoftext|> as ordinary text; the "
                   "template needs the markers read as markers, so pass `sanitize_control_tokens=True` to "
                   "apply_chat_template where a message may spell one, and `split_special_tokens=True` when "
                   "encoding such text with `tokenizer(text)`: both then give smallgpt's ids.\n")


def export_checkpoint(out_dir: str, to: str, overwrite: bool = False) -> Path:
    """Write our checkpoint (out_dir/ckpt.pt or a file) as a Hugging Face GPT-2 folder at `to`."""
    from smallgpt.checkpoint import load_model  # only the export needs the trainer's checkpoint format

    model, ckpt = load_model(out_dir)
    config = model.config
    problem = exportable_problem(config)
    if problem:
        raise UserError(f"cannot export to the GPT-2 layout: the model uses {problem}; only GPT-2-shaped "
                        f"models export (learned positions, layernorm, gelu, tied embeddings, mlp_ratio 4)")
    safetensors_torch = require("safetensors.torch")
    meta = ckpt.get("meta") or {}

    target = Path(to)
    if target.exists() and not target.is_dir():
        raise UserError(f"--to={to} is a file; give a folder path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UserError(f"{to} exists and is not empty; choose another --to or pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        safetensors_torch.save_file(state_dict_to_hf(model), str(tmp / SAFETENSORS_NAME), metadata={"format": "pt"})
        hf_config = hf_config_from_gpt(config, meta.get("tokenizer"), meta.get("eot_token"))
        (tmp / HF_CONFIG_NAME).write_text(json.dumps(hf_config, indent=2) + "\n")
        if meta:
            (tmp / "smallgpt_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        files = tokenizer_files(meta, config.block_size)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8", newline="")
        (tmp / "README.md").write_text(model_card(meta, str(out_dir), files is not None))
        for f in tmp.iterdir():  # durable before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if target.exists():  # empty, or --overwrite: move it aside, swap in the new one, then delete
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "old")
        os.replace(tmp, target)
        tmp = None
        if old is not None:
            shutil.rmtree(old)
    except OSError as e:
        raise UserError(f"could not write {to}: {e.strerror or e}; free disk space or choose another --to") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- command line

@dataclass
class ExportConfig:
    out_dir: str = option("out", "our run folder holding ckpt.pt (or the checkpoint file itself)")
    to: str = option("", "folder to write (config.json, model.safetensors, README.md); must be new or empty")
    overwrite: bool = option(False, "replace --to if it already holds files")


USAGE = """usage: python -m smallgpt.interop.hf export --out_dir=RUN --to=DIR [--overwrite]

  export   write our checkpoint RUN/ckpt.pt as a Hugging Face GPT-2 folder DIR (config.json +
           model.safetensors + README.md naming the tokenizer + smallgpt_meta.json; for GPT-2 BPE
           runs also vocab.json/merges.txt/tokenizer_config.json, for a bpe trained by prepare
           tokenizer.json/tokenizer_config.json/tokenizer.tiktoken, so AutoTokenizer loads DIR;
           a run finetuned on conversations adds its turn markers and a chat template);
           load it with transformers.GPT2LMHeadModel.from_pretrained(DIR). Only GPT-2-shaped
           models export (learned positions, layernorm, gelu, tied embeddings, mlp_ratio 4).
           The write is atomic; a non-empty DIR is refused unless --overwrite.

Importing needs no command: train.py and sample.py take --init_from=gpt2|gpt2-medium|gpt2-large|
gpt2-xl|PATH (PATH: a folder with config.json and model.safetensors or pytorch_model.bin).
python -m smallgpt.interop.hf export --help lists the export keys."""


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command != "export":
        raise UserError(f"unknown command {command!r}; the command is export (python -m smallgpt.interop.hf --help)")
    cfg = parse_config(ExportConfig, rest, "Export a checkpoint as a Hugging Face GPT-2 folder.")
    if not cfg.to:
        raise UserError("export needs --to=DIR, the folder to write")
    target = export_checkpoint(cfg.out_dir, cfg.to, cfg.overwrite)
    print(f"exported {cfg.out_dir} to {target} (load with GPT2LMHeadModel.from_pretrained)")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
