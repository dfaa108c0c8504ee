"""The GPU path: mixed-precision training steps, compile, resume and sampling on CUDA, DDP and FSDP over NCCL,
dropout under activation checkpointing around compiled blocks.

Every test here needs a CUDA GPU and is skipped, with that reason printed, where there is none (CI
runs on CPUs). On a GPU machine:

    python -m pytest tests/test_gpu.py -q          # the DDP test also needs 2+ GPUs
"""

import os
import subprocess
import sys

import pytest
import torch
from test_resume import assert_same_state, comparable, read_metrics, tiny_args

import train
from conftest import REPO_ROOT, run_script
from model import GPT, GPTConfig
from smallgpt.checkpoint import load_checkpoint
from smallgpt.device import cuda_has_bf16_units, resolve_dtype

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none found)")


def gpu_args(dataset, out_dir, **overrides):
    return tiny_args(dataset, out_dir, **{"device": "cuda", "dtype": "auto", "compile": "false", **overrides})


def test_dtype_auto_picks_bf16_on_ampere_and_newer_else_fp16():
    expected = torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16
    assert resolve_dtype("auto", torch.device("cuda")) == expected == (
        torch.bfloat16 if cuda_has_bf16_units(torch.device("cuda")) else torch.float16)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_training_learns(small_char_dataset, tmp_path, dtype):
    if dtype == "bfloat16" and not cuda_has_bf16_units(torch.device("cuda")):
        pytest.skip("this GPU has no bf16 tensor cores (compute capability < 8.0)")
    train.main(gpu_args(small_char_dataset, tmp_path, dtype=dtype, max_iters=30, eval_interval=30,
                        learning_rate=3e-3, dropout=0.0))
    metrics = read_metrics(tmp_path)
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 0.3
    ckpt = load_checkpoint(tmp_path)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values())  # master weights stay float32
    if dtype == "float16":  # the gradient scaler ran and is saved for resume
        assert ckpt["scaler"]["scale"] > 0


def test_compiled_training_on_gpu_matches_eager(small_char_dataset, tmp_path):
    common = dict(max_iters=20, eval_interval=10, dropout=0.0, dtype="float32")
    train.main(gpu_args(small_char_dataset, tmp_path / "eager", compile="false", **common))
    train.main(gpu_args(small_char_dataset, tmp_path / "compiled", compile="true", **common))
    for a, b in zip(read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=2e-3)


def test_resume_on_gpu_is_exact(small_char_dataset, tmp_path):
    """The checkpoint loads on the CPU (RNG states stay CPU tensors); a split run equals one run."""
    train.main(gpu_args(small_char_dataset, tmp_path / "one", dtype="float32"))
    train.main(gpu_args(small_char_dataset, tmp_path / "split", dtype="float32", max_iters=10))
    train.main(gpu_args(small_char_dataset, tmp_path / "split", dtype="float32", init_from="resume", max_iters=20))
    assert read_metrics(tmp_path / "split") == read_metrics(tmp_path / "one")
    assert_same_state(comparable(load_checkpoint(tmp_path / "split")), comparable(load_checkpoint(tmp_path / "one")))
    ckpt = load_checkpoint(tmp_path / "split")
    assert "cuda" in ckpt["rng_per_rank"][0] and ckpt["rng_per_rank"][0]["cuda"].device.type == "cpu"


def test_optimizer_step_counts_stay_on_the_cpu_after_resume(small_char_dataset, tmp_path):
    """Muon/AdamW keep `step` as a CPU tensor: reading it per parameter costs no device sync."""
    train.main(gpu_args(small_char_dataset, tmp_path, optimizer="muon", max_iters=5))
    states = []

    def optimizer_state_at_the_first_event(event, state, run):  # the resumed run, before any update
        states.append(list(run.optimizer.state.values()))
        return True  # stop

    train.main(gpu_args(small_char_dataset, tmp_path, optimizer="muon", init_from="resume", max_iters=10),
               hook=optimizer_state_at_the_first_event)
    steps = [s["step"] for s in states[0] if "step" in s]
    assert steps and all(s.device.type == "cpu" for s in steps)
    moments = [s["exp_avg"] for s in states[0] if "exp_avg" in s]
    assert moments and all(m.device.type == "cuda" for m in moments)


def test_sampling_on_gpu(small_char_dataset, tmp_path):
    train.main(gpu_args(small_char_dataset, tmp_path, max_iters=5))
    result = run_script("sample.py", f"--out_dir={tmp_path}", "--device=cuda", "--max_new_tokens=50",
                        "--start=ROMEO:", "--temperature=0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) > 50


def test_kv_cache_matches_recompute_on_gpu():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=65)).cuda().eval()
    prompt = torch.randint(0, 65, (2, 5), device="cuda")
    cached = model.generate(prompt, 40, temperature=0)
    recomputed = model.generate(prompt, 40, temperature=0, use_cache=False)
    assert torch.equal(cached, recomputed)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 or more CUDA GPUs")
def test_ddp_over_nccl_matches_one_gpu(small_char_dataset, tmp_path):
    common = [*gpu_args(small_char_dataset, tmp_path, dtype="float32", dropout=0.0, max_iters=6, eval_interval=6,
                        gradient_accumulation_steps=2)]
    common = [a for a in common if not a.startswith("--out_dir=")]
    one = run_script("train.py", *common, f"--out_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(REPO_ROOT / "train.py"), *common, f"--out_dir={tmp_path / 'two'}"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "one")["model"], load_checkpoint(tmp_path / "two")["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)


def training_with_compiled_pieces(checkpointing: bool, steps: int = 2) -> list:
    """(loss, gradients) of `steps` forward/backward passes of a model with dropout compiled block by block
    (GPT.compile_pieces, as under FSDP), on CUDA, the same weights, data and seeds whatever `checkpointing`."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=65, dropout=0.1)).cuda()
    model.activation_checkpointing = checkpointing
    model.compile_pieces()
    x = torch.randint(0, 65, (4, 32), generator=torch.Generator().manual_seed(2)).cuda()
    results = []
    for step in range(steps):
        torch.manual_seed(10 + step)
        _, loss = model(x, x)
        loss.backward()
        results.append((loss.detach().clone(), [p.grad.clone() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    return results


def test_checkpointing_around_compiled_blocks_replays_their_dropout_masks():
    """Under FSDP each block is compiled alone and torch.utils.checkpoint (use_reentrant=False) runs
    eagerly around it: the recompute in backward calls the compiled block again, whose dropout draws
    its seeds from CUDA's generator; checkpoint restores the generator first, so the masks are the
    forward's and the gradients are plain training's (with other masks they differ by ~0.07, as a CPU
    run with preserve_rng_state=False shows)."""
    plain, checkpointed = training_with_compiled_pieces(False), training_with_compiled_pieces(True)
    for (loss, grads), (loss_ckpt, grads_ckpt) in zip(plain, checkpointed):
        assert torch.equal(loss_ckpt, loss)  # the same forward, the same masks
        for a, b in zip(grads, grads_ckpt):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert not torch.equal(plain[0][0], plain[1][0])  # other seeds, other masks: dropout is at work


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 or more CUDA GPUs")
def test_fsdp_over_nccl_in_bf16_compiled_matches_one_gpu(small_char_dataset, tmp_path):
    """FSDP on 2 GPUs, bf16 (MixedPrecisionPolicy), compiled piece by piece, one reduce-scatter per
    update: its 6 updates differ from one GPU's by under 3% of their size (tests/test_fsdp.py's bf16 test)."""
    common = [*gpu_args(small_char_dataset, tmp_path, dtype="bfloat16", compile="true", dropout=0.0, max_iters=6,
                        eval_interval=6, gradient_accumulation_steps=4, n_layer=4, n_head=4, n_embd=256)]
    common = [a for a in common if not a.startswith("--out_dir=")]
    one = run_script("train.py", *common, f"--out_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    fsdp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO_ROOT / "train.py"), *common, "--parallel=fsdp", "--fsdp_sync_once=true",
                           f"--out_dir={tmp_path / 'two'}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    torch.manual_seed(a["train_config"]["seed"])
    first = GPT(GPTConfig(**a["model_config"])).state_dict()
    moved = sum((a["model"][k] - first[k]).square().sum() for k in first)
    apart = sum((b["model"][k] - a["model"][k]).square().sum() for k in first)
    assert (apart / moved).sqrt() < 0.03, float((apart / moved).sqrt())
