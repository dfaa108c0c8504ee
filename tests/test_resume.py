"""Exact resume: N iterations in one run equal the same N split over a stop and `init_from=resume`.

Bitwise on CPU in float32: the losses in metrics.jsonl and every tensor of the final checkpoint
(weights, optimizer moments, RNG and sampler state). Dropout is on, so the dropout RNG must be
restored too. Runs call train.main in this process (a tiny model, ~1 s each); the real-signal path
(SIGTERM to a subprocess) is tested in test_robustness.py.

    python -m pytest tests/test_resume.py -q
"""

import json

import pytest
import torch

import train
from conftest import model_switches, records, switch_id
from smallgpt.checkpoint import load_checkpoint
from smallgpt.errors import UserError

MAX_ITERS = 20


def tiny_args(dataset, out_dir, **overrides) -> list[str]:
    """A 2-layer, 32-wide model with dropout, evaluated every 5 iterations; the schedule is fixed by
    lr_decay_iters so that stopping early does not change the learning rate of any iteration."""
    config = dict(dataset=dataset, out_dir=out_dir, n_layer=2, n_head=2, n_embd=32, block_size=32,
                  batch_size=4, eval_iters=2, eval_interval=5, log_interval=5, dropout=0.1,
                  learning_rate=1e-3, warmup_iters=2, lr_decay_iters=MAX_ITERS, max_iters=MAX_ITERS,
                  device="cpu", dtype="float32", compile=False)
    config.update(overrides)
    return [f"--{key}={value}" for key, value in config.items()]


def read_metrics(out_dir) -> list[dict]:
    """The evaluations in out_dir/metrics.jsonl (without their wall-clock times)."""
    return [{k: r[k] for k in ("iter", "train_loss", "val_loss", "lr")} for r in records(out_dir)]


def assert_same_state(a, b, where="checkpoint"):
    """Recursively equal: tensors with torch.equal (bitwise), everything else with ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def comparable(ckpt: dict) -> dict:
    """The parts of a checkpoint that must not depend on where the run was stopped."""
    return {k: ckpt[k] for k in ("model", "optimizer", "iter_num", "best_val_loss", "rng_per_rank", "sampler")}


def stop_after_update(n: int):
    """train.main's hook that asks to stop once update n is done, as SIGTERM arriving then would."""
    return lambda event, state, run: event == "update" and state.iter_num == n


@pytest.fixture(scope="module")
def reference_run(small_char_dataset, tmp_path_factory):
    """MAX_ITERS iterations in one go: (metrics, final checkpoint)."""
    out = tmp_path_factory.mktemp("reference")
    train.main(tiny_args(small_char_dataset, out))
    return read_metrics(out), load_checkpoint(out)


def test_split_run_is_bitwise_identical_to_one_run(reference_run, small_char_dataset, tmp_path):
    metrics, final = reference_run
    assert [m["iter"] for m in metrics] == [0, 5, 10, 15, 20]
    train.main(tiny_args(small_char_dataset, tmp_path, max_iters=10))
    assert load_checkpoint(tmp_path)["iter_num"] == 10
    train.main(tiny_args(small_char_dataset, tmp_path, init_from="resume"))
    assert read_metrics(tmp_path) == metrics  # appended, each evaluation once, equal floats
    assert_same_state(comparable(load_checkpoint(tmp_path)), comparable(final))


@pytest.mark.parametrize("stop_at, during", [(7, "training"), (10, "the evaluation")])  # between evaluations,
def test_stop_then_resume_is_exact(reference_run, small_char_dataset, tmp_path, capsys, stop_at, during):
    metrics, final = reference_run  # and on an evaluation iteration (the evaluation there is abandoned)
    train.main(tiny_args(small_char_dataset, tmp_path), hook=stop_after_update(stop_at))
    out = capsys.readouterr().out
    assert f"stopped by the hook during {during} at iteration {stop_at}" in out
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["iter_num"] == stop_at  # the checkpoint is where training stopped
    # a stop on an evaluation iteration saves before evaluating; the resumed run evaluates it
    assert ckpt["evaluated_at"] == (stop_at - 1) // 5 * 5
    train.main(tiny_args(small_char_dataset, tmp_path, init_from="resume"))
    assert read_metrics(tmp_path) == metrics
    assert_same_state(comparable(load_checkpoint(tmp_path)), comparable(final))


@pytest.mark.slow
@pytest.mark.parametrize("switch", model_switches(), ids=switch_id)
def test_every_switch_resumes_bitwise(small_char_dataset, tmp_path, switch):
    """Each switch of GPTConfig (enumerated from its fields): 4 updates equal 2 + resume 2, bitwise."""
    config = dict(max_iters=4, lr_decay_iters=4, eval_interval=2, eval_iters=1, log_interval=2,
                  **{k: str(v).lower() if isinstance(v, bool) else v for k, v in switch.items()})
    train.main(tiny_args(small_char_dataset, tmp_path / "one", **config))
    train.main(tiny_args(small_char_dataset, tmp_path / "split", **{**config, "max_iters": 2}))
    train.main(tiny_args(small_char_dataset, tmp_path / "split", **{**config, "init_from": "resume"}))
    one, split = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "split")
    assert {k: one["model_config"][k] for k in switch} == switch  # the switch is in the model that trained
    assert read_metrics(tmp_path / "split") == read_metrics(tmp_path / "one")
    assert_same_state(comparable(split), comparable(one))


def test_resume_refuses_a_changed_model_shape(small_char_dataset, tmp_path):
    train.main(tiny_args(small_char_dataset, tmp_path, max_iters=5))
    before = (tmp_path / "ckpt.pt").read_bytes()
    with pytest.raises(UserError, match=r"cannot resume .*n_embd: 32 -> 64"):
        train.main(tiny_args(small_char_dataset, tmp_path, init_from="resume", n_embd=64))
    with pytest.raises(UserError, match=r"cannot resume .*n_layer: 2 -> 3"):
        train.main(tiny_args(small_char_dataset, tmp_path, init_from="resume", n_layer=3))
    assert (tmp_path / "ckpt.pt").read_bytes() == before


def test_resume_allows_schedule_changes(small_char_dataset, tmp_path):
    train.main(tiny_args(small_char_dataset, tmp_path, max_iters=5))
    train.main(tiny_args(small_char_dataset, tmp_path, init_from="resume", max_iters=9, eval_interval=3,
                         learning_rate=5e-4, eval_iters=1, log_interval=1, batch_size=2))
    assert load_checkpoint(tmp_path)["iter_num"] == 9
    assert [m["iter"] for m in read_metrics(tmp_path)] == [0, 5, 6, 9]


def test_eval_only_on_a_checkpoint_evaluates_and_changes_nothing(small_char_dataset, tmp_path, capsys):
    train.main(tiny_args(small_char_dataset, tmp_path, max_iters=5))
    files = {name: (tmp_path / name).read_bytes() for name in ("ckpt.pt", "metrics.jsonl", "config.json")}
    capsys.readouterr()
    train.main(tiny_args(small_char_dataset, tmp_path, init_from="resume", eval_only=True))
    out = capsys.readouterr().out
    val_loss = read_metrics(tmp_path)[-1]["val_loss"]
    assert "step 5: train loss" in out and f"val loss {val_loss:.4f}" in out  # the same weights, the same batches
    assert {name: (tmp_path / name).read_bytes() for name in files} == files


def test_resume_drops_metrics_written_after_the_checkpoint(small_char_dataset, tmp_path):
    """A run that crashed after logging iteration 10 but before saving it must not leave a duplicate."""
    train.main(tiny_args(small_char_dataset, tmp_path, max_iters=5))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iter": 10, "train_loss": 9.0, "val_loss": 9.0, "lr": 0.0}) + "\n")
        f.write('{"iter": 15, "train_lo')  # cut short by the crash
    train.main(tiny_args(small_char_dataset, tmp_path, init_from="resume", max_iters=10))
    metrics = read_metrics(tmp_path)
    assert [m["iter"] for m in metrics] == [0, 5, 10]
    assert metrics[-1]["val_loss"] != 9.0


def test_scratch_run_refuses_to_replace_a_checkpoint(small_char_dataset, tmp_path, capsys):
    train.main(tiny_args(small_char_dataset, tmp_path, max_iters=5))
    before = (tmp_path / "ckpt.pt").read_bytes()
    metrics_before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match="already exists: continue that run with --init_from=resume.*--overwrite=true"):
        train.main(tiny_args(small_char_dataset, tmp_path, max_iters=5))
    # a failing start with --overwrite=true does not touch the old run either
    with pytest.raises(UserError, match="invalid model config"):
        train.main(tiny_args(small_char_dataset, tmp_path, max_iters=5, n_head=3, overwrite=True))
    assert (tmp_path / "ckpt.pt").read_bytes() == before
    assert (tmp_path / "metrics.jsonl").read_text() == metrics_before
    train.main(tiny_args(small_char_dataset, tmp_path, max_iters=5, overwrite=True, seed=7))
    assert (tmp_path / "ckpt.pt").read_bytes() != before
    assert [m["iter"] for m in read_metrics(tmp_path)] == [0, 5]


@pytest.mark.slow
def test_ddp_split_run_is_bitwise_identical_to_one_run(small_char_dataset, tmp_path):
    """Two gloo processes with dropout: each rank's RNG is saved and restored, so 12 iterations equal
    6 + resume 6 bitwise (a sum of two numbers is the same in either order, so gloo is exact here)."""
    import subprocess

    from conftest import REPO_ROOT, torchrun_command

    def torchrun(out_dir, **overrides):
        config = dict(eval_interval=6, lr_decay_iters=12, max_iters=12, gradient_accumulation_steps=2)
        cmd, env = torchrun_command("train.py", *tiny_args(small_char_dataset, out_dir, **{**config, **overrides}))
        result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "2 process(es)" in result.stdout

    torchrun(tmp_path / "one")
    torchrun(tmp_path / "split", max_iters=6)
    torchrun(tmp_path / "split", init_from="resume")
    one, split = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "split")
    assert len(one["rng_per_rank"]) == 2
    assert read_metrics(tmp_path / "split") == read_metrics(tmp_path / "one")
    assert_same_state(comparable(split), comparable(one))
