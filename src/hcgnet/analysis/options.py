"""What the three studies share with ``hcgnet eval``: ``--amp`` and ``--workers`` (refused in one line,
:class:`~hcgnet.errors.HCGNetError`, before any work; the device comes from :func:`hcgnet.evaluation.device_of`),
and progress (a bar on a terminal, a line every 30 s elsewhere)."""
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import torch
from tqdm import tqdm

from hcgnet.errors import CheckpointError, HCGNetError
from hcgnet.evaluation import AMP_DTYPES
from hcgnet.files import check_output_folder  # noqa: F401  (the shared check; importable from here as before)


def amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp`` (none, bf16, fp16) on ``device``. fp16 is refused on the CPU, as
    ``hcgnet eval`` refuses it (CPUs have no fast fp16 convolutions; bf16 is theirs)."""
    if amp not in AMP_DTYPES:
        raise HCGNetError(f"unknown --amp {amp!r}; use none, bf16 or fp16")
    if amp == "fp16" and torch.device(device).type != "cuda":
        raise HCGNetError("--amp fp16 needs a GPU; on the CPU use --amp bf16")
    return AMP_DTYPES[amp]


def check_workers(workers: int) -> int:
    if workers < 0:
        raise HCGNetError(f"--workers must be 0 or more, got {workers}")
    return workers


#: Units of progress whose plural is not the name + "s".
PLURALS = {"batch": "batches"}
#: Seconds between progress lines when stderr is not a terminal (as ``hcgnet eval``'s).
LOG_EVERY_S = 30.0


class ProgressLines:
    """Progress where a bar would be noise (a log file, CI, a cluster job): a line every :data:`LOG_EVERY_S`
    through ``log``, with the count so far and the time left at the rate so far."""

    def __init__(self, total: int, what: str, unit: str, log: Callable[[str], None]) -> None:
        self.total, self.what, self.unit, self.log = total, what, unit, log
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= LOG_EVERY_S and self.done < self.total:
            self.last = now
            left = (self.total - self.done) * (now - self.start) / max(self.done, 1)
            units = self.unit if self.total == 1 else PLURALS.get(self.unit, self.unit + "s")
            self.log(f"{self.what}: {self.done}/{self.total} {units}, about {left:.0f} s left")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, what: str, unit: str = "batch", show: Optional[bool] = None,
             log: Optional[Callable[[str], None]] = None):
    """A tqdm bar on a terminal, :class:`ProgressLines` elsewhere (``show=None``); ``show=False``: nothing.
    A context manager with ``update(n)``."""
    if show is None and not sys.stderr.isatty():
        return ProgressLines(total, what, unit, log or _on_stderr)
    return tqdm(total=total, desc=what, unit=unit, disable=show is False, leave=False)


def progress_over(iterable, what: str, unit: str = "batch", show: Optional[bool] = None,
                  log: Optional[Callable[[str], None]] = None) -> Iterator:
    """The items of a sized ``iterable`` (a DataLoader), with :func:`progress` advancing one per item."""
    with progress(len(iterable), what, unit, show, log) as bar:
        for item in iterable:
            yield item
            bar.update(1)


def _on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def checkpoint_file(path: Union[str, Path], flag: str = "--checkpoint") -> Path:
    """``path`` if it is a file; for a folder (a run's, most often) a one-line error naming the checkpoints in
    it, rather than "not found". A missing path is left to the loader, which says so."""
    p = Path(path)
    if p.is_dir():
        found = sorted(q.name for q in p.iterdir() if q.suffix in (".safetensors", ".pt", ".pth", ".tar"))
        hint = (f"e.g. {flag} {p / ('best.safetensors' if 'best.safetensors' in found else found[0])}" if found
                else "give a .safetensors or .pt file")
        raise CheckpointError(f"{flag} {p} is a folder, not a checkpoint file; {hint}")
    return p
