"""Stopping a run cleanly: SIGTERM (a scheduler's preemption) or Ctrl-C asks the run to stop.

    with StopRequest() as stop:       # installs the handlers; the previous ones come back on exit
        ...
        if stop.requested: ...        # the loop asks at fixed points (every rank agrees: distributed.any_rank)

SIGTERM or a first Ctrl-C records the request and prints one line; train.py then finishes the update
under way (or abandons an evaluation), saves a checkpoint and exits 0. A second Ctrl-C raises
KeyboardInterrupt at once. `request(reason)` asks the same from code (train.main's hook does).
The handler only records the request (and writes its note with os.write, which is safe inside a
signal handler); nothing else runs inside it.
"""

import os
import signal


class StopRequest:
    """SIGTERM / first Ctrl-C -> `requested`; second Ctrl-C -> KeyboardInterrupt."""

    def __init__(self):
        self.reason = None  # "SIGTERM", "SIGINT", or what request() was given
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str = "a stop request") -> None:
        self.reason = self.reason or reason

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup / background jobs ignore SIGINT: keep that
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def _handle(self, signum, frame):
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: leave now (a save in progress removes its temp file)
            return
        self.reason = signal.Signals(signum).name
        if int(os.environ.get("RANK", "0")) == 0:
            again = " (Ctrl-C again to quit at once)" if signum == signal.SIGINT else ""
            os.write(2, f"\n{self.reason} received: finishing this step (or abandoning the evaluation), "
                        f"then saving a checkpoint and exiting{again}\n".encode())
