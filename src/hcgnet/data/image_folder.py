"""``imagefolder:PATH``: a folder of class sub-folders of images (torchvision's ImageFolder, RGB).

Layouts: if PATH has ``train/``, that is the training set and ``val/`` (or else ``test/``) is the TEST set, as
for ImageNet, whose labelled val set serves as the test set; the validation split is held out of ``train/``.
Otherwise (no ``train/``, or ``train/`` but neither ``val/`` nor ``test/``) the test set is held out of the
training folder as well, with its own size (see :mod:`hcgnet.data.splits`). Hidden folders
(``.ipynb_checkpoints``...) are not classes. A test folder may lack classes but not have extra ones; label
indices follow the training folder's (sorted) classes.

Every image is decoded once before training (:func:`check_images`): unreadable files are all reported in one
error, or dropped with ``skip_bad_images``. Training then reads them with :func:`~hcgnet.data.load_image`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from torchvision import datasets as tvd

from hcgnet.data.config import DataConfig
from hcgnet.data.errors import DataError, reason
from hcgnet.data.images import (IMAGE_EXTENSIONS, bad_images_error, is_image_file, load_image, scan_images,
                                write_bad_images)
from hcgnet.data.defaults import resolve_data_config
from hcgnet.errors import plural

__all__ = ["ClassFolder", "open_class_folder", "layout", "folder_config", "check_images",
           "refuse_one_class", "class_folder_name", "class_folders"]


def class_folders(directory: str) -> list[str]:
    """The class sub-folders of ``directory``, sorted (ImageFolder's order); hidden ones
    (``.ipynb_checkpoints``...) are not classes."""
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def class_folder_name(class_name: str) -> str:
    """The sub-folder that holds a class's images: the class name, with "/" (which no folder name can hold:
    Fashion-MNIST's "T-shirt/top") as "_"."""
    return class_name.replace("/", "_")


class ClassFolder(tvd.ImageFolder):
    """ImageFolder reading with :func:`load_image`, ignoring hidden folders, optionally with a fixed class list
    (a test folder is labelled with the training folder's classes and may lack some of them; each class's
    folder is :func:`class_folder_name`); ``owner`` names where the fixed list comes from, for the error about a
    class outside it."""

    def __init__(self, root: str, classes: Sequence[str] | None = None, owner: str = "the training folder"):
        self._fixed_classes = None if classes is None else list(classes)
        self._owner = owner
        # empty classes are allowed here and refused, naming them, by open_class_folder (torchvision's own error
        # lists its extensions, not the folder to mend)
        super().__init__(root, loader=load_image, is_valid_file=is_image_file, allow_empty=True)

    def find_classes(self, directory):
        found = class_folders(directory)
        if not found:
            raise FileNotFoundError(f"no class sub-folders in {directory}")
        if self._fixed_classes is None:
            return found, {c: i for i, c in enumerate(found)}
        folders = [class_folder_name(c) for c in self._fixed_classes]
        extra = sorted(set(found) - set(folders))
        if extra:
            raise DataError(f"{directory} has {plural(len(extra), 'class')} {self._owner} lacks: "
                            f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
        return folders, {c: i for i, c in enumerate(folders)}


def open_class_folder(root: str, classes: Sequence[str] | None = None,
                      owner: str = "the training folder") -> ClassFolder:
    """:class:`ClassFolder` of ``root``; a one-line :class:`DataError` for a missing or empty folder."""
    try:
        ds = ClassFolder(root, classes, owner)
    except FileNotFoundError as e:
        raise DataError(f"empty dataset {root}: {reason(e)} (expected one sub-folder of images per class)") from None
    except OSError as e:
        raise DataError(f"cannot read folder {root}: {reason(e)}") from None
    if not ds.samples:
        raise DataError(f"empty dataset {root}: no images in its class sub-folders")
    if classes is None:  # a training folder: every class folder is a class the model learns
        have = set(ds.targets)
        empty = [c for i, c in enumerate(ds.classes) if i not in have]
        if empty:
            them = "it" if len(empty) == 1 else "them"
            raise DataError(f"{root}: the class {'folder' if len(empty) == 1 else 'folders'} "
                            f"{', '.join(e + '/' for e in empty[:5])}{' ...' if len(empty) > 5 else ''} "
                            f"{'holds' if len(empty) == 1 else 'hold'} no images ({', '.join(IMAGE_EXTENSIONS)}): "
                            f"add images to {them} or remove {them}")
    return ds


def layout(path: str) -> tuple[str, str | None]:
    """``(training folder, test folder or None)`` of ``imagefolder:path`` (see the module docstring)."""
    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        what = "not a folder" if os.path.exists(path) else "no such folder"
        raise DataError(f"{what}: {path} (imagefolder:PATH needs a folder with one sub-folder of images per class)")
    train_root = os.path.join(path, "train")
    if not os.path.isdir(train_root):
        return path, None
    return train_root, next((os.path.join(path, d) for d in ("val", "test") if os.path.isdir(os.path.join(path, d))),
                            None)


def folder_config(classes: Sequence[str], image_size=None, pretrained_cfg=None,
                  small_images: bool = False) -> DataConfig:
    """The preprocessing of an image folder of these classes for a model with ``pretrained_cfg`` (None: the
    ImageNet stem's), at ``image_size`` (default: the model's input size); see
    :func:`~hcgnet.data.defaults.resolve_data_config`."""
    return resolve_data_config(pretrained_cfg, classes, image_size=image_size, in_chans=3, small_images=small_images)


def refuse_one_class(ds: ClassFolder, root: str) -> None:
    """A classifier needs two classes at least; one class sub-folder is almost always a wrong --data path."""
    if len(ds.classes) < 2:
        raise DataError(f"{root} has 1 class ({ds.classes[0]}); a classifier needs at least 2 class "
                        "sub-folders")


def _drop(ds: ClassFolder, bad_paths: set[str], root: str) -> None:
    good = [s for s in ds.samples if s[0] not in bad_paths]
    if not good:
        raise DataError(f"empty dataset {root}: none of its {plural(len(ds.samples), 'image')} can be read")
    ds.samples = ds.imgs = good
    ds.targets = [t for _, t in good]


def check_images(folders: Sequence[ClassFolder], root: str, skip_bad_images: bool,
                 bad_images_log=None) -> list[str]:
    """Decode every image of ``folders`` (all at once, in threads); returns the skipped paths.

    Unreadable files raise one :class:`DataError` naming the first few (relative to ``root``) unless
    ``skip_bad_images``, which drops them from the folders instead. ``bad_images_log``: a file that gets
    the full list (``path<TAB>reason`` lines) whenever there are bad files.
    """
    paths = [p for ds in folders for p, _ in ds.samples]
    bad = scan_images(paths, root)
    if not bad:
        return []
    if bad_images_log is not None:
        write_bad_images(bad, bad_images_log)
    if not skip_bad_images:
        raise bad_images_error(bad, len(paths), root, bad_images_log)
    bad_paths = {p for p, _ in bad}
    for ds in folders:
        _drop(ds, bad_paths, ds.root)
    return [p for p, _ in bad]
