"""Runs where nanoGPT runs: without fcntl (Windows, or no OS lock at all), and on an Apple-silicon (mps)
machine, both simulated here (neither has been run for real); and the run folder's lock frictions.

  * No fcntl: the lock is msvcrt.locking (faked here as Windows answers) or, with neither, .lock itself
    (O_EXCL) whose holder is named, refused while alive, and taken over once dead.
  * An mps-only machine: torch answers cuda unavailable and mps available; the choices train.py and
    sample.py make (device, dtype, compile, fused AdamW, gradient scaler) are checked.
  * A whole training run in a Python that lacks fcntl, os.uname, os.pread, os.pwrite, os.fchmod and
    os.O_CLOEXEC (as Windows' does).

    python -m pytest tests/test_portability.py -q
"""

import os
import platform
import re
import subprocess
import sys
import time
import types

import pytest
import torch
from test_train import TINY

import train
from conftest import REPO_ROOT
from model import GPT, GPTConfig
from smallgpt import device
from smallgpt.checkpoint import load_checkpoint, rng_state, save_checkpoint
from smallgpt.distributed import setup_processes
from smallgpt.errors import UserError
from smallgpt.runfolder import FolderLock, RunFolder

LOCKED_AT = time.strftime("%Y-%m-%d %H:%M:%S")  # what a lock file says of when it was taken


@pytest.fixture
def no_os_lock(monkeypatch):
    """Neither fcntl nor msvcrt can be imported: the lock file itself is the lock."""
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", None)


def dead_pid() -> int:
    """The pid of a process that has ended (and, so soon after, not been reused)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def live_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def tiny_run(dataset, out_dir, *extra) -> list[str]:
    return [f"--dataset={dataset}", f"--out_dir={out_dir}", *TINY, "--max_iters=3", "--eval_interval=3", *extra]


# ----------------------------------------------------------------------------- no fcntl, no msvcrt

def test_without_an_os_lock_the_lock_file_names_its_holder_and_goes_at_the_end(no_os_lock, tmp_path):
    with RunFolder(tmp_path, master=True) as folder:
        assert folder.lock.kind == "file"
        line = (tmp_path / ".lock").read_text()
        assert line.startswith(f"pid {os.getpid()} on {platform.node()}, since ")
        with pytest.raises(UserError, match=rf"another trainer is using {re.escape(str(tmp_path))} \(pid "
                                            rf"{os.getpid()} on .*; if no trainer is running there, remove "):
            RunFolder(tmp_path, master=True).__enter__()
        assert FolderLock(tmp_path / ".lock").holder() == line.strip()
    assert not (tmp_path / ".lock").exists()
    assert FolderLock(tmp_path / ".lock").holder() is None


def test_without_an_os_lock_a_dead_holders_lock_is_taken_over(no_os_lock, tmp_path):
    (tmp_path / ".lock").write_text(f"pid {dead_pid()} on {platform.node()}, since {LOCKED_AT}\n")
    assert FolderLock(tmp_path / ".lock").holder() is None  # stale
    with RunFolder(tmp_path, master=True):
        assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("host", ["this", "another"])
def test_without_an_os_lock_a_live_or_unknowable_holder_refuses(no_os_lock, tmp_path, live_process, host):
    """A live pid on this host refuses; so does any pid of another host (we cannot ask it)."""
    pid, node = (live_process.pid, platform.node()) if host == "this" else (dead_pid(), "some-other-host")
    (tmp_path / ".lock").write_text(f"pid {pid} on {node}, since {LOCKED_AT}\n")
    with pytest.raises(UserError, match=rf"another trainer is using .*\(pid {pid} on {node}, since"):
        RunFolder(tmp_path, master=True).__enter__()
    assert (tmp_path / ".lock").read_text().startswith(f"pid {pid} on ")  # left alone


def test_without_an_os_lock_training_and_resume_work(no_os_lock, small_char_dataset, tmp_path, live_process, capsys):
    run = tmp_path / "run"
    train.main(tiny_run(small_char_dataset, run))
    assert load_checkpoint(run)["iter_num"] == 3 and not (run / ".lock").exists()
    (run / ".lock").write_text(f"pid {live_process.pid} on {platform.node()}, since {LOCKED_AT}\n")
    with pytest.raises(UserError, match=rf"another trainer is using {re.escape(str(run))} \(pid {live_process.pid} "):
        train.main(tiny_run(small_char_dataset, run, "--init_from=resume", "--max_iters=6"))
    (run / ".lock").write_text(f"pid {dead_pid()} on {platform.node()}, since {LOCKED_AT}\n")
    train.main(tiny_run(small_char_dataset, run, "--init_from=resume", "--max_iters=6"))
    assert load_checkpoint(run)["iter_num"] == 6 and not (run / ".lock").exists()


# ----------------------------------------------------------------------------- msvcrt, faked

def fake_msvcrt() -> types.ModuleType:
    """msvcrt.locking as Windows answers it: a byte range at the file position, one holder at a time
    (a second lock fails with PermissionError, as Windows' EACCES does); every call is recorded."""
    module = types.ModuleType("msvcrt")
    module.LK_UNLCK, module.LK_NBLCK = 0, 2
    module.held, module.calls = {}, []

    def locking(fd, mode, nbytes):
        key = (os.fstat(fd).st_ino, os.lseek(fd, 0, os.SEEK_CUR), nbytes)
        module.calls.append((mode, key[1:]))
        if mode == module.LK_NBLCK:
            if key in module.held:
                raise PermissionError(13, "Permission denied")
            module.held[key] = fd
        elif module.held.pop(key, None) is None:
            raise PermissionError(13, "Permission denied")

    module.locking = locking
    return module


def test_on_windows_msvcrt_locks_a_byte_beyond_the_holders_line(monkeypatch, tmp_path):
    msvcrt = fake_msvcrt()
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", msvcrt)
    with RunFolder(tmp_path, master=True) as folder:
        assert folder.lock.kind == "msvcrt" and msvcrt.held
        with pytest.raises(UserError, match=rf"another trainer is using .*\(pid {os.getpid()} on "):
            RunFolder(tmp_path, master=True).__enter__()
        assert FolderLock(tmp_path / ".lock").holder().startswith(f"pid {os.getpid()} on ")
    assert not msvcrt.held  # unlocked before the close
    assert {offset for _, (offset, _) in msvcrt.calls} == {FolderLock.MSVCRT_BYTE}
    assert FolderLock(tmp_path / ".lock").holder() is None
    with RunFolder(tmp_path, master=True):  # free again
        pass


# ----------------------------------------------------------------------------- a Python without Unix's extras

WINDOWS_LIKE = """
import os, sys
import numpy, torch  # (on Linux they read os.uname at import; on Windows they do without it)
sys.modules["fcntl"] = None
for name in ("uname", "pread", "pwrite", "fchmod", "O_CLOEXEC"):
    if hasattr(os, name):
        delattr(os, name)
import train
from smallgpt.cli import run_main
run_main(train.main, sys.argv[1:])
"""


@pytest.mark.slow
def test_training_and_resume_run_in_a_python_without_fcntl_uname_pread_fchmod(small_char_dataset, tmp_path):
    run = tmp_path / "run"
    for extra in ([], ["--init_from=resume", "--max_iters=6"]):
        result = subprocess.run([sys.executable, "-c", WINDOWS_LIKE, *tiny_run(small_char_dataset, run, *extra)],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    assert load_checkpoint(run)["iter_num"] == 6
    assert not (run / ".lock").exists()  # the lock file was the lock, and went with the run


def test_a_checkpoint_saves_without_os_fchmod(monkeypatch, tmp_path):
    monkeypatch.delattr(os, "fchmod")
    save_checkpoint({"format_version": 2, "model": {"w": torch.ones(2)}, "model_config": {}}, tmp_path / "ckpt.pt")
    assert torch.equal(load_checkpoint(tmp_path)["model"]["w"], torch.ones(2))


# ----------------------------------------------------------------------------- an mps-only machine

@pytest.fixture
def mps_only(monkeypatch):
    """torch says: no CUDA, Apple's mps is there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: torch.arange(4, dtype=torch.uint8))


def test_train_py_on_an_mps_machine_picks_mps_float32_eager_and_fused_adamw(mps_only, capsys):
    cfg, _ = train.load_config(["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=8"])
    procs = setup_processes(cfg.device, cfg.dtype, cfg.threads, cfg.model.n_embd)  # what train.main does
    assert (procs.device.type, procs.dtype, procs.ddp) == ("mps", torch.float32, False)  # as nanoGPT trains there
    assert setup_processes("auto", "auto", width=4096).dtype == torch.float32  # whatever the width
    assert not device.should_compile(cfg.compile, procs.device)  # compile=auto: off on mps
    assert device.should_compile("true", procs.device)  # asked for: no C++ compiler check (that is the CPU's)
    model = GPT(GPTConfig(block_size=8, vocab_size=32, n_layer=1, n_head=2, n_embd=16))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), procs.device.type)
    assert optimizer.defaults["fused"] is True  # torch has fused AdamW kernels for mps
    assert not torch.amp.GradScaler("mps", enabled=procs.dtype == torch.float16).is_enabled()
    assert device.resolve_dtype("float16", procs.device) == torch.float16  # an explicit choice is taken
    assert "mps" in rng_state(procs.device)  # dropout's mps generator is saved for exact resume
    assert device.autocast(procs.device, torch.float32).__class__.__name__ == "nullcontext"


def test_sample_py_on_an_mps_machine_picks_mps_and_float32(mps_only):
    assert device.resolve_device("auto").type == "mps" and device.resolve_device("mps").type == "mps"
    assert device.inference_dtype("auto", torch.device("mps")) == torch.float32


def test_without_mps_asking_for_it_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match="device mps is not available on this machine: use --device=cpu"):
        device.resolve_device("mps")


# ----------------------------------------------------------------------------- frictions of the lock

def test_resume_into_a_folder_another_trainer_holds_says_so(small_char_dataset, tmp_path):
    """The first trainer has not saved yet: the second is told who holds the folder, not 'train from
    scratch first'; the probe does not keep the lock."""
    run = tmp_path / "run"
    with RunFolder(run, master=True):
        with pytest.raises(UserError, match=rf"another trainer is using {re.escape(str(run))} \(pid {os.getpid()} on "
                                            rf".*\) and has not saved a checkpoint yet"):
            train.main(tiny_run(small_char_dataset, run, "--init_from=resume"))
    with pytest.raises(UserError, match=r"init_from=resume but there is no checkpoint at .*--init_from=scratch first"):
        train.main(tiny_run(small_char_dataset, run, "--init_from=resume"))


def test_a_run_that_fails_at_start_leaves_no_folder_it_made(tmp_path):
    missing = str(tmp_path / "no_such_dataset")
    with pytest.raises(UserError, match="not found"):
        train.main(tiny_run(missing, tmp_path / "new" / "run"))
    assert list(tmp_path.iterdir()) == []  # out_dir and the parent it made are gone
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not found"):
        train.main(tiny_run(missing, kept))
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]  # its .lock went, the folder stays
