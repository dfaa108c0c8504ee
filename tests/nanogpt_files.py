"""Writers of files in karpathy/nanoGPT's layouts, for the tests (no nanoGPT code, nothing downloaded).

    weights = nanogpt_weights(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=65)
    write_nanogpt_checkpoint(run / "ckpt.pt", weights, model_args, config={"dataset": "shakespeare_char"})
    write_meta_pkl(data / "meta.pkl", vocab)              # {'vocab_size', 'itos', 'stoi'}, pickled
    write_nanogpt_data(data, text, vocab)                 # train.bin / val.bin uint16 (+ meta.pkl)

The parameter names and shapes are spelled out here from nanoGPT's model (not taken from ours), so
a test that loads them checks our conversion against nanoGPT's layout.
"""

import pickle
from pathlib import Path

import numpy as np
import torch


def nanogpt_weights(n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int,
                    bias: bool = True, seed: int = 0, scale: float = 0.3) -> dict:
    """nanoGPT's state dict names and shapes, filled with N(0, scale^2) (LayerNorm gains 1 + that).

    scale 0.3 (not the 0.02 of an init) makes MLP inputs large enough that exact and tanh GELU
    give visibly different logits. lm_head.weight is the same tensor as wte (tied, as in nanoGPT).
    """
    g = torch.Generator().manual_seed(seed)
    C = n_embd
    shapes = {"transformer.wte.weight": (vocab_size, C), "transformer.wpe.weight": (block_size, C)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        shapes[p + "ln_1.weight"] = (C,)
        if bias:
            shapes[p + "ln_1.bias"] = (C,)
        shapes[p + "attn.c_attn.weight"] = (3 * C, C)  # nn.Linear: (out, in); out = q | k | v
        if bias:
            shapes[p + "attn.c_attn.bias"] = (3 * C,)
        shapes[p + "attn.c_proj.weight"] = (C, C)
        if bias:
            shapes[p + "attn.c_proj.bias"] = (C,)
        shapes[p + "ln_2.weight"] = (C,)
        if bias:
            shapes[p + "ln_2.bias"] = (C,)
        shapes[p + "mlp.c_fc.weight"] = (4 * C, C)
        if bias:
            shapes[p + "mlp.c_fc.bias"] = (4 * C,)
        shapes[p + "mlp.c_proj.weight"] = (C, 4 * C)
        if bias:
            shapes[p + "mlp.c_proj.bias"] = (C,)
    shapes["transformer.ln_f.weight"] = (C,)
    if bias:
        shapes["transformer.ln_f.bias"] = (C,)
    weights = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=g) * scale
        weights[name] = 1 + t if ".ln_" in name and name.endswith("weight") else t
    weights["lm_head.weight"] = weights["transformer.wte.weight"]
    return weights


def model_args_for(weights: dict, n_head: int, bias: bool = True, dropout: float = 0.0) -> dict:
    """nanoGPT's model_args dict for a weights dict from nanogpt_weights."""
    vocab, n_embd = weights["transformer.wte.weight"].shape
    n_layer = len({k.split(".")[2] for k in weights if k.startswith("transformer.h.")})
    return dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=weights["transformer.wpe.weight"].shape[0],
                bias=bias, vocab_size=vocab, dropout=dropout)


def write_nanogpt_checkpoint(path: Path, weights: dict, model_args: dict, config: dict | None = None,
                             compiled: bool = True, mask_buffers: bool = True, iter_num: int = 250,
                             best_val_loss: float = 1.4697, **extra) -> Path:
    """torch.save a dict laid out as nanoGPT's train.py saves it.

    compiled: keys prefixed `_orig_mod.` (a torch.compile'd run); mask_buffers: each layer's
    `attn.bias` (1, 1, T, T) causal mask (nanoGPT without flash attention). best_val_loss is a 0-d
    tensor, as nanoGPT's estimate_loss returns it.
    """
    T = model_args["block_size"]
    state = {}
    for name, tensor in weights.items():
        state[name] = tensor
        if mask_buffers and name.endswith("attn.c_proj.weight"):
            state[name.replace("c_proj.weight", "bias")] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
    if compiled:
        state = {"_orig_mod." + k: v for k, v in state.items()}
    config = {"dataset": "shakespeare_char", "learning_rate": 1e-3, "batch_size": 12, "compile": compiled,
              **(config or {})}
    ckpt = {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
            "model_args": model_args, "iter_num": iter_num, "best_val_loss": torch.tensor(best_val_loss),
            "config": config, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def write_meta_pkl(path: Path, vocab: list[str]) -> Path:
    """nanoGPT's char meta.pkl: {'vocab_size', 'itos' (id -> char), 'stoi' (char -> id)}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"vocab_size": len(vocab), "itos": dict(enumerate(vocab)), "stoi": {c: i for i, c in enumerate(vocab)}}
    with open(path, "wb") as f:
        pickle.dump(meta, f)
    return path


def write_nanogpt_data(folder: Path, ids, vocab: list[str] | None = None, val_fraction: float = 0.1):
    """train.bin / val.bin as nanoGPT writes them (uint16, the tail is val), plus meta.pkl for a vocab."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.asarray(ids, dtype=np.uint16)
    n = int(len(ids) * (1 - val_fraction))
    ids[:n].tofile(folder / "train.bin")
    ids[n:].tofile(folder / "val.bin")
    if vocab is not None:
        write_meta_pkl(folder / "meta.pkl", vocab)
    return ids[:n], ids[n:]
