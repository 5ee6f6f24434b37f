"""Using a trained model: load it from any checkpoint, score it on a dataset, classify image files.

The library side of ``hcgnet eval`` and ``hcgnet predict``.
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from hcgnet.data import DataConfig, DataError, build_data, build_eval_transform, load_image
from hcgnet.errors import CheckpointError, HCGNetError
from hcgnet.models import create_model
from hcgnet.models.checkpoints import read_metadata
from hcgnet.models.registry import CIFAR_MEAN, CIFAR_STD
from hcgnet.distributed import Dist
from hcgnet.evaluation import AMP_DTYPES, evaluate


def load_model(path: str, model_name: Optional[str] = None) -> Tuple[nn.Module, Dict[str, str]]:
    """A model built and loaded from a checkpoint that says what it is (hcgnet's ``.safetensors`` and
    training checkpoints do); for published checkpoints pass ``model_name``. Returns ``(model, metadata)``."""
    meta = read_metadata(path)
    name = model_name or meta.get("model_name")
    if not name:
        raise CheckpointError(f"{path} does not say which model it holds; pass --model NAME")
    return create_model(name, checkpoint_path=path).eval(), meta


def data_config_of(model: nn.Module, meta: Dict[str, str]) -> DataConfig:
    """The eval preprocessing a checkpoint was trained with, or the variant's standard one."""
    if meta.get("data_config"):
        return DataConfig.from_dict(json.loads(meta["data_config"]))
    cfg = model.pretrained_cfg
    classes = json.loads(meta["class_names"]) if meta.get("class_names") else [str(i) for i in range(model.num_classes)]
    cifar = cfg["input_size"][-1] == 32
    in_chans = model.stem.conv0.in_channels
    mean, std = (CIFAR_MEAN, CIFAR_STD) if cifar else (cfg["mean"], cfg["std"])
    if in_chans != len(mean):  # e.g. a grayscale model: the channel average of the statistics
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return DataConfig(
        name="cifar10" if cifar else "imagefolder", input_size=(in_chans, *cfg["input_size"][1:]),
        mean=tuple(mean), std=tuple(std),
        resize=None if cifar else int(cfg["input_size"][-1] / cfg["crop_pct"]), class_names=classes,
    )


def evaluate_checkpoint(
    path: str, data: str, data_dir: Optional[str] = None, split: str = "test", batch_size: int = 256,
    workers: int = 2, model_name: Optional[str] = None, device: Optional[str] = None, amp: str = "none",
    channels_last: bool = False,
) -> Dict[str, Any]:
    """Top-1, top-5 and loss of a checkpoint on a dataset's ``split`` ("test" or "val"); ``amp`` ("none",
    "bf16" or "fp16") and ``channels_last`` are the fast inference paths (see BENCHMARKS.md)."""
    amp_dtype = AMP_DTYPES.get(amp, "?")
    if amp_dtype == "?":
        raise HCGNetError(f"unknown --amp {amp!r}; use none, bf16 or fp16")
    model, meta = load_model(path, model_name)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # The split the checkpoint was trained with: an ImageFolder without train/ holds its test set out the
    # same way as the validation set, and an ImageFolder model sees the image size it was trained at.
    config = data_config_of(model, meta)
    image_size = config.input_size[-1] if data.startswith("imagefolder") else None
    bundle = build_data(data, data_dir=data_dir, val_size=float(meta.get("val_size", 5000)),
                        seed=int(meta.get("seed", 0)), download=False, image_size=image_size)
    if bundle.num_classes != model.num_classes:
        raise CheckpointError(
            f"{path} classifies {model.num_classes} classes but {data} has {bundle.num_classes}; "
            "evaluate it on the dataset it was trained for"
        )
    trained_on = json.loads(meta["class_names"]) if meta.get("class_names") else None
    if trained_on is not None and list(trained_on) != list(bundle.config.class_names):
        raise CheckpointError(
            f"{path} was trained on the classes {', '.join(trained_on[:5])}{', ...' if len(trained_on) > 5 else ''} "
            f"but {data} has {', '.join(bundle.config.class_names[:5])}"
            f"{', ...' if len(bundle.config.class_names) > 5 else ''} (in this order); evaluate it on the dataset it "
            "was trained for"
        )
    in_chans = model.stem.conv0.in_channels
    if bundle.config.input_size[0] != in_chans:
        raise CheckpointError(f"{path} takes {in_chans}-channel images but {data} gives {bundle.config.input_size[0]}")
    dataset = bundle.test if split == "test" else bundle.val
    if len(dataset) == 0:
        raise DataError(f"the {split} split of {data} is empty: nothing to evaluate")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    model = model.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    metrics = evaluate(model, loader, Dist(device=dev), amp_dtype, channels_last)
    return {"checkpoint": str(path), "data": data, "split": split, **metrics}


@torch.no_grad()
def predict(
    path: str, images: Sequence[str], topk: int = 5, model_name: Optional[str] = None
) -> List[Dict[str, Any]]:
    """The ``topk`` classes and probabilities for each image file."""
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise DataError(f"no such image: {missing[0]}")
    model, meta = load_model(path, model_name)
    config = data_config_of(model, meta)
    transform = build_eval_transform(config)
    batch = torch.stack([transform(load_image(p, hint="")) for p in images])
    probs = torch.softmax(model(batch), dim=1)
    k = min(topk, probs.shape[1])
    top = probs.topk(k, dim=1)
    names = list(config.class_names)
    return [
        {"image": str(Path(p)), "top": [{"class": names[i] if i < len(names) else str(i), "index": int(i),
                                         "probability": float(v)} for v, i in zip(values, indices)]}
        for p, values, indices in zip(images, top.values.tolist(), top.indices.tolist())
    ]
