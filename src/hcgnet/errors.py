"""Errors that mean "the user asked for something that cannot work"; the CLI prints them in one line."""


class HCGNetError(ValueError):
    """Base class: a mistake in what was asked for (model name, spec, file), not a bug."""


class ModelSpecError(HCGNetError):
    """Unknown model name, malformed HCGNet spec, or a spec the architecture cannot build."""


class CheckpointError(HCGNetError):
    """A file that is not a usable checkpoint, or one made for a different model."""
