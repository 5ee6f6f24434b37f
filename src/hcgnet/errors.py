"""Errors that mean "the user asked for something that cannot work"; the CLI prints them in one line."""


class HCGNetError(ValueError):
    """Base class: a mistake in what was asked for (model name, spec, file), not a bug."""


class ModelSpecError(HCGNetError):
    """Unknown model name, malformed HCGNet spec, or a spec the architecture cannot build."""


class CheckpointError(HCGNetError):
    """A file that is not a usable checkpoint, or one made for a different model."""


def plural(n: float, noun: str) -> str:
    """``"1 image"``, ``"1,400 images"``, ``"0.5 epochs"``, ``"2 classes"``, ``"3 batches"``: a count with its noun, for messages."""
    many = noun + "es" if noun.endswith(("s", "x", "sh", "ch")) else noun + "s"
    number = f"{n:,}" if float(n).is_integer() and not isinstance(n, float) else f"{n:g}"
    return f"{number} {noun if n == 1 else many}"
