"""Errors that mean "the user asked for something that cannot work"; the CLI prints them in one line."""
import contextlib
import difflib
import numbers
import sys
from typing import Iterator


class HCGNetError(ValueError):
    """Base class: a mistake in what was asked for (model name, spec, file), not a bug."""


class ModelSpecError(HCGNetError):
    """Unknown model name, malformed HCGNet spec, or a spec the architecture cannot build."""


class CheckpointError(HCGNetError):
    """A file that is not a usable checkpoint, or one made for a different model."""


def is_number(value: object) -> bool:
    """A real number, not a bool (JSON's ``true`` is no setting of 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_whole(value: object, least: int = 1) -> bool:
    """A whole number of ``least`` or more; a bool is not (JSON's ``true`` is no count of 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def check_whole(name: str, value: object, note: str = "", error: type = ModelSpecError) -> None:
    """A one-line ``error`` unless ``value`` is a whole number of 1 or more (a bool is not, nor is 2.0)."""
    if not is_whole(value):
        raise error(f"{name} must be a whole number of 1 or more{note}, got {value!r}")


def close_match(word: str, choices, cutoff: float = 0.6) -> str:
    """`` (did you mean X?)`` for the choice closest to a mistyped ``word`` (difflib's), or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]}?)" if close else ""


def check_resume_or_overwrite(resume: bool, overwrite: bool, error: type = HCGNetError) -> None:
    """A training run (classifier or detector) either continues its output folder or replaces it, never both."""
    if resume and overwrite:
        raise error("--resume continues the run in the output folder, --overwrite replaces it: choose one")


@contextlib.contextmanager
def script_errors(prog: str) -> Iterator[None]:
    """For command-line scripts (benchmarks/), which have no CLI around them to catch an :class:`HCGNetError`:
    one raised in the block is printed as ``PROG: error: ...`` on stderr, and the script exits with code 2."""
    try:
        yield
    except HCGNetError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)


def channels_mismatch(model: str, takes: int, data: str, gives: int, verb: str = "use") -> str:
    """The one-line refusal of ``data``'s ``gives``-channel images for ``model``, which takes ``takes``: eval's,
    attack's and the data loader's words alike. ``verb``: what the command does with the model."""
    return (f"{model} takes {takes}-channel images but {data} gives {gives}-channel ones; {verb} it on the dataset "
            "it was trained for")


def first_of(shown: int, available: int, noun: str) -> str:
    """``"the first 50 of 10,000 images"`` where a limit cut what was scored, else ``"10,000 images"``."""
    return f"the first {shown:,} of {plural(available, noun)}" if shown < available else plural(shown, noun)


def plural(n: float, noun: str) -> str:
    """``"1 image"``, ``"1,400 images"``, ``"0.5 epochs"``, ``"2 classes"``, ``"3 batches"``: a count with its noun, for messages."""
    # "es" after a hissing end: batch, box, class; not after a hard "ch" (epochs)
    many = noun + "es" if noun.endswith(("s", "x", "sh", "tch")) else noun + "s"
    number = f"{n:,}" if float(n).is_integer() and not isinstance(n, float) else f"{n:g}"
    return f"{number} {noun if n == 1 else many}"
