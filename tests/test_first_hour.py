"""The first hour (issue 16): what train.py tells a new user while and after it runs.

  * training lines read `iter N/max_iters: ..., eta T`; the ETA counts the updates and evaluations
    still to do, and with max_seconds it follows the time budget (or max_iters, if that comes first)
  * an evaluation in a log file (stdout not a terminal) shows plain progress lines, without '\\r',
    when it is slow, and none when it is quick
  * on a CPU, a model whose updates or evaluations will be slow gets one warning line first, with
    the expected times and the config keys to lower; a tiny model gets none
  * every run ends with one line saying which iteration out_dir/ckpt.pt holds and why, also when
    always_save_checkpoint=false kept an earlier one
  * `--eval_only=true --out_dir=RUN` evaluates RUN's checkpoint without --init_from=resume and
    writes nothing into RUN
  * `--version` prints one version line and exits 0; `--help` lists --debug
  * under DDP (slow: two gloo processes) a time budget neither hangs the ETA nor the saves, and the
    training lines show a mean loss, not world_size times it

Runs call train.main in this process with the tiny model of test_resume.py (~1 s each).

    python -m pytest tests/test_first_hour.py -q
"""

import contextlib
import io
import math
import platform
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from test_resume import MAX_ITERS, read_metrics, tiny_args

import train
from conftest import REPO_ROOT, records, run_script, torchrun_command, training_line_fields
from smallgpt import progress, report
from smallgpt.checkpoint import load_checkpoint

ETA = r"(\?|\d+s|\d+m\d\ds|\d+h\d\dm)"  # report.format_seconds


def seconds_of(text: str) -> float:
    """The seconds a report.format_seconds text stands for ("45s", "3m07s", "2h05m")."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert match and text, text
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return 3600 * hours + 60 * minutes + seconds


def main_output(argv: list[str]) -> str:
    """train.main(argv); what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train.main(argv)
    return printed.getvalue()


@pytest.fixture(scope="module")
def tiny_run(small_char_dataset, tmp_path_factory) -> tuple[Path, str]:
    """test_resume.py's tiny run: MAX_ITERS iterations, a line every 5, evaluations every 5."""
    out = tmp_path_factory.mktemp("tiny")
    return out, main_output(tiny_args(small_char_dataset, out))


# ----------------------------------------------------------------------------- training lines and ETA


def test_training_lines_show_iteration_of_max_metrics_and_eta(tiny_run):
    out_dir, out = tiny_run
    lines = [training_line_fields(line) for line in out.splitlines() if line.startswith("iter ")]
    # a line every log_interval (5) iterations; the first update (warm-up) opens the timing window
    assert [line["iter"] for line in lines] == [f"{it}/{MAX_ITERS}" for it in range(5, MAX_ITERS + 1, 5)]
    for line in lines:
        assert re.fullmatch(r"\d+\.\d{4}", line["loss"]) and re.fullmatch(r"\d+\.\d{4}", line["grad_norm"]), line
        assert re.fullmatch(r"\d\.\d\de-\d\d", line["lr"]) and re.fullmatch(r"\d+\.\d", line["ms/iter"]), line
        assert re.fullmatch(r"[\d,]+", line["tok/s"]) and re.fullmatch(ETA, line["eta"]), line
        assert "mfu" not in line  # no data-sheet peak for a CPU
    # each line is a "train" record of metrics.jsonl too, with the same numbers
    trained = records(out_dir, "train")
    assert [r["iter"] for r in trained] == list(range(5, MAX_ITERS + 1, 5))
    for line, record in zip(lines, trained):
        assert line["loss"] == f"{record['loss']:.4f}" and line["grad_norm"] == f"{record['grad_norm']:.4f}"
        assert record["grad_norm"] > 0 and line["lr"] == f"{record['lr']:.2e}"


def test_start_lines_name_the_dataset_folder_used(tiny_run, small_char_dataset):
    """A name can resolve to ./<name>, ./data/<name> or the checkout's data/<name>: say which one."""
    _, out = tiny_run
    model_line = next(line for line in out.splitlines() if line.startswith("model: "))
    assert model_line.endswith(f"; data {small_char_dataset.resolve()}"), model_line


def brute_force_time_left(iter_num: int, max_iters: int, eval_interval: int, step_s: float, eval_s: float) -> float:
    """Walk the loop: the updates from iter_num to max_iters, and every evaluation still to come
    (the one due at iter_num itself included: a training line is printed before it)."""
    evaluations = sum(1 for it in range(iter_num, max_iters + 1) if it % eval_interval == 0 or it == max_iters)
    return (max_iters - iter_num) * step_s + evaluations * eval_s


@pytest.mark.parametrize("max_iters, eval_interval", [(20, 5), (11, 5), (13, 4), (7, 10), (5000, 250)])
def test_eta_counts_the_updates_and_evaluations_left(max_iters, eval_interval):
    step_s, eval_s = 0.25, 30.0  # evaluations much slower than updates, as on a CPU with many eval_iters
    for iter_num in range(1, max_iters + 1):
        got = report.time_left(iter_num, max_iters, eval_interval, step_s, eval_s)
        want = brute_force_time_left(iter_num, max_iters, eval_interval, step_s, eval_s)
        assert got == pytest.approx(want), f"iteration {iter_num} of {max_iters}, eval_interval {eval_interval}"


def test_eta_with_a_time_budget_is_the_budget_or_max_iters_whichever_ends_first():
    # the budget ends the run: what is left of it, then the last evaluation
    assert report.time_left(100, 1_000_000, 250, 0.5, 4.0, budget_left=600 - 250) == pytest.approx(600 - 250 + 4.0)
    # max_iters comes long before the budget is spent: the updates and evaluations left
    assert report.time_left(100, 120, 250, 0.5, 4.0, budget_left=3600 - 50) == \
        pytest.approx(brute_force_time_left(100, 120, 250, 0.5, 4.0))


@pytest.mark.slow
def test_eta_follows_the_time_budget_in_a_run(small_char_dataset, tmp_path):
    budget = 3.0
    out = main_output(tiny_args(small_char_dataset, tmp_path, max_iters=1_000_000, lr_decay_iters=100,
                             max_seconds=budget))
    etas = [seconds_of(m) for m in re.findall(rf"^iter \d+ \(\d+/{budget:g}s\): .*, eta {ETA}$", out, re.MULTILINE)]
    print(f"ETAs: {etas}")
    assert etas, out
    # at most the budget and the last evaluation (tiny, well under a second), never max_iters' hours
    assert all(eta <= budget + 1 for eta in etas), etas
    assert re.search(rf"^time budget of {budget:g}s spent after \d+ iterations \([\d.]+s, the last evaluation "
                     rf"included\)$", out, re.MULTILINE)


def test_eta_follows_max_iters_when_it_comes_before_the_budget(small_char_dataset, tmp_path):
    out = main_output(tiny_args(small_char_dataset, tmp_path, max_seconds=3600))
    etas = [seconds_of(m) for m in re.findall(rf"^iter \d+ \(\d+/3600s\): .*, eta {ETA}$", out, re.MULTILINE)]
    print(f"ETAs: {etas}")
    # the run takes about a second (a minute under any load), not the hour of its budget
    assert etas and all(eta < 600 for eta in etas), etas


# ----------------------------------------------------------------------------- evaluation progress


def test_slow_evaluation_shows_plain_progress_lines_in_a_log_file(small_char_dataset, tmp_path, monkeypatch):
    """The progress line interval (10 s in real runs, see test_preemption.py) is made 10 ms here, so
    an evaluation of 2 x 50 batches is 'slow'."""
    monkeypatch.setattr(progress, "INTERVAL_S", 0.01)
    log_path = tmp_path / "train.log"
    with open(log_path, "w") as log:
        monkeypatch.setattr(sys, "stdout", log)  # stdout redirected to a file, as in a batch job
        train.main(tiny_args(small_char_dataset, tmp_path / "run", max_iters=0, eval_iters=50))
    raw = log_path.read_bytes()
    assert b"\r" not in raw
    lines = raw.decode().splitlines()
    progress_lines = [line for line in lines if re.fullmatch(r"eval: [\d,]+/100 batch \(\d+%\), .* elapsed.*", line)]
    done = [line for line in lines if re.fullmatch(r"eval: done, 100 batch in [\d.]+s \(.* batch/s\)", line)]
    assert progress_lines and len(done) == 1, lines
    result = next(i for i, line in enumerate(lines) if line.startswith("step 0: train loss"))
    assert lines.index(progress_lines[0]) < lines.index(done[0]) < result  # progress, done, then the result


def test_quick_evaluation_prints_no_progress_lines(tiny_run):
    _, out = tiny_run
    assert not [line for line in out.splitlines() if line.startswith("eval:")]


# ----------------------------------------------------------------------------- slow-CPU warning


class Built(Exception):
    """Raised by `until_built` to end a run where its loop begins."""


def until_built(argv: list[str]) -> tuple[str, "train.Run"]:
    """train.main(argv) up to the loop's first event (the evaluation at iteration 0, before its first
    batch): what it printed by then, and the Run the hook was given."""
    seen = []

    def hook(event, state, run):
        seen.append((sys.stdout.getvalue(), run))
        raise Built

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(Built):
        train.main(argv, hook=hook)
    return seen[0]


def warning_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("this CPU does about ")]


def check_warning(line: str, run: "train.Run") -> None:
    """Names the keys to lower, and its times agree with the GFLOP/s it names (rounding aside)."""
    for key in ("n_layer", "n_embd", "block_size", "batch_size", "eval_iters"):
        assert key in line, line
    match = re.fullmatch(rf"this CPU does about (\d+) GFLOP/s: expect roughly {ETA} per update and {ETA} per "
                         rf"evaluation; .*", line)
    assert match, line
    rate = int(match.group(1))  # GFLOP/s, rounded: the true rate is within half a unit of it
    cfg = run.cfg
    flops_per_token = run.model.flops_per_token(cfg.model.block_size)
    update_flops = flops_per_token * run.plan.tokens_per_update
    eval_flops = flops_per_token / 3 * 2 * cfg.eval_iters * cfg.batch_size * cfg.model.block_size
    for printed, flops in ((match.group(2), update_flops), (match.group(3), eval_flops)):
        seconds = seconds_of(printed)
        slack = 60 if seconds >= 3600 else 0.5  # format_seconds shows whole seconds, or whole minutes past 1 h
        low = flops / ((rate + 0.5) * 1e9) - slack
        high = flops / ((rate - 0.5) * 1e9) + slack if rate >= 1 else math.inf
        assert low <= seconds <= high, (line, low, high)


def big_args(dataset, out_dir, **overrides) -> list[str]:
    """A 10M-parameter model and 262k tokens per update: minutes per update on a CPU."""
    config = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=4, gradient_accumulation_steps=256,
                  eval_iters=1, dropout=0.0)
    config.update(overrides)
    return tiny_args(dataset, out_dir, **config)


def test_slow_model_warns_once_before_the_first_step(small_char_dataset, tmp_path):
    printed, run = until_built(big_args(small_char_dataset, tmp_path))
    warnings = warning_lines(printed)
    assert len(warnings) == 1, printed
    assert run.plan.tokens_per_update == 256 * 4 * 256
    check_warning(warnings[0], run)


@pytest.mark.slow
def test_slow_evaluation_alone_warns(small_char_dataset, tmp_path):
    """A tiny model whose updates are quick, with eval_iters=10^7: the evaluations are what is slow."""
    printed, run = until_built(tiny_args(small_char_dataset, tmp_path, eval_iters=10_000_000))
    warnings = warning_lines(printed)
    assert len(warnings) == 1
    check_warning(warnings[0], run)
    assert re.search(r"roughly 0s per update", warnings[0]), warnings[0]


def test_tiny_model_gets_no_warning(tiny_run):
    _, out = tiny_run
    assert len(re.findall(r"^device cpu \(\d+ cores, [^)]+\), ", out, re.MULTILINE)) == 1 and warning_lines(out) == []


# ----------------------------------------------------------------------------- the last line


def test_last_line_says_which_iteration_the_checkpoint_holds(tiny_run):
    out_dir, out = tiny_run
    ckpt_path = out_dir / "ckpt.pt"
    done = [line for line in out.splitlines() if line.startswith("done: ")]
    assert done == [out.splitlines()[-1]]
    assert re.fullmatch(rf"done: {re.escape(str(ckpt_path))} holds iteration {MAX_ITERS} \(evaluation"
                        rf"(, best val loss [\d.]+)?\)", done[0]), done[0]
    assert load_checkpoint(out_dir)["iter_num"] == MAX_ITERS


def test_last_line_after_a_resume_with_nothing_to_train(tiny_run, small_char_dataset, tmp_path):
    out_dir, _ = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.pt").write_bytes((out_dir / "ckpt.pt").read_bytes())
    out = main_output(tiny_args(small_char_dataset, run, init_from="resume"))
    assert f"the checkpoint is at iteration {MAX_ITERS}, max_iters is {MAX_ITERS}: nothing to train" in out
    assert out.splitlines()[-1] == f"done: {run / 'ckpt.pt'} holds iteration {MAX_ITERS} (the checkpoint resumed from)"


def test_last_line_names_the_earlier_checkpoint_when_the_final_evaluation_did_not_improve(
        small_char_dataset, tmp_path):
    """always_save_checkpoint=false, and the weights spoilt after the last update (noise added through
    train.main's hook), so that the final evaluation is worse than the best so far."""
    def spoil_after_the_last_update(event, state, run):
        if event == "update" and state.iter_num == MAX_ITERS:
            generator = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in run.model.parameters():
                    p.add_(torch.randn(p.shape, generator=generator))

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train.main(tiny_args(small_char_dataset, tmp_path, always_save_checkpoint=False),
                   hook=spoil_after_the_last_update)
    out = printed.getvalue()
    metrics = read_metrics(tmp_path)
    best, kept = math.inf, None  # the last evaluation after iteration 0 that improved on the best
    for m in metrics:
        if m["val_loss"] < best:
            best, kept = m["val_loss"], (m["iter"] if m["iter"] > 0 else kept)
    assert metrics[-1]["iter"] == MAX_ITERS and kept is not None and 0 < kept < MAX_ITERS, metrics
    ckpt_path = tmp_path / "ckpt.pt"
    assert load_checkpoint(tmp_path)["iter_num"] == kept
    lines = out.splitlines()
    final = lines.index(next(line for line in lines if line.startswith(f"step {MAX_ITERS}: ")))
    holds = f"iteration {kept} (evaluation, best val loss {best:.4f})"
    assert lines[final + 1] == (f"not saving: val loss {metrics[-1]['val_loss']:.4f} is not below the best "
                                f"{best:.4f} (always_save_checkpoint=false); {ckpt_path} keeps {holds}")
    assert lines[-1] == f"done: {ckpt_path} holds {holds}"


# ----------------------------------------------------------------------------- eval_only


def snapshot(folder: Path) -> dict:
    """Every file under folder: its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_eval_only_on_a_run_folder_evaluates_its_checkpoint_and_writes_nothing(small_char_dataset, tmp_path):
    run = tmp_path / "run"
    main_output(tiny_args(small_char_dataset, run, max_iters=5))
    before = snapshot(run)
    assert {"ckpt.pt", "metrics.jsonl", "config.json", ".lock"} <= before.keys()
    out = main_output([f"--out_dir={run}", "--eval_only=true", "--device=cpu"])  # no --init_from, no dataset
    last = read_metrics(run)[-1]
    assert last["iter"] == 5
    # the checkpoint's weights on the run's own evaluation batches: the numbers in metrics.jsonl
    assert f"step 5: train loss {last['train_loss']:.4f}, val loss {last['val_loss']:.4f}" in out, out
    assert f"evaluating {run / 'ckpt.pt'} at iteration 5" in out and "resumed from" not in out
    assert snapshot(run) == before


def test_eval_only_without_a_checkpoint_creates_no_folder(small_char_dataset, tmp_path):
    out = main_output(tiny_args(small_char_dataset, tmp_path / "none", eval_only=True))
    assert re.search(r"^step 0: train loss [\d.]+, val loss [\d.]+", out, re.MULTILINE)
    assert "no checkpoint in" in out and "evaluates the scratch weights" in out  # said, not silent
    assert not (tmp_path / "none").exists()


# ----------------------------------------------------------------------------- --version, --help


def test_version_prints_one_line_and_exits_zero():
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    result = run_script("train.py", "--version", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"smallgpt {version} (torch {torch.__version__}, python "
                                          f"{platform.python_version()})"]


def test_help_lists_debug(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert re.search(r"^  --debug +\S", out, re.MULTILINE), out
    assert "--version" in out


# ----------------------------------------------------------------------------- DDP: a time budget, the loss


@pytest.mark.slow
def test_ddp_with_a_time_budget_logs_saves_and_finishes(small_char_dataset, tmp_path):
    """Two gloo ranks with max_seconds set (far away; decay_lr=false keeps the updates independent
    of the clock): under DDP the elapsed time is agreed by a collective, so only rank 0 asking for it
    (for the ETA, or while saving) would hang the run. The training lines show rank 0's mean loss,
    close to one process's mean over the whole batch (not world_size times it)."""
    args = tiny_args(small_char_dataset, tmp_path / "ddp", max_iters=10, max_seconds=1000, decay_lr=False,
                     dropout=0.0)
    cmd, env = torchrun_command("train.py", *args, env={"GPT_DEBUG": None})
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=120)  # about 10 s normally
    except subprocess.TimeoutExpired:
        # torchrun's workers run in sessions of their own: SIGTERM to torchrun makes it stop them
        # (SIGTERM, then SIGKILL after 30 s, as hung workers ignore the first)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        pytest.fail(f"the DDP run hung (stopped after 120 s):\n{out[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    assert "2 process(es)" in out
    assert load_checkpoint(tmp_path / "ddp")["iter_num"] == 10
    one = main_output(tiny_args(small_char_dataset, tmp_path / "one", max_iters=10, max_seconds=1000,
                             decay_lr=False, dropout=0.0))

    def losses(text):
        return {int(it): float(loss) for it, loss in re.findall(r"^iter (\d+) \(\d+/1000s\): loss ([\d.]+),", text, re.MULTILINE)}

    ddp_losses, one_losses = losses(out), losses(one)
    print(f"training-line losses: 2 processes {ddp_losses}, 1 process {one_losses}")
    assert ddp_losses.keys() == one_losses.keys() == {5, 10}
    for it in ddp_losses:  # rank 0 sees half of each batch: close, not equal
        assert ddp_losses[it] == pytest.approx(one_losses[it], rel=0.1)
