"""Preprocessing that fits the model and the data, as timm's ``resolve_data_config`` does: the input size, crop
and statistics come from the model's ``pretrained_cfg`` (32 px whole images for the CIFAR stem, a 224 px centre
crop of a 256 resize for the ImageNet stem), unless ``--image-size`` says otherwise; the augmentation follows
from that and from the images themselves.

:func:`resolve_data_config` is the one place that turns a model into a :class:`DataConfig`: training on an image
folder uses it, and so does every command given a checkpoint that carries no preprocessing.

Two recipes of augmentation (:func:`~hcgnet.data.transforms.build_train_transform`):

* **CIFAR's** (``DataConfig.resize`` is None): the image fitted to the input size, padded by 1/8 of it, a
  random crop back to it, a horizontal flip. For the CIFAR stem (``crop_pct`` 1: the model sees whole images)
  and for small images (shorter side at most :data:`SMALL_IMAGE_SIDE` px), where ImageNet's random-resized crop
  down to 8% of the area would leave a few pixels of a digit.
* **ImageNet's** (``resize`` set): ``RandomResizedCrop`` (8-100% of the area) and a horizontal flip.
"""
from __future__ import annotations

import statistics
from typing import Mapping, Sequence

from PIL import Image

from hcgnet.data.config import DataConfig
from hcgnet.data.errors import DataError
from hcgnet.errors import is_whole
from hcgnet.data.transforms import CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, crop_padding

__all__ = ["IMAGENET_CFG", "SMALL_IMAGE_SIDE", "SIZE_RATIO", "resolve_data_config", "typical_image_side",
           "size_note", "image_size_note", "augmentation_note"]

#: What a caller with no model gets: the ImageNet stem's preprocessing (timm's defaults).
IMAGENET_CFG = {"input_size": (3, 224, 224), "crop_pct": CROP_PCT, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
#: Images whose shorter side is at most this are small: they get CIFAR's augmentation (CIFAR 32, Fashion-MNIST 28,
#: digits 8; photos are hundreds of pixels).
SMALL_IMAGE_SIDE = 64
#: The data's images are "much smaller or larger" than the input when they differ by more than this factor.
SIZE_RATIO = 2.0
_SAMPLE = 64  # images whose size is read (headers only) to judge a folder's typical size


def _check_size(image_size) -> int:
    if not is_whole(image_size, least=8):
        raise DataError(f"image_size must be a whole number of pixels >= 8, got {image_size!r}")
    return int(image_size)


def resolve_data_config(pretrained_cfg: Mapping | None, class_names: Sequence[str], *, image_size=None,
                        in_chans: int | None = None, small_images: bool = False,
                        name: str = "imagefolder") -> DataConfig:
    """The preprocessing of a model whose checkpoint carries none, or of a run on an image folder.

    ``pretrained_cfg``: the model's (``model.pretrained_cfg``; None: :data:`IMAGENET_CFG`). Input size: its
    ``input_size`` unless ``image_size`` (square side) is given. Eval: whole images fitted to the input when its
    ``crop_pct`` is 1 or ``small_images``, else a resize of the shorter side to ``size / crop_pct`` and a centre
    crop (that choice also picks the training augmentation, see the module docstring). Mean and std: the
    model's, averaged over the channels when ``in_chans`` differs from their count (a grayscale model).
    """
    cfg = {**IMAGENET_CFG, **dict(pretrained_cfg or {})}
    h, w = (int(v) for v in cfg["input_size"][1:])
    if image_size is not None:
        h = w = _check_size(image_size)
    mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    c = len(mean) if in_chans is None else int(in_chans)
    if c != len(mean):
        mean, std = (sum(mean) / len(mean),) * c, (sum(std) / len(std),) * c
    crop_pct = float(cfg.get("crop_pct") or CROP_PCT)
    whole = crop_pct >= 1.0 or small_images
    return DataConfig(name=name, input_size=(c, h, w), mean=mean, std=std,
                      resize=None if whole else int(max(h, w) / crop_pct), class_names=list(class_names))


def typical_image_side(paths: Sequence[str]) -> int | None:
    """The median shorter side, in pixels, of up to 64 images spread evenly over ``paths`` (headers only, so a
    large folder costs milliseconds); None when none of them opens (the full scan reports those)."""
    if not paths:
        return None
    step = max(1, len(paths) // _SAMPLE)
    sides = []
    for p in list(paths)[::step][:_SAMPLE]:
        try:
            with Image.open(p) as img:
                sides.append(min(img.size))
        except Exception:  # any unreadable file: the decoding scan names it
            continue
    return int(statistics.median(sides)) if sides else None


def size_note(side: int | None, config: DataConfig, where: str, explicit: bool) -> str | None:
    """A log line when the images of ``where`` are much smaller or larger than the input the model sees (None
    otherwise). ``explicit``: the size came from ``--image-size`` rather than from the model."""
    if side is None:
        return None
    size = max(config.input_size[1:])
    if size / SIZE_RATIO <= side <= size * SIZE_RATIO:
        return None
    came = "--image-size" if explicit else "the model's input size"
    return (f"note: the images of {where} are about {side} px (median shorter side), {came} is {size} px: they are "
            f"{'upscaled' if side < size else 'downscaled'} about {max(side, size) / min(side, size):.0f}x")


def image_size_note(paths: Sequence[str], config: DataConfig, where: str, explicit: bool = False) -> str | None:
    """:func:`size_note` for the images ``paths`` (of ``where``): for a command given a checkpoint without
    preprocessing, whose input size came from the model."""
    return size_note(typical_image_side(paths), config, where, explicit)


def augmentation_note(config: DataConfig, hflip: float, augment: bool = True) -> str:
    """The log line that says which training augmentation runs."""
    if not augment:
        return "augmentation: none (--no-augment): training images get the evaluation transform"
    _, h, w = config.input_size
    flip = f"horizontal flip p={hflip:g}" if hflip > 0 else "no flip (--hflip 0)"
    advice = "; --hflip 0 for data where mirror images are wrong (digits, text)" if hflip > 0 else ""
    if config.resize is None:
        return f"augmentation: CIFAR's (pad {crop_padding(config)} px, random {h}x{w} crop, {flip}){advice}"
    return f"augmentation: ImageNet's (RandomResizedCrop {h}x{w} of 8-100% of the image, {flip}){advice}"
