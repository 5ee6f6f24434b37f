"""CIFAR-10 and CIFAR-100 from torchvision's loaders, reading the standard python-pickle batches.

Files: ``data_dir/cifar-10-batches-py/`` / ``cifar-100-python/``, extracted from the official tarball if only
that is there, else downloaded by torchvision when asked (``download``). torchvision checks the md5 sum of every extracted file before
reading it; :class:`CIFAR10Files`/:class:`CIFAR100Files` only check that the files exist. The md5 sums guard
downloads, which torchvision still verifies (against the tarball's sum); the format itself is checked by
reading it (a broken file raises :class:`DataError`), and skipping the sums lets small files in the real
format (tests) load. Offline, a failed download becomes a one-line :class:`DataError` saying where to put the
files.

Each set is normalised with its own training set's statistics (CIFAR-100 with CIFAR-100's, as the published
HCGNet training does).
"""
from __future__ import annotations

import os
import pickle

from torchvision import datasets as tvd
from torchvision.datasets.utils import extract_archive

from hcgnet.data.config import DataConfig
from hcgnet.data.errors import DataError, download_command, missing_dataset, reason
from hcgnet.data.transforms import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

__all__ = ["CIFAR10Files", "CIFAR100Files", "CIFAR", "load_cifar", "check_labels"]


class _ExistingFilesCIFAR:
    """CIFAR loaders that check the files exist instead of their md5 sums (see the module docstring)."""

    def _files(self):
        names = [f for f, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return [os.path.join(self.root, self.base_folder, f) for f in names]

    def _check_integrity(self) -> bool:
        return all(os.path.isfile(p) for p in self._files())

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            data = pickle.load(f, encoding="latin1")
        self.classes = list(data[self.meta["key"]])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class CIFAR10Files(_ExistingFilesCIFAR, tvd.CIFAR10):
    """:class:`torchvision.datasets.CIFAR10` without the md5 check of the extracted files."""


class CIFAR100Files(_ExistingFilesCIFAR, tvd.CIFAR100):
    """:class:`torchvision.datasets.CIFAR100` without the md5 check of the extracted files."""


#: name -> (title, loader class, mean, std)
CIFAR = {
    "cifar10": ("CIFAR-10", CIFAR10Files, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": ("CIFAR-100", CIFAR100Files, CIFAR100_MEAN, CIFAR100_STD),
}


def check_labels(ds, num_classes: int, where: str) -> None:
    targets = [int(t) for t in ds.targets]
    bad = [t for t in targets if not 0 <= t < num_classes]
    if bad:
        raise DataError(f"bad labels in {where}: {bad[0]} is outside 0..{num_classes - 1}")


def _make_available(name: str, title: str, cls, root: str, download: bool) -> None:
    """Extract or download the files if they are not there yet; a one-line error if that fails."""
    tarball = os.path.join(root, cls.filename)
    probe = cls.__new__(cls)  # only to reuse the file list; nothing is loaded
    probe.root = root
    why = None
    if not probe._check_integrity():
        if download:
            made = not os.path.exists(root)
            try:  # checks an existing tarball's md5, downloads it if needed, extracts it
                probe.download()
            except Exception as e:  # no network, proxy, disk full...
                why = f"it could not be downloaded ({reason(e)[:150]})"
                if made and os.path.isdir(root) and not os.listdir(root):   # nothing came: leave nothing behind
                    os.rmdir(root)
        elif os.path.isfile(tarball):
            try:
                extract_archive(tarball, root)
            except Exception as e:
                raise DataError(f"cannot extract {tarball}: {reason(e)}; delete it or replace it with the "
                                f"original {cls.filename}") from None
    if not probe._check_integrity():
        folder = os.path.join(root, cls.base_folder)
        if os.path.basename(os.path.normpath(root)) == cls.base_folder:   # the usual slip: the folder itself
            parent = os.path.dirname(os.path.normpath(root)) or "."
            raise DataError(f"--data-dir {root} is the extracted {cls.base_folder}/ itself; give the folder "
                            f"that holds it: --data-dir {parent}")
        if os.path.isdir(folder) and why is None:   # there, but not whole: say what is missing
            missing = [os.path.basename(p) for p in probe._files() if not os.path.isfile(p)]
            raise DataError(f"{title} in {folder} lacks {', '.join(missing)}: extract the whole {cls.filename} "
                            "there again")
        raise missing_dataset(title, root, f"put {cls.filename} (or its extracted {cls.base_folder}/) there", why,
                              download_command(name, root))


def _broken_file(cls, root: str) -> str:
    """", its FILE" for the first of the set's files that does not unpickle (read again, only when reading the
    set has failed), else ""."""
    probe = cls.__new__(cls)
    probe.root = root
    for path in probe._files():
        try:
            with open(path, "rb") as f:
                pickle.load(f, encoding="latin1")
        except Exception:
            return f", its {os.path.basename(path)}"
    return ""


def load_cifar(name: str, root: str, download: bool):
    """``(train, test, config)`` of CIFAR-10 or CIFAR-100 under ``root``."""
    title, cls, mean, std = CIFAR[name]
    folder = os.path.join(root, cls.base_folder)
    _make_available(name, title, cls, root, download)
    try:
        train = cls(root, train=True)
        test = cls(root, train=False)
    except Exception as e:  # truncated pickle, wrong keys, wrong array size...
        raise DataError(f"cannot read {title} in {folder}{_broken_file(cls, root)}: {type(e).__name__}: "
                        f"{reason(e)}") from None
    classes = [str(c) for c in train.classes]
    for ds, split in ((train, "training"), (test, "test")):
        check_labels(ds, len(classes), f"{title} {split} set in {folder}")
    config = DataConfig(name=name, input_size=(3, 32, 32), mean=mean, std=std, resize=None, class_names=classes)
    return train, test, config
