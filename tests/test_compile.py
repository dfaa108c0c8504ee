"""torch.compile: one graph for every architecture switch, and compiled training equals eager.

A graph break splits the model into pieces that run eagerly in between, which is what once made
`compile=true` slower than eager (a Linear that asked torch for its thread count: 13 graphs, 12
breaks). Every switch of GPTConfig is enumerated from its fields (conftest.model_switches). `fullgraph=True` turns any break into an error; the aot_eager
backend traces forward and backward (AOTAutograd) without generating code, so the check is quick.

    python -m pytest tests/test_compile.py -q
"""

import os
import subprocess
import sys

import pytest
import torch
from conftest import model_switches, switch_id
from test_resume import read_metrics, tiny_args
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

import train
from model import CPU_MATMUL_ATTENTION_MAX_T, GPT, GPTConfig
from smallgpt.checkpoint import load_checkpoint

ALL_MODERN = {"pos_embedding": "rope", "norm": "rmsnorm", "qk_norm": True, "mlp": "relu2", "tie_embeddings": False,
              "logit_softcap": 30.0, "bias": False}
SWITCHES = [{}, *model_switches(), ALL_MODERN]  # GPT-2, every switch of GPTConfig alone, and many together


@pytest.mark.slow
@pytest.mark.parametrize("switch", SWITCHES, ids=switch_id)
def test_training_forward_and_backward_are_one_graph(switch):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, **switch))
    x = torch.randint(0, 65, (2, 16))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x, x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # raises on any break
    _, loss = compiled(x, x)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_activation_checkpointing_is_one_graph_and_the_same_gradients():
    """Blocks recomputed in backward (torch.utils.checkpoint) trace into the same single graph, and give
    eager checkpointing's loss and gradients (dropout on: the recompute replays the masks)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, dropout=0.1))
    model.activation_checkpointing = True
    x = torch.randint(0, 65, (2, 16))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x, x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    results = []
    for run in (model, torch.compile(model, backend="aot_eager", fullgraph=True)):
        model.zero_grad()
        torch.manual_seed(1)
        _, loss = run(x, x)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(b, a)


def test_eval_forward_is_one_graph_too():
    """Evaluations run the compiled model in eval mode (no dropout) and without gradients."""
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, dropout=0.1)).eval()
    x = torch.randint(0, 65, (2, 16))
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend="aot_eager", fullgraph=True)(x, x)


@pytest.mark.slow
@pytest.mark.parametrize("block_size", [16, CPU_MATMUL_ATTENTION_MAX_T + 16])
def test_cpu_bf16_autocast_training_is_one_graph(block_size):
    """bf16 autocast on a CPU (dtype=auto there on CPUs with bf16 units), with attention as matmuls
    around a float32 softmax (short blocks) or switched back to float32 (longer ones) inside it
    (model.causal_attention), still traces into one graph."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=65, **ALL_MODERN))
    x = torch.randint(0, 65, (2, block_size))
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(model)(x, x)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        _, loss = torch.compile(model, backend="aot_eager", fullgraph=True)(x, x)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.slow
def test_compiled_training_equals_eager_over_20_steps(small_char_dataset, tmp_path):
    """train.py with compile=true (inductor) against compile=false: the same 20 updates, losses and
    weights equal within float tolerance (the kernels differ, so not bitwise)."""
    common = dict(max_iters=20, eval_interval=10, dropout=0.0, lr_decay_iters=20)
    train.main(tiny_args(small_char_dataset, tmp_path / "eager", compile="false", **common))
    train.main(tiny_args(small_char_dataset, tmp_path / "compiled", compile="true", **common))
    eager, compiled = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")
    assert [m["iter"] for m in compiled] == [0, 10, 20]
    for a, b in zip(eager, compiled):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=2e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=2e-4)
    assert eager[-1]["val_loss"] < eager[0]["val_loss"] - 0.1  # it trained: the comparison means something
    weights_eager, weights_compiled = load_checkpoint(tmp_path / "eager")["model"], load_checkpoint(tmp_path / "compiled")["model"]
    assert weights_eager.keys() == weights_compiled.keys()  # the uncompiled module is saved: no _orig_mod.
    for key, value in weights_eager.items():
        torch.testing.assert_close(weights_compiled[key], value, rtol=1e-3, atol=2e-4)


@pytest.mark.slow
def test_compiled_cpu_training_repeats_bitwise(small_char_dataset, tmp_path):
    """The same compiled run twice on 2 threads: the same weights, bitwise (inductor's CPU code once
    summed the embedding's gradient rows with atomics, in a different order every run)."""
    common = dict(max_iters=4, eval_interval=4, dropout=0.0, batch_size=16, compile="true", threads=2)
    for name in ("first", "second"):
        train.main(tiny_args(small_char_dataset, tmp_path / name, **common))
    first, second = load_checkpoint(tmp_path / "first")["model"], load_checkpoint(tmp_path / "second")["model"]
    assert all(torch.equal(first[key], second[key]) for key in first), "compiled training differs between runs"


@pytest.mark.parametrize("capability, cache_dir_set", [("avx2", None), ("", None), ("avx2", "/somewhere/else")])
def test_an_emulated_cpu_capability_compiles_into_a_cache_of_its_own(capability, cache_dir_set, tmp_path):
    """Inductor generates kernels for ATEN_CPU_CAPABILITY without keying its cache on it: AVX2 kernels
    cached by an emulated run and loaded by a native one corrupt the heap. A process with the variable
    set compiles into a cache named after it; one without it, or with its own cache named, is left alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "TORCHINDUCTOR_CACHE_DIR")}
    env.update({"ATEN_CPU_CAPABILITY": capability} if capability else {})
    env.update({"TORCHINDUCTOR_CACHE_DIR": cache_dir_set} if cache_dir_set else {})
    code = ("import os, torch; from smallgpt.device import should_compile; "
            "print(should_compile('true', torch.device('cpu')), os.environ.get('TORCHINDUCTOR_CACHE_DIR'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    out = out.stdout.split()
    expected = cache_dir_set or (f"{default_cache_dir()}_{capability}" if capability else "None")
    assert out == ["True", expected]
