"""The model on its own: shapes, causality, initial loss, overfitting, parameter count, optimizer."""

import math

import pytest
import torch

from model import GPT, GPTConfig

MODERN = dict(pos_embedding="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", tie_embeddings=False,
              logit_softcap=30.0, bias=False)
VARIANTS = {"gpt2": {}, "modern": MODERN, "relu2": dict(mlp="relu2")}


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    cfg.update(overrides)
    return GPT(GPTConfig(**cfg))


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes(variant):
    model = tiny(**VARIANTS[variant])
    idx = torch.randint(0, 50, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 50) and loss.shape == ()
    logits, loss = model(idx)
    assert logits.shape == (3, 1, 50) and loss is None


def assert_causal(model: GPT, idx: torch.Tensor) -> None:
    """Changing token t (of 16, vocabulary 50) changes the logits from t on and never before."""
    logits, _ = model(idx, idx)
    for t in (0, 7, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 50
        logits2, _ = model(changed, changed)
        torch.testing.assert_close(logits2[:, :t], logits[:, :t], rtol=0, atol=0)
        assert not torch.allclose(logits2[:, t:], logits[:, t:])  # the change itself is seen


@pytest.mark.parametrize("variant", VARIANTS)
def test_changing_a_future_token_never_changes_earlier_logits(variant):
    assert_causal(tiny(**VARIANTS[variant]).eval(), torch.randint(0, 50, (2, 16)))


def test_prev_token_mix_starts_as_the_plain_model_then_adds_the_previous_token_causally():
    plain, mixed = tiny(pos_embedding="rope"), tiny(pos_embedding="rope", prev_token_mix=True)
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(mixed(idx, idx)[0], plain(idx, idx)[0], rtol=0, atol=0)  # its weights start at 0
    with torch.no_grad():
        mixed.prev_token_weight.normal_()
    # the mix itself: x[t] + w * x[t - 1], nothing added at position 0
    emb = mixed.transformer.wte(idx)
    shifted = torch.cat([torch.zeros_like(emb[:, :1]), emb[:, :-1]], dim=1)
    torch.testing.assert_close(mixed.mix_previous_token(emb, None), emb + mixed.prev_token_weight * shifted)
    assert_causal(mixed, idx)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("vocab_size", [65, 1000])
def test_initial_loss_is_near_uniform(variant, vocab_size):
    model = tiny(vocab_size=vocab_size, n_embd=64, n_head=4, **VARIANTS[variant])
    idx = torch.randint(0, vocab_size, (8, 16))
    _, loss = model(idx, torch.randint(0, vocab_size, (8, 16)))
    assert abs(loss.item() - math.log(vocab_size)) < 0.1


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_tiny_batch_overfits(variant):
    model = tiny(**VARIANTS[variant])
    torch.manual_seed(1)
    x = torch.randint(0, 50, (4, 16))
    y = torch.randint(0, 50, (4, 16))
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), "cpu")
    for _ in range(100):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01  # from ln(50) = 3.9


def test_gpt2_small_has_124m_parameters():
    model = GPT(GPTConfig(vocab_size=50257, vocab_multiple=1))
    assert sum(p.numel() for p in model.parameters()) == 124_439_808
    assert model.lm_head.weight is model.transformer.wte.weight
    padded = GPT(GPTConfig(vocab_size=50257))  # rows rounded up to 50304, as nanoGPT does
    assert padded.transformer.wte.weight.shape == (50304, 768)
    assert sum(p.numel() for p in padded.parameters()) == 124_439_808 + 47 * 768
    # the blocks alone (what "non-embedding" means): 12 x 7,087,872
    assert padded.num_params() == model.num_params() == 12 * 7_087_872 + 2 * 768


def test_weight_decay_applies_to_matrices_only():
    model = tiny()
    groups = model.optimizer_groups(0.1)
    decay_of = {id(p): group["weight_decay"] for group in groups for p in group["params"]}
    assert len(decay_of) == sum(len(group["params"]) for group in groups)  # each parameter in one group
    assert set(decay_of) == {id(p) for p in model.parameters()}
    assert all(decay_of[id(p)] == (0.1 if p.dim() >= 2 else 0.0) for p in model.parameters())


def test_fused_adamw_matches_the_plain_implementation():
    runs = []
    for fused in (True, False):
        model = tiny()
        opt = torch.optim.AdamW(model.optimizer_groups(0.1), lr=1e-2, betas=(0.9, 0.95), fused=fused,
                                foreach=None if fused else False)
        torch.manual_seed(2)
        for _ in range(5):
            idx = torch.randint(0, 50, (4, 16))
            _, loss = model(idx, idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
        runs.append(model.state_dict())
    for key in runs[0]:  # each step moves a weight by about lr (1e-2); rounding differs far below that
        torch.testing.assert_close(runs[0][key], runs[1][key], rtol=1e-4, atol=2e-4)
    assert model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu").defaults.get("fused") is True


def _attend_under_autocast(fn, q, k, v, out_grad, dtype):
    """fn(q, k, v)'s output and input gradients as float32, under bf16 autocast when dtype is bf16."""
    for t in (q, k, v):
        t.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = fn(q, k, v)
    y.backward(out_grad.to(y.dtype))
    return y, [t.grad.clone() for t in (q, k, v)]


@pytest.mark.parametrize("short", [True, False])
def test_cpu_bf16_attention_matches_float32_attention(short):
    """Under bf16 autocast on a CPU, causal_attention avoids torch's slow bf16 flash-attention backward:
    blocks up to CPU_MATMUL_ATTENTION_MAX_T positions attend as bf16 matmuls around a float32 softmax,
    within twice bf16 flash attention's own error of float32 attention; longer blocks attend in float32,
    exactly float32 attention rounded to bf16. Without autocast it is the plain call."""
    import torch.nn.functional as F

    from model import CPU_MATMUL_ATTENTION_MAX_T, causal_attention

    torch.manual_seed(0)
    T = 64 if short else CPU_MATMUL_ATTENTION_MAX_T + 32
    assert (T <= CPU_MATMUL_ATTENTION_MAX_T) == short
    q, k, v = (torch.randn(2, 4, T, 32, requires_grad=True) for _ in range(3))
    out_grad = torch.randn(2, 4, T, 32)
    plain = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    exact, exact_grads = _attend_under_autocast(plain, q, k, v, out_grad, torch.float32)
    bf16, bf16_grads = _attend_under_autocast(plain, q, k, v, out_grad, torch.bfloat16)  # autocast: bf16 flash
    ours, our_grads = _attend_under_autocast(causal_attention, q, k, v, out_grad, torch.bfloat16)
    assert ours.dtype == torch.bfloat16  # what the next (autocast) layer would get anyway
    if short:
        assert (ours.float() - exact).abs().max() <= 2 * (bf16.float() - exact).abs().max()
        for mine, theirs, want in zip(our_grads, bf16_grads, exact_grads):
            assert (mine - want).abs().max() <= 2 * (theirs - want).abs().max()
    else:
        torch.testing.assert_close(ours, exact.to(torch.bfloat16), rtol=0, atol=0)  # float32, then rounded
        for mine, theirs, want in zip(our_grads, bf16_grads, exact_grads):
            assert (mine - want).abs().max() <= (theirs - want).abs().max()
    assert causal_attention(q, k, v).dtype == torch.float32  # no autocast: the plain call
    torch.testing.assert_close(causal_attention(q, k, v), exact)


@pytest.mark.parametrize("bad, message", [
    (dict(n_embd=30, n_head=4), "divisible"),
    (dict(n_layer=0), "n_layer"),
    (dict(dropout=1.0), "dropout"),
    (dict(mlp="tanh"), "mlp"),
    (dict(pos_embedding="rope", n_embd=6, n_head=2), "even"),
])
def test_invalid_shapes_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**dict(n_layer=2, n_head=2, n_embd=32), **bad})


def test_padded_vocabulary_rows_are_never_targets_nor_sampled():
    """65 ids in 128 rows: logits and loss see only the 65; sampling cannot pick a padding row even
    when its weights would make it the likeliest."""
    torch.manual_seed(0)
    padded = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=65, tie_embeddings=False))
    assert padded.lm_head.weight.shape[0] == 128 and padded.config.padded_vocab_size == 128
    plain = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=65, vocab_multiple=1,
                          tie_embeddings=False))
    state = {k: (v[:65] if k in ("transformer.wte.weight", "lm_head.weight") else v)
             for k, v in padded.state_dict().items()}
    plain.load_state_dict(state)
    with torch.no_grad():
        padded.lm_head.weight[65:] = 100.0  # padding rows that would win every argmax
    x = torch.randint(0, 65, (2, 16))
    logits, loss = padded(x, x)
    plain_logits, plain_loss = plain(x, x)
    assert logits.shape == (2, 16, 65)
    torch.testing.assert_close(logits, plain_logits)
    torch.testing.assert_close(loss, plain_loss)  # the softmax normalises over the 65 real ids only
    out = padded.generate(x[:, :2], 14, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert int(out.max()) < 65
    assert int(padded.generate(x[:, :2], 14, temperature=0).max()) < 65
