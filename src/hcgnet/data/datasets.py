"""The entry points: :func:`build_data` (training: train / val / test) and :func:`build_eval_dataset` (one split,
or a whole folder, with a trained model's preprocessing).

Where things are: the sources in :mod:`~hcgnet.data.cifar`, :mod:`~hcgnet.data.fashion_mnist` and
:mod:`~hcgnet.data.image_folder`; how much is held out and which images in :mod:`~hcgnet.data.splits`;
reading and checking image files in :mod:`~hcgnet.data.images`; the transforms in
:mod:`~hcgnet.data.transforms`; :class:`DataConfig`/:class:`DataBundle` in :mod:`~hcgnet.data.config`.

``build_data(spec, ...)`` returns a :class:`DataBundle` of three datasets whose items are
``(float32 tensor of config.input_size, int label)``:

* ``train`` - the training set minus the validation split, with random augmentation;
* ``val``   - images held out of the TRAINING set (eval transform); they pick the best checkpoint;
* ``test``  - the test set (eval transform), scored once at the end: CIFAR's and Fashion-MNIST's test set, an
  image folder's ``val/`` (or ``test/``), or for a folder without those, images held out of it.

Train and val are two views of one loaded dataset (a shallow copy sharing the images, each with its own
transform), wrapped in :class:`torch.utils.data.Subset` with the split indices. ``DataBundle.notes`` says in
sentences how much was held out and why, and which images were skipped.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision.datasets.vision import StandardTransform

from hcgnet.data.cifar import CIFAR, CIFAR10Files, CIFAR100Files, load_cifar
from hcgnet.data.config import DataBundle, DataConfig
from hcgnet.data.defaults import SMALL_IMAGE_SIDE, augmentation_note, size_note, typical_image_side
from hcgnet.data.errors import ChannelsMismatch, DataError, error_message
from hcgnet.data.fashion_mnist import FASHION_MNIST_FILES, FASHION_MNIST_SYSTEM_DIR, load_fashion_mnist
from hcgnet.data.image_folder import (
    check_images, class_folder_name, class_folders, folder_config, layout, open_class_folder, refuse_one_class,
)
from hcgnet.data.images import load_image
from hcgnet.data.splits import format_size, holdout_note, split_indices
from hcgnet.data.transforms import HFLIP, build_eval_transform, build_train_transform
from hcgnet.errors import plural

__all__ = [
    "DATASETS", "EVAL_SPLITS", "DataBundle", "DataConfig", "DataError", "build_data", "build_eval_dataset",
    "default_data_dir", "error_message", "load_image", "split_indices",
    # kept importable from here for older code
    "CIFAR10Files", "CIFAR100Files", "FASHION_MNIST_FILES", "FASHION_MNIST_SYSTEM_DIR",
]

#: The accepted dataset names (``imagefolder`` is given as ``imagefolder:PATH``).
DATASETS = ("cifar10", "cifar100", "fashion-mnist", "imagefolder")
_SPEC_HELP = "cifar10, cifar100, fashion-mnist, imagefolder:PATH"
#: What :func:`build_eval_dataset` can score.
EVAL_SPLITS = ("test", "val", "all")
_NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "fashion-mnist": 28}
_NAMES_SHOWN = 3


def default_data_dir() -> str:
    """``$HCGNET_DATA`` if set, else ``~/.cache/hcgnet/data``."""
    return os.path.expanduser(os.environ.get("HCGNET_DATA") or os.path.join("~", ".cache", "hcgnet", "data"))


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
        return "imagefolder", os.path.expanduser(folder)
    if os.path.isdir(os.path.expanduser(s)):  # the usual slip: a folder without the prefix
        raise DataError(f"unknown dataset {spec!r}; for the images in the folder {s}, write imagefolder:{s}")
    raise DataError(f"unknown dataset {spec!r}: use one of {_SPEC_HELP}")


def spec_folder(spec: str) -> str | None:
    """The folder an ``imagefolder:PATH`` spec reads (``~`` expanded); None for a built-in dataset. A spec that is
    neither is a :class:`DataError`."""
    return _parse_spec(spec)[1]


def absolute_spec(spec: str) -> str:
    """``spec`` as a checkpoint records it: an image folder by its absolute path (``imagefolder:/home/me/shots``),
    so that it is found again from any working folder; a named dataset as it is."""
    name, folder = _parse_spec(spec)
    return f"imagefolder:{os.path.abspath(folder)}" if folder is not None else spec.strip()


def _with_transform(ds: Dataset, transform) -> Dataset:
    """A shallow copy of a torchvision dataset (sharing its images/sample list) with another transform."""
    out = copy.copy(ds)
    out.transform = transform
    out.transforms = StandardTransform(transform, getattr(ds, "target_transform", None))
    return out


def _data_root(data_dir) -> str:
    """The folder the built-in datasets are read from: ``data_dir`` (``~`` expanded), else the default."""
    return str(Path(os.path.expanduser(str(data_dir)) if data_dir is not None else default_data_dir()))


def _load_builtin(name: str, data_dir, download: bool, image_size):
    """``(train, test, config)`` of CIFAR-10/100 or Fashion-MNIST."""
    size = _NATIVE_SIZE[name]
    if image_size is not None and int(image_size) != size:
        raise DataError(f"{name} images are {size}x{size}; --image-size applies to imagefolder datasets only")
    root = _data_root(data_dir)
    if name in CIFAR:
        return load_cifar(name, root, download)
    return load_fashion_mnist(root, download)


def download_dataset(spec: str, data_dir=None) -> tuple[str, int, int]:
    """Let torchvision download a built-in dataset (CIFAR-10/100, Fashion-MNIST) into ``data_dir`` (None:
    :func:`default_data_dir`) where it is not there already, and check it: ``(folder, training images, test
    images)``. What ``hcgnet download`` runs; training's ``--download`` does the same on the way."""
    name, folder = _parse_spec(spec)
    if folder is not None:
        raise DataError(f"{spec} is a folder of your own images: there is nothing to download")
    train, test, _ = _load_builtin(name, data_dir, True, None)
    return _data_root(data_dir), len(train), len(test)


def skipped_note(skipped: list[str], bad_images_log=None) -> str:
    """One line naming the images left out as unreadable (the first few; where the full list is)."""
    names = ", ".join(os.path.basename(p) for p in skipped[:_NAMES_SHOWN])
    more = ", ..." if len(skipped) > _NAMES_SHOWN else ""
    where = f"; the list is in {bad_images_log}" if bad_images_log is not None else ""
    return f"skipped {plural(len(skipped), 'unreadable image')} ({names}{more}){where}"


def _split(n: int, own_test: bool, val_size, test_size, seed) -> tuple[list[int], list[int], list[int] | None]:
    """``(train, val, test)`` indices into the training set; test is None when the data has its own."""
    if own_test:
        train_idx, val_idx = split_indices(n, val_size, seed)
        return train_idx, val_idx, None
    train_idx, val_idx, test_idx = split_indices(n, val_size, seed, with_test=True, test_size=test_size)
    return train_idx, val_idx, test_idx


def _holdout_notes(n: int, idx, val_size, test_size, test, where: str, test_where: str) -> list[str]:
    _, val_idx, test_idx = idx
    if test_idx is None:
        notes = [holdout_note(len(val_idx), n, val_size, "validation"),
                 f"the test set is {test_where}: {plural(len(test), 'image')}"]
        if test_size is not None:
            notes.append(f"test_size={format_size(test_size)} ignored: {where} has its own test set "
                         f"({plural(len(test), 'image')})")
        return notes
    return [holdout_note(len(val_idx), n, val_size, "validation", of="images"),
            holdout_note(len(test_idx), n, test_size, "the test set", of="images")
            + f"; {where} has no train/ + val/ (or test/) sub-folders"]


def _load_folder(folder: str, image_size, skip_bad_images: bool, bad_images_log, model_cfg, preprocessing):
    """``(train, test or None, config, skipped paths, notes)`` of ``imagefolder:folder``, every image checked."""
    train_root, test_root = layout(folder)
    train = open_class_folder(train_root)
    refuse_one_class(train, train_root)
    test = open_class_folder(test_root, train.classes) if test_root else None
    notes = []
    if preprocessing is not None:
        config = dataclasses.replace(preprocessing, class_names=list(train.classes))
    else:  # before the (longer) scan, so a bad --image-size costs nothing
        side = typical_image_side([p for p, _ in train.samples])
        config = folder_config(train.classes, image_size, model_cfg,
                               small_images=side is not None and side <= SMALL_IMAGE_SIDE)
        note = size_note(side, config, folder, explicit=image_size is not None)
        if note:
            notes = [note + ("; --image-size N trains at another size" if image_size is None else "")]
    skipped = check_images([train] + ([test] if test is not None else []), folder, skip_bad_images, bad_images_log)
    return train, test, config, skipped, notes


def build_data(spec: str, data_dir: str | None = None, val_size: float | int | None = None,
               test_size: float | int | None = None, seed: int = 0, skip_bad_images: bool = False,
               download: bool = False, image_size: int | None = None, augment: bool = True,
               bad_images_log: str | os.PathLike | None = None, model_cfg: Mapping | None = None,
               hflip: float = HFLIP, preprocessing: DataConfig | None = None) -> DataBundle:
    """Train / val / test datasets for ``spec`` ('cifar10', 'cifar100', 'fashion-mnist' or 'imagefolder:PATH').

    ``data_dir`` (CIFAR, Fashion-MNIST): where the files are or go; default :func:`default_data_dir`.
    ``val_size``: images held out of the training set for validation; ``test_size``: images held out as the
    test set (only an image folder without ``val/``/``test/``; ignored, with a note, elsewhere). Each is None
    (automatic: 10% of the images, at least 1, at most 5,000, none below 10 images), a fraction (< 1) or a
    count, both taken from the same images; 0 gives an empty set. ``seed`` fixes the split.
    Image folders are decoded completely before anything else (:func:`~hcgnet.data.image_folder.check_images`):
    unreadable files are reported all at once, or dropped with ``skip_bad_images``; ``bad_images_log`` (a
    file) gets their full list. A training folder with one class is refused. ``download``: allow torchvision
    to download missing CIFAR/Fashion-MNIST files (nothing is downloaded otherwise).

    Image folders are preprocessed for the model (:func:`~hcgnet.data.defaults.resolve_data_config`):
    ``model_cfg`` is its ``pretrained_cfg`` (None: the ImageNet stem's), ``image_size`` (a square side) replaces
    its input size, and small images get CIFAR's augmentation; ``preprocessing`` (a trained model's
    :class:`DataConfig`) instead rebuilds exactly that. ``augment=False`` gives the training set the evaluation
    transform; ``hflip``: the probability of the training flip (0: none, for digits and text).
    ``DataBundle.notes`` says which augmentation runs and when the images are far from the input size.
    Raises :class:`DataError` (one line) for anything that cannot work.
    """
    name, folder = _parse_spec(spec)
    skipped: list[str] = []
    size_notes: list[str] = []
    if name == "imagefolder":
        train, test, config, skipped, size_notes = _load_folder(folder, image_size, skip_bad_images, bad_images_log,
                                                                model_cfg, preprocessing)
        where, test_where = folder, (test.root if test is not None else None)
    else:
        train, test, config = _load_builtin(name, data_dir, download, image_size)
        where, test_where = name, f"{name}'s own"
    idx = _split(len(train), test is not None, val_size, test_size, seed)
    notes = _holdout_notes(len(train), idx, val_size, test_size, test, where, test_where)
    if skipped:
        notes.append(skipped_note(skipped, bad_images_log))
    notes += size_notes + [augmentation_note(config, hflip, augment)]
    eval_tf = build_eval_transform(config)
    train_tf = build_train_transform(config, hflip) if augment else eval_tf
    evaluated = _with_transform(train, eval_tf)
    train_idx, val_idx, test_idx = idx
    return DataBundle(
        train=Subset(_with_transform(train, train_tf), train_idx), val=Subset(evaluated, val_idx),
        test=_with_transform(test, eval_tf) if test_idx is None else Subset(evaluated, test_idx),
        config=config, num_classes=len(config.class_names), skipped=len(skipped), skipped_files=skipped,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------------- eval


def _is_placeholder(names: list[str]) -> bool:
    """The names a checkpoint without class names gets ("0", "1", ...)."""
    return names == [str(i) for i in range(len(names))]


def _label_classes(config: DataConfig, root: str) -> list[str]:
    """The class list to label ``root``'s class folders with: the model's, or (when the model has no names,
    only a count) the folder's own sorted classes, as hcgnet labels a folder it trains on."""
    names = list(config.class_names)
    found = class_folders(root)
    folders = [class_folder_name(n) for n in names]
    unknown = [c for c in found if c not in folders]
    if not unknown:
        return names
    if _is_placeholder(names) and len(found) <= len(names):
        return found
    more = ", ..." if len(unknown) > 5 else ""
    renamed = [folder for name, folder in zip(names, folders) if folder != name]
    slash = f"; '/' in a class name is '_' in its folder's: {', '.join(renamed[:5])}" if renamed else ""
    raise DataError(f"{root} has {plural(len(found), 'class folder')} and {len(unknown)} the model does not know: "
                    f"{', '.join(unknown[:5])}{more} (the folders of its {plural(len(names), 'class')} are "
                    f"{', '.join(sorted(folders)[:5])}{', ...' if len(names) > 5 else ''}{slash})")


def _eval_folder(root: str, config: DataConfig):
    try:
        classes = _label_classes(config, root)
    except OSError as e:
        raise DataError(f"cannot read folder {root}: {e}") from None
    return open_class_folder(root, classes, owner="the model")


def _check_split(split) -> None:
    if split not in EVAL_SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(EVAL_SPLITS)}")


def build_eval_dataset(spec: str, config: DataConfig, data_dir: str | None = None, split: str = "test",
                       val_size: float | int | None = None, test_size: float | int | None = None, seed: int = 0,
                       skip_bad_images: bool = False, download: bool = False,
                       bad_images_log: str | os.PathLike | None = None,
                       log: Callable[[str], None] | None = None) -> Dataset:
    """One split of ``spec`` with the eval transform of ``config`` (a trained model's preprocessing).

    ``split="test"``/``"val"``: the same images as the training run's test/validation set, given the run's
    ``val_size``, ``test_size``, ``seed`` and ``skip_bad_images`` (for an image folder without ``val/``/
    ``test/`` both are held out of the folder; hcgnet runs from before ``test_size`` existed held out
    ``test_size=val_size``). ``split="all"``: every image of an image folder (class sub-folders; for a
    ``train/`` + ``val/`` layout, ``train/`` and ``val/``, or ``test/``, together: everything the run drew
    from); for CIFAR and Fashion-MNIST the whole test set, as ``"test"`` (their training images are not a
    fair score).
    Image folders are labelled with ``config.class_names`` (a folder may lack classes; a class the model does
    not know is an error); a model without class names (``"0"``, ``"1"``...) labels the folder's sorted
    classes 0, 1, ... as training does. Image folders are decoded completely first (as in
    :func:`build_data`); with ``skip_bad_images``, ``log`` gets one line naming the unreadable ones left out
    (:func:`skipped_note`). Raises :class:`DataError` in one line.
    """
    _check_split(split)
    name, folder = _parse_spec(spec)
    eval_tf = build_eval_transform(config)
    if name != "imagefolder":
        train, test, own = _load_builtin(name, data_dir, download, None)
        if len(own.class_names) != len(config.class_names):
            raise DataError(f"{name} has {plural(len(own.class_names), 'class')} but the model "
                            f"classifies {len(config.class_names)}")
        if own.input_size[0] != config.input_size[0]:  # the transform would convert them without a word
            raise ChannelsMismatch(name, config.input_size[0], own.input_size[0])
        if split != "val":
            return _with_transform(test, eval_tf)
        _, val_idx, _ = _split(len(train), True, val_size, None, seed)
        return Subset(_with_transform(train, eval_tf), val_idx)
    train_root, test_root = layout(folder)

    def checked(parts):
        skipped = check_images(parts, folder, skip_bad_images, bad_images_log)
        if skipped and log is not None:
            log(skipped_note(skipped, bad_images_log))
        return parts

    if split == "all":
        parts = checked([_eval_folder(r, config) for r in (train_root, test_root) if r is not None])
        sets = [_with_transform(ds, eval_tf) for ds in parts]
        return sets[0] if len(sets) == 1 else ConcatDataset(sets)
    if split == "test" and test_root is not None:
        test, = checked([_eval_folder(test_root, config)])
        return _with_transform(test, eval_tf)
    train, = checked([_eval_folder(train_root, config)])  # the same files dropped as in training
    _, val_idx, test_idx = _split(len(train), test_root is not None, val_size, test_size, seed)
    return Subset(_with_transform(train, eval_tf), val_idx if split == "val" else test_idx)
