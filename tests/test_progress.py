"""progress.py: a bar on a terminal, whole lines in a log (no carriage returns), nothing when disabled.

    python -m pytest tests/test_progress.py -q
"""

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from conftest import REPO_ROOT, SHAKESPEARE, run_script
from smallgpt.progress import PlainProgress, progress, use_bar


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_in_a_log(monkeypatch):
    log = io.StringIO()
    bar = progress(1000, "reading", "B", unit_scale=True, interval=0, file=log)
    assert isinstance(bar, PlainProgress)
    for _ in range(4):
        bar.update(250)
    bar.close()
    bar.close()  # a second close adds nothing
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 5 and lines[0].startswith("reading: 250B/1kB (25%)") and lines[-1].startswith("reading: done, 1kB")
    counted = io.StringIO()
    assert list(progress(range(3), "items", "window", interval=0, file=counted)) == [0, 1, 2]
    assert counted.getvalue().splitlines()[-1].startswith("items: done, 3 window in")


def test_quiet_between_intervals_and_silent_when_disabled():
    log = io.StringIO()
    bar = progress(10, "slow", interval=3600, file=log)
    for _ in range(10):
        bar.update()
    assert log.getvalue() == ""  # nothing until the interval has passed ...
    bar.close()
    assert log.getvalue().count("\n") == 1  # ... then only the closing line
    silent = io.StringIO()
    with progress(10, "off", enabled=False, file=silent, interval=0) as bar:
        bar.update(10)
    assert silent.getvalue() == ""


def test_no_done_line_after_a_failure():
    log = io.StringIO()
    with pytest.raises(KeyError):
        with progress(10, "work", interval=3600, file=log) as bar:
            bar.update(3)
            raise KeyError("boom")
    with pytest.raises(KeyError):
        for _ in progress(range(10), "loop", interval=3600, file=log):
            raise KeyError("boom")
    assert log.getvalue() == ""  # the error message, printed next, is the last word


def test_bar_only_on_a_terminal_and_not_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_bar(FakeTTY()) and not use_bar(io.StringIO())
    bar = progress(5, "tty", file=FakeTTY())
    assert not isinstance(bar, PlainProgress)  # tqdm
    bar.close()
    monkeypatch.setenv("CI", "true")
    assert not use_bar(FakeTTY())
    monkeypatch.setenv("CI", "0")
    monkeypatch.setenv("TERM", "dumb")
    assert not use_bar(FakeTTY())


def test_prepare_log_has_lines_not_carriage_returns(tmp_path):
    if not SHAKESPEARE.is_file():
        pytest.skip(f"corpus not found at {SHAKESPEARE}")
    env = {"CI": ""}
    result = run_script("prepare/text.py", "--input", str(SHAKESPEARE), "--out_dir", str(tmp_path / "p"),
                        "--tokenizer", "char", env=env)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\r" not in result.stdout
    lines = result.stderr.splitlines()
    assert any(line.startswith("vocabulary: done") for line in lines)
    assert any(line.startswith("tokenizing: done") for line in lines)


def test_prepare_on_a_terminal_draws_a_bar(tmp_path):
    """The same run with stderr on a pseudo-terminal redraws a tqdm bar (so the test above can fail)."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"corpus not found at {SHAKESPEARE}")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm draws nothing 0 wide
    env = dict(os.environ, CI="", TERM="xterm", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "prepare" / "text.py"), "--input", str(SHAKESPEARE),
                             "--out_dir", str(tmp_path / "p"), "--tokenizer", "char"],
                            stdout=subprocess.DEVNULL, stderr=slave, cwd=REPO_ROOT, env=env)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0
    assert b"\r" in output and b"tokenizing: done" not in output
