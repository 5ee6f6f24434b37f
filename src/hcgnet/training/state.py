"""Training checkpoints: everything a run needs to continue exactly, written atomically.

A checkpoint holds model, optimiser, scheduler, grad scaler, EMA, epoch, step, position inside the epoch,
the best validation score, and the RNG states of torch (CPU and CUDA), NumPy and Python. It holds only
tensors and plain Python values, so it is read back with ``torch.load(weights_only=True)``.
"""
import errno
import random
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from hcgnet.errors import CheckpointError, HCGNetError
from hcgnet.files import atomic_path
from hcgnet.models.checkpoints import torch_load_weights_only


def rng_state() -> Dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointWriteError(HCGNetError):
    """A checkpoint could not be written (full disk, ...); the previous file is intact."""

    def __init__(self, path: Path, reason: str, disk_full: bool) -> None:
        super().__init__(f"{reason} writing {path}")
        self.path, self.reason, self.disk_full = Path(path), reason, disk_full


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file: a crash or a failed write leaves the previous file intact and
    no temporary file behind."""
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except OSError as e:
        disk_full = e.errno in DISK_FULL
        raise CheckpointWriteError(path, "no space left" if disk_full else (e.strerror or str(e)), disk_full) from None
    except RuntimeError as e:  # torch's own writer reports a failed write (e.g. a full disk) this way
        if "write" not in str(e):
            raise
        raise CheckpointWriteError(path, f"cannot write ({str(e).splitlines()[0]}; is the disk full?)", True) from None


def load_training_state(path: Path) -> Dict[str, Any]:
    state = torch_load_weights_only(Path(path))
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"{path} is not an hcgnet training checkpoint (no model/epoch); cannot resume from it")
    return state
