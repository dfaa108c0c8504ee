"""A GPT language model in one file: config, blocks, model, init, optimizer groups, generation.

GPT-2's architecture by default (pre-norm blocks, learned positions, GELU MLP, LayerNorm, tied
input/output embeddings, optional biases, dropout). Modern options sit behind `GPTConfig` switches:
rotary positions, RMSNorm, QK-norm, ReLU^2 or SwiGLU MLPs, untied embeddings, logit soft-capping,
zero-initialised projections, U-net skips between the halves, value embeddings, a previous-token
mix at the input. Attention is one
`F.scaled_dot_product_attention` call (flash kernels where the device has them), except under bf16
autocast on a CPU, where matmuls around a float32 softmax or float32 flash attention are faster
(`causal_attention`). Generation keeps a key/value cache, so each new token costs one position, not
the whole context.

This file imports nothing from the project: copy it alone into another codebase. `compile_pieces()`
compiles it block by block, for wrappers that hook every block (FSDP); `torch.compile(model)` otherwise.

    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65))
    logits, loss = model(idx, targets)           # idx, targets: (B, T) int64
    out = model.generate(idx, max_new_tokens=100, temperature=0.8, top_k=50)
"""

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence the model sees (number of learned positions)
    vocab_size: int = 50257  # token ids 0..vocab_size-1 (GPT-2's BPE has 50257)
    vocab_multiple: int = 64  # embedding/head rows rounded up to a multiple of this (50257 -> 50304),
    #                           which GPU matmuls run faster; the extra rows are never looked up, and
    #                           their logits are cut off, so they are never targets and never sampled
    n_layer: int = 12  # number of transformer blocks
    n_head: int = 12  # attention heads per block; must divide n_embd
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # dropout on attention weights, residual branches and embeddings (training)
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2 has them
    pos_embedding: str = "learned"  # "learned" absolute positions (GPT-2) or "rope" (rotary)
    rope_base: float = 10000.0  # rotary frequency base, used when pos_embedding == "rope"
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm"
    qk_norm: bool = False  # normalise queries and keys per head before attention
    mlp: str = "gelu"  # "gelu" (GPT-2's tanh approximation), "gelu_exact" (erf, as nanoGPT), "relu2"
    #                    (ReLU squared) or "swiglu"
    mlp_ratio: float = 4.0  # hidden width of the MLP / n_embd (SwiGLU uses 2/3 of it, same params)
    tie_embeddings: bool = True  # share the token embedding with the output head (GPT-2)
    logit_softcap: float = 0.0  # if > 0, logits = softcap * tanh(logits / softcap)
    zero_init_proj: bool = False  # start the projections that write into the residual stream (c_proj) at
    #                               zero, so each block begins as the identity (changes the init only)
    unet_skips: bool = False  # add the output of each block of the first half, times a learned weight, to
    #                           the input of its mirror block in the second half (U-net style)
    value_embeds: bool = False  # each block adds a token embedding of its own to the attention's values
    #                             (a vocab x n_embd table per block: meant for small vocabularies)
    prev_token_mix: bool = False  # each token's embedding adds a learned per-channel multiple (0 at init)
    #                               of the previous token's: every block sees the last two tokens at each
    #                               position (a width-2 causal convolution; pays on character vocabularies)

    # the values each string switch takes, and the range of each number (at_least / at_most inclusive,
    # above / below exclusive): validated below, read by the config layer (which names the key given)
    # and by the tests, which enumerate them
    CHOICES = {"pos_embedding": ("learned", "rope"), "norm": ("layernorm", "rmsnorm"),
               "mlp": ("gelu", "gelu_exact", "relu2", "swiglu")}
    BOUNDS = {"block_size": {"at_least": 1, "at_most": 1 << 20}, "vocab_size": {"at_least": 1, "at_most": 1 << 24},
              "vocab_multiple": {"at_least": 1, "at_most": 1 << 16}, "n_layer": {"at_least": 1, "at_most": 1 << 12},
              "n_head": {"at_least": 1, "at_most": 1 << 12}, "n_embd": {"at_least": 1, "at_most": 1 << 16},
              "dropout": {"at_least": 0.0, "below": 1.0}, "rope_base": {"above": 0.0, "at_most": 1e12},
              "mlp_ratio": {"above": 0.0, "at_most": 64.0}, "logit_softcap": {"at_least": 0.0, "at_most": 1e6}}

    def __post_init__(self):
        within = {"at_least": lambda v, b: v >= b, "at_most": lambda v, b: v <= b, "above": lambda v, b: v > b,
                  "below": lambda v, b: v < b}  # (false for nan)
        for name, bounds in self.BOUNDS.items():
            value = getattr(self, name)
            if not all(within[rule](value, bound) for rule, bound in bounds.items()):
                rules = " and ".join(f"{rule.replace('_', ' ')} {bound}" for rule, bound in bounds.items())
                raise ValueError(f"{name} must be {rules}, got {value}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.pos_embedding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("rotary positions need an even head size (n_embd / n_head)")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and output head: vocab_size rounded up to a multiple of vocab_multiple."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


# ----------------------------------------------------------------------------- blocks

def at_least_as_precise(weight, x):
    """A norm's gain (or bias) for input x: in float32 when x is float32. A wrapper may hold the gains in
    bf16 while the residual stream stays float32 (FSDP's mixed precision, see smallgpt/fsdp.py), and a
    CPU's layer_norm rejects that mix; elsewhere this is the weight as it is."""
    return weight.float() if weight is not None and x.dtype == torch.float32 else weight


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's cannot drop only the bias)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, at_least_as_precise(self.weight, x),
                            at_least_as_precise(self.bias, x), 1e-5)


class RMSNorm(nn.Module):
    def __init__(self, ndim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))

    def forward(self, x):
        # in float32 and back, as torch does anyway for a bf16 input (queries and keys under autocast), but
        # said: given a bf16 input and float32 gains, rms_norm warns that it cannot use its fused kernel
        # (and FSDP's mixed precision may hold the gain in bf16: at_least_as_precise's case)
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), 1e-6).to(x.dtype)


def make_norm(config: GPTConfig, ndim: int) -> nn.Module:
    return RMSNorm(ndim) if config.norm == "rmsnorm" else LayerNorm(ndim, config.bias)


def rotary_tables(head_dim: int, length: int, base: float):
    """cos/sin tables of shape (length, head_dim // 2) for rotary position embeddings."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate pairs (first half, second half) of each head's channels; x: (B, n_head, T, head_dim)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # (T, head_dim // 2), broadcast over B and heads
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# Under bf16 autocast on a CPU, blocks up to this many positions attend with two bf16 matmuls around a
# float32 softmax, which compiles into fewer, faster kernels than flash attention for short blocks and
# into slower ones past this length (docs/results.md, "Training speed on CPUs").
CPU_MATMUL_ATTENTION_MAX_T = 128


def causal_attention(q, k, v, dropout_p: float = 0.0, mask=None):
    """Causal attention over (B, n_head, T, head_dim); mask (B, 1, T, T), if given, is True where a
    query may see a key (causal already: see GPT.forward's segments). Under bf16 autocast on a CPU,
    torch's bf16 flash-attention backward is several times slower than float32's, which cost more than
    bf16 saved on every matmul of a small model: short blocks attend as matmuls (above), longer ones
    with float32 flash attention."""
    causal = mask is None
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        T = q.size(-2)
        if T <= CPU_MATMUL_ATTENTION_MAX_T:
            scores = (q @ k.transpose(-2, -1)).float() * q.size(-1) ** -0.5  # (B, n_head, T, T)
            hidden = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(diagonal=1) if causal else ~mask
            probs = scores.masked_fill(hidden, float("-inf")).softmax(dim=-1)
            probs = F.dropout(probs, dropout_p) if dropout_p > 0 else probs
            return probs @ v  # bf16 (B, n_head, T, head_dim), as autocast casts the operands
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), mask, dropout_p, causal)
        return y.to(torch.get_autocast_dtype("cpu"))
    return F.scaled_dot_product_attention(q, k, v, mask, dropout_p, causal)


class KVCache:
    """Keys and values of every layer for positions [0, pos), preallocated to block_size.

    `pos` is the number of positions already filled; the next forward writes at [pos, pos + T).
    """

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype):
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, head_dim)
        # empty, not zeros: only positions [0, pos) are ever read, and those have been written
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.pos = 0
        self.last_embedding = None  # (B, 1, n_embd): the token embedding at pos - 1 (prev_token_mix)

    def reset(self):
        self.pos = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.layer_idx = layer_idx
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.q_norm = RMSNorm(self.head_dim) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim) if config.qk_norm else None

    def forward(self, x, rotary=None, cache: KVCache | None = None, value_embed=None, mask=None):
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, n_head, T, head_dim)
        if value_embed is not None:  # (B, T, C) -> (B, n_head, T, head_dim), as v
            v = v + value_embed.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is None:
            y = causal_attention(q, k, v, self.dropout if self.training else 0.0, mask)
        else:
            start, end = cache.pos, cache.pos + T
            cache_k, cache_v = cache.k[self.layer_idx], cache.v[self.layer_idx]  # (B, n_head, block_size, head_dim)
            cache_k[:, :, start:end] = k
            cache_v[:, :, start:end] = v
            k, v = cache_k[:, :, :end], cache_v[:, :, :end]  # (B, n_head, end, head_dim)
            if T == 1:  # one new query sees every cached position: no mask needed
                y = F.scaled_dot_product_attention(q, k, v)
            elif start == 0:  # prefill of an empty cache: plain causal attention, no mask to build
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # query i (at absolute position start + i) sees keys 0 .. start + i
                mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = self.c_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, n_head * head_dim)
        return self.resid_dropout(y) if self.training else y  # (a no-op call costs ~3 us per token per layer)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        hidden = int(config.mlp_ratio * config.n_embd)
        if self.kind == "swiglu":  # two input matrices: keep the parameter count of the plain MLP
            hidden = int(2 * hidden / 3)
            self.c_gate = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.kind == "gelu":
            h = F.gelu(h, approximate="tanh")  # GPT-2's GELU
        elif self.kind == "gelu_exact":
            h = F.gelu(h)  # erf GELU, as nanoGPT's nn.GELU()
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = F.silu(self.c_gate(x)) * h
        h = self.c_proj(h)
        return self.dropout(h) if self.training else h


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)
        self.value_embed = nn.Embedding(config.padded_vocab_size, config.n_embd) if config.value_embeds else None

    def forward(self, x, rotary=None, cache=None, idx=None, mask=None):
        value_embed = self.value_embed(idx) if self.value_embed is not None else None  # (B, T, C)
        x = x + self.attn(self.ln_1(x), rotary, cache, value_embed, mask)
        return x + self.mlp(self.ln_2(x))


# ----------------------------------------------------------------------------- model

class GPT(nn.Module):
    def __init__(self, config: GPTConfig, init_weights: bool = True):
        """init_weights=False leaves torch's default init (for weights about to be replaced)."""
        super().__init__()
        self.config = config
        self.activation_checkpointing = False  # recompute each block in backward (train.py's key of that name)
        self.pieces_compiled = False  # compile_pieces has run
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=make_norm(config, config.n_embd),
        ))
        if config.pos_embedding == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        else:
            cos, sin = rotary_tables(config.n_embd // config.n_head, config.block_size, config.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        if config.prev_token_mix:  # per channel; 0 at init, so the model starts as one without it
            self.prev_token_weight = nn.Parameter(torch.zeros(config.n_embd))
        if config.unet_skips:  # one weight per skip: block i of the first half feeds block n_layer - 1 - i
            self.skip_weights = nn.Parameter(torch.ones(config.n_layer // 2))
        if init_weights:
            self.apply(self._init_weights)
            # scaled init of the projections that write into the residual stream (GPT-2 paper), or zero
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    std = 0.0 if config.zero_init_proj else 0.02 / math.sqrt(2 * config.n_layer)
                    nn.init.normal_(p, mean=0.0, std=std)

    def _init_weights(self, module):
        """Linear and Embedding weights ~ N(0, 0.02), biases 0; norm gains 1 (set by the norms)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @classmethod
    def from_state_dict(cls, config: GPTConfig, state_dict: dict) -> "GPT":
        """A model that uses the given tensors as its weights (no copy; raises like load_state_dict).

        The tensors are taken over, not copied, so a memory-mapped checkpoint stays mapped, and the
        random init is skipped, since every weight is replaced. (The meta device would skip torch's
        default init too, but its first op takes ~2 s.)
        """
        model = cls(config, init_weights=False)
        model.load_state_dict(state_dict, assign=True)
        if config.tie_embeddings:  # assign replaced the shared Parameter by two: share it again
            model.lm_head.weight = model.transformer.wte.weight
        return model

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. non_embedding excludes the vocabulary and position tables (token
        embedding, output head, learned positions): what is left is the blocks' size."""
        n = sum(p.numel() for p in self.parameters())  # a tied head is the embedding: counted once
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if self.config.pos_embedding == "learned":
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def crop_block_size(self, block_size: int) -> None:
        """Keep only the first block_size positions (e.g. finetune GPT-2's 1024 on shorter windows)."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        if self.config.pos_embedding == "learned":
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].clone())
        else:
            self.rope_cos, self.rope_sin = self.rope_cos[:block_size], self.rope_sin[:block_size]

    def add_tokens(self, vocab_size: int) -> int:
        """Grow the vocabulary to vocab_size ids (new special tokens); returns the rows added to the tables:
        none when the padding's spare rows are enough, else up to the next multiple of vocab_multiple.
        The new ids' rows start as the mean of the others' (an average token: a zero or random row would
        start with an outlandish logit; a GPT-2 checkpoint's spare rows are zeros)."""
        old, rows = self.config.vocab_size, self.config.padded_vocab_size
        self.config.vocab_size = vocab_size
        added = max(0, self.config.padded_vocab_size - rows)
        tables = [self.transformer.wte, *(b.value_embed for b in self.transformer.h if b.value_embed is not None)]
        for table in tables + ([] if self.config.tie_embeddings else [self.lm_head]):
            weight = table.weight.detach()
            weight = torch.cat([weight, weight.new_zeros(added, weight.size(1))]) if added else weight.clone()
            weight[old:vocab_size] = weight[:old].mean(dim=0)
            table.weight = nn.Parameter(weight)
        if self.config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        return added

    def forward(self, idx, targets=None, cache: KVCache | None = None, segments=None):
        """idx: (B, T) token ids. Returns (logits, loss).

        With targets: logits for every position (B, T, vocab) and the mean cross-entropy (targets of
        -1 are ignored). Without: logits of the last position only (B, 1, vocab), loss None.
        With a cache, idx holds the positions [cache.pos, cache.pos + T) and the cache advances.
        segments (B, T), for rows that pack several sequences (conversations): equal ids mark one
        sequence, contiguous; each sees only itself, from position 0, as if it were alone in its row.
        Three steps around the blocks (embed, add_skip, head) are methods of their own, so that each
        compiles apart from the blocks where a wrapper's hooks run around every block (compile_pieces).
        """
        x, rotary, mask = self.embed(idx, cache, segments)
        skips, first_skipped = [], self.config.n_layer - self.config.n_layer // 2  # U-net: the second half
        for i, block in enumerate(self.transformer.h):
            if self.config.unet_skips and i >= first_skipped:
                x = self.add_skip(x, skips.pop(), i - first_skipped)  # the mirror block's output
            if self.activation_checkpointing and torch.is_grad_enabled() and cache is None:
                # keep only the block's input; backward reruns the block (the same dropout masks:
                # the RNG state is replayed) to get what it needs, so one block's activations at a time
                x = torch.utils.checkpoint.checkpoint(block, x, rotary, None, idx, mask, use_reentrant=False)
            else:
                x = block(x, rotary, cache, idx, mask)
            if self.config.unet_skips and i < self.config.n_layer // 2:
                skips.append(x)
        if cache is not None:
            cache.pos += idx.size(1)
        return self.head(x, targets)

    def embed(self, idx, cache: KVCache | None = None, segments=None):
        """The blocks' input (B, T, n_embd) for token ids idx (B, T), the rotary tables (or None), and the
        attention mask of packed sequences (or None); see forward."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} positions exceeds block_size {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, n_embd)
        mask = first = None
        pos = slice(start, start + T)  # positions start .. start + T - 1
        if segments is not None:  # a sequence attends within itself; positions count from its first token
            first = segments != F.pad(segments[:, :-1], (1, 0), value=-1)  # (B, T): a sequence starts here
            pos = torch.arange(T, device=idx.device)
            pos = pos - torch.where(first, pos, 0).cummax(dim=1).values  # (B, T)
            mask = (segments[:, :, None] == segments[:, None, :]).tril().unsqueeze(1)  # (B, 1, T, T)
        if self.config.prev_token_mix:
            x = self.mix_previous_token(x, cache, first)
        rotary = None
        if self.config.pos_embedding == "learned":
            x = x + self.transformer.wpe.weight[pos]
        else:  # (T, head_dim // 2), or (B, 1, T, head_dim // 2) per sequence
            cos, sin = self.rope_cos[pos], self.rope_sin[pos]
            rotary = (cos, sin) if segments is None else (cos.unsqueeze(1), sin.unsqueeze(1))
        if self.training:
            x = self.transformer.drop(x)
        return x, rotary, mask

    def add_skip(self, x, skip, j: int):
        """U-net: x plus the j-th skip weight times a block of the first half's output."""
        return x + self.skip_weights[j] * skip

    def head(self, x, targets=None):
        """(logits, loss) from the last block's output x (B, T, n_embd); see forward."""
        x = self.transformer.ln_f(x)
        if targets is None:
            x = x[:, -1:, :]  # only the last position is needed to pick the next token
        logits = self.lm_head(x)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., :self.config.vocab_size]  # padding rows: never targets, never sampled
        if self.config.logit_softcap > 0:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def compile_pieces(self, **options) -> "GPT":
        """torch.compile each block's forward and each step of forward around the blocks (embed,
        add_skip, head) on its own, `options` as torch.compile's; forward's loop stays Python.

        For a wrapper whose hooks run around every block, which torch.compile does not trace (FSDP's
        gather parameters): compiling the whole model then breaks its graph at the first block, inside
        forward's loop, and dynamo runs all of forward eagerly (the embeddings, the head and the
        loss). Here each piece is one graph and the hooks run between them. The blocks share one
        compiled graph (the same code; dynamo guards on what differs). The module and its state dict
        are unchanged: only these methods are replaced on this instance, which is returned.
        """
        for block in self.transformer.h:
            block.forward = torch.compile(block.forward, **options)
        for name in ("embed", "add_skip", "head"):
            setattr(self, name, torch.compile(getattr(self, name), **options))
        self.pieces_compiled = True
        return self

    def mix_previous_token(self, x, cache: KVCache | None, first=None):
        """x[t] + prev_token_weight * x[t - 1] for token embeddings x (B, T, n_embd); position 0 gets nothing
        added, nor does a packed sequence's first token (first). With a cache, x[0]'s previous is its last."""
        before = cache.last_embedding if cache is not None and cache.pos > 0 else torch.zeros_like(x[:, :1])
        if cache is not None:
            cache.last_embedding = x[:, -1:]
        previous = torch.cat([before, x[:, :-1]], dim=1)  # (B, T, n_embd)
        return x + self.prev_token_weight * (previous if first is None else previous.masked_fill(first[..., None], 0))

    # ------------------------------------------------------------------------- training helpers

    def parameter_kinds(self) -> dict[str, list[nn.Parameter]]:
        """Every trainable parameter once (a tied head is the embedding), by what it does:
          "matrix"     2-D weights inside the blocks, acting on hidden vectors (Muon's; weight-decayed)
          "embedding"  token, position and value tables and the output head (lookups/readout; weight-decayed)
          "vector"     norm gains and biases (never decayed)
        The one place that decides this: AdamW's decay groups and Muon's groups (optim.py) both use it.
        """
        in_blocks = {id(p) for p in self.transformer.h.parameters()}
        tables = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        kinds = {"matrix": [], "embedding": [], "vector": []}
        for p in self.parameters():  # shared (tied) tensors are listed once
            if p.requires_grad:
                kind = "vector" if p.dim() < 2 else "matrix" if id(p) in in_blocks - tables else "embedding"
                kinds[kind].append(p)
        return kinds

    def optimizer_groups(self, weight_decay: float):
        """Two AdamW groups: matrices and embeddings decay; gains and biases do not."""
        vectors = {id(p) for p in self.parameter_kinds()["vector"]}
        params = [p for p in self.parameters() if p.requires_grad]  # in module order, as checkpoints store them
        return [{"params": [p for p in params if id(p) not in vectors], "weight_decay": weight_decay},
                {"params": [p for p in params if id(p) in vectors], "weight_decay": 0.0}]

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with decay on 2-D weights only; the fused kernel where this torch has one (torch 2.4+
        has it for CUDA, CPU and Apple's mps)."""
        fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in ("cuda", "cpu", "mps")
        kwargs = dict(lr=learning_rate, betas=betas)
        if fused:
            kwargs["fused"] = True
        return torch.optim.AdamW(self.optimizer_groups(weight_decay), **kwargs)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 per matmul weight plus attention scores.

        The matmul weights are the blocks' and the output head's (padded rows included: they are
        computed); embedding lookups cost nothing. Attention: QK^T and AV, each 2 * T * head_dim
        per head per token forward, times 3 for forward + backward (nanoGPT's / PaLM's count).
        """
        cfg = self.config
        T = seq_len or cfg.block_size
        matmul_weights = self.num_params(non_embedding=True) + self.lm_head.weight.numel()
        return 6 * matmul_weights + 12 * cfg.n_layer * cfg.n_embd * T

    # ------------------------------------------------------------------------- generation

    @staticmethod
    def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        """Pick one token per row from logits (B, vocab); returns (B, 1) int64.

        temperature 0 means argmax (greedy); otherwise logits are divided by it, then top_k keeps the
        k most likely tokens (ties with the k-th kept too) and top_p keeps the smallest set of the most
        likely tokens whose probability reaches p (nucleus sampling; the most likely token always
        stays, so a tiny p is greedy and p = 1 is plain sampling). `generator` makes draws repeatable.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1 (or None), got {top_k}")
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.size(-1):
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) k-th largest logit
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        if top_p is None or top_p >= 1.0:
            return torch.multinomial(probs, num_samples=1, generator=generator)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # drop a token when the tokens more likely than it already cover top_p
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)  # multinomial needs no renormalising
        choice = torch.multinomial(sorted_probs, num_samples=1, generator=generator)  # (B, 1) rank
        return order.gather(-1, choice)  # rank -> token id

    @torch.inference_mode()
    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                        generator=None, use_cache=True, cache: KVCache | None = None):
        """Extend idx (B, T) one token at a time; after each new token yield the sequence so far.

        Each yielded tensor is (B, T + n) for n = 1 .. max_new_tokens, a view into one buffer
        preallocated for the whole output (read it, or copy it if you keep it; it is never rewritten).
        Stop iterating to stop generating, e.g. when every row has hit an end-of-text token.
        See `generate` for how the context is handled. cache: a KVCache holding the tokens before idx
        (a conversation's earlier turns) to go on filling; generation then stops where it is full, for
        its owner to decide what to keep. The last token yielded is not in it yet.
        """
        B, T = idx.shape
        block_size = self.config.block_size
        out = torch.empty((B, T + max_new_tokens), dtype=torch.long, device=idx.device)
        out[:, :T] = idx
        own = cache is None
        if use_cache and own:
            cache = KVCache(self.config, B, idx.device, next(self.parameters()).dtype)
        pending = idx[:, -block_size:] if own else idx  # tokens not yet in the cache (a longer prompt is cropped)
        keep = max(1, block_size // 2)  # context kept when a full cache restarts
        for n in range(T, T + max_new_tokens):
            if cache is None:  # reference path: rerun the last block_size tokens every step
                logits, _ = self(out[:, max(0, n - block_size):n])
            else:
                if cache.pos + pending.size(1) > block_size:  # window full: restart on recent context
                    if not own:
                        return
                    cache.reset()
                    pending = out[:, n - keep:n]
                logits, _ = self(pending, cache=cache)
            next_token = self.sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
            out[:, n:n + 1] = next_token
            pending = out[:, n:n + 1]
            yield out[:, :n + 1]

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 generator=None, use_cache=True):
        """Extend idx (B, T) by max_new_tokens sampled tokens; returns (B, T + max_new_tokens).

        Sampling: see `sample_next_token` (temperature 0 = greedy; top_k; top_p; a torch.Generator
        for repeatable draws). Rows are independent samples generated together as one batch.

        With the key/value cache (default) the prompt is run once (prefill) and then each token costs
        one position. While prompt + output fit in block_size this gives the same logits as rerunning
        the whole context (up to float rounding) and so the same tokens. Past block_size a model has
        no positions left: when the cache is full it is emptied and refilled from the last
        block_size // 2 tokens, and generation goes on one token at a time from there. So no position
        >= block_size is ever used, memory stays flat (the cache is allocated once, at block_size),
        and each token still sees between block_size // 2 and block_size tokens of context; the
        refill (one batched forward of block_size // 2 tokens) happens once every block_size // 2
        new tokens. A prompt longer than block_size is cropped to its last block_size tokens.
        Without the cache (use_cache=False) every step reruns the last block_size tokens: a sliding
        window, the same as the cached path until block_size and slower by a factor of the context.
        """
        seq = idx
        for seq in self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, generator, use_cache):
            pass
        return seq.clone()  # a normal tensor (not an inference-mode one) that owns its memory
