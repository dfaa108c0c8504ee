"""out_dir as one run's folder: the lock, config.json, metrics.jsonl, loss.png and the wandb logger.

    with RunFolder("out", master=True) as folder:     # takes out_dir/.lock for the whole run
        folder.check_fresh_start(overwrite=False)      # a fresh run never replaces ckpt.pt unasked
        folder.start(config_dict, resumed=False, iter_num=0, evaluated_at=-1)
        folder.record({"iter": 10, "kind": "train", "loss": 2.31, ...})   # a line of metrics.jsonl
        folder.write_checkpoint(checkpoint_dict, iter_num=10, why="evaluation")  # atomic; folder.holds says what

metrics.jsonl holds one JSON object per line: a "train" record per training line (the metrics of
the updates since the previous line, averaged, with lr and speed) and an "eval" record per
evaluation (its losses, lr, elapsed_s). Every record has "iter" and "kind"; older files have only
evaluations, without "kind". A resumed run first drops the records written after its checkpoint
(by a run that went on past it), so the file continues without repeats or gaps.

The lock (`FolderLock`) is held by the first process for the whole run on out_dir/.lock, which also
names the holder ("pid 4242 on host, since ..."): an advisory lock (flock) on POSIX, a byte-range lock
(msvcrt.locking) on Windows; either is dropped by the OS when the process ends, however it ends, so a
`kill -9` never leaves a stale lock. Where neither exists, .lock itself is the lock (created with
O_EXCL, removed at the end); one left by a process that died is taken over when it names a pid of this
host that is no longer running. Readers (sample.py, eval.py, hf.py export, eval_only) take no lock:
checkpoint saves are atomic renames, so they see the old checkpoint or the new one. A run that fails
before writing anything (a missing dataset) leaves no folder behind that it made.
"""

import importlib.util
import json
import os
import platform
import re
import threading
import time
from pathlib import Path

from smallgpt import plot
from smallgpt.checkpoint import CHECKPOINT_NAME, save_checkpoint
from smallgpt.errors import UserError

METRICS_NAME = "metrics.jsonl"
LOCK_NAME = ".lock"
PLOT_EVERY_S = 30.0  # loss.png is redrawn at most this often while training, and at the end


class RunFolder:
    """out_dir as this run's (see the module docstring); only the first process writes."""

    def __init__(self, out_dir: str, master: bool, read_only: bool = False):
        self.path, self.master, self.read_only = Path(out_dir), master, read_only
        self.ckpt_path = self.path / CHECKPOINT_NAME
        self.holds = "nothing saved yet"  # what ckpt.pt holds, for the run's messages and its last line
        self.saved_at = time.time()  # when this run last saved (checkpoint_interval_s counts from here)
        self.lock = FolderLock(self.path / LOCK_NAME)
        self.made: list[Path] = []  # the folders this run creates (out_dir and missing parents), deepest first
        self.made_lock = False  # whether this run created out_dir/.lock
        self.logger = None  # wandb's run, when wandb_log is on
        self.plotter: threading.Thread | None = None  # draws loss.png beside the training
        self.plotted_at, self.unplotted = 0.0, False

    @property
    def writes(self) -> bool:
        return self.master and not self.read_only

    def __enter__(self):
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"out_dir {self.path} is a file, not a folder; choose another --out_dir")
        if self.writes:
            self.made = folders_to_make(self.path)
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                self.made_lock = not (self.path / LOCK_NAME).exists()
                self.lock.acquire()
            except OSError as e:
                self.remove_if_unused()
                raise UserError(f"cannot write to out_dir {self.path}: {e.strerror or e}; choose another "
                                f"--out_dir") from None
            except UserError:
                self.made_lock = False  # another trainer's
                raise
        return self

    def __exit__(self, exc_type, *exc):
        if self.logger is not None:
            self.logger.finish()
        if self.plotter is not None:
            self.plotter.join()
        if self.unplotted:  # the last evaluations, drawn before the lock is let go
            plot.save_loss_plot(self.path)
        if exc_type is not None:
            self.remove_if_unused()
        self.lock.release()
        return False

    def remove_if_unused(self) -> None:
        """After a failure: .lock if this run made it, then each folder this run made that is empty."""
        if self.made_lock:
            self.lock.release(remove=True)
        for folder in self.made:  # deepest first; rmdir leaves a folder that holds anything
            try:
                folder.rmdir()
            except OSError:
                break

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_NAME

    def check_fresh_start(self, overwrite: bool) -> None:
        if self.ckpt_path.exists() and not overwrite:
            raise UserError(f"{self.ckpt_path} already exists: continue that run with --init_from=resume, train "
                            f"into a new --out_dir, or pass --overwrite=true to replace it")

    def start(self, config: dict, resumed: bool, iter_num: int, evaluated_at: int, wandb: dict | None = None) -> None:
        """Write config.json; continue metrics.jsonl from the checkpoint (or start it afresh); open wandb
        (`wandb`: wandb.init's project and name, or None)."""
        self.saved_at = time.time()
        if resumed:
            self.holds = f"iteration {iter_num} (the checkpoint resumed from)"
        if not self.writes:
            return
        (self.path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if resumed:
            trim_metrics(self.metrics_path, iter_num, evaluated_at)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        if wandb is not None:
            self.logger = open_wandb(config, dir=str(self.path), **wandb)
        if importlib.util.find_spec("matplotlib") is None:
            print(f"{self.path / 'loss.png'} will not be drawn: matplotlib is not installed "
                  f"(pip install -e \".[plot]\"; python -m smallgpt.plot {self.path} draws it later)", flush=True)

    def write_checkpoint(self, checkpoint: dict | None, iter_num: int, why: str) -> None:
        """Save ckpt.pt atomically (the first process writes; the others pass None) and note what it holds."""
        if self.master:
            save_checkpoint(checkpoint, self.ckpt_path)
            print(f"saved checkpoint to {self.ckpt_path} (iteration {iter_num}, {why})", flush=True)
        self.holds, self.saved_at = f"iteration {iter_num} ({why})", time.time()

    def record(self, record: dict) -> None:
        """One record (with "iter" and "kind"): a line of metrics.jsonl, and wandb's kind/key values."""
        if not self.writes:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.logger is not None:
            self.logger.log({f"{record['kind']}/{k}": v for k, v in record.items() if k not in ("iter", "kind")},
                            step=record["iter"])
        if record["kind"] == "eval":
            self.unplotted = True
            busy = self.plotter is not None and self.plotter.is_alive()
            # the evaluation before the first update is a single point, not yet a curve: it is drawn with
            # the next one (or at the end), which spares short runs a picture's ~0.3 s of CPU
            if record["iter"] > 0 and not busy and time.time() - self.plotted_at >= PLOT_EVERY_S:
                # out_dir/loss.png (when matplotlib is installed), drawn in a thread: about a second of
                # work that the training need not wait for; save_loss_plot never raises
                self.plotted_at, self.unplotted = time.time(), False
                self.plotter = threading.Thread(target=plot.save_loss_plot, args=(self.path,), daemon=True)
                self.plotter.start()


def folders_to_make(path: Path) -> list[Path]:
    """The folders `path.mkdir(parents=True)` would create, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _lock_module():
    """(kind, module) of this OS's file lock: ("flock", fcntl) on POSIX, ("msvcrt", msvcrt) on Windows,
    ("file", None) where there is neither (then the lock file itself is the lock)."""
    try:
        import fcntl
        return "flock", fcntl
    except ImportError:
        pass
    try:
        import msvcrt
        return "msvcrt", msvcrt
    except ImportError:
        return "file", None


def pid_alive(pid: int) -> bool:
    """Whether a process of this host runs with this pid (True when that cannot be told safely)."""
    if os.name == "nt":  # os.kill(pid, 0) on Windows would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    return True


class FolderLock:
    """One trainer per run folder: the lock on out_dir/.lock (see the module docstring).

        lock = FolderLock(out_dir / ".lock")
        lock.acquire()            # UserError naming the holder when another process holds it
        lock.holder()             # who holds it now (None: nobody), without taking it
        lock.release()
    """

    MSVCRT_BYTE = 1 << 20  # Windows locks this byte, beyond the holder's line, which others can still read

    def __init__(self, path: Path):
        self.path = path
        self.fd = None  # the open lock file (flock, msvcrt)
        self.owned = False  # this process holds the lock
        self.written = ""  # the line this process wrote into .lock
        self.kind, self.module = _lock_module()

    def identity(self) -> str:
        return f"pid {os.getpid()} on {platform.node()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"

    def acquire(self) -> None:
        if self.kind == "file":
            return self._acquire_file()
        for _ in range(5):
            # (O_CLOEXEC where it exists; Python's descriptors are not inherited by default anyway)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0),
                         0o644)
            if not self._try_lock(fd):
                holder = self._read(fd)
                os.close(fd)
                raise self._held(holder)
            if self.kind != "flock" or _same_file(fd, self.path):
                break
            os.close(fd)  # a failed run removed the file we locked (see release): lock the one there now
        else:
            raise UserError(f"could not lock {self.path}: it keeps being replaced; choose another --out_dir")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        self.written = self.identity()
        os.write(fd, self.written.encode())
        self.fd, self.owned = fd, True

    def _try_lock(self, fd: int) -> bool:
        try:
            if self.kind == "flock":
                self.module.flock(fd, self.module.LOCK_EX | self.module.LOCK_NB)
            else:
                os.lseek(fd, self.MSVCRT_BYTE, os.SEEK_SET)
                self.module.locking(fd, self.module.LK_NBLCK, 1)
        except OSError:  # BlockingIOError (flock), PermissionError (msvcrt): held by another process
            return False
        return True

    def _unlock(self, fd: int) -> None:
        if self.kind == "flock":
            self.module.flock(fd, self.module.LOCK_UN)
        else:
            os.lseek(fd, self.MSVCRT_BYTE, os.SEEK_SET)
            self.module.locking(fd, self.module.LK_UNLCK, 1)

    @staticmethod
    def _read(fd: int) -> str:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 200).decode(errors="replace").strip()

    def _held(self, holder: str, unsure: bool = False) -> UserError:
        fix = f"; if no trainer is running there, remove {self.path}" if unsure else ""
        return UserError(f"another trainer is using {self.path.parent} ({holder or 'unknown process'}); wait for it "
                         f"to finish or stop it, or choose another --out_dir{fix}")

    def _acquire_file(self) -> None:
        """Without an OS lock: create .lock exclusively; take over one whose holder died on this host."""
        for attempt in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
            except FileExistsError:
                holder = self._file_holder()
                if holder is None and attempt == 0:  # stale: its process is gone
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._held(holder or "", unsure=True) from None
            self.written = self.identity()
            os.write(fd, self.written.encode())
            os.close(fd)
            self.owned = True
            return
        raise self._held("", unsure=True)  # taken over by another process meanwhile

    def _file_holder(self) -> str | None:
        """The line of an existing .lock whose holder may be alive; None when it is stale (or gone)."""
        try:
            text = self.path.read_text(errors="replace").strip()
        except FileNotFoundError:
            return None
        found = re.match(r"pid (\d+) on (.*?), since", text)
        if found and found.group(2) == platform.node() and not pid_alive(int(found.group(1))):
            return None
        return text or "a lock file naming no process"

    def holder(self) -> str | None:
        """Who holds the lock now (their line), or None; the lock is only probed, never kept."""
        if self.owned:
            return self.written.strip()
        if not self.path.exists():
            return None
        if self.kind == "file":
            return self._file_holder()
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError:
            return None
        try:
            if not self._try_lock(fd):
                return self._read(fd) or "unknown process"
            self._unlock(fd)
            return None
        finally:
            os.close(fd)

    def release(self, remove: bool = False) -> None:
        """Let the lock go (and remove .lock, when asked, or when the file itself is the lock)."""
        if not self.owned:
            return
        if self.kind == "file":
            try:
                if self.path.read_text(errors="replace") == self.written:  # still ours
                    self.path.unlink()
            except OSError:
                pass
        else:
            if remove and os.name != "nt":  # removed while still locked: see acquire's check
                self.path.unlink(missing_ok=True)
            if self.kind == "msvcrt":  # Windows drops a closed file's locks only "eventually": unlock first
                try:
                    self._unlock(self.fd)
                except OSError:
                    pass
            os.close(self.fd)  # releases the lock
            self.fd = None
            if remove and os.name == "nt":  # Windows removes no open file: after the close
                try:
                    self.path.unlink()
                except OSError:
                    pass
        self.owned = False


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file fd is still the file at path."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def trim_metrics(path: Path, iter_num: int, evaluated_at: int) -> None:
    """Drop the records a run wrote after its checkpoint (training lines after iter_num, evaluations
    after evaluated_at), so that the resumed run's records continue the file without repeats or gaps."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            if record["iter"] <= (iter_num if record.get("kind") == "train" else evaluated_at):
                kept.append(line)
        except (ValueError, KeyError, TypeError, AttributeError):  # a line cut short by a crash
            pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def open_wandb(config: dict, project: str, name: str, dir: str):
    """A wandb run logging into out_dir/wandb (WANDB_MODE=offline works offline)."""
    try:
        import wandb
    except ImportError:
        raise UserError("wandb_log=true needs wandb: pip install wandb (or set --wandb_log=false)") from None
    return wandb.init(project=project, name=name, dir=dir, config=config)
