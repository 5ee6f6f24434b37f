"""Train and eval transforms, rebuilt from a :class:`~hcgnet.data.config.DataConfig` alone.

The eval transform is what ``predict`` and ``eval`` use on files the dataset never saw, so it takes a PIL image
of any mode and size and returns a normalised float32 tensor of exactly ``config.input_size``:

* it converts the image to ``'L'`` when the network has one input channel, else to ``'RGB'``;
* with ``config.resize`` (ImageFolder / ImageNet) it resizes the shorter side to ``resize`` and centre-crops;
* without it (CIFAR, Fashion-MNIST) images of the native size pass untouched; any other size is resized
  (shorter side) and centre-cropped to ``H x W``, so a photo can still be classified.

All the pieces are module-level classes or torchvision transforms, so the transforms pickle (DataLoader
workers started with spawn/forkserver).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms as T
from torchvision.transforms import functional as F

from hcgnet.models.registry import CIFAR_MEAN, CIFAR_STD

if TYPE_CHECKING:  # pragma: no cover
    from hcgnet.data.config import DataConfig

__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
    "IMAGENET_MEAN", "IMAGENET_STD", "NORMALISATION", "CROP_PCT", "HFLIP", "ToMode", "FitTo", "crop_padding",
    "build_train_transform",
    "build_eval_transform",
]

# Per-channel statistics of each training set. CIFAR-10's live with the models' pretrained configs (one
# definition; models never import data). CIFAR-100 has its own, which the published HCGNet training uses too.
CIFAR10_MEAN = CIFAR_MEAN
CIFAR10_STD = CIFAR_STD
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
IMAGENET_MEAN = IMAGENET_DEFAULT_MEAN
IMAGENET_STD = IMAGENET_DEFAULT_STD
#: ``(mean, std)`` by dataset name: for code that knows the dataset but has no DataConfig (e.g. a checkpoint
#: without preprocessing metadata whose class count says CIFAR-100).
NORMALISATION = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "fashion-mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD), "imagefolder": (IMAGENET_MEAN, IMAGENET_STD),
}
#: ImageNet eval: resize the shorter side to ``int(size / CROP_PCT)`` (224 -> 256), then centre-crop ``size``.
CROP_PCT = 0.875

# RandomCrop padding of the small datasets (train augmentation); other data: 1/8 of the side, CIFAR's 4 of 32.
_CROP_PADDING = {"cifar10": 4, "cifar100": 4, "fashion-mnist": 2}
#: Probability of the training augmentation's horizontal flip (timm's ``--hflip``); 0 for digits and text.
HFLIP = 0.5


class ToMode:
    """Convert a PIL image to ``mode`` ('L' or 'RGB'); a no-op when it already is."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.mode == self.mode:
            return img
        if img.mode in ("P", "PA") or (img.mode == "RGBA" and self.mode == "L"):
            # Palette images (and transparency) go through RGBA->RGB first, as PIL recommends.
            img = img.convert("RGBA").convert("RGB")
        return img.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


class FitTo:
    """Leave an image of size ``(H, W)`` untouched; otherwise resize its shorter side and centre-crop to it."""

    def __init__(self, size: tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, img: Image.Image) -> Image.Image:
        h, w = self.size
        if img.size == (w, h):
            return img
        iw, ih = img.size
        scale = max(h / ih, w / iw)  # smallest scale at which the image covers H x W, aspect ratio kept
        size = [max(h, round(ih * scale)), max(w, round(iw * scale))]
        return F.center_crop(F.resize(img, size, interpolation=T.InterpolationMode.BILINEAR), [h, w])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def _bad_config(msg: str) -> Exception:
    from hcgnet.data.errors import DataError  # lazy: keeps this module importable on its own

    return DataError(msg)


def _parts(config: "DataConfig"):
    """(mode, (C, H, W), mean, std) from a config that may have come back from JSON (lists, not tuples)."""
    try:
        c, h, w = (int(v) for v in config.input_size)
        mean = tuple(float(v) for v in config.mean)
        std = tuple(float(v) for v in config.std)
    except (TypeError, ValueError) as e:
        raise _bad_config(f"bad data config: input_size must be (C, H, W) and mean/std numbers ({e})") from None
    if c not in (1, 3):
        raise _bad_config(f"bad data config: input_size {tuple(config.input_size)} must have 1 or 3 channels")
    if len(mean) != c or len(std) != c:
        raise _bad_config(f"bad data config: mean/std need {c} value(s) for input_size {(c, h, w)}")
    return ("L" if c == 1 else "RGB"), (c, h, w), mean, std


def crop_padding(config: "DataConfig") -> int:
    """The padding of CIFAR's augmentation: 4 for CIFAR, 2 for Fashion-MNIST, else 1/8 of the input side."""
    return _CROP_PADDING.get(config.name, max(1, round(max(config.input_size[1:]) / 8)))


def build_train_transform(config: "DataConfig", hflip: float = HFLIP) -> Callable:
    """Random augmentation for training.

    CIFAR's (``config.resize`` is None: CIFAR, Fashion-MNIST, small images, the CIFAR stem): the image fitted to
    ``H x W`` (a no-op at that size), ``RandomCrop(H, padding)`` (:func:`crop_padding`). ImageNet's:
    ``RandomResizedCrop(H)``. Then a horizontal flip with probability ``hflip`` (none at 0), ToTensor, Normalize.
    """
    mode, (_, h, w), mean, std = _parts(config)
    if not 0 <= hflip <= 1:
        raise _bad_config(f"hflip must be a probability in [0, 1], got {hflip}")
    if config.resize is None:
        geometry = [FitTo((h, w)), T.RandomCrop((h, w), padding=crop_padding(config))]
    else:
        geometry = [T.RandomResizedCrop((h, w))]
    flip = [T.RandomHorizontalFlip(hflip)] if hflip > 0 else []
    return T.Compose([ToMode(mode), *geometry, *flip, T.ToTensor(), T.Normalize(mean, std)])


def build_eval_transform(config: "DataConfig") -> Callable:
    """Deterministic transform: PIL image (any mode, any size) -> normalised float32 tensor of ``input_size``."""
    mode, (_, h, w), mean, std = _parts(config)
    if config.resize is not None:
        geometry = [T.Resize(int(config.resize)), T.CenterCrop((h, w))]
    else:
        geometry = [FitTo((h, w))]
    return T.Compose([ToMode(mode), *geometry, T.ToTensor(), T.Normalize(mean, std)])
