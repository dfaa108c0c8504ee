"""Optimizers (optim.py) against plain reference computations; CPU fused AdamW against foreach.

    python -m pytest tests/test_optim.py -q
"""

import copy

import torch

from model import GPT, GPTConfig
from smallgpt import optim
from smallgpt.optim import (MuonAdamW, build_optimizer, muon_param_groups, newton_schulz_dtype, orthogonalize,
                            set_learning_rate)
from train import TrainConfig

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=40)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides}))


def reference_newton_schulz(g, steps):
    """The quintic iteration written out one scalar coefficient at a time, in float64."""
    x = g.double()
    if x.shape[0] > x.shape[1]:
        x = x.t()
        flip = True
    else:
        flip = False
    x = x / (torch.linalg.matrix_norm(x) + 1e-7)
    for _ in range(steps):
        a_mat = x @ x.t()
        x = 3.4445 * x - 4.7750 * (a_mat @ x) + 2.0315 * (a_mat @ a_mat @ x)
    return (x.t() if flip else x).float()


def test_orthogonalize_matches_reference_and_is_near_orthogonal():
    torch.manual_seed(0)
    for shape in [(32, 96), (96, 32), (40, 40)]:
        g = torch.randn(shape)
        got = orthogonalize(g, steps=5, dtype=torch.float32)
        assert got.shape == g.shape
        torch.testing.assert_close(got, reference_newton_schulz(g, 5), rtol=1e-3, atol=1e-4)
        singular = torch.linalg.svdvals(got)
        # every direction ends up about equally large (a square Gaussian matrix has a few near-zero
        # singular values that 5 iterations cannot lift, so look at the bulk of them)
        assert singular[: int(0.9 * len(singular))].min() > 0.5 and singular.max() < 1.3, singular
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        polar = u @ vh  # the exact orthogonal factor Muon approximates
        cosine = (got * polar).sum() / (got.norm() * polar.norm())
        assert cosine > 0.95


def test_bfloat16_newton_schulz_orthogonalizes_like_float32():
    """The bf16 iteration (GPUs, CPUs with bf16 units) lands where float32's does, within bf16's precision."""
    torch.manual_seed(4)
    g = torch.randn(3, 128, 512)
    exact, fast = orthogonalize(g, dtype=torch.float32), orthogonalize(g, dtype=torch.bfloat16)
    assert fast.dtype == torch.float32 and fast.shape == g.shape
    cosine = (exact * fast).sum(dim=(1, 2)) / (exact.norm(dim=(1, 2)) * fast.norm(dim=(1, 2)))
    assert cosine.min() > 0.999, cosine
    assert (fast - exact).abs().max() < 0.02
    singular = torch.linalg.svdvals(fast)
    assert singular.min() > 0.5 and singular.max() < 1.3


def test_newton_schulz_runs_in_bfloat16_only_where_matmuls_have_bf16_units(monkeypatch):
    for has_units, expected in [(True, torch.bfloat16), (False, torch.float32)]:
        monkeypatch.setattr(optim, "cpu_has_bf16_units", lambda: has_units)
        assert newton_schulz_dtype("cpu") == expected
        assert newton_schulz_dtype("cuda") == torch.bfloat16
        assert newton_schulz_dtype("mps") == torch.float32


def test_muon_step_matches_plain_computation():
    """Two steps of MuonAdamW on one matrix, by hand: momentum, Nesterov, NS, scale, decay."""
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(48, 16))
    w0 = w.detach().clone()
    lr, wd, mu = 0.05, 0.1, 0.9
    opt = MuonAdamW([{"params": [w], "use_muon": True, "lr": lr, "weight_decay": wd, "momentum": mu}],
                    ns_dtype=torch.float32)
    grads = [torch.randn(48, 16), torch.randn(48, 16)]
    expected, buf = w0.clone(), torch.zeros_like(w0)
    for g in grads:
        w.grad = g.clone()
        opt.step()
        buf = mu * buf + g
        update = reference_newton_schulz(g + mu * buf, 5) * (48 / 16) ** 0.5
        expected = expected * (1 - lr * wd) - lr * update
    torch.testing.assert_close(w.detach(), expected, rtol=1e-4, atol=1e-5)


def test_muon_stacks_same_shaped_matrices_like_separate_steps():
    """Same-shaped matrices are orthogonalized as one batched stack: equal to one optimizer per matrix."""
    torch.manual_seed(3)
    shapes = [(48, 16), (48, 16), (16, 40), (48, 16)]
    together = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    apart = [torch.nn.Parameter(p.detach().clone()) for p in together]
    group = dict(use_muon=True, lr=0.05, weight_decay=0.1, momentum=0.9)
    opt_together = MuonAdamW([{"params": together, **group}])
    opts_apart = [MuonAdamW([{"params": [p], **group}]) for p in apart]
    for _ in range(3):
        for a, b in zip(together, apart):
            a.grad = torch.randn(a.shape)
            b.grad = a.grad.clone()
        opt_together.step()
        for opt in opts_apart:
            opt.step()
    for a, b in zip(together, apart):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


def test_muon_adamw_groups_equal_torch_adamw():
    """The AdamW half of MuonAdamW computes what torch.optim.AdamW computes."""
    torch.manual_seed(2)
    a = torch.nn.Parameter(torch.randn(10, 7))
    b = torch.nn.Parameter(a.detach().clone())
    ours = MuonAdamW([{"params": [a], "weight_decay": 0.1}], lr=3e-3, betas=(0.9, 0.99))
    ref = torch.optim.AdamW([b], lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1, foreach=False)
    for _ in range(5):
        g = torch.randn(10, 7)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


def test_muon_groups_split_matrices_from_embeddings_head_and_gains():
    model = tiny_model()
    cfg = TrainConfig(optimizer="muon", learning_rate=1e-3, muon_lr=0.02)
    groups = muon_param_groups(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for p in groups[0]["params"]]
    assert groups[0]["use_muon"] and all(".h." in n and n.endswith("weight") for n in muon)
    assert len(muon) == 4 * TINY["n_layer"]  # c_attn, attn c_proj, c_fc, mlp c_proj per block
    others = [names[id(p)] for g in groups[1:] for p in g["params"]]
    assert "transformer.wte.weight" in others and not any("h." in n and n.endswith("c_fc.weight") for n in others)
    total = sum(p.numel() for g in groups for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())  # every parameter exactly once

    optimizer = build_optimizer(model, cfg, "cpu")
    set_learning_rate(optimizer, 5e-4)  # half the peak: Muon groups get half of muon_lr
    lrs = sorted(g["lr"] for g in optimizer.param_groups)
    assert lrs[-1] == 0.01 and lrs[0] == 5e-4


def test_muon_trains_a_tiny_model_and_resumes_exactly():
    """Loss goes down; a state_dict round trip continues bit-for-bit."""
    cfg = TrainConfig(optimizer="muon", learning_rate=3e-3, muon_lr=0.02)
    torch.manual_seed(3)
    data = torch.randint(0, TINY["vocab_size"], (8, TINY["block_size"] + 1))
    x, y = data[:, :-1], data[:, 1:]

    def step(model, opt):
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    model = tiny_model()
    opt = build_optimizer(model, cfg, "cpu")
    losses = [step(model, opt) for _ in range(15)]
    assert losses[-1] < losses[0] - 0.5
    clone = tiny_model(seed=9)
    clone.load_state_dict(model.state_dict())
    clone_opt = build_optimizer(clone, cfg, "cpu")
    clone_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if saved and loaded
    for _ in range(3):
        assert step(model, opt) == step(clone, clone_opt)
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)


def test_cpu_uses_fused_adamw_and_it_equals_foreach():
    model = tiny_model()
    fused = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    assert fused.defaults.get("fused") is True  # the fused CPU kernel is what train.py gets
    ref_model = tiny_model()
    ref = torch.optim.AdamW(ref_model.optimizer_groups(0.1), lr=1e-3, betas=(0.9, 0.99), foreach=True)
    torch.manual_seed(4)
    data = torch.randint(0, TINY["vocab_size"], (4, TINY["block_size"] + 1))
    for m, opt in ((model, fused), (ref_model, ref)):
        for _ in range(3):
            _, loss = m(data[:, :-1], data[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)  # same math, different summation order
