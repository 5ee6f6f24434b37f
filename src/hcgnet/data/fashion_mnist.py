"""Fashion-MNIST, fed at its native 28x28 with ONE input channel.

The model is built with ``in_chans=1`` rather than padding/repeating the images to 3x32x32: 23% fewer
multiply-adds and no fake channels; ``input_size=(1, 28, 28)``. The files come from the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/*.gz``), decompressed once (atomically: temp
file + ``os.replace``) into ``data_dir/FashionMNIST/raw/`` where torchvision looks for them; ``.gz`` files put
in that folder by hand are decompressed the same way; failing both, torchvision's download is tried when asked.
"""
from __future__ import annotations

import gzip
import os
import shutil

from torchvision import datasets as tvd

from hcgnet.data.config import DataConfig
from hcgnet.data.errors import DataError, download_command, missing_dataset, reason
from hcgnet.data.transforms import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from hcgnet.files import atomic_path

__all__ = ["FASHION_MNIST_SYSTEM_DIR", "FASHION_MNIST_FILES", "load_fashion_mnist"]

#: Where the Debian package ``dataset-fashion-mnist`` installs the gzipped IDX files.
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


def _gunzip(src: str, dst: str) -> None:
    """Decompress ``src`` to ``dst`` atomically (temp file in the same folder, then ``os.replace``)."""
    try:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with atomic_path(dst) as tmp, open(tmp, "wb") as out, gzip.open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
    except Exception as e:
        raise DataError(f"cannot decompress {src} into {os.path.dirname(dst)}: {reason(e)}") from None


def _prepare(root: str, download: bool) -> None:
    raw = os.path.join(root, "FashionMNIST", "raw")

    def missing():
        return [n for n in FASHION_MNIST_FILES if not os.path.isfile(os.path.join(raw, n))]

    for name in missing():
        for src in (os.path.join(raw, name + ".gz"), os.path.join(FASHION_MNIST_SYSTEM_DIR, name + ".gz")):
            if os.path.isfile(src):
                _gunzip(src, os.path.join(raw, name))
                break
    why = None
    if missing() and download:
        probe = tvd.FashionMNIST.__new__(tvd.FashionMNIST)  # only its download(); nothing is loaded
        probe.root = root
        try:
            probe.download()
        except Exception as e:
            why = f"it could not be downloaded ({reason(e)[:150]})"
    if missing():
        gz = ", ".join(n + ".gz" for n in FASHION_MNIST_FILES)
        raise missing_dataset("Fashion-MNIST", raw, f"apt-get install dataset-fashion-mnist (files in "
                              f"{FASHION_MNIST_SYSTEM_DIR}), or put {gz} in {raw}", why,
                              download_command("fashion-mnist", root))


def load_fashion_mnist(root: str, download: bool):
    """``(train, test, config)`` of Fashion-MNIST under ``root``."""
    _prepare(root, download)
    try:
        train = tvd.FashionMNIST(root, train=True)
        test = tvd.FashionMNIST(root, train=False)
    except Exception as e:
        raw = os.path.join(root, "FashionMNIST", "raw")
        raise DataError(f"cannot read Fashion-MNIST in {raw}: {type(e).__name__}: {reason(e)}") from None
    config = DataConfig(name="fashion-mnist", input_size=(1, 28, 28), mean=FASHION_MNIST_MEAN,
                        std=FASHION_MNIST_STD, resize=None, class_names=list(tvd.FashionMNIST.classes))
    return train, test, config
