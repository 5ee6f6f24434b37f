"""DataError, one-line messages, and the original message of an error re-raised by a DataLoader worker."""
from __future__ import annotations

import re

from hcgnet.errors import HCGNetError, channels_mismatch

__all__ = ["ChannelsMismatch", "DataError", "download_command", "error_message", "missing_dataset", "one_line", "reason"]


class DataError(HCGNetError):
    """A dataset that cannot be used as asked: unknown name, missing files, unreadable image, bad split."""


class ChannelsMismatch(DataError):
    """A built-in dataset whose images have ``gives`` channels, for a model that takes ``takes``: a caller that
    knows the model's name words it again (:func:`hcgnet.errors.channels_mismatch`)."""

    def __init__(self, data: str, takes: int, gives: int) -> None:
        super().__init__(channels_mismatch("the model", takes, data, gives))
        self.data, self.takes, self.gives = data, takes, gives


def missing_dataset(title: str, where: str, how_to_add: str, failed_download: str | None = None,
                    download: str = "") -> DataError:
    """The one-line error for a built-in dataset that is not in ``where``: ``how_to_add`` it by hand, or
    ``--data-dir``; then why the download failed when one was tried, else ``download``, the command that asks
    for one (nothing is downloaded unless asked)."""
    tried = f" and {failed_download}" if failed_download else ""
    ask = f", or let torchvision download it: {download}" if download and not failed_download else ""
    return DataError(f"{title} not found in {where}{tried}: {how_to_add}, or pass --data-dir{ask}")


def download_command(name: str, data_dir: str) -> str:
    """The command that downloads dataset ``name`` into ``data_dir``, for messages: it works from any command."""
    return f"hcgnet download {name} --data-dir {data_dir}"


def one_line(text: object, limit: int = 300) -> str:
    """``text`` with its whitespace (newlines included) collapsed, cut to ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def reason(exc: BaseException) -> str:
    """The one-line message of ``exc``, or its type name when it has none. PIL's "cannot identify image file
    <_io.BufferedReader name=...>" becomes what it means: the file is not an image in a format PIL reads."""
    message = one_line(exc) or type(exc).__name__
    if message.startswith("cannot identify image file"):
        return "not an image file PIL can read (or its first bytes are damaged)"
    return message


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*: (.*)$")


def error_message(exc: BaseException) -> str:
    """The one-line message of ``exc``.

    An exception raised in a DataLoader worker is re-raised by PyTorch as the same type with the message
    ``"Caught DataError in DataLoader worker process 0.\\nOriginal Traceback ...\\n
    hcgnet.data.errors.DataError: <message>"``; for those the original message (the text after the
    exception name on the last line) is returned; for any other exception, its message.
    """
    text = str(exc)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        m = _EXC_LINE.match(lines[-1])
        return m.group(1) if m else lines[-1].strip()
    return text.strip()
