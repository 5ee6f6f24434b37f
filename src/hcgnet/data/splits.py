"""Held-out splits: how many images are held out (``val_size``/``test_size``, or the automatic rule) and which.

The automatic rule (``val_size=None``, ``test_size=None``): 10% of the images, rounded, at least 1 and at
most 5,000; no hold-out at all below 10 images. So a small folder keeps 90% for training (1,400 images ->
140 held out), and a large set holds out a fixed 5,000 (CIFAR's 50,000 -> 5,000, the paper's 45k/5k split;
ImageNet's 1.28M -> 5,000 rather than 128,000 images taken from training).

An explicit size is a fraction of the images when < 1 (rounded half up; at least 1 image for a non-zero
fraction), else a count. Both sizes are taken from the same ``n`` images, independently of each other.

Which images: ``torch.randperm(n)`` with a ``torch.Generator`` seeded by ``seed``; the first ``v`` permuted
indices are the validation set, the next ``t`` the test set (only when the test set is held out too), the
rest the training set, each sorted. With ``v == t`` this is the split hcgnet made before the sizes were
independent, so runs trained then are rebuilt by passing ``test_size=val_size``.
"""
from __future__ import annotations

import numbers

import torch

from hcgnet.data.errors import DataError
from hcgnet.errors import plural

__all__ = ["AUTO_FRACTION", "AUTO_MAX", "AUTO_MIN_IMAGES", "auto_held_out", "format_size", "held_out_count",
           "holdout_note", "split_indices"]

AUTO_FRACTION = 0.1   # of the images, below AUTO_MAX / AUTO_FRACTION = 50,000 images
AUTO_MAX = 5000       # images, above that
AUTO_MIN_IMAGES = 10  # fewer images than this: nothing held out automatically


def format_size(size) -> str:
    """A size as the user wrote it: 5000.0 (a count that came through a float field) shows as 5000."""
    if isinstance(size, float) and size >= 1 and size.is_integer():
        return str(int(size))
    return repr(size)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _round(x: float) -> int:
    return int(x + 0.5)  # half up, as documented (Python's round() rounds half to even)


def auto_held_out(n: int) -> int:
    """The automatic hold-out of ``n`` images (see the module docstring)."""
    if n < AUTO_MIN_IMAGES:
        return 0
    return min(AUTO_MAX, max(1, _round(AUTO_FRACTION * n)))


def held_out_count(size, n: int, name: str = "val_size") -> int:
    """Images held out of ``n`` for ``size``: None = automatic, a fraction < 1, or a count."""
    if size is None:
        return auto_held_out(n)
    bad = DataError(f"{name} must be a fraction in [0, 1) or a count of images, got {size!r}")
    if isinstance(size, bool) or not isinstance(size, numbers.Real) or size != size:
        raise bad
    if 0 <= size < 1 and not isinstance(size, numbers.Integral):
        return max(1, _round(float(size) * n)) if size > 0 else 0
    if size >= 0 and float(size).is_integer():
        return int(size)
    raise bad


def split_indices(n: int, val_size=None, seed: int = 0, *, with_test: bool = False,
                  test_size=None) -> list[list[int]]:
    """Deterministically split ``range(n)`` into ``[train, val]``, or ``[train, val, test]`` with ``with_test``.

    ``val_size``/``test_size``: None (automatic), a fraction of ``n`` (< 1) or a count; see the module
    docstring. The parts are disjoint, sorted and together cover ``range(n)``; a split that leaves no training
    image is a :class:`DataError` giving the numbers.
    """
    v = held_out_count(val_size, n, "val_size")
    t = held_out_count(test_size, n, "test_size") if with_test else 0
    if n - v - t < 1:
        given = [f"{name}={format_size(size)}" for name, size in (("val_size", val_size), ("test_size", test_size))
                 if size is not None and (with_test or name == "val_size")] or ["the automatic hold-out"]
        test = f" and {t:,} for the test set" if with_test else ""
        flags = " or ".join(_flag(name) for name, size in (("val_size", v), ("test_size", t)) if size)
        raise DataError(f"{' and '.join(given)} {'leave' if len(given) > 1 else 'leaves'} no training images: "
                        f"{plural(n, 'image')}, {v:,} held out for validation{test}; give a smaller {flags} (a "
                        "count, or a fraction such as 0.1), which overrides a recipe's")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    parts = [sorted(perm[v + t:]), sorted(perm[:v])]
    return parts + [sorted(perm[v:v + t])] if with_test else parts


def _percent(k: int, n: int) -> str:
    return f"{100 * k / n:.1f}".rstrip("0").rstrip(".") + "%"


def holdout_note(k: int, n: int, size, purpose: str, of: str = "training images") -> str:
    """One line for the log: how many of ``n`` images were held out for ``purpose`` and why that many."""
    name = "val_size" if purpose == "validation" else "test_size"
    if size is None:
        if k == 0:
            return (f"no images held out for {purpose}: {plural(n, 'image')} are too few for the automatic "
                    f"hold-out (it starts at {AUTO_MIN_IMAGES}); {_flag(name)} holds some out")
        why = (f"automatic: {AUTO_FRACTION:.0%} of the images, at least 1, at most {AUTO_MAX:,}; "
               f"{_flag(name)} changes it")
    else:
        if k == 0:
            return f"no images held out for {purpose} ({name}={format_size(size)})"
        why = f"{name}={format_size(size)}"
    return f"held out {k:,} of {n:,} {of} ({_percent(k, n)}) for {purpose} ({why})"
