"""What a result file records so that its numbers can be cited and reproduced: the code (hcgnet's version, and its
git commit when run from a clone), the libraries, the machine (CPU model and the instruction set torch's kernels
use, threads, device), when, the command line, and each checkpoint by absolute path and SHA-256.

Every study writes it under ``"provenance"`` (``eval``'s metrics.json, ``attack``'s robustness.json, ``dissect``'s
and ``attention``'s summary.json, a training run's results.json)."""
import datetime
import functools
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

_CHUNK = 1 << 20


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB chunks: a 100 MB checkpoint takes a fraction of a second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def source_commit() -> Optional[str]:
    """The git commit of the clone hcgnet runs from (``+dirty`` with uncommitted changes to tracked files), or None
    for an installed copy or without git."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        run = functools.partial(subprocess.run, cwd=root, capture_output=True, text=True, timeout=10, check=True)
        commit = run(["git", "rev-parse", "HEAD"]).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(checkpoints: Iterable[Any] = (), device: Any = None) -> Dict[str, Any]:
    """The record described above; ``checkpoints``: the files the result comes from; ``device``: where it ran."""
    import torch

    from hcgnet import __version__

    record: Dict[str, Any] = {"hcgnet": __version__}
    commit = source_commit()
    if commit is not None:
        record["git_commit"] = commit
    record.update(
        torch=torch.__version__, python=platform.python_version(), platform=platform.platform(),
        cpu=cpu_model(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
        threads=torch.get_num_threads(), device=str(device) if device is not None else None,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        argv=list(sys.argv),
    )
    files = [os.path.abspath(p) for p in checkpoints]
    if files:
        record["checkpoints"] = [{"path": p, "sha256": file_sha256(p) if os.path.isfile(p) else None} for p in files]
    return record
