"""Training configuration: defaults < recipe < YAML config file < command-line flags."""
import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from hcgnet.errors import HCGNetError


class ConfigError(HCGNetError):
    """A recipe or config file that cannot be read, or settings that cannot work together."""


@dataclass
class TrainConfig:
    model: str = "hcgnet_a1"
    data: Optional[str] = None     # cifar10, cifar100, fashion-mnist, imagefolder:PATH
    data_dir: Optional[str] = None
    output: str = "runs/train"
    epochs: int = 10
    batch_size: int = 128          # the global batch, divided over the torchrun processes
    accum_steps: int = 1           # split each batch into this many micro-batches (interleaved, x[k::n])
    # optimiser: SGD with Nesterov momentum
    lr: float = 0.1
    lr_base_batch: Optional[int] = None   # if set, lr *= global batch / lr_base_batch (ImageNet: 256)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    # schedule: timm's CosineLRScheduler; SGDR when cycle_mul > 1
    sched: str = "cosine"          # "cosine" or "constant"
    cycle_epochs: Optional[float] = None  # T0; None: one cycle over all epochs
    cycle_mul: float = 1.0         # Tmul
    cycle_limit: int = 1
    restart_every: Optional[int] = None   # start the whole schedule again every N epochs (A2/A3: 630)
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    # regularisation
    mixup: float = 0.0             # mixup alpha; 0 disables
    label_smoothing: float = 0.0
    drop_rate: Optional[float] = None     # None: the variant's own (0.1 on ImageNet)
    drop_block: float = 0.0        # DropBlock's maximum drop probability (block size 2, after each transition)
    # model and fine-tuning
    stem: Optional[str] = None     # "cifar" or "imagenet"; None: the variant's own
    initial_checkpoint: Optional[str] = None
    freeze_stages: int = 0
    # speed
    amp: str = "none"              # "none", "bf16" (CPU and GPU) or "fp16" (GPU, with a grad scaler)
    channels_last: bool = False
    compile: bool = False
    ema: bool = False
    ema_decay: float = 0.9998
    workers: int = 2
    # data
    val_size: Optional[float] = None   # held out from the training set; a fraction if < 1; None: automatic
    test_size: Optional[float] = None  # imagefolder without a test folder: held out as the test set; None: automatic
    image_size: Optional[int] = None
    augment: bool = True           # the dataset's training augmentation (off: eval transform for training too)
    skip_bad_images: bool = False
    # bookkeeping
    seed: int = 0
    checkpoint_every: int = 0      # also save `last` every N optimiser steps (0: at epoch ends only)
    log_every: int = 20
    max_steps_per_epoch: Optional[int] = None  # cut epochs short (smoke runs)
    max_test_images: Optional[int] = None      # limit the final test pass; None: the whole test set
    resume: bool = False
    overwrite: bool = False
    recipe: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
RUN_FLAGS = ("resume", "overwrite", "output")  # how to run, not what to train: not part of a run's identity


def list_recipes() -> List[str]:
    return sorted(p.name[:-5] for p in resources.files("hcgnet.recipes").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, where: str) -> Dict[str, Any]:
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of option: value")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown option {unknown[0]!r}; options are {', '.join(FIELDS)}")
    return values


def load_recipe(name: str) -> Dict[str, Any]:
    """The settings of a packaged recipe (``hcgnet/recipes/NAME.yaml``)."""
    if name not in list_recipes():
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(list_recipes())}")
    text = resources.files("hcgnet.recipes").joinpath(f"{name}.yaml").read_text()
    return _read_yaml(text, f"recipe {name}")


def load_config_file(path: str) -> Dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    return _read_yaml(p.read_text(), str(path))


# The value type of the options whose default is None.
OPTIONAL_TYPES = {"data": str, "data_dir": str, "lr_base_batch": int, "cycle_epochs": float, "restart_every": int,
                  "drop_rate": float, "image_size": int, "max_steps_per_epoch": int, "recipe": str,
                  "val_size": float, "test_size": float, "stem": str, "initial_checkpoint": str,
                  "max_test_images": int}


def option_type(name: str) -> type:
    default = FIELDS[name].default
    return OPTIONAL_TYPES[name] if default is None else type(default)


def _coerce(name: str, value: Any) -> Any:
    """Check a value against the option's type: whole numbers for ints, real booleans for flags."""
    if value is None:
        return value
    kind = option_type(name)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"option {name} must be true or false, got {value!r}")
        return value
    try:
        converted = kind(value)
        if kind is int and (isinstance(value, bool) or float(value) != converted):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"option {name} must be a {kind.__name__}, got {value!r}") from None
    return converted


def make_config(
    recipe: Optional[str] = None, config_file: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None
) -> TrainConfig:
    """Merge defaults, a recipe, a YAML file and explicit overrides (None values are ignored)."""
    values: Dict[str, Any] = {}
    if recipe:
        values.update(load_recipe(recipe))
        values["recipe"] = recipe
    if config_file:
        file_values = load_config_file(config_file)
        if file_values.get("recipe") and not recipe:
            values.update(load_recipe(file_values["recipe"]))
        values.update(file_values)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    validate(config)
    return config


def validate(c: TrainConfig) -> None:
    if not c.data:
        raise ConfigError("no dataset: pass --data (cifar10, cifar100, fashion-mnist or imagefolder:PATH)")
    if c.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {c.epochs}")
    for name, low in (("accum_steps", 1), ("workers", 0), ("log_every", 1), ("checkpoint_every", 0),
                      ("momentum", 0), ("weight_decay", 0), ("mixup", 0), ("label_smoothing", 0), ("min_lr", 0),
                      ("warmup_epochs", 0), ("cycle_mul", 1), ("cycle_limit", 1), ("val_size", 0),
                      ("cycle_epochs", 1e-9), ("restart_every", 1), ("drop_rate", 0), ("image_size", 8),
                      ("max_steps_per_epoch", 1), ("lr_base_batch", 1)):
        value = getattr(c, name)
        if value is not None and value < low:
            raise ConfigError(f"{name} must be at least {low:g}, got {value}")
    for name in ("label_smoothing", "drop_rate", "ema_decay"):
        value = getattr(c, name)
        if value is not None and not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if c.sched == "constant" and c.warmup_epochs:
        raise ConfigError("a constant learning rate has no warm-up: use --sched cosine or --warmup-epochs 0")
    if c.batch_size < 2 * c.accum_steps:
        raise ConfigError(
            f"batch size {c.batch_size} gives micro-batches of one image; HCGNet's gates need at least 2 images "
            "per batch (BatchNorm1d): use --batch-size 2 or more (per accumulation step)"
        )
    if c.batch_size % c.accum_steps:
        raise ConfigError(f"batch size {c.batch_size} is not divisible by accum_steps {c.accum_steps}")
    if c.mixup > 0 and (c.batch_size // c.accum_steps) % 2:
        raise ConfigError("mixup pairs images within a batch: use an even batch size (per accumulation step)")
    if c.amp not in ("none", "bf16", "fp16"):
        raise ConfigError(f"amp must be none, bf16 or fp16, got {c.amp!r}")
    if c.sched not in ("cosine", "constant"):
        raise ConfigError(f"sched must be cosine or constant, got {c.sched!r}")
    if c.lr <= 0:
        raise ConfigError(f"lr must be positive, got {c.lr}")
    if c.resume and c.overwrite:
        raise ConfigError("--resume continues the run in the output folder, --overwrite replaces it: choose one")
