"""Writing files so that a crash never leaves a half-written one (a temporary file, then ``os.replace``), and
checking an output path before long work starts, so a mistake costs seconds, not the whole run."""
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Union

from hcgnet.errors import HCGNetError, script_errors

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp", mode: int = 0o644) -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path`` in one step, when
    it fails the temporary file is removed and ``path`` is untouched. ``suffix`` is kept for writers that
    insist on one (``torch.export.save`` wants ``.pt2``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkstemp makes the file private; what we write is not
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: PathLike, data, indent: Optional[int] = 2, default=None) -> Path:
    """``data`` as JSON in the file ``path`` (a final newline), atomically (:func:`atomic_path`): a crash leaves
    the earlier file or none, never half of one. ``default`` as for :func:`json.dumps` (``str`` for paths)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=indent, default=default) + "\n")
    return Path(path)


def can_write_in(folder: PathLike) -> bool:
    """Whether a file can be created in ``folder``: tried for real, because permission bits do not tell
    (root ignores them; a read-only mount or a full quota does not show in them)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def file_in_the_way(path: PathLike) -> Optional[Path]:
    """The nearest existing folder above ``path`` that is a file instead (``notes.txt`` of ``notes.txt/x/y``), or
    None: nothing can be made below it, which a plain "does not exist" would hide."""
    existing = next((p for p in Path(path).parents if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def check_output_file(path: PathLike, flag: str = "output", force: bool = False) -> Path:
    """``path`` as a file hcgnet may write, or a one-line :class:`HCGNetError` saying what to change: not an
    existing folder, an existing file only with ``force``, in a folder that exists and is writable."""
    path = Path(path)
    if path.is_dir():
        raise HCGNetError(f"{flag} {path} is a folder; give the name of a file to write inside it")
    if path.exists() and not force:
        raise HCGNetError(f"{path} already exists; pass --force to replace it")
    folder = path.parent
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise HCGNetError(f"{flag} {path}: {blocker} is a file, not a folder; choose another {flag}")
    if not folder.is_dir():
        raise HCGNetError(f"folder {folder} does not exist; create it first")
    if not can_write_in(folder):
        raise HCGNetError(f"{flag}: cannot write in folder {folder} (read-only or no permission); choose another")
    return path


def script_output_file(path: Optional[PathLike], force: bool, prog: str, flag: str = "--json") -> Optional[Path]:
    """For command-line scripts (benchmarks/): :func:`check_output_file` on ``path`` (None when it is None),
    called before any work. The library raises and hcgnet's CLI catches; a script has no CLI around it, so here
    a refusal is printed as ``PROG: error: ...`` on stderr and the script exits with code 2."""
    if path is None:
        return None
    with script_errors(prog):
        return check_output_file(path, flag, force)


#: Suffixes of the files commands write: a new --output folder named so was meant as a file.
RESULT_FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".json", ".csv", ".npz", ".txt", ".safetensors",
                        ".pt", ".onnx")


def check_folder_name(folder: PathLike, holds: str, flag: str = "--output") -> None:
    """Refuse in one line a new folder for ``holds`` named like a result file (``--output model.pt``): a file
    name where a folder goes. A folder that exists is the user's, whatever its name."""
    out = Path(folder)
    if not out.exists() and out.suffix.lower() in RESULT_FILE_SUFFIXES:
        raise HCGNetError(f"{flag} is a folder for {holds}, and {out} is named like a file; give a folder "
                          f"name (such as {out.with_suffix('')})")


def check_output_folder(folder: PathLike, holds: str, results: Iterable[str] = (), force: bool = False,
                        flag: str = "--output", reads: Iterable[Optional[PathLike]] = ()) -> Path:
    """``folder`` as a folder a command may write ``holds`` into, checked before any work, or a one-line
    :class:`HCGNetError` saying what to change: not a file, writable (it and its parents may not exist yet:
    the writer makes them), and holding none of ``results`` (file names inside it) unless ``force``, so an
    earlier result is never replaced by accident. ``reads``: the image folders the command reads (None
    skipped); an output inside one is refused, since its pictures would be read as images next time (a new
    class folder of an image folder)."""
    out = Path(folder)
    for images in reads:
        if images is not None and Path(images).is_dir() and out.resolve().is_relative_to(Path(images).resolve()):
            raise HCGNetError(f"{flag} {out} is inside {images}, which this command reads images from: what it "
                              f"writes would be read as images next time; choose an {flag} outside it")
    if out.exists() and not out.is_dir():
        raise HCGNetError(f"{flag} {out} is a file; give a folder for {holds}")
    blocker = file_in_the_way(out)
    if blocker is not None:
        raise HCGNetError(f"{flag} {out}: {blocker} is a file, not a folder; choose another {flag}")
    check_folder_name(out, holds, flag)
    existing = out if out.is_dir() else next((p for p in out.parents if p.is_dir()), Path("."))
    if not can_write_in(existing):
        raise HCGNetError(f"{flag}: cannot write in folder {existing} (read-only or no permission); choose another")
    if not force and out.is_dir():
        found = [name for name in results if (out / name).exists()]
        if found:
            raise HCGNetError(f"{out} already holds {', '.join(found)} from an earlier run; pass --force to replace "
                              f"them, or choose another {flag}")
    return out


@contextlib.contextmanager
def reported_write(path: PathLike) -> Iterator[None]:
    """Turn an operating-system failure while writing ``path`` (disk full, permissions) into one line."""
    try:
        yield
    except OSError as e:
        raise HCGNetError(f"cannot write {path}: {e.strerror or e}") from None


def distinct_names(paths: Sequence[PathLike]) -> List[str]:
    """Short labels for ``paths``: each one's file name with the same number of parent folders, as few as it takes
    to tell them all apart (``cls0/0.png``, ``cls1/0.png`` and ``cls1/1.png``, not ``0.png`` twice; in a folder of
    class folders every label names its class). A path with fewer folders shows them all; the same path twice gets
    the same label."""
    parts = [Path(p).parts or (str(p),) for p in paths]
    depth = 1
    while True:
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(set(parts)) or depth >= max(len(p) for p in parts):
            return labels
        depth += 1
