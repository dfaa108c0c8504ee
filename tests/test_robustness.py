"""Nothing lost, nothing executed: atomic checkpoints, preemption, non-finite losses, bad input.

  * checkpoint writes killed with SIGKILL at random moments leave the old or the new checkpoint;
    a failed save keeps the old one; leftovers of killed saves are removed by the next save
  * SIGTERM (or a first Ctrl-C) stops training after the current step with a checkpoint, exit 0;
    a second Ctrl-C leaves at once
  * a non-finite loss or gradient (float16's overflows too) skips its update; several in a row stop the
    run, and nothing non-finite is saved
  * every bad input we could think of (prepare, train, sample) is one line "error: ...", a non-zero
    exit and no traceback, and a checkpoint carrying pickled code is refused without running it

The table of bad inputs runs each script's main through cli.run_main in this process (as the
scripts do); a few cases also run the real scripts as subprocesses.

    python -m pytest tests/test_robustness.py -q
"""

import errno
import importlib.util
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import sample
import train
from conftest import REPO_ROOT, records, run_script
from smallgpt import checkpoint
from smallgpt.checkpoint import load_checkpoint, save_checkpoint
from smallgpt.cli import run_main
from smallgpt.errors import UserError
from smallgpt.preemption import StopRequest

spec = importlib.util.spec_from_file_location("prepare_text", REPO_ROOT / "prepare" / "text.py")
prepare_text = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare_text)


def tiny_args(dataset, out_dir, **overrides) -> list[str]:
    config = dict(dataset=dataset, out_dir=out_dir, n_layer=2, n_head=2, n_embd=32, block_size=32,
                  batch_size=4, eval_iters=2, eval_interval=5, log_interval=1, dropout=0.1,
                  learning_rate=1e-3, warmup_iters=2, max_iters=5, device="cpu", dtype="float32",
                  compile=False)
    config.update(overrides)
    return [f"--{key}={value}" for key, value in config.items()]


@pytest.fixture(scope="module")
def trained_run(small_char_dataset, tmp_path_factory) -> Path:
    """A 5-iteration run with its ckpt.pt (tests copy it before changing anything)."""
    out = tmp_path_factory.mktemp("trained")
    train.main(tiny_args(small_char_dataset, out))
    return out


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# ----------------------------------------------------------------------------- atomic checkpoints

SAVER = """
import sys, torch
from smallgpt.checkpoint import save_checkpoint
path, k = sys.argv[1], int(sys.argv[2])
weights = torch.empty(4_000_000)  # 16 MB: each save takes long enough to be killed in the middle
while True:
    weights.fill_(k)
    save_checkpoint({"k": k, "model": {"w": weights}, "model_config": {}, "format_version": 2}, path)
    print(k, flush=True)
    k += 1
"""


@pytest.mark.slow
def test_checkpoint_survives_sigkill_at_random_moments(tmp_path):
    """Each round: a saver process rewrites ckpt.pt in a loop until SIGKILL lands at a random moment;
    the file must then load (CRC-checked) and hold the last reported save or the one after it."""
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    ckpt_path = tmp_path / "ckpt.pt"
    rng = random.Random()
    mid_save_kills = 0  # kills that left a temporary file, i.e. landed inside a save
    for round_ in range(5):
        start = 1000 * round_
        proc = subprocess.Popen([sys.executable, str(script), str(ckpt_path), str(start)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == str(start)  # one save of this round has finished
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        printed = [int(line) for line in proc.stdout.read().split()]
        proc.wait()
        last = printed[-1] if printed else start
        state = load_checkpoint(ckpt_path)
        assert state["k"] in (last, last + 1), (state["k"], last)
        assert torch.equal(state["model"]["w"], torch.full((4_000_000,), float(state["k"])))
        mid_save_kills += bool(list(tmp_path.glob(".ckpt.pt.*.tmp")))  # the next round's first save removes it
    print(f"kills that landed inside a save: {mid_save_kills} of 5")
    (tmp_path / ".ckpt.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # as a kill mid-save leaves
    save_checkpoint({"k": -1, "model": {}, "model_config": {}, "format_version": 2}, ckpt_path)
    assert list(tmp_path.glob(".ckpt.pt.*.tmp")) == []
    assert load_checkpoint(ckpt_path)["k"] == -1


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")])
def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "model_config": {}, "format_version": 2}, path)
    before = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"the first bytes of a checkpoint")  # a partial write, then the disk is full
        raise failure

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(UserError) as info:
        save_checkpoint({"model": {"w": torch.zeros(3)}, "model_config": {}, "format_version": 2}, path)
    message = str(info.value)
    assert "\n" not in message and "could not save checkpoint" in message and "previous checkpoint" in message
    assert ("No space left" if isinstance(failure, OSError) else "file write failed") in message
    assert path.read_bytes() == before
    assert list(tmp_path.glob(".ckpt.pt.*")) == []


def test_saved_checkpoint_has_the_usual_file_mode(tmp_path):
    save_checkpoint({"model": {}, "model_config": {}, "format_version": 2}, tmp_path / "ckpt.pt")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "ckpt.pt").stat().st_mode & 0o777 == 0o666 & ~umask


# ----------------------------------------------------------------------------- preemption

@pytest.mark.slow
def test_sigterm_saves_at_that_iteration_and_exits_zero(small_char_dataset, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("GPT_DEBUG", None)
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"),
                             *tiny_args(small_char_dataset, tmp_path, max_iters=100_000, lr_decay_iters=100)],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("iter 3/"):  # training is under way (the handler is installed)
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM received: finishing this step (or abandoning the evaluation), then saving a checkpoint" in err
    # a step takes milliseconds: by the time the signal lands the run may have gone on into the evaluation
    # due at eval_interval, which is then abandoned; either way it stops at the iteration it is at
    stopped = [line for line in out.splitlines()
               if re.match(r"stopped by SIGTERM during (training|the evaluation) at iteration ", line)]
    assert len(stopped) == 1, out
    stop_iter = int(stopped[0].split("iteration ")[1].split(";")[0])
    assert "--init_from=resume" in stopped[0]
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["iter_num"] == stop_iter >= 3
    # the resumed run continues from there (max_iters is a schedule key: a shorter run is fine)
    train.main(tiny_args(small_char_dataset, tmp_path, init_from="resume", max_iters=stop_iter + 3,
                         lr_decay_iters=100))
    assert load_checkpoint(tmp_path)["iter_num"] == stop_iter + 3


@pytest.fixture
def sigint_as_a_terminal_leaves_it():
    """SIGINT as an interactive shell hands it to Python: the default handler, not blocked in this thread.

    A test process started as a background job or under nohup inherits SIGINT ignored, and StopRequest
    rightly keeps an ignored SIGINT ignored; a test of Ctrl-C sets the disposition it needs and restores
    what it found, so neither how pytest was started nor an earlier test decides its outcome."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, previous)


def wait_for(condition, seconds: float = 5.0) -> bool:
    """Poll `condition` until it holds or `seconds` pass (a handler runs at the next bytecode of the main thread)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_first_ctrl_c_asks_to_stop_second_leaves_at_once(sigint_as_a_terminal_leaves_it):
    with StopRequest() as stop:
        assert not stop.requested
        # raise_signal sends it to this thread (os.kill to the process may land on one of torch's threads)
        signal.raise_signal(signal.SIGINT)
        assert wait_for(lambda: stop.requested) and stop.reason == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
            time.sleep(5)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_an_inherited_ignored_ctrl_c_stays_ignored_and_sigterm_still_stops():
    """A trainer started with nohup (SIGINT ignored) keeps ignoring Ctrl-C, and still stops on SIGTERM."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    sigterm_before = signal.getsignal(signal.SIGTERM)
    try:
        with StopRequest() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            assert not wait_for(lambda: stop.requested, 0.2)
            signal.raise_signal(signal.SIGTERM)
            assert wait_for(lambda: stop.requested) and stop.reason == "SIGTERM"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is sigterm_before
    finally:
        signal.signal(signal.SIGINT, previous)


def test_interrupt_is_one_line_and_exit_130(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        run_main(interrupted)
    assert info.value.code == 130
    assert capsys.readouterr().err == "error: interrupted (Ctrl-C)\n"


@pytest.mark.parametrize("exception, fragment", [
    (OSError(errno.ENOSPC, "No space left on device", "out/metrics.jsonl"), "out/metrics.jsonl: No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "/root/x: Permission denied"),
    (MemoryError(), "out of memory (host RAM); lower --batch_size"),
    (getattr(torch, "OutOfMemoryError", MemoryError)("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory"),
])
def test_environment_failures_are_one_line(exception, fragment, capsys, monkeypatch):
    monkeypatch.delenv("GPT_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py"])

    def failing():
        raise exception

    with pytest.raises(SystemExit) as info:
        run_main(failing)
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert fragment in err


def test_bugs_still_show_their_traceback(monkeypatch):
    """Only environment failures are shortened: a plain RuntimeError or KeyError is a bug to see."""
    monkeypatch.delenv("GPT_DEBUG", raising=False)
    for bug in (RuntimeError("shape mismatch"), KeyError("x")):
        def failing():
            raise bug

        with pytest.raises(type(bug)):
            run_main(failing)


# ----------------------------------------------------------------------------- non-finite loss

def test_nonfinite_loss_skips_updates_then_stops_keeping_the_checkpoint(trained_run, small_char_dataset,
                                                                          tmp_path, capsys):
    """learning_rate=1e9 wrecks the weights in one update; from then on every loss is nan."""
    run = copy_run(trained_run, tmp_path / "run")
    before = (run / "ckpt.pt").read_bytes()
    with pytest.raises(UserError) as info:
        train.main(tiny_args(small_char_dataset, run, init_from="resume", learning_rate=1e9, decay_lr=False,
                             max_iters=100, max_nonfinite_steps=6))
    out = capsys.readouterr().out
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the loss was not finite for 6 updates in a row")
    assert "last good checkpoint stays in" in message and "--learning_rate" in message
    assert out.count("skipped this update") == 6
    assert "not saving a checkpoint: the val loss is nan" in out  # the evaluation at iteration 10
    assert (run / "ckpt.pt").read_bytes() == before
    assert load_checkpoint(run)["iter_num"] == 5


@pytest.mark.slow
def test_float16_overflows_skip_updates_count_toward_the_limit_and_are_counted_in_the_log(small_char_dataset,
                                                                                         tmp_path, capsys):
    """float16 autocast on the CPU with a GradScaler whose first loss scale (2**40) overflows float16's
    gradients: each overflow skips its update (as the scaler would), says so with the lowered scale, and
    counts toward max_nonfinite_steps like a non-finite loss; the training lines average the updates
    that were not skipped (finite gradient norms) and count the others."""
    def scaler_that_overflows(event, state, run):
        if not hasattr(scaler_that_overflows, "set"):  # the first event: no update has run yet
            scaler_that_overflows.set = True
            run.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)

    common = dict(dtype="float16", max_iters=40, eval_interval=40, log_interval=5)
    with pytest.raises(UserError, match="not finite for 5 updates in a row"):
        train.main(tiny_args(small_char_dataset, tmp_path / "stops", max_nonfinite_steps=5, **common),
                   hook=scaler_that_overflows)
    del scaler_that_overflows.set
    capsys.readouterr()
    train.main(tiny_args(small_char_dataset, tmp_path / "goes_on", max_nonfinite_steps=40, **common),
               hook=scaler_that_overflows)
    out = capsys.readouterr().out
    skips = re.findall(r"^iter (\d+): the gradient is not finite \(float16's loss scale is now ([\d.e+]+)\); "
                       r"skipped this update \((\d+) in a row", out, re.MULTILINE)
    assert 10 <= len(skips) < 40 and [int(n) for _, _, n in skips] == list(range(1, len(skips) + 1)), skips
    assert [float(scale) for _, scale, _ in skips[:2]] == pytest.approx([2.0 ** 39, 2.0 ** 38], rel=1e-5)
    lines = records(tmp_path / "goes_on", "train")
    assert all(math.isfinite(r["grad_norm"]) for r in lines if "grad_norm" in r) and lines[-1]["loss"] < 4.3
    # the first update's window restarts (its time is compilation's, not training's): every later skip is counted
    assert sum(r.get("skipped", 0) for r in lines) == len(skips) - 1
    assert load_checkpoint(tmp_path / "goes_on")["scaler"]["scale"] == 2.0 ** 40 / 2 ** len(skips)


def test_nonfinite_weights_are_never_saved(trained_run, small_char_dataset, tmp_path, capsys):
    """Even if an evaluation comes out finite, weights holding inf/nan are not written. After update 10
    (an evaluation iteration) an inf goes into a padding row of the embedding (61 ids in 64 rows): no
    token looks it up and its logits are cut off, so the loss stays finite, but the weights are not."""
    run = copy_run(trained_run, tmp_path / "run")
    before = (run / "ckpt.pt").read_bytes()

    def poison_a_padding_row(event, state, run):
        if event == "update" and state.iter_num == 10:
            config = run.model.config
            assert config.padded_vocab_size > config.vocab_size
            with torch.no_grad():
                run.model.transformer.wte.weight[config.padded_vocab_size - 1, 0] = float("inf")

    train.main(tiny_args(small_char_dataset, run, init_from="resume", max_iters=10), hook=poison_a_padding_row)
    out = capsys.readouterr().out
    step_10 = next(line for line in out.splitlines() if line.startswith("step 10: "))
    assert "nan" not in step_10 and "inf" not in step_10, step_10  # the evaluation is finite
    assert "not saving a checkpoint at iteration 10 (evaluation" in out and "the weights are not finite" in out
    assert (run / "ckpt.pt").read_bytes() == before


# ----------------------------------------------------------------------------- pickled code

class MakesMarker:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_checkpoint_with_pickled_code_is_refused_and_never_runs(trained_run, small_char_dataset, tmp_path):
    marker = tmp_path / "code_ran"
    state = torch.load(trained_run / "ckpt.pt", weights_only=True)
    state["model_config"] = MakesMarker(marker)
    evil = tmp_path / "run" / "ckpt.pt"
    evil.parent.mkdir()
    torch.save(state, evil)
    # the file really carries code: a trusting load runs it
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()
    for script, args in [("sample.py", [f"--out_dir={evil}", "--device=cpu", "--max_new_tokens=2"]),
                         ("train.py", tiny_args(small_char_dataset, evil.parent, init_from="resume"))]:
        result = run_script(script, *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"error: refused to load {evil}") and "GLOBAL posix.system" in lines[0]
        assert not marker.exists()


# ----------------------------------------------------------------------------- bad input, one line each

def write_dataset(folder: Path, source: Path, **meta_changes) -> Path:
    shutil.copytree(source, folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(meta_changes)
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def bad_inputs(small_char_dataset, trained_run, tmp_path_factory) -> dict:
    """Every broken file the table below needs, made once."""
    root = tmp_path_factory.mktemp("bad")
    ds = small_char_dataset
    paths = {"root": root, "ds": ds, "run": trained_run}
    paths["empty_files"] = write_dataset(root / "empty_files", ds)
    for split in ("train", "val"):
        (paths["empty_files"] / f"{split}.bin").write_bytes(b"")
    paths["zero_tokens"] = write_dataset(root / "zero_tokens", ds, train_tokens=0, val_tokens=0)
    for split in ("train", "val"):
        (paths["zero_tokens"] / f"{split}.bin").write_bytes(b"")
    paths["short"] = write_dataset(root / "short", ds, train_tokens=10, val_tokens=10)
    for split in ("train", "val"):
        np.zeros(10, np.uint16).tofile(paths["short"] / f"{split}.bin")
    paths["corrupt_meta"] = write_dataset(root / "corrupt_meta", ds)
    (paths["corrupt_meta"] / "meta.json").write_text('{"format_version": 1, "tokeni')
    paths["disagree"] = write_dataset(root / "disagree", ds)
    with open(paths["disagree"] / "train.bin", "ab") as f:
        f.write(b"\0\0\0\0")
    paths["no_val"] = write_dataset(root / "no_val", ds)
    (paths["no_val"] / "val.bin").unlink()
    paths["unknown_tokenizer"] = write_dataset(root / "unknown_tokenizer", ds, tokenizer="sentencepiece")
    paths["vocab_too_big"] = write_dataset(root / "vocab_too_big", ds, tokenizer="byte", vocab_size=70000)
    paths["a_file"] = root / "a_file"
    paths["a_file"].write_text("not a folder")
    paths["bad_toml"] = root / "bad.toml"
    paths["bad_toml"].write_text('out_dir = "x"\nmax_iters = \n')
    ckpt = (trained_run / "ckpt.pt").read_bytes()
    paths["truncated"] = root / "truncated.pt"
    paths["truncated"].write_bytes(ckpt[: len(ckpt) // 2])
    paths["bitflip"] = root / "bitflip.pt"
    flipped = bytearray(ckpt)
    flipped[-len(ckpt) // 3] ^= 0x10  # inside a tensor's bytes: only the CRC notices
    paths["bitflip"].write_bytes(bytes(flipped))
    paths["empty_ckpt"] = root / "empty.pt"
    paths["empty_ckpt"].write_bytes(b"")
    paths["not_a_ckpt"] = root / "list.pt"
    torch.save([1, 2, 3], paths["not_a_ckpt"])
    paths["pickled_code"] = root / "code.pt"
    torch.save({"model": MakesMarker(root / "marker"), "model_config": {}}, paths["pickled_code"])
    state = torch.load(trained_run / "ckpt.pt", weights_only=True)
    paths["foreign_config"] = root / "foreign_config.pt"
    torch.save({**state, "model_config": {**state["model_config"], "n_experts": 8}}, paths["foreign_config"])
    paths["missing_weight"] = root / "missing_weight.pt"
    torch.save({**state, "model": {k: v for k, v in state["model"].items() if k != "transformer.wte.weight"}},
               paths["missing_weight"])
    for name in ("truncated", "pickled_code", "missing_weight"):  # the same files as out_dir/ckpt.pt, for resume
        (root / f"run_{name}").mkdir()
        shutil.copy(paths[name], root / f"run_{name}" / "ckpt.pt")
    paths["latin1"] = root / "latin1.txt"
    paths["latin1"].write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    paths["empty_txt"] = root / "empty.txt"
    paths["empty_txt"].write_text("")
    return paths


T = "train"
S = "sample"
P = "prepare"

# (id, script, argv template, a fragment the one-line message must contain); {name} is filled from bad_inputs
# A GPU that is not there: any CUDA device on a CPU machine (CI), one past the last on a GPU machine.
MISSING_GPU = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
MISSING_GPU_MESSAGE = "is not there" if torch.cuda.is_available() else "device cuda is not available"

BAD_INPUTS = [
    ("missing dataset", T, ["--dataset={root}/nope"], "not found"),
    ("empty data files", T, ["--dataset={empty_files}"], "holds 0 bytes but meta.json says"),
    ("zero-token dataset", T, ["--dataset={zero_tokens}"], "holds 0 token(s), nothing to train on"),
    ("too-short data", T, ["--dataset={short}"], "has 10 tokens, too few for block_size 32"),
    ("corrupt meta.json", T, ["--dataset={corrupt_meta}"], "meta.json is corrupt"),
    ("files disagree", T, ["--dataset={disagree}"], "meta.json says"),
    ("missing val.bin", T, ["--dataset={no_val}"], "val.bin is missing"),
    ("unknown tokenizer", T, ["--dataset={unknown_tokenizer}"], "unknown tokenizer 'sentencepiece'"),
    ("vocab too large for dtype", T, ["--dataset={vocab_too_big}"], "does not fit vocab_size 70000"),
    ("n_embd not divisible by n_head", T, ["--n_head=3"], "must be divisible by n_head"),
    ("n_layer 0", T, ["--n_layer=0"], "n_layer on the command line: 0 (must be at least 1)"),
    ("n_embd -1", T, ["--n_embd=-1"], "n_embd on the command line: -1 (must be at least 1)"),
    ("block_size 0", T, ["--block_size=0"], "block_size on the command line: 0 (must be at least 1)"),
    ("batch_size 0", T, ["--batch_size=0"], "batch_size on the command line: 0 (must be at least 1)"),
    ("max_nonfinite_steps 0", T, ["--max_nonfinite_steps=0"], "must be at least 1"),
    ("device cuda", T, [f"--device={MISSING_GPU}"], MISSING_GPU_MESSAGE),
    ("device cuda:99", T, ["--device=cuda:99"], "cuda:99"),
    ("device tpu", T, ["--device=tpu"], "unknown device 'tpu'"),
    ("out_dir is a file", T, ["--out_dir={a_file}"], "is a file, not a folder"),
    ("out_dir under a file", T, ["--out_dir={a_file}/run"], "cannot write to out_dir"),
    ("resume without checkpoint", T, ["--init_from=resume", "--out_dir={root}/no_run"], "no checkpoint at"),
    ("resume truncated checkpoint", T, ["--init_from=resume", "--out_dir={root}/run_truncated"], "truncated or corrupt"),
    ("resume pickled code", T, ["--init_from=resume", "--out_dir={root}/run_pickled_code"], "refused to load"),
    ("resume with missing weights", T, ["--init_from=resume", "--out_dir={root}/run_missing_weight"],
     'Missing key(s) in state_dict: "transformer.wte.weight"'),
    ("scratch over a checkpoint", T, ["--out_dir={run}"], "already exists"),
    ("missing config file", T, ["{root}/nothere.toml"], "config file not found"),
    ("invalid TOML", T, ["{bad_toml}"], "invalid TOML"),
    ("unknown key", T, ["--max_iter=5"], "did you mean max_iters"),
    ("bad number", T, ["--max_iters=ten"], "'ten' is not a"),
    ("init_from typo", T, ["--init_from=resum"], "did you mean resume?"),
    ("sample: no checkpoint", S, ["--out_dir={root}/no_run"], "no checkpoint at"),
    ("sample: truncated checkpoint", S, ["--out_dir={truncated}"], "truncated or corrupt"),
    ("sample: flipped bit", S, ["--out_dir={bitflip}"], "fails its CRC check"),
    ("sample: empty checkpoint", S, ["--out_dir={empty_ckpt}"], "is empty"),
    ("sample: not a checkpoint", S, ["--out_dir={not_a_ckpt}"], "not a checkpoint written by train.py"),
    ("sample: model_config from another version", S, ["--out_dir={foreign_config}"], "unexpected keyword argument 'n_experts'"),
    ("sample: missing weights", S, ["--out_dir={missing_weight}"], "do not fit its model"),
    ("sample: pickled code", S, ["--out_dir={pickled_code}"], "refused to load"),
    ("sample: prompt file missing", S, ["--out_dir={run}", "--start=FILE:{root}/nope.txt"], "prompt file not found"),
    ("sample: characters not in vocab", S, ["--out_dir={run}", "--start=h\u00e9llo \u20ac"], "not in this char vocabulary"),
    ("sample: device cuda", S, ["--out_dir={run}", f"--device={MISSING_GPU}"], MISSING_GPU_MESSAGE),
    ("sample: invalid TOML", S, ["{bad_toml}"], "invalid TOML"),
    ("sample: top_p 0", S, ["--out_dir={run}", "--top_p=0"], "top_p"),
    ("prepare: input missing", P, ["--input", "{root}/nope.txt", "--out_dir", "{root}/p"], "input not found"),
    ("prepare: empty input", P, ["--input", "{empty_txt}", "--out_dir", "{root}/p", "--tokenizer", "char"], "holds no text"),
    ("prepare: undecodable bytes", P, ["--input", "{latin1}", "--out_dir", "{root}/p", "--tokenizer", "char"], "not valid UTF-8"),
    ("prepare: unknown tokenizer", P, ["--input", "{latin1}", "--out_dir", "{root}/p", "--tokenizer", "sp"], "invalid choice: 'sp'"),
    ("prepare: missing --out_dir", P, ["--input", "{latin1}"], "required: --out_dir"),
    ("prepare: out_dir under a file", P, ["--input", "{latin1}", "--out_dir", "{a_file}/p", "--tokenizer", "char",
                                          "--errors", "replace"], "Not a directory"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line(case, bad_inputs, capsys, monkeypatch, tmp_path):
    name, script, template, fragment = case
    monkeypatch.delenv("GPT_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", [script])  # run_main looks for --debug there
    argv = [arg.format(**bad_inputs) for arg in template]
    if script == T:
        defaults = tiny_args(bad_inputs["ds"], tmp_path / "out")
        given = {arg.split("=")[0] for arg in argv}
        argv = [arg for arg in defaults if arg.split("=")[0] not in given] + argv
        main = train.main
    elif script == S:
        argv = ["--device=cpu", "--max_new_tokens=2", *argv]
        main = sample.main
    else:
        argv = [*argv, "--quiet"]
        main = prepare_text.main
    protected = bad_inputs["run"] / "ckpt.pt"
    before = protected.read_bytes()
    with pytest.raises(SystemExit) as info:
        run_main(main, argv)
    err = capsys.readouterr().err
    print(f"{name}: {err.strip()}")
    assert info.value.code not in (0, None)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    assert fragment in err
    assert protected.read_bytes() == before  # no good file is touched
    assert not (bad_inputs["root"] / "marker").exists()


@pytest.mark.parametrize("script, args, fragment", [
    ("train.py", ["--dataset=/nonexistent/data", "--device=cpu"], "dataset '/nonexistent/data' not found"),
    ("sample.py", ["--out_dir=/nonexistent/run", "--device=cpu"], "no checkpoint at"),
    ("prepare/text.py", ["--input", "x.txt", "--out_dir", "y", "--tokenizer", "sp"], "invalid choice"),
])
@pytest.mark.slow
def test_real_scripts_print_one_line(script, args, fragment):
    result = run_script(script, *args)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr
    debug = run_script(script, *args, env={"GPT_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr
