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

The lock is an advisory lock (flock) on out_dir/.lock, held by the first process for the whole run:
the kernel drops it when the process ends, however it ends, so a `kill -9` never leaves a stale
lock. Readers (sample.py, eval.py, hf.py export, eval_only) take no lock: checkpoint saves are
atomic renames, so they see the old checkpoint or the new one.
"""

import importlib.util
import json
import os
import threading
import time
from pathlib import Path

import plot
from checkpoint import CHECKPOINT_NAME, save_checkpoint
from cli import UserError

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
        self.lock_fd = None
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
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                self.lock_fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise UserError(f"cannot write to out_dir {self.path}: {e.strerror or e}; choose another "
                                f"--out_dir") from None
            self._lock()
        return self

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX (Windows): no lock, as before
            return
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.lock_fd, 200, 0).decode(errors="replace").strip() or "unknown process"
            os.close(self.lock_fd)
            self.lock_fd = None
            raise UserError(f"another trainer is using {self.path} ({holder}); wait for it to finish or stop it, "
                            f"or choose another --out_dir") from None
        os.ftruncate(self.lock_fd, 0)
        os.pwrite(self.lock_fd, f"pid {os.getpid()} on {os.uname().nodename}, since "
                                f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)

    def __exit__(self, *exc):
        if self.logger is not None:
            self.logger.finish()
        if self.plotter is not None:
            self.plotter.join()
        if self.unplotted:  # the last evaluations, drawn before the lock is let go
            plot.save_loss_plot(self.path)
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # releases the lock
            self.lock_fd = None
        return False

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
                  f"(pip install -e \".[plot]\"; python plot.py {self.path} draws it later)", flush=True)

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
            if not busy and time.time() - self.plotted_at >= PLOT_EVERY_S:
                # out_dir/loss.png (when matplotlib is installed), drawn in a thread: about a second of
                # work that the training need not wait for; save_loss_plot never raises
                self.plotted_at, self.unplotted = time.time(), False
                self.plotter = threading.Thread(target=plot.save_loss_plot, args=(self.path,), daemon=True)
                self.plotter.start()


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
