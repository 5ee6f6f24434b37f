"""A trained detector's files: what its metadata holds and how it is built again for ``detect eval/predict``.

The weights are a safetensors file (``final.safetensors``) or a training ``last.pt`` (read with
``weights_only=True``); both carry the metadata below, so the detector is rebuilt with the same arguments
and its state dict loads strictly. Nothing here imports the trainer.
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from hcgnet.errors import CheckpointError
from hcgnet.models.checkpoints import (check_checkpoint_file, is_safetensors_file, read_metadata, read_safetensors,
                                      torch_load_weights_only)

#: What a detector checkpoint says about itself (all strings, as safetensors metadata must be).
DETECTOR_KEYS = ("detector", "model_name", "task", "num_classes", "class_names", "category_ids", "min_size",
                 "max_size", "trainable_stages", "detector_options")


def detector_metadata(model: str, task: str, class_names: List[str], category_ids: List[int], min_size: int,
                      max_size: int, trainable_stages: int, options: Optional[Dict[str, Any]] = None
                      ) -> Dict[str, str]:
    return {"detector": "1", "model_name": model, "task": task, "num_classes": str(len(category_ids) + 1),
            "class_names": json.dumps(list(class_names)), "category_ids": json.dumps(list(category_ids)),
            "min_size": str(min_size), "max_size": str(max_size), "trainable_stages": str(trainable_stages),
            "detector_options": json.dumps(options or {})}


def _read(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    check_checkpoint_file(path)
    if is_safetensors_file(path):
        return read_safetensors(path)
    state = torch_load_weights_only(path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} is not a detector checkpoint (no model weights)")
    return state["model"], {k: str(state[k]) for k in DETECTOR_KEYS if k in state}


def _decode(path: Path, meta: Dict[str, str], classifier: str = "for a classifier use hcgnet eval/predict"
            ) -> Dict[str, Any]:
    if meta.get("detector") != "1":
        raise CheckpointError(f"{path} is not a detector checkpoint (written by hcgnet detect train); {classifier}")
    return {"model": meta["model_name"], "task": meta["task"], "num_classes": int(meta["num_classes"]),
            "class_names": json.loads(meta["class_names"]), "category_ids": json.loads(meta["category_ids"]),
            "min_size": int(meta["min_size"]), "max_size": int(meta["max_size"]),
            "trainable_stages": int(meta["trainable_stages"]),
            "options": json.loads(meta.get("detector_options", "{}"))}


def is_detector_file(path) -> bool:
    """Whether ``path`` is a file ``hcgnet detect train`` wrote (its metadata says so); False for anything else,
    unreadable files included (their own loader says what is wrong with them)."""
    try:
        return _metadata(Path(path)).get("detector") == "1"
    except (CheckpointError, OSError, ValueError, RuntimeError):
        return False


def _metadata(path: Path) -> Dict[str, str]:
    """The metadata alone: a safetensors file's header (no tensors read; known by name or first bytes, as
    :func:`_read` knows it); a last.pt has to be loaded."""
    check_checkpoint_file(path)
    return read_metadata(path) if is_safetensors_file(path) else _read(path)[1]


def read_detector_info(path, classifier: str = "for a classifier use hcgnet eval/predict") -> Dict[str, Any]:
    """What the detector in ``path`` is (as :func:`load_detector` returns it), from its metadata alone: enough
    to build it again, e.g. on the meta device to count it (``hcgnet info --detection FILE``). ``classifier``:
    what the refusal of a file that is not a detector's tells its user to do instead."""
    path = Path(path)
    return _decode(path, _metadata(path), classifier)


def load_detector(path, device: torch.device = torch.device("cpu")) -> Tuple[nn.Module, Dict[str, Any]]:
    """The detector in ``path`` (eval mode, on ``device``) and its metadata, decoded."""
    from hcgnet.detection.models import build_detector

    path = Path(path)
    weights, meta = _read(path)
    info = _decode(path, meta)
    model = build_detector(info["model"], info["task"], num_classes=info["num_classes"], trained=True,
                           trainable_stages=info["trainable_stages"], min_size=info["min_size"],
                           max_size=info["max_size"], **info["options"])
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit {info['model']} ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), info
