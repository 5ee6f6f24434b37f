"""Reading image files: :func:`load_image` (the ImageFolder loader) and :func:`scan_images`, which decodes
every file of a folder up front so that all unreadable ones are known before training starts.

The scan decodes each image completely (``Image.load()``), with PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES``
forced off for its duration: a header check (``verify()``) passes a truncated JPEG, which then stops training
hours later. Pillow releases the GIL while it reads and decodes, so threads run in parallel; decoding a
300x200 JPEG takes about a millisecond, so a 1,400-image folder is checked in 1-2 s on 2 cores (measured).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence, TypeVar

from PIL import Image, ImageFile
from tqdm import tqdm

from hcgnet.data.errors import DataError, one_line, reason
from hcgnet.errors import plural
from hcgnet.files import atomic_path

__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "load_image", "decode_error", "header_size", "map_images",
           "scan_images", "bad_images_error", "write_bad_images"]

#: What counts as an image by its name, in training folders and for ``predict`` alike: torchvision's
#: ImageFolder list plus GIF (its first frame) and PBM, which PIL reads as well.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

SKIP_HINT = "remove it or pass --skip-bad-images"
_LOG_EVERY_S = 30.0  # progress line interval when stderr is not a terminal
_NAMES_SHOWN = 3     # bad files named in the error message; the rest are in the log file
T = TypeVar("T")


def is_image_file(path: str) -> bool:
    """Whether ``path`` names an image by its extension (any case): one of :data:`IMAGE_EXTENSIONS`."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def load_image(path, hint: str = SKIP_HINT) -> Image.Image:
    """Open and fully decode an image (its own mode; the transforms convert it).

    Raises :class:`DataError` in one line, naming the file, if it cannot be read. This is the ImageFolder
    loader, so the same message comes out of a DataLoader worker (see :func:`~hcgnet.data.error_message`).
    """
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error... for broken files
        raise DataError(f"cannot read image {path}: {reason(e)}" + (f"; {hint}" if hint else "")) from None
    return img


def decode_error(path) -> str | None:
    """Why ``path`` cannot be decoded completely, or None if it can."""
    try:
        with open(path, "rb") as f, Image.open(f) as img:
            img.load()
    except Exception as e:  # any failure of any decoder means the file cannot be trained on
        return reason(e)
    return None


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """Truncated files fail to load, whatever another library set (the setting is PIL-global)."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def _workers() -> int:
    # Two threads per core: while one waits for the disk the other decodes.
    return max(1, min(32, 2 * (os.cpu_count() or 1)))


def map_images(fn: Callable[[str], T], paths: Sequence[str], what: str) -> list[T]:
    """``[fn(path) for path in paths]`` in threads (file reading waits on the disk), in order, with progress.

    A tqdm bar (``what``, e.g. ``"checking images in DIR"``) shows progress on a terminal; otherwise a line
    goes to stderr every 30 s of a long pass.
    """
    results: list[T] = []
    terminal = sys.stderr.isatty()
    last = start = time.monotonic()
    with ThreadPoolExecutor(_workers()) as pool:
        for result in tqdm(pool.map(fn, paths), total=len(paths), desc=what, unit="img", disable=not terminal,
                           leave=False):
            results.append(result)
            now = time.monotonic()
            if not terminal and now - last >= _LOG_EVERY_S:
                last = now
                print(f"{what}: {len(results):,}/{len(paths):,} ({len(results) / (now - start):.0f} images/s)",
                      file=sys.stderr, flush=True)
    return results


def scan_images(paths: Sequence[str], where: str) -> list[tuple[str, str]]:
    """Decode every file of ``paths`` (:func:`map_images`); ``[(path, why), ...]`` of those that fail, in order."""
    with _strict_decoding():
        results = map_images(decode_error, paths, f"checking images in {where}")
    return [(p, why) for p, why in zip(paths, results) if why is not None]


def header_size(path) -> tuple[int, int] | str:
    """``(width, height)`` from the file's header (nothing decoded), or why it cannot be read."""
    try:
        with open(path, "rb") as f, Image.open(f) as img:
            return img.size
    except Exception as e:  # as decode_error: any failure means the file cannot be used
        return reason(e)


def write_bad_images(bad: Sequence[tuple[str, str]], log_path) -> None:
    """Write ``path<TAB>reason`` lines to ``log_path`` atomically (its folder is created if needed)."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        with atomic_path(log_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{p}\t{why}\n" for p, why in bad)
    except OSError as e:
        raise DataError(f"cannot write the list of unreadable images to {log_path}: {reason(e)}") from None


def bad_images_error(bad: Sequence[tuple[str, str]], total: int, root: str, log_path=None) -> DataError:
    """One line naming the first few unreadable files (relative to ``root``) and where the full list is."""
    shown = ", ".join(f"{os.path.relpath(p, root)} ({one_line(why, 80)})" for p, why in bad[:_NAMES_SHOWN])
    more = f" and {len(bad) - _NAMES_SHOWN:,} more" if len(bad) > _NAMES_SHOWN else ""
    where = f"; the full list is in {log_path}" if log_path is not None else ""
    them = "them" if len(bad) > 1 else "it"
    return DataError(f"{len(bad):,} of {plural(total, 'image')} in {root} cannot be read: {shown}{more}{where}; "
                     f"remove {them} or pass --skip-bad-images")
