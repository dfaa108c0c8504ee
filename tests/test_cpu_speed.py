"""CPU speed features: dtype=auto on CPUs, bf16 autocast, the max_seconds budget, Muon in train.py,
and bench/train_speed.py.

    python -m pytest tests/test_cpu_speed.py -q
"""

import contextlib
import io
import math
import re
import time

import pytest
import torch

from conftest import records, run_script
from model import GPT, GPTConfig
from smallgpt.device import cpu_has_bf16_units, resolve_dtype
from train import TrainConfig, learning_rate_at

TINY_RUN = ["--device=cpu", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4",
            "--eval_iters=2", "--log_interval=1", "--warmup_iters=2"]


def cpuinfo_has_bf16_units() -> bool:
    flags = open("/proc/cpuinfo").read().split()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def test_dtype_auto_on_cpu_follows_the_bf16_units():
    assert cpu_has_bf16_units() == cpuinfo_has_bf16_units()
    expected = torch.bfloat16 if cpu_has_bf16_units() else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32


@pytest.mark.parametrize("isa_cap, keeps_bf16", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_VNNI", False),
                                                  ("AVX512_CORE_BF16", True), ("AVX512_CORE_AMX", True), ("ALL", True)])
def test_a_onednn_isa_cap_below_bf16_turns_the_bf16_units_off(monkeypatch, isa_cap, keeps_bf16):
    # People cap oneDNN to try an older CPU's speed; bf16 would then be emulated, so auto must pick float32.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_cap)
    cpu_has_bf16_units.cache_clear()
    try:
        has_units = cpuinfo_has_bf16_units()
        assert cpu_has_bf16_units() == (has_units and keeps_bf16)
        expected = torch.bfloat16 if has_units and keeps_bf16 else torch.float32
        assert resolve_dtype("auto", torch.device("cpu")) == expected
    finally:  # monkeypatch restores the variable; the next call must read it again
        cpu_has_bf16_units.cache_clear()


def test_bf16_autocast_on_cpu_computes_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=65))
    data = torch.randint(0, 65, (4, 33))
    _, loss32 = model(data[:, :-1], data[:, 1:])
    loss32.backward()
    grads32 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        _, loss16 = model(data[:, :-1], data[:, 1:])
    loss16.backward()
    assert loss16.dtype == torch.float32  # the loss is computed in float32 from bf16 logits
    assert abs(loss16.item() - loss32.item()) < 0.02
    for g32, p in zip(grads32, model.parameters()):
        cosine = (g32 * p.grad).sum() / (g32.norm() * p.grad.norm() + 1e-12)
        assert cosine > 0.98  # bf16 keeps ~3 significant digits; the direction must agree


def test_time_budget_schedule_follows_elapsed_fraction():
    cfg = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_seconds=100.0, max_iters=10**9)
    assert learning_rate_at(4, cfg, elapsed=50.0) == 1e-3 * 5 / 11  # warmup counts iterations
    assert math.isclose(learning_rate_at(500, cfg, elapsed=0.0), 1e-3)
    assert math.isclose(learning_rate_at(500, cfg, elapsed=50.0), 1e-4 + 0.5 * 9e-4)
    assert math.isclose(learning_rate_at(500, cfg, elapsed=100.0), 1e-4)
    assert math.isclose(learning_rate_at(500, cfg, elapsed=500.0), 1e-4)
    iter_cfg = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    assert math.isclose(learning_rate_at(60, iter_cfg, elapsed=1e6), 1e-4 + 0.5 * 9e-4)  # time ignored


@pytest.mark.parametrize("budget", [False, True], ids=["iterations", "time budget"])
def test_warmup_stable_decay_holds_the_peak_then_decays_linearly_where_the_cosine_decays_all_along(budget):
    """lr_decay_fraction=1 is the cosine (the schedule before the key existed); 0.25 holds the peak for the
    first three quarters after warmup, then a straight line to min_lr, which both reach at the end."""
    common = dict(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10)
    common.update(dict(max_seconds=100.0, max_iters=10**9) if budget else dict(max_iters=110))
    cosine, wsd = TrainConfig(**common), TrainConfig(**common, lr_decay_fraction=0.25)
    assert TrainConfig().lr_decay_fraction == 1.0  # the cosine stays the default
    for share in (0.0, 0.3, 0.5, 0.75, 0.8, 0.9, 1.0, 1.5):  # of the way after warmup (or of the budget)
        it, elapsed = (10**6, 100.0 * share) if budget else (10 + round(100 * share), 0.0)
        decayed = min(1.0, share)
        assert math.isclose(learning_rate_at(it, cosine, elapsed),
                            1e-4 + 0.5 * (1 + math.cos(math.pi * decayed)) * 9e-4, abs_tol=1e-12)
        expected = 1e-3 if share <= 0.75 else 1e-3 - (min(1.0, share) - 0.75) / 0.25 * 9e-4
        assert math.isclose(learning_rate_at(it, wsd, elapsed), expected, abs_tol=1e-12), share
    for schedule in (cosine, wsd):  # the warmup is the same
        assert learning_rate_at(4, schedule, 0.0) == 1e-3 * 5 / 11


@pytest.mark.slow
def test_max_seconds_ends_with_evaluation_and_checkpoint(small_char_dataset, tmp_path):
    out = tmp_path / "run"
    started = time.time()
    result = run_script("train.py", f"--dataset={small_char_dataset}", f"--out_dir={out}", *TINY_RUN,
                        "--max_iters=1000000", "--eval_interval=1000000", "--max_seconds=8",
                        "--warmup_iters=0")  # so that the last lr depends on the clock alone
    assert result.returncode == 0, result.stderr
    assert "time budget of 8s spent" in result.stdout
    evals = records(out)
    assert evals[0]["iter"] == 0 and evals[-1]["iter"] > 0  # evaluated at the start and the end
    # the budget holds the start-up and the last evaluation too, counted from the process's start: the
    # last evaluation starts in time to end about when the budget does (its reserve is the evaluations'
    # measured time, so it ends no earlier), and the checkpoint is written right after it. On a loaded
    # machine an evaluation or a step may take longer than measured and end past the budget by that
    # much, so the bounds are on when the last evaluation started, not on the clock alone.
    last_eval_s = float(re.findall(r"\(evaluation ([\d.]+)s\)", result.stdout)[-1])
    assert evals[-1]["elapsed_s"] >= 7.0 and evals[-1]["elapsed_s"] - last_eval_s <= 8.5, (evals[-1], last_eval_s)
    saved_after = (out / "ckpt.pt").stat().st_mtime - started
    assert saved_after - evals[-1]["elapsed_s"] <= 2.0, (saved_after, evals[-1])
    assert evals[-1]["lr"] < 1e-4  # the cosine ran to min_lr (6e-5) with the clock
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == evals[-1]["iter"] and ckpt["elapsed_s"] == pytest.approx(evals[-1]["elapsed_s"], abs=0.5)
    # the start line counts what start-up took (importing torch, the data, the model) out of the budget
    left = re.search(r"^time budget 8s \((\d)s left\), the last evaluation included: ends at about "
                     r"\d\d:\d\d:\d\d$", result.stdout, re.MULTILINE)
    assert left and int(left.group(1)) < 8, result.stdout


def test_a_time_budget_glances_at_the_start_and_evaluates_whole_at_the_end(small_char_dataset, tmp_path):
    """With max_seconds, a new run's first evaluation scores a tenth of eval_iters per split (untrained
    weights score ~ln(vocab) anywhere; a whole one cost ~4% of shakespeare_char_cpu's budget) and the
    last one all of them; without it, the first is whole too."""
    import train

    for budget, first_batches in (("--max_seconds=600", 2), ("--max_seconds=0", 20)):
        batches = [0]  # per evaluation: how many eval batches it ran
        def count(event, state, run):
            if event == "eval_batch":
                batches[-1] += 1
            elif event == "evaluated":
                batches.append(0)
        out = tmp_path / budget[2:].replace("=", "_")
        with contextlib.redirect_stdout(io.StringIO()):
            train.main([f"--dataset={small_char_dataset}", f"--out_dir={out}", *TINY_RUN, "--eval_iters=20",
                        "--eval_interval=3", "--max_iters=3", budget, "--compile=false"], hook=count)
        assert batches[:2] == [2 * first_batches, 2 * 20], (budget, batches)
        assert [r["iter"] for r in records(out)] == [0, 3]


@pytest.mark.slow
def test_a_due_evaluation_that_leaves_no_room_for_the_last_one_is_the_last(small_char_dataset, tmp_path):
    """Evaluations of ~4 s at every iteration (the first, a glance at 1 batch per split, ~2 s), a 9 s
    budget: the one due at ~2 s (plus start-up, 0-2 s) would end at ~6 s and leave no room for
    another, so it is the last, and the run ends within its budget rather than at ~10 s."""
    import train

    def slow_evaluations(event, state, run):
        if event == "eval_batch":  # 2 batches per split: 4 x 1 s per evaluation
            time.sleep(1.0)

    out = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        train.main([f"--dataset={small_char_dataset}", f"--out_dir={out}", *TINY_RUN, "--eval_interval=1",
                    "--max_iters=1000", "--max_seconds=9", "--compile=false"], hook=slow_evaluations)
    evals = records(out)
    assert [r["iter"] for r in evals] == [0, 1], evals
    assert evals[-1]["elapsed_s"] <= 9.0, evals


@pytest.mark.slow
def test_a_resumed_run_ends_within_its_time_budget(small_char_dataset, tmp_path):
    """A 10 s budget whose evaluations take 2 s (1 s for the first, a glance), stopped at ~3 s (as SIGTERM
    would) and resumed: the resumed process keeps room for its last evaluation from the start, as an
    uninterrupted run does, and ends within the budget; not an evaluation later (a resumed process that
    measured no evaluation yet reserved nothing and ended at ~12 s)."""
    import train

    def slow_evaluations(event, state, run):
        if event == "eval_batch":  # 2 batches per split: 4 x 0.5 s per evaluation
            time.sleep(0.5)

    def stop_at_3s(event, state, run):
        slow_evaluations(event, state, run)
        return event == "update" and state.elapsed_s > 3.0

    out = tmp_path / "run"
    args = [f"--dataset={small_char_dataset}", f"--out_dir={out}", *TINY_RUN, "--eval_interval=1000000",
            "--max_iters=1000000", "--max_seconds=10", "--compile=false"]
    with contextlib.redirect_stdout(io.StringIO()):
        train.main(args, hook=stop_at_3s)
        assert torch.load(out / "ckpt.pt", weights_only=True)["elapsed_s"] < 8.0  # stopped, not ended by the budget
        train.main([*args, "--init_from=resume"], hook=slow_evaluations)
    evals = records(out)
    assert [r["iter"] for r in evals][:1] == [0] and len(evals) == 2, evals
    assert evals[-1]["elapsed_s"] <= 11.0, evals  # within the budget, give or take half an evaluation
    assert torch.load(out / "ckpt.pt", weights_only=True)["elapsed_s"] <= 11.0


def test_train_with_muon_saves_and_resumes(small_char_dataset, tmp_path):
    out = tmp_path / "muon"
    common = [f"--dataset={small_char_dataset}", f"--out_dir={out}", *TINY_RUN, "--optimizer=muon",
              "--eval_interval=10"]
    first = run_script("train.py", *common, "--max_iters=10")
    assert first.returncode == 0, first.stderr
    second = run_script("train.py", *common, "--max_iters=20", "--init_from=resume")
    assert second.returncode == 0, second.stderr
    evals = records(out)
    assert [r["iter"] for r in evals] == [0, 10, 20]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert any(g.get("use_muon") for g in ckpt["optimizer"]["param_groups"])


@pytest.mark.slow
def test_bench_prints_interleaved_variants(small_char_dataset):
    result = run_script("bench/train_speed.py", f"--dataset={small_char_dataset}", *TINY_RUN,
                        "--iters=2", "--warmup=1", "--repeats=2",
                        "--variant", "adamw: --optimizer=adamw", "--variant=muon: --optimizer=muon")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines if line.split()[:1] in (["adamw"], ["muon"])}
    assert set(rows) == {"adamw", "muon"}
    assert re.match(r"adamw\s+\d+\.\d+ ", rows["adamw"]) and rows["adamw"].rstrip().endswith("1.00x")  # ms/iter; ratio
    header = next(line for line in lines if "MFU" in line)  # MFU against the peak measured in the same run
    assert re.search(r"\d+\.\d+%", rows["muon"]), (header, rows["muon"])
    bad = run_script("bench/train_speed.py", f"--dataset={small_char_dataset}", "--variant", "no colon here")
    assert bad.returncode == 1 and "bad --variant" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_threads_key_is_applied_and_checked(small_char_dataset, tmp_path):
    bad = run_script("train.py", f"--dataset={small_char_dataset}", "--threads=-1", f"--out_dir={tmp_path}")
    assert bad.returncode == 1 and "threads" in bad.stderr and "Traceback" not in bad.stderr
