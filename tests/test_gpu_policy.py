"""The GPU decisions, checked on any machine: CUDA's answers are faked where a CPU cannot give them.

  * dtype=auto: bfloat16 from compute capability 8.0 (Ampere) on, float16 with a GradScaler below
    it (torch.cuda.is_bf16_supported() also says yes there, where bf16 is emulated); an explicit
    bfloat16 on such a GPU is one line
  * the data-sheet peaks: H100 PCIe is not taken for an H100 SXM, float32 (TF32) is half
  * MFU divides the global batch's FLOPs by the peak of ALL the devices (world size x one peak),
    and the logged figure (training line and metrics.jsonl) is tokens/s x FLOPs per token / peak,
    timed without the first update
  * a resumed checkpoint is read onto the CPU (its RNG states must stay CPU tensors)

    python -m pytest tests/test_gpu_policy.py -q
"""

import pytest
import torch
from test_resume import tiny_args

import train
from conftest import records, training_line_fields
from model import GPT, GPTConfig
from smallgpt import device
from smallgpt.checkpoint import load_checkpoint
from smallgpt.errors import UserError


def fake_gpu(monkeypatch, name: str, capability: tuple[int, int]) -> torch.device:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what torch says on a V100 too
    return torch.device("cuda")


@pytest.mark.parametrize("name, capability, expected", [
    ("Tesla V100-SXM2-16GB", (7, 0), torch.float16), ("Tesla T4", (7, 5), torch.float16),
    ("NVIDIA A100-SXM4-80GB", (8, 0), torch.bfloat16), ("NVIDIA H100 80GB HBM3", (9, 0), torch.bfloat16)])
def test_dtype_auto_follows_the_compute_capability(monkeypatch, name, capability, expected):
    gpu = fake_gpu(monkeypatch, name, capability)
    assert device.resolve_dtype("auto", gpu) == expected
    assert device.resolve_dtype("float16", gpu) == torch.float16
    assert device.inference_dtype("auto", gpu) == expected  # sampling on a GPU: the same policy


def test_explicit_bfloat16_on_a_gpu_without_bf16_tensor_cores_is_one_line(monkeypatch):
    gpu = fake_gpu(monkeypatch, "Tesla V100-SXM2-16GB", (7, 0))
    with pytest.raises(UserError, match=r"V100.*no bfloat16 tensor cores.*--dtype=float16"):
        device.resolve_dtype("bfloat16", gpu)


@pytest.mark.parametrize("name, dtype, peak", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989e12), ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
    ("NVIDIA H200", torch.float16, 989e12), ("NVIDIA A100-SXM4-40GB", torch.float32, 156e12),
    ("Some Future GPU", torch.bfloat16, None)])
def test_peaks_come_from_the_data_sheets(monkeypatch, name, dtype, peak):
    gpu = fake_gpu(monkeypatch, name, (9, 0))
    assert device.peak_flops(gpu, dtype) == peak
    assert device.peak_flops(torch.device("cpu"), dtype) is None


@pytest.mark.parametrize("world_size", [1, 2, 8])
def test_mfu_counts_the_peak_of_every_process(monkeypatch, world_size):
    gpu = fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", (9, 0))
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=100))
    global_flops = model.flops_per_token(64) * 64 * 64  # the whole update of 64 sequences, over all processes
    assert device.mfu(global_flops, 0.5, gpu, torch.bfloat16, world_size) == \
        pytest.approx(global_flops / 0.5 / (989e12 * world_size))
    assert device.mfu(global_flops, 0.5, torch.device("cpu"), torch.bfloat16, world_size) is None  # no peak


def test_logged_mfu_is_tokens_per_second_times_flops_per_token_over_the_peak(small_char_dataset, tmp_path,
                                                                             monkeypatch, capsys):
    peak = 5e9
    monkeypatch.setattr(device, "peak_flops", lambda d, dt: peak)  # a CPU with a data sheet
    train.main(tiny_args(small_char_dataset, tmp_path, max_iters=6, log_interval=3, eval_interval=100))
    out = capsys.readouterr().out
    flops_per_token = GPT(GPTConfig(**load_checkpoint(tmp_path)["model_config"])).flops_per_token(32)
    lines = [training_line_fields(line) for line in out.splitlines() if line.startswith("iter ")]
    assert [line["iter"] for line in lines] == ["3/6", "6/6"], out  # the first update (compilation) is not timed
    for line, record in zip(lines, records(tmp_path, "train"), strict=True):
        tokens_per_s = float(line["tok/s"].replace(",", ""))
        expected = 100 * tokens_per_s * flops_per_token / peak
        assert float(line["mfu"].removesuffix("%")) == pytest.approx(expected, rel=0.01, abs=0.06)
        assert 100 * record["mfu"] == pytest.approx(expected, rel=0.01, abs=0.06)


def test_a_resumed_checkpoint_is_read_onto_the_cpu(small_char_dataset, tmp_path, monkeypatch):
    """map_location=device would move the saved RNG states onto a GPU, where torch.set_rng_state
    refuses them; the optimizer's load_state_dict moves its moments to the parameters' device."""
    train.main(tiny_args(small_char_dataset, tmp_path, max_iters=5))
    asked = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **kw: asked.append(kw.get("map_location")) or real(f, *a, **kw))
    train.main(tiny_args(small_char_dataset, tmp_path, init_from="resume", max_iters=6))
    assert asked == ["cpu"]
