"""What ``build_data`` returns: the datasets (:class:`DataBundle`) and the preprocessing that goes with a
trained model (:class:`DataConfig`, stored in checkpoints as JSON so ``eval``/``predict`` can rebuild it)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from torch.utils.data import Dataset

from hcgnet.data.errors import DataError, reason

__all__ = ["DataBundle", "DataConfig"]


@dataclass
class DataConfig:
    """Everything ``predict``/``eval`` need to rebuild the eval transform; JSON-serialisable via ``asdict``.

    Lists (as they come back from JSON) are turned back into tuples.
    """

    name: str                # 'cifar10' | 'cifar100' | 'fashion-mnist' | 'imagefolder'
    input_size: tuple        # (C, H, W) the network sees
    mean: tuple
    std: tuple
    resize: int | None       # eval: resize the shorter side to this, then centre-crop; None for small datasets
    class_names: list[str]

    def __post_init__(self):
        try:
            self.input_size = tuple(int(v) for v in self.input_size)
            self.mean = tuple(float(v) for v in self.mean)
            self.std = tuple(float(v) for v in self.std)
            self.resize = None if self.resize is None else int(self.resize)
            self.class_names = [str(c) for c in self.class_names]
        except (TypeError, ValueError) as e:
            raise DataError(f"bad data config: {reason(e)}") from None
        if len(self.input_size) != 3:
            raise DataError(f"bad data config: input_size must be (C, H, W), got {self.input_size}")

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        """Rebuild from ``dataclasses.asdict(config)`` (e.g. after a JSON round trip); extra keys are ignored."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise DataError(f"bad data config: missing {', '.join(missing)}")
        return cls(**{n: d[n] for n in names})


@dataclass
class DataBundle:
    """The three datasets of a training run, items ``(float32 tensor of config.input_size, int label)``."""

    train: Dataset      # random augmentation
    val: Dataset        # held out from the TRAINING set, eval transform (chooses the best checkpoint)
    test: Dataset       # the test set, eval transform (scored once at the end)
    config: DataConfig
    num_classes: int
    skipped: int = 0    # unreadable images skipped (imagefolder with skip_bad_images)
    skipped_files: list[str] = field(default_factory=list)  # their paths
    notes: list[str] = field(default_factory=list)  # one-line sentences for the log: hold-outs, skipped files
