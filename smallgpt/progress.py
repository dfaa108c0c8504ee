"""Progress reports that read well both on a terminal and in a log file.

On a terminal `progress(...)` is a tqdm bar, redrawn in place. Anywhere else (output redirected to
a file or a pipe, or under CI) a bar's carriage-return redraws would pile up into one enormous line
of a log, so it prints a plain line every `interval` seconds instead, and one when it closes:

    tokenizing: 52.4MB/210MB (25%), 8.10MB/s, 6.5s elapsed, ~19s left
    tokenizing: done, 210MB in 26.0s (8.08MB/s)

Both kinds are used the same way:

    for batch in progress(batches, desc="eval", unit="batch"):   # counts one per item
        ...
    with progress(n_bytes, desc="reading", unit="B", unit_scale=True) as bar:
        bar.update(len(chunk))

The first argument is an iterable or a total (an int). Reports go to stderr unless `file` says
otherwise; a bar is drawn only when that stream is a TTY and neither CI nor TERM=dumb is set.
Tested by tests/test_progress.py (python -m pytest tests/test_progress.py -q).
"""

import os
import sys
import time

INTERVAL_S = 10.0  # seconds between plain lines (a log of a long job stays readable, not silent)


def use_bar(stream) -> bool:
    """True when `stream` is an interactive terminal a redrawn bar is meant for."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        return False  # CI logs show a TTY's redraws as noise, even where they give the job a TTY
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(iterable_or_total=None, desc: str = "", unit: str = "it", *, total: int | None = None,
             unit_scale: bool = False, interval: float | None = None, file=None, enabled: bool = True,
             leave: bool = False):
    """A tqdm bar on a terminal, else a PlainProgress; both iterate, update(n), close(), and nest in `with`.

    iterable_or_total: what to iterate over (its len() is the total when it has one), or the total.
    interval: seconds between plain lines (default INTERVAL_S, read when called).
    enabled=False reports nothing at all (the object still counts).
    """
    interval = INTERVAL_S if interval is None else interval
    iterable = iterable_or_total
    if isinstance(iterable_or_total, int) and not isinstance(iterable_or_total, bool):
        iterable, total = None, iterable_or_total
    if total is None and iterable is not None:
        try:
            total = len(iterable)
        except TypeError:  # a generator: no total, the report shows counts and rate only
            pass
    file = sys.stderr if file is None else file
    if enabled and use_bar(file):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, leave=leave,
                    file=file, dynamic_ncols=True)
    return PlainProgress(iterable, total, desc, unit, unit_scale, interval if enabled else None, file)


def _amount(value: float, scale: bool) -> str:
    """12345 -> "12,345", or "12.3k" with SI prefixes; rates keep three significant digits."""
    if scale:
        for prefix in ("", "k", "M", "G", "T"):
            if abs(value) < 999.5 or prefix == "T":
                return f"{value:.3g}{prefix}"
            value /= 1000
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class PlainProgress:
    """Counts like tqdm, reporting as whole lines: one every `interval` seconds, and one at close.

    interval=None reports nothing (a disabled bar). Lines end with a newline and never hold '\\r'.
    """

    def __init__(self, iterable=None, total=None, desc="", unit="it", unit_scale=False,
                 interval: float | None = INTERVAL_S, file=None):
        self.iterable, self.total, self.desc = iterable, total, desc
        self.unit, self.unit_scale, self.interval = unit, unit_scale, interval
        self.file = sys.stderr if file is None else file
        self.n = 0
        self.start = self.last = time.monotonic()
        self.closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        except BaseException:  # an error, or the loop left early (GeneratorExit): no "done" line
            self.abandon()
            raise
        self.close()

    def __len__(self):
        return self.total or 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.abandon() if exc_type is not None else self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.interval is None:
            return
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._write(self.status(now))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.interval is not None:
            elapsed = time.monotonic() - self.start
            rate = f" ({self._rate(elapsed)})" if elapsed > 0 else ""
            self._write(f"{self._prefix()}done, {self._count(self.n)} in {_duration(elapsed)}{rate}")

    def abandon(self) -> None:
        """Close without the final line: after a failure, whose error message comes next."""
        self.closed = True

    def status(self, now: float | None = None) -> str:
        """The progress line as it would be printed now."""
        elapsed = (time.monotonic() if now is None else now) - self.start
        parts = [self._count(self.n, self.total or None)]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if elapsed > 0:
            parts.append(self._rate(elapsed))
        parts.append(f"{_duration(elapsed)} elapsed")
        if self.total and 0 < self.n < self.total and elapsed > 0:
            parts.append(f"~{_duration((self.total - self.n) * elapsed / self.n)} left")
        return self._prefix() + ", ".join(parts)

    def _prefix(self) -> str:
        return f"{self.desc}: " if self.desc else ""

    def _count(self, value, total=None) -> str:
        """"5/10 batches", "52.4MB/210MB", "12.3k it" (SI-scaled units other than "it" are glued on)."""
        if self.unit_scale and self.unit != "it":
            return "/".join(_amount(v, True) + self.unit for v in (value, total) if v is not None)
        text = "/".join(_amount(v, self.unit_scale) for v in (value, total) if v is not None)
        return f"{text} {self.unit}"

    def _rate(self, elapsed: float) -> str:
        return f"{self._count(self.n / elapsed)}/s"

    def _write(self, line: str) -> None:
        try:
            self.file.write(line + "\n")
            self.file.flush()
        except (OSError, ValueError):  # a closed or broken log stream must not stop the work
            pass
