"""Datasets for training and evaluating HCGNets: CIFAR-10/100, Fashion-MNIST and ImageFolder trees.

``build_data(spec, ...)`` returns a :class:`DataBundle` of three datasets whose items are
``(float32 tensor of config.input_size, int label)``:

* ``train`` - the training set minus the validation split, with random augmentation;
* ``val``   - ``val_size`` images held out of the TRAINING set (eval transform); it picks the best checkpoint;
* ``test``  - the test set (eval transform), scored once at the end.

The validation split is deterministic: ``torch.randperm`` with a ``torch.Generator`` seeded by ``seed``; the
first ``k`` permuted indices are the validation set, the rest the training set (both sorted). Train and val
are two views of one loaded dataset (a shallow copy sharing the images, each with its own transform), wrapped
in :class:`torch.utils.data.Subset` with the split indices.

Decisions:

* **CIFAR-10/100** are read by torchvision's loaders from ``data_dir`` (default ``$HCGNET_DATA`` or
  ``~/.cache/hcgnet/data``): ``cifar-10-batches-py/`` / ``cifar-100-python/``, extracted from the official
  tarball if only that is there. torchvision checks the md5 sum of every file before reading it; our
  subclasses only check that the files exist. The md5 sums guard downloads, which torchvision still verifies
  (against the tarball's sum); the format itself is checked by reading it (a broken file raises
  :class:`DataError`), and skipping the sums lets small files in the real format (tests) load. Offline, a
  failed download is caught and turned into a one-line :class:`DataError` saying where to put the files.
* **Fashion-MNIST** is fed at its native 28x28 with ONE input channel (the model is built with
  ``in_chans=1``), not padded/repeated to 3x32x32: 23% fewer multiply-adds and no fake channels.
  ``input_size=(1, 28, 28)``. The files come from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/*.gz``), decompressed once (atomically: temp file + ``os.replace``) into
  ``data_dir/FashionMNIST/raw/`` where torchvision looks for them; ``.gz`` files put in that folder by hand
  are decompressed the same way; failing both, torchvision's download is tried.
* **imagefolder:PATH** uses :class:`torchvision.datasets.ImageFolder` (class sub-folders of images, converted
  to RGB). If PATH has ``train/``, that is the training set and ``val/`` (or else ``test/``) is the TEST set,
  as for ImageNet whose labelled val set serves as the test set; the validation split is held out of
  ``train/``. If PATH has no ``train/`` (or ``train/`` but neither ``val/`` nor ``test/``), the test set is
  held out of the training folder as well: a second deterministic split of the same size as the validation
  split, disjoint from it (permuted indices ``[0, k)`` -> val, ``[k, 2k)`` -> test, the rest -> train).
  The test folder must not have classes the training folder lacks; label indices follow the training folder.
  Hidden folders (``.ipynb_checkpoints``...) are not classes. Every image is read by :func:`load_image`,
  which raises a one-line :class:`DataError` naming an unreadable file; ``skip_bad_images=True`` instead
  checks every file up front with PIL's ``verify()`` and drops the bad ones (``DataBundle.skipped``).
  ``verify()`` does not decode pixels, so a file that passes it can in rare cases still fail to decode later.
"""
from __future__ import annotations

import copy
import gzip
import numbers
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd
from torchvision.datasets.utils import extract_archive
from torchvision.datasets.vision import StandardTransform
from tqdm import tqdm

from hcgnet.data.transforms import (
    CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, CROP_PCT, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
    IMAGENET_MEAN, IMAGENET_STD, build_eval_transform, build_train_transform,
)
from hcgnet.errors import HCGNetError
from hcgnet.files import atomic_path

__all__ = [
    "DATASETS", "DataBundle", "DataConfig", "DataError", "build_data", "default_data_dir", "error_message",
    "load_image", "split_indices",
]

#: The accepted dataset names (``imagefolder`` is given as ``imagefolder:PATH``).
DATASETS = ("cifar10", "cifar100", "fashion-mnist", "imagefolder")
_SPEC_HELP = "cifar10, cifar100, fashion-mnist, imagefolder:PATH"

#: Where the Debian package ``dataset-fashion-mnist`` installs the gzipped IDX files.
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)

#: ImageFolder default input size (ImageNet).
DEFAULT_IMAGE_SIZE = 224


class DataError(HCGNetError):
    """A dataset that cannot be used as asked: unknown name, missing files, unreadable image, bad split."""


def _one_line(text: object, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    return _one_line(exc) or type(exc).__name__


# ---------------------------------------------------------------------------------------------------- config


@dataclass
class DataConfig:
    """Everything ``predict``/``eval`` need to rebuild the eval transform; JSON-serialisable via ``asdict``.

    Lists (as they come back from JSON) are turned back into tuples.
    """

    name: str                # 'cifar10' | 'cifar100' | 'fashion-mnist' | 'imagefolder'
    input_size: tuple        # (C, H, W) the network sees
    mean: tuple
    std: tuple
    resize: int | None       # eval: resize the shorter side to this, then centre-crop; None for small datasets
    class_names: list[str]

    def __post_init__(self):
        try:
            self.input_size = tuple(int(v) for v in self.input_size)
            self.mean = tuple(float(v) for v in self.mean)
            self.std = tuple(float(v) for v in self.std)
            self.resize = None if self.resize is None else int(self.resize)
            self.class_names = [str(c) for c in self.class_names]
        except (TypeError, ValueError) as e:
            raise DataError(f"bad data config: {_reason(e)}") from None
        if len(self.input_size) != 3:
            raise DataError(f"bad data config: input_size must be (C, H, W), got {self.input_size}")

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        """Rebuild from ``dataclasses.asdict(config)`` (e.g. after a JSON round trip); extra keys are ignored."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise DataError(f"bad data config: missing {', '.join(missing)}")
        return cls(**{n: d[n] for n in names})


@dataclass
class DataBundle:
    train: Dataset      # random augmentation
    val: Dataset        # held out from the TRAINING set, eval transform (chooses the best checkpoint)
    test: Dataset       # the test set, eval transform (scored once at the end)
    config: DataConfig
    num_classes: int
    skipped: int = 0    # unreadable images skipped (imagefolder with skip_bad_images)


# ---------------------------------------------------------------------------------------------------- helpers


def default_data_dir() -> str:
    """``$HCGNET_DATA`` if set, else ``~/.cache/hcgnet/data``."""
    return os.path.expanduser(os.environ.get("HCGNET_DATA") or os.path.join("~", ".cache", "hcgnet", "data"))


def load_image(path, hint: str = "remove it or pass --skip-bad-images") -> Image.Image:
    """Open and fully decode an image (its own mode; the transforms convert it).

    Raises :class:`DataError` in one line, naming the file, if it cannot be read. This is the ImageFolder
    loader, so the same message comes out of a DataLoader worker (see :func:`error_message`).
    """
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error... for broken files
        raise DataError(f"cannot read image {path}: {_reason(e)}" + (f"; {hint}" if hint else "")) from None
    return img


def _image_ok(path) -> bool:
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:
        return False


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*: (.*)$")


def error_message(exc: BaseException) -> str:
    """The one-line message of ``exc``.

    An exception raised in a DataLoader worker is re-raised by PyTorch as the same type with the message
    ``"Caught DataError in DataLoader worker process 0.\\nOriginal Traceback ...\\n
    hcgnet.data.datasets.DataError: <message>"``; for those the original message (the text after the
    exception name on the last line) is returned; for any other exception, its message.
    """
    text = str(exc)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        m = _EXC_LINE.match(lines[-1])
        return m.group(1) if m else lines[-1].strip()
    return text.strip()


def _held_out_count(val_size, n: int) -> int:
    if isinstance(val_size, bool) or not isinstance(val_size, numbers.Real):
        raise DataError(f"val_size must be a fraction in [0, 1) or a count of images, got {val_size!r}")
    if 0 <= val_size < 1 and not isinstance(val_size, numbers.Integral):
        # Rounded half up; at least one image when a (non-zero) fraction is asked for.
        return max(1, int(float(val_size) * n + 0.5)) if val_size > 0 else 0
    if val_size >= 0 and float(val_size).is_integer():
        return int(val_size)
    raise DataError(f"val_size must be a fraction in [0, 1) or a count of images, got {val_size!r}")


def split_indices(n: int, val_size: float | int, seed: int = 0, parts: int = 1) -> list[list[int]]:
    """Deterministically split ``range(n)``: ``[train, held_1, ..., held_parts]``, each sorted.

    Every held-out part has ``val_size`` items (a fraction of ``n`` if < 1, else a count); they are taken in
    order from ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))`` and the rest is train.
    The parts are disjoint and together cover ``range(n)``.
    """
    k = _held_out_count(val_size, n)
    if n - parts * k < 1:
        what = "validation split" if parts == 1 else "validation and test splits"
        raise DataError(f"val_size={val_size!r} leaves no training images: {n} images, {parts} x {k} held out "
                        f"for the {what}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    held = [sorted(perm[i * k:(i + 1) * k]) for i in range(parts)]
    return [sorted(perm[parts * k:]), *held]


def _with_transform(ds: Dataset, transform) -> Dataset:
    """A shallow copy of a torchvision dataset (sharing its images/sample list) with another transform."""
    out = copy.copy(ds)
    out.transform = transform
    out.transforms = StandardTransform(transform, getattr(ds, "target_transform", None))
    return out


def _check_labels(ds, num_classes: int, where: str) -> None:
    targets = [int(t) for t in ds.targets]
    bad = [t for t in targets if not 0 <= t < num_classes]
    if bad:
        raise DataError(f"bad labels in {where}: {bad[0]} is outside 0..{num_classes - 1}")


def _native_size(name: str, image_size, size: int) -> None:
    if image_size is not None and int(image_size) != size:
        raise DataError(f"{name} images are {size}x{size}; --image-size applies to imagefolder datasets only")


def _train_and_eval_transforms(config: DataConfig, augment: bool):
    eval_tf = build_eval_transform(config)
    return (build_train_transform(config) if augment else eval_tf), eval_tf


def _bundle(base_train, test_ds, config: DataConfig, val_size, seed, skipped: int = 0,
            augment: bool = True) -> DataBundle:
    train_tf, eval_tf = _train_and_eval_transforms(config, augment)
    train_idx, val_idx = split_indices(len(base_train), val_size, seed)
    return DataBundle(
        train=Subset(_with_transform(base_train, train_tf), train_idx),
        val=Subset(_with_transform(base_train, eval_tf), val_idx),
        test=_with_transform(test_ds, eval_tf),
        config=config, num_classes=len(config.class_names), skipped=skipped,
    )


# ---------------------------------------------------------------------------------------------------- CIFAR


class _ExistingFilesCIFAR:
    """CIFAR loaders that check the files exist instead of their md5 sums (see the module docstring)."""

    def _files(self):
        names = [f for f, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return [os.path.join(self.root, self.base_folder, f) for f in names]

    def _check_integrity(self) -> bool:
        return all(os.path.isfile(p) for p in self._files())

    def _load_meta(self) -> None:
        import pickle

        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            data = pickle.load(f, encoding="latin1")
        self.classes = list(data[self.meta["key"]])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class CIFAR10Files(_ExistingFilesCIFAR, tvd.CIFAR10):
    """:class:`torchvision.datasets.CIFAR10` without the md5 check of the extracted files."""


class CIFAR100Files(_ExistingFilesCIFAR, tvd.CIFAR100):
    """:class:`torchvision.datasets.CIFAR100` without the md5 check of the extracted files."""


_CIFAR = {
    "cifar10": ("CIFAR-10", CIFAR10Files, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": ("CIFAR-100", CIFAR100Files, CIFAR100_MEAN, CIFAR100_STD),
}


def _load_cifar(name: str, root: str, download: bool, val_size, seed, image_size, augment: bool) -> DataBundle:
    title, cls, mean, std = _CIFAR[name]
    _native_size(name, image_size, 32)
    folder = os.path.join(root, cls.base_folder)
    tarball = os.path.join(root, cls.filename)
    probe = cls.__new__(cls)  # only to reuse the file list; nothing is loaded
    probe.root = root
    why = "downloading is disabled"
    if not probe._check_integrity():
        if download:
            try:  # checks an existing tarball's md5, downloads it if needed, extracts it
                probe.download()
            except Exception as e:  # no network, proxy, disk full...
                why = f"it could not be downloaded ({_reason(e)[:150]})"
        elif os.path.isfile(tarball):
            try:
                extract_archive(tarball, root)
            except Exception as e:
                raise DataError(f"cannot extract {tarball}: {_reason(e)}; delete it or replace it with the "
                                f"original {cls.filename}") from None
    if not probe._check_integrity():
        raise DataError(f"{title} not found in {root} and {why}: put {cls.filename} (or its extracted "
                        f"{cls.base_folder}/) there, or pass --data-dir")
    try:
        train = cls(root, train=True)
        test = cls(root, train=False)
    except Exception as e:  # truncated pickle, wrong keys, wrong array size...
        raise DataError(f"cannot read {title} in {folder}: {type(e).__name__}: {_reason(e)}") from None
    classes = [str(c) for c in train.classes]
    for ds, split in ((train, "training"), (test, "test")):
        _check_labels(ds, len(classes), f"{title} {split} set in {folder}")
    config = DataConfig(name=name, input_size=(3, 32, 32), mean=mean, std=std, resize=None, class_names=classes)
    return _bundle(train, test, config, val_size, seed, augment=augment)


# ---------------------------------------------------------------------------------------------------- Fashion-MNIST


def _gunzip(src: str, dst: str) -> None:
    """Decompress ``src`` to ``dst`` atomically (temp file in the same folder, then ``os.replace``)."""
    try:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with atomic_path(dst) as tmp, open(tmp, "wb") as out, gzip.open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
    except Exception as e:
        raise DataError(f"cannot decompress {src} into {os.path.dirname(dst)}: {_reason(e)}") from None


def _prepare_fashion_mnist(root: str, download: bool) -> None:
    raw = os.path.join(root, "FashionMNIST", "raw")

    def missing():
        return [n for n in FASHION_MNIST_FILES if not os.path.isfile(os.path.join(raw, n))]

    for name in missing():
        for src in (os.path.join(raw, name + ".gz"), os.path.join(FASHION_MNIST_SYSTEM_DIR, name + ".gz")):
            if os.path.isfile(src):
                _gunzip(src, os.path.join(raw, name))
                break
    why = "downloading is disabled"
    if missing() and download:
        probe = tvd.FashionMNIST.__new__(tvd.FashionMNIST)  # only its download(); nothing is loaded
        probe.root = root
        try:
            probe.download()
        except Exception as e:
            why = f"it could not be downloaded ({_reason(e)[:150]})"
    if missing():
        gz = ", ".join(n + ".gz" for n in FASHION_MNIST_FILES)
        raise DataError(f"Fashion-MNIST not found in {raw} and {why}: apt-get install dataset-fashion-mnist "
                        f"(files in {FASHION_MNIST_SYSTEM_DIR}), or put {gz} in {raw}, or pass --data-dir")


def _load_fashion_mnist(root: str, download: bool, val_size, seed, image_size, augment: bool) -> DataBundle:
    _native_size("fashion-mnist", image_size, 28)
    _prepare_fashion_mnist(root, download)
    try:
        train = tvd.FashionMNIST(root, train=True)
        test = tvd.FashionMNIST(root, train=False)
    except Exception as e:
        raw = os.path.join(root, "FashionMNIST", "raw")
        raise DataError(f"cannot read Fashion-MNIST in {raw}: {type(e).__name__}: {_reason(e)}") from None
    classes = list(tvd.FashionMNIST.classes)
    config = DataConfig(name="fashion-mnist", input_size=(1, 28, 28), mean=FASHION_MNIST_MEAN,
                        std=FASHION_MNIST_STD, resize=None, class_names=classes)
    return _bundle(train, test, config, val_size, seed, augment=augment)


# ---------------------------------------------------------------------------------------------------- ImageFolder


class _ImageFolder(tvd.ImageFolder):
    """ImageFolder reading with :func:`load_image`, ignoring hidden folders, optionally with a fixed class list
    (a test folder is labelled with the training folder's classes and may lack some of them)."""

    def __init__(self, root: str, classes: list[str] | None = None):
        self._fixed_classes = classes
        super().__init__(root, loader=load_image, allow_empty=classes is not None)

    def find_classes(self, directory):
        found = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not found:
            raise FileNotFoundError(f"no class sub-folders in {directory}")
        if self._fixed_classes is None:
            return found, {c: i for i, c in enumerate(found)}
        extra = sorted(set(found) - set(self._fixed_classes))
        if extra:
            raise DataError(f"{directory} has classes the training folder lacks: {', '.join(extra[:5])}"
                            f"{' ...' if len(extra) > 5 else ''}")
        return list(self._fixed_classes), {c: i for i, c in enumerate(self._fixed_classes)}


def _image_folder(root: str, classes: list[str] | None = None) -> _ImageFolder:
    try:
        ds = _ImageFolder(root, classes)
    except FileNotFoundError as e:
        raise DataError(f"empty dataset {root}: {_reason(e)} (expected one sub-folder of images per class)") from None
    except OSError as e:
        raise DataError(f"cannot read folder {root}: {_reason(e)}") from None
    if not ds.samples:
        raise DataError(f"empty dataset {root}: no images in its class sub-folders")
    return ds


def _drop_bad_images(ds: _ImageFolder, root: str) -> int:
    """Check every file once, in threads (the check is mostly file reading, which releases the GIL: an
    ImageNet-sized folder on network storage would take hours one file at a time)."""
    paths = [p for p, _ in ds.samples]
    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        ok = list(tqdm(pool.map(_image_ok, paths), total=len(paths), desc=f"checking images in {root}",
                       unit="img", disable=len(paths) < 5000, leave=False))
    good = [s for s, fine in zip(ds.samples, ok) if fine]
    dropped = len(ds.samples) - len(good)
    if not good:
        raise DataError(f"empty dataset {root}: none of its {len(ds.samples)} images can be read")
    ds.samples = ds.imgs = good
    ds.targets = [t for _, t in good]
    return dropped


def _load_image_folder(path: str, val_size, seed, skip_bad_images: bool, image_size, augment: bool) -> DataBundle:
    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        what = "not a folder" if os.path.exists(path) else "no such folder"
        raise DataError(f"{what}: {path} (imagefolder:PATH needs a folder with one sub-folder of images per class)")
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 8:
        raise DataError(f"image_size must be a whole number of pixels >= 8, got {image_size!r}")
    size = int(size)

    train_root = os.path.join(path, "train")
    test_root = None
    if os.path.isdir(train_root):
        test_root = next((os.path.join(path, d) for d in ("val", "test") if os.path.isdir(os.path.join(path, d))),
                         None)
    else:
        train_root = path
    train = _image_folder(train_root)
    classes = list(train.classes)
    test = _image_folder(test_root, classes) if test_root else None
    skipped = 0
    if skip_bad_images:
        skipped += _drop_bad_images(train, train_root)
        if test is not None:
            skipped += _drop_bad_images(test, test_root)

    config = DataConfig(name="imagefolder", input_size=(3, size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        resize=int(size / CROP_PCT), class_names=classes)
    if test is not None:
        return _bundle(train, test, config, val_size, seed, skipped, augment)
    train_tf, eval_tf = _train_and_eval_transforms(config, augment)
    train_idx, val_idx, test_idx = split_indices(len(train), val_size, seed, parts=2)
    evaluated = _with_transform(train, eval_tf)
    return DataBundle(
        train=Subset(_with_transform(train, train_tf), train_idx), val=Subset(evaluated, val_idx),
        test=Subset(evaluated, test_idx), config=config, num_classes=len(classes), skipped=skipped,
    )


# ---------------------------------------------------------------------------------------------------- entry point


def _parse_spec(spec) -> tuple[str, str | None]:
    if not isinstance(spec, str):
        raise DataError(f"unknown dataset {spec!r}: use one of {_SPEC_HELP}")
    s = spec.strip()
    low = s.lower()
    if low in DATASETS[:3]:
        return low, None
    if low == "imagefolder" or low.startswith("imagefolder:"):
        folder = s[len("imagefolder:"):].strip()
        if not folder:
            raise DataError("imagefolder needs a folder: imagefolder:PATH")
        return "imagefolder", folder
    raise DataError(f"unknown dataset {spec!r}: use one of {_SPEC_HELP}")


def build_data(spec: str, data_dir: str | None = None, val_size: float | int = 0.1, seed: int = 0,
               skip_bad_images: bool = False, download: bool = True, image_size: int | None = None,
               augment: bool = True) -> DataBundle:
    """Train / val / test datasets for ``spec`` ('cifar10', 'cifar100', 'fashion-mnist' or 'imagefolder:PATH').

    ``data_dir`` (CIFAR, Fashion-MNIST): where the files are or go; default :func:`default_data_dir`.
    ``val_size``: images held out of the training set for validation, a fraction (< 1) or a count; 0 gives an
    empty validation set. ``seed`` fixes the split. ``skip_bad_images`` (imagefolder): drop unreadable files
    instead of failing on them. ``download``: allow torchvision to download missing CIFAR/Fashion-MNIST files.
    ``image_size`` (imagefolder, default 224): the square crop the network sees. ``augment=False`` gives the
    training set the evaluation transform (for runs shorter than an epoch, where augmentation only slows
    learning).
    Raises :class:`DataError` (one line) for anything that cannot work.
    """
    name, folder = _parse_spec(spec)
    if name == "imagefolder":
        return _load_image_folder(folder, val_size, seed, skip_bad_images, image_size, augment)
    root = os.path.expanduser(str(data_dir)) if data_dir is not None else default_data_dir()
    root = str(Path(root))
    if name in _CIFAR:
        return _load_cifar(name, root, download, val_size, seed, image_size, augment)
    return _load_fashion_mnist(root, download, val_size, seed, image_size, augment)
