"""Writing files so that a crash never leaves a half-written one: a temporary file, then ``os.replace``."""
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike], suffix: str = ".tmp", mode: int = 0o644) -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path`` in one step, when
    it fails the temporary file is removed and ``path`` is untouched. ``suffix`` is kept for writers that
    insist on one (``torch.export.save`` wants ``.pt2``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkstemp makes the file private; what we write is not
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
