"""Batches stated in tokens: every shipped config shares its update over 1, 2, 4 or 8 processes.

`tokens_per_update` (or gradient_accumulation_steps x batch_size sequences) is the global batch.
Each process takes a contiguous share of the same drawn sequences (shares differ by at most one),
in micro-batches of at most batch_size, and weights each micro-batch's loss by its share of the
global batch, so the update is the same whatever the number of processes (checked against one
process with real gloo runs, also for shares of unequal size).

    python -m pytest tests/test_batching.py -q
"""

import subprocess
import sys

import pytest
import torch
from test_hf import gpt2_dataset  # noqa: F401  (a fixture: GPT-2 BPE data for the finetune config)
from test_train import TINY, read_metrics

import train
from conftest import REPO_ROOT, torchrun_command
from smallgpt.checkpoint import load_checkpoint
from smallgpt.cli import build_config, read_overrides
from smallgpt.data import plan_batches
from smallgpt.errors import UserError

CONFIGS = sorted((REPO_ROOT / "config").glob("*.toml"))


def config_of(path, *argv) -> train.TrainConfig:
    """A shipped config as train.py reads it (without fetching pretrained weights for init_from)."""
    return build_config(train.TrainConfig, read_overrides(train.TrainConfig, [str(path), *argv]))


def plans_of(cfg, world: int) -> list:
    """Each rank's share of an update, as train.py plans it for cfg on `world` processes."""
    block_size = cfg.model.block_size
    global_seqs = cfg.tokens_per_update // block_size or cfg.gradient_accumulation_steps * cfg.batch_size
    return [plan_batches(global_seqs, cfg.batch_size, block_size, rank, world) for rank in range(world)]


@pytest.mark.parametrize("world", [1, 2, 4, 8])
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_divides_over_1_2_4_8_processes(path, world):
    cfg = config_of(path)
    plans = plans_of(cfg, world)
    global_seqs = plans[0].global_seqs
    assert plans[0].tokens_per_update == global_seqs * cfg.model.block_size
    assert [(p.start, p.stop) for p in plans] == [(r * global_seqs // world, (r + 1) * global_seqs // world)
                                                 for r in range(world)]  # contiguous, covering every row
    shares = [p.stop - p.start for p in plans]
    assert sum(shares) == global_seqs and max(shares) - min(shares) <= 1
    for plan, share in zip(plans, shares):
        assert sum(plan.micro_sizes) == share and max(plan.micro_sizes) <= cfg.batch_size
    # the weights of all micro-batches of all processes add up to one mean over the global batch
    # (DDP averages the processes' gradients: each micro-batch counts 1 / (divisor x world))
    total = sum(1 / (p.loss_divisor(m) * world) for p in plans for m in p.micro_sizes)
    assert total == pytest.approx(1.0)


def test_tokens_per_update_sets_the_batch_and_accumulation():
    cfg = config_of(CONFIGS[0], "--tokens_per_update=4096", "--block_size=64", "--batch_size=16")
    plan = plans_of(cfg, 1)[0]
    assert (plan.global_seqs, plan.micro_sizes) == (64, [16, 16, 16, 16])
    plan = plans_of(cfg, 8)[1]  # 8 each: one micro-batch smaller than batch_size
    assert (plan.start, plan.stop, plan.micro_sizes) == (8, 16, [8])


@pytest.mark.slow
def test_a_batch_that_cannot_be_shared_is_one_line(small_char_dataset, tmp_path):
    cfg = config_of(CONFIGS[0], "--tokens_per_update=128", "--block_size=64")
    with pytest.raises(UserError, match=r"2 sequence\(s\) cannot be shared by 4 processes.*tokens_per_update"):
        plans_of(cfg, 4)
    with pytest.raises(UserError, match="not a multiple of block_size 64"):
        train.main([f"--dataset={small_char_dataset}", f"--out_dir={tmp_path}", "--tokens_per_update=100",
                    "--block_size=64"])
    assert not (tmp_path / "ckpt.pt").exists()


def torchrun(*args, nproc=2):
    cmd, env = torchrun_command("train.py", *args, nproc=nproc)
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_unequal_shares_under_ddp_match_one_process(small_char_dataset, tmp_path):
    """3 sequences on 2 gloo processes (1 + 2) give the update of one process with all 3; 3
    evaluation batches (2 + 1) the same losses (every rank makes as many stop checks, or gloo hangs)."""
    common = [f"--dataset={small_char_dataset}", *TINY, "--max_iters=4", "--eval_interval=4",
              "--tokens_per_update=96", "--batch_size=2", "--eval_iters=3"]  # 3 sequences of 32
    single = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *common, f"--out_dir={tmp_path / 'one'}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    assert "micro-batch(es) of 2+1" in single.stdout
    ddp = torchrun(*common, f"--out_dir={tmp_path / 'two'}")
    assert "2 process(es)" in ddp.stdout
    one, two = load_checkpoint(tmp_path / "one")["model"], load_checkpoint(tmp_path / "two")["model"]
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5)
    for a, b in zip(read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two"), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-4)


def shipped_sequences(cfg) -> int:
    """The sequences of one update as a shipped config states it."""
    return cfg.tokens_per_update // cfg.model.block_size or cfg.gradient_accumulation_steps * cfg.batch_size


def shipped_config_overrides(path, small_char_dataset, tmp_path, request) -> list[str]:
    """What a CPU test must change in a shipped config: the dataset (any will do for a fresh model;
    GPT-2 BPE and a tiny local GPT-2 folder for the finetune), a tiny model, a block of 32 (and so the
    tokens of an update: the same sequences per update, of 32 tokens), two updates, a checkpoint at the
    end. Everything else stays: sequences per update, micro-batch, eval_iters, optimizer, compile, parallel."""
    cfg = config_of(path)
    # (a checkpoint whatever the val loss did in two updates: configs that save only on improvement may not)
    args = ["--device=cpu", "--block_size=32", "--max_iters=2", "--eval_interval=2", "--always_save_checkpoint=true"]
    if cfg.tokens_per_update:
        args.append(f"--tokens_per_update={shipped_sequences(cfg) * 32}")
    if cfg.init_from == "scratch":
        return [*args, f"--dataset={small_char_dataset}", "--n_layer=1", "--n_head=2", "--n_embd=16"]
    from test_hf import save_hf_folder, tiny_hf_model

    folder = save_hf_folder(tiny_hf_model(vocab_size=50257, n_positions=64), tmp_path / "gpt2", "safetensors")
    return [*args, f"--dataset={request.getfixturevalue('gpt2_dataset')}", f"--init_from={folder}"]


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_runs_under_two_processes(path, small_char_dataset, tmp_path, request):
    """Each config/*.toml under `torchrun --nproc_per_node=2` (gloo), with only the model made tiny,
    the block 32 tokens and the run two updates long, so that a CPU test can afford it; the FSDP ones
    (gpt2_xl) sharded."""
    cfg = config_of(path)
    result = torchrun(str(path), *shipped_config_overrides(path, small_char_dataset, tmp_path, request),
                      f"--out_dir={tmp_path / 'run'}")
    seqs = shipped_sequences(cfg)
    assert "2 process(es)" in result.stdout and f"{seqs} sequences x 32 = {seqs * 32:,}" in result.stdout
    assert (", fsdp" in result.stdout) == (cfg.parallel == "fsdp")
    assert f"per process {seqs // 2} sequences" in result.stdout
    assert "done: " in result.stdout and load_checkpoint(tmp_path / "run")["iter_num"] == 2
