"""bench/gpu.py, the one command for a CUDA machine: its arguments, and its one-line answer where there is no GPU.

    python -m pytest tests/test_gpu_bench.py -q

Its CUDA steps are the GPU tests' own (tests/test_gpu.py) and train.py's; here only what a CPU can check.
"""

import subprocess

import pytest
import torch

from conftest import REPO_ROOT, run_script


def test_help_names_every_step():
    result = run_script("bench/gpu.py", "--help")
    assert result.returncode == 0, result.stderr
    assert all(step in result.stdout for step in ("tests", "char", "gpt2", "xl"))


@pytest.mark.parametrize("steps", ["--steps=foo", "--steps=tests,nope", "--steps="])
def test_an_unknown_step_is_one_line(steps):
    result = run_script("bench/gpu.py", steps)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "choose from tests, char, gpt2, xl" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: the refusal is for CPUs")
def test_without_cuda_it_says_so_in_one_line_and_writes_nothing(tmp_path):
    result = subprocess.run(["bash", str(REPO_ROOT / "bench" / "gpu.sh"), "--out=table.md"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == ["bench/gpu.py: no CUDA GPU here (torch.cuda.is_available() is "
                                                  "False); nothing to measure"]
    assert list(tmp_path.iterdir()) == []
