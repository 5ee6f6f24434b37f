"""DataError, one-line messages, and the original message of an error re-raised by a DataLoader worker."""
from __future__ import annotations

import re

from hcgnet.errors import HCGNetError

__all__ = ["DataError", "DOWNLOAD_HINT", "error_message", "one_line", "reason"]

#: How to fetch a missing built-in dataset: nothing is downloaded unless asked.
DOWNLOAD_HINT = "or let torchvision download it: hcgnet train --download"


class DataError(HCGNetError):
    """A dataset that cannot be used as asked: unknown name, missing files, unreadable image, bad split."""


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
