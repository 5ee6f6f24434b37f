"""Ctrl-C (SIGINT) and SIGTERM (what a cluster scheduler sends) stop a run at the end of the current step,
after it has saved a resumable ``last.pt``; a second Ctrl-C stops at once."""
import signal
import threading
from typing import Optional

from hcgnet import distributed
from hcgnet.errors import HCGNetError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(HCGNetError):
    """The run stopped on a signal; ``exit_code`` is the shell's 128 + signal number (130, 143). ``quiet``: a
    process other than torchrun's rank 0, which leaves the saying to rank 0."""

    def __init__(self, message: str, signum: int, quiet: bool = False) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
        self.quiet = quiet


class StopSignals:
    """While active, SIGINT/SIGTERM only record a request; the trainer checks it after every step."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def requested(self, d: distributed.Dist) -> Optional[int]:
        """The signal that asked to stop, agreed by every process (a scheduler may signal them one by one)."""
        signum = self.signum or 0
        if d.enabled:
            signum = distributed.max_int(signum, d)
        return signum or None
