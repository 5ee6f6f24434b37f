"""Training configuration: defaults < recipe < YAML config file < command-line flags."""
import dataclasses
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from hcgnet.errors import HCGNetError, check_resume_or_overwrite, close_match, plural


class ConfigError(HCGNetError):
    """A recipe or config file that cannot be read, or settings that cannot work together."""


@dataclass
class TrainConfig:
    model: str = "hcgnet_a1"
    stem: Optional[str] = None     # "cifar" or "imagenet"; None: the variant's own (a spec's: CIFAR for 3 blocks)
    model_kwargs: Optional[str] = None  # JSON object of model arguments, e.g. '{"forget_gate": false}'
    # fine-tuning (hcgnet.training.finetune.prepare_model)
    initial_checkpoint: Optional[str] = None  # start from these weights; a classifier of another class count is re-made
    freeze_stages: int = 0         # keep the stem and the first N stages fixed (weights and BatchNorm statistics)
    data: Optional[str] = None     # cifar10, cifar100, fashion-mnist, imagefolder:PATH
    data_dir: Optional[str] = None
    output: str = "runs/train"
    epochs: int = 10
    batch_size: int = 128          # GLOBAL batch: divided over the torchrun processes (must divide evenly)
    accum_steps: int = 1           # split each batch into this many micro-batches (interleaved, x[k::n])
    # optimiser: SGD with Nesterov momentum
    lr: float = 0.1
    lr_base_batch: Optional[int] = None   # if set, lr *= batch_size (global) / lr_base_batch (ImageNet: 256)
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
    drop_block: float = 0.0        # DropBlock (block size 2, after each transition): the drop probability reached
                                   # at the end of every SGDR cycle (the published CIFAR training: 0.1); 0 disables
    # speed
    amp: str = "none"              # "none", "bf16" (CPU and GPU) or "fp16" (GPU, with a grad scaler)
    channels_last: bool = False
    compile: bool = False
    ema: bool = False
    ema_decay: float = 0.9998
    workers: int = 2
    device: Optional[str] = None   # cpu, cuda or cuda:N; None: the GPU when there is one (torchrun: the local one)
    # data
    val_size: Optional[float] = None   # held out from the training set: a fraction if < 1, else a count;
                                       # None: automatic (build_data: a fraction of a small set, a count of a large one)
    test_size: Optional[float] = None  # imagefolder without a test folder: held out as the test set, like val_size
    image_size: Optional[int] = None
    augment: bool = True           # the dataset's training augmentation (off: eval transform for training too)
    hflip: float = 0.5             # probability of the augmentation's horizontal flip (timm's name); 0: none
    skip_bad_images: bool = False
    download: bool = False         # let torchvision download cifar10/cifar100/fashion-mnist missing from data_dir
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
# How and where to run, not what to train: not part of a run's identity, nor of its config.yaml (a resumed run
# goes on wherever it is told).
RUN_FLAGS = ("resume", "overwrite", "output", "device", "download")


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
    _refuse_unknown(values, where)
    return values


def load_recipe(name: str) -> Dict[str, Any]:
    """The settings of a packaged recipe (``hcgnet/recipes/NAME.yaml``)."""
    if name not in list_recipes():
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(list_recipes())}")
    text = resources.files("hcgnet.recipes").joinpath(f"{name}.yaml").read_text()
    return _read_yaml(text, f"recipe {name}")


def recipe_summary(name: str) -> str:
    """The first sentence of a packaged recipe's leading comment (what it is for)."""
    text = resources.files("hcgnet.recipes").joinpath(f"{name}.yaml").read_text()
    first = next((line[1:].strip() for line in text.splitlines() if line.startswith("#")), "")
    return re.split(r"[:.;] ", first + " ", maxsplit=1)[0].strip().rstrip(".:;")


def load_config_file(path: str) -> Dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    return _read_yaml(p.read_text(), str(path))


# The value type of the options whose default is None.
OPTIONAL_TYPES = {"data": str, "data_dir": str, "lr_base_batch": int, "cycle_epochs": float, "restart_every": int,
                  "drop_rate": float, "image_size": int, "max_steps_per_epoch": int, "recipe": str, "stem": str,
                  "model_kwargs": str, "initial_checkpoint": str, "val_size": float, "test_size": float, "max_test_images": int,
                  "device": str}


def option_type(name: str) -> type:
    default = FIELDS[name].default
    return OPTIONAL_TYPES[name] if default is None else type(default)


def _coerce(name: str, value: Any) -> Any:
    """Check a value against the option's type: whole numbers for ints, real booleans for flags."""
    if value is None:
        return value
    if name == "model_kwargs" and isinstance(value, Mapping):  # a YAML mapping: kept as its canonical JSON
        return json.dumps(dict(value), sort_keys=True)
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
        what = {int: "a whole number", float: "a number", str: "a string"}.get(kind, f"of type {kind.__name__}")
        raise ConfigError(f"option {name} must be {what}, got {value!r}") from None
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
    overrides = {str(k).replace("-", "_"): v for k, v in (overrides or {}).items()}
    _refuse_unknown(overrides, "make_config")
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("data"):
        values["data"] = recorded_data(values["data"])
    if not values.get("model") and values.get("initial_checkpoint") and not values.get("resume"):
        named = _checkpoint_model(values["initial_checkpoint"])
        if named:
            values["model"] = named
    config = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    validate(config)
    return config


def recorded_data(spec: Any) -> Any:
    """``--data`` as a run records it: an image folder by its absolute path, so that the run resumes, and its
    checkpoints are scored, from any working folder (``imagefolder:imgs`` read from elsewhere is another
    folder); anything else as given (an unknown name is refused where the data is read)."""
    from hcgnet.data import DataError, absolute_spec  # torchvision: only when a config is made

    try:
        return absolute_spec(spec)
    except DataError:
        return spec


def _checkpoint_model(path: str) -> Optional[str]:
    """The network a fine-tuning run's ``--initial-checkpoint`` names in its metadata, the model when ``--model``
    is not given (None: it cannot be read here; the run's own checks say why later). A file that names none is
    refused: the default network would be assumed, and found wrong only after the data is read."""
    from hcgnet.models.checkpoints import read_metadata

    try:
        named = read_metadata(path).get("model_name")
    except (HCGNetError, OSError):
        return None
    if not named:
        raise ConfigError(f"{path} does not say which network it holds; pass --model NAME, the network it was "
                          "trained as")
    return named


def _refuse_unknown(values: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown option {unknown[0]!r}{close_match(unknown[0], FIELDS)}; options are "
                          f"{', '.join(FIELDS)}")


# Bounds checked by validate(): at least `low`, or within [0, 1).
AT_LEAST = (("epochs", 1), ("accum_steps", 1), ("workers", 0), ("log_every", 1), ("checkpoint_every", 0),
            ("momentum", 0), ("weight_decay", 0), ("mixup", 0), ("label_smoothing", 0), ("min_lr", 0),
            ("warmup_epochs", 0), ("cycle_mul", 1), ("cycle_limit", 1), ("val_size", 0), ("test_size", 0),
            ("cycle_epochs", 1e-9), ("restart_every", 1), ("drop_rate", 0), ("image_size", 8),
            ("max_steps_per_epoch", 1), ("lr_base_batch", 1), ("freeze_stages", 0), ("max_test_images", 1))
FRACTIONS = ("label_smoothing", "drop_rate", "drop_block", "ema_decay")
STEMS = ("cifar", "imagenet")  # hcgnet.models.hcgnet.STEMS


def validate(c: TrainConfig) -> None:
    """Refuse settings that cannot work, each with a one-line ConfigError that says what to pass instead."""
    if c.recipe == "finetune" and not c.initial_checkpoint:
        raise ConfigError("the finetune recipe starts from trained weights: pass --initial-checkpoint FILE "
                          "(.safetensors or .pt from hcgnet train or convert, or a published .pth.tar)"
                          + ("" if c.data else " and --data imagefolder:DIR"))
    if not c.data:
        raise ConfigError("no dataset: pass --data (cifar10, cifar100, fashion-mnist or imagefolder:PATH)")
    for name, value in c.to_dict().items():  # nan passes every comparison below, inf most of them
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
    for name, low in AT_LEAST:
        value = getattr(c, name)
        if value is not None and value < low:
            raise ConfigError(f"{name} must be at least {low:g}, got {value}")
    for name in FRACTIONS:
        value = getattr(c, name)
        if value is not None and not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if not 0 <= c.hflip <= 1:
        raise ConfigError(f"hflip must be a probability in [0, 1], got {c.hflip}")
    for name in ("val_size", "test_size"):
        value = getattr(c, name)
        if value is not None and value >= 1 and value != int(value):
            raise ConfigError(f"{name} must be a fraction below 1 or a whole number of images, got {value}")
    if c.lr <= 0:
        raise ConfigError(f"lr must be positive, got {c.lr}")
    if c.stem not in (None, *STEMS):
        raise ConfigError(f"stem must be cifar or imagenet (or unset for the variant's own), got {c.stem!r}")
    # a resumed run takes its weights from its own last.pt: the initial checkpoint may be gone by then
    if c.initial_checkpoint is not None and not c.resume and not Path(c.initial_checkpoint).is_file():
        raise ConfigError(f"initial checkpoint not found: {c.initial_checkpoint} (--initial-checkpoint takes a "
                          ".safetensors or .pt file written by hcgnet train or convert, or a published .pth.tar)")
    if c.freeze_stages and not c.initial_checkpoint:
        raise ConfigError("--freeze-stages keeps pretrained stages fixed: pass --initial-checkpoint too")
    if not c.resume:  # a resumed run's --epochs is first checked against where the run stands (check_resumable)
        check_warmup(c)
    if c.sched == "constant" and c.warmup_epochs:
        raise ConfigError("a constant learning rate has no warm-up: use --sched cosine or --warmup-epochs 0")
    _validate_batch(c)
    if c.amp not in ("none", "bf16", "fp16"):
        raise ConfigError(f"amp must be none, bf16 or fp16, got {c.amp!r}")
    if c.sched not in ("cosine", "constant"):
        raise ConfigError(f"sched must be cosine or constant, got {c.sched!r}")
    check_resume_or_overwrite(c.resume, c.overwrite, ConfigError)
    if c.device is not None:
        from hcgnet.evaluation import device_of  # torch: only when a device is named

        device_of(c.device)


def check_warmup(c: TrainConfig) -> None:
    """A cosine schedule needs epochs after its warm-up."""
    run = c.restart_every or c.epochs
    if c.sched == "cosine" and not c.cycle_epochs and c.warmup_epochs >= run:
        raise ConfigError(f"a warm-up of {plural(c.warmup_epochs, 'epoch')} leaves no cosine in a run of "
                          f"{plural(run, 'epoch')}: use fewer --warmup-epochs or more --epochs")


def _validate_batch(c: TrainConfig) -> None:
    # HCGNet's gates normalise over the batch (BatchNorm1d), so every forward pass needs 2 images or more.
    if c.batch_size < 2:
        raise ConfigError(
            f"batch size {c.batch_size} is too small: HCGNet's gates need at least 2 images per batch "
            "(BatchNorm1d); use --batch-size 2 or more"
        )
    if c.batch_size % c.accum_steps:
        raise ConfigError(f"batch size {c.batch_size} is not divisible by accum_steps {c.accum_steps}")
    micro = c.batch_size // c.accum_steps
    if micro < 2:
        raise ConfigError(
            f"batch size {c.batch_size} in {plural(c.accum_steps, 'accumulation step')} gives micro-batches of "
            f"{plural(micro, 'image')}; HCGNet's gates need at least 2 images per batch (BatchNorm1d): use "
            f"--batch-size {2 * c.accum_steps} or more, or fewer --accum-steps"
        )
    if c.mixup > 0 and micro % 2:
        raise ConfigError("mixup pairs images within a batch: use an even batch size (per accumulation step)")


# ------------------------------------------------------------------------------------------ option help
# Every option, grouped as timm's train.py groups its flags, with what it does; `hcgnet train --help` shows these
# with the default. DEFAULT_TEXT says what an unset (None) option means.
OPTION_GROUPS = (
    ("Model", (
        ("model", "variant name or spec, e.g. hcgnet_a1 or 'HCGNet-(8,8,8)-(k=12,24,36)'"),
        ("stem", "cifar (one 3x3 conv at full resolution) or imagenet (three convs and a max-pool, stride 4)"),
        ("model_kwargs", "model arguments as a JSON object, e.g. the design switches "
                         "'{\"connectivity\": \"dense\", \"forget_gate\": false}' (a YAML config may give a mapping; README: "
                         "Design switches)"),
    )),
    ("Fine-tuning", (
        ("initial_checkpoint", "start from these weights: a converted published checkpoint, a run's .safetensors "
                               "or .pt; a classifier of another class count is re-made, the rest loaded"),
        ("freeze_stages", "keep the stem and the first N stages fixed (weights and BatchNorm statistics); "
                          "needs --initial-checkpoint"),
    )),
    ("Dataset", (
        ("data", "cifar10, cifar100, fashion-mnist or imagefolder:PATH (class folders, or train/ val/ test/)"),
        ("data_dir", "where cifar10, cifar100 and fashion-mnist are, or are downloaded to"),
        ("val_size", "images held out from the training set for validation: a fraction if below 1, else a count"),
        ("test_size", "imagefolder without a test folder: images held out as the test set, like --val-size"),
        ("image_size", "square side the images are resized/cropped to"),
        ("augment", "the training augmentation: CIFAR's (pad and random crop) for the CIFAR stem and small images, "
                    "else ImageNet's (random-resized crop); --no-augment: the eval transform for training too"),
        ("hflip", "probability of the augmentation's horizontal flip; 0 for data where mirror images are wrong "
                  "(digits, text)"),
        ("skip_bad_images", "skip images that cannot be decoded (named in the log) instead of stopping"),
        ("download", "let torchvision download cifar10, cifar100 or fashion-mnist when they are not in --data-dir "
                     "(nothing is downloaded without it)"),
    )),
    ("Optimizer", (
        ("lr", "learning rate of SGD (at the top of every SGDR cycle)"),
        ("lr_base_batch", "scale lr by batch-size / this (linear scaling; the ImageNet recipes: 256)"),
        ("momentum", "SGD momentum"),
        ("nesterov", "Nesterov momentum (the published code's; the paper says momentum)"),
        ("weight_decay", "L2 weight decay"),
        ("batch_size", "GLOBAL batch: images per optimiser step over all processes, divided over the torchrun "
                       "processes (must divide evenly)"),
        ("accum_steps", "split each process's batch into this many micro-batches (less memory, same step)"),
    )),
    ("Learning rate schedule", (
        ("epochs", "epochs to train"),
        ("sched", "cosine (SGDR with the cycle options) or constant"),
        ("cycle_epochs", "SGDR: length T0 of the first cycle in epochs"),
        ("cycle_mul", "SGDR: each cycle this many times longer than the one before (Tmul)"),
        ("cycle_limit", "SGDR: number of cycles; after them the lr stays at --min-lr"),
        ("restart_every", "start the whole schedule again every N epochs (the paper's A2/A3: 630)"),
        ("warmup_epochs", "linear warm-up from lr / 100 before the schedule, in epochs"),
        ("min_lr", "learning rate at the bottom of each cosine"),
    )),
    ("Augmentation and regularization", (
        ("mixup", "mixup alpha (the paper: 1 on CIFAR, 0.4 on ImageNet); 0 disables"),
        ("label_smoothing", "label smoothing of the targets (the paper's ImageNet recipe: 0.1)"),
        ("drop_rate", "dropout before the classifier"),
        ("drop_block", "DropBlock after each transition (block size 2): the drop probability reached at the end "
                       "of every SGDR cycle, rising from 0 within it (the published CIFAR training: 0.1); 0 disables"),
    )),
    ("Model exponential moving average", (
        ("ema", "keep an exponential moving average of the weights and evaluate it"),
        ("ema_decay", "decay of the moving average per step"),
    )),
    ("Speed", (
        ("amp", "autocast: none, bf16 (CPUs with AVX512-BF16/AMX, GPUs) or fp16 (GPUs, with a grad scaler)"),
        ("channels_last", "NHWC memory format (faster convolutions on most hardware)"),
        ("compile", "torch.compile the model"),
        ("workers", "data-loading processes per training process"),
        ("device", "cpu, cuda or cuda:N (under torchrun every process takes its own local GPU)"),
    )),
    ("Checkpoints and logging", (
        ("output", "folder for checkpoints, metrics, curves and the final weights"),
        ("checkpoint_every", "also save last.pt every N optimiser steps (0: at epoch ends only)"),
        ("log_every", "a row in steps.csv and TensorBoard every N optimiser steps of an epoch and at its end (the "
                      "console shows a bar, or a line every 30 s when it is not a terminal)"),
        ("resume", "continue the run in --output exactly where it stopped"),
        ("overwrite", "replace the run in --output (kept until the new run can replace it)"),
    )),
    ("Run control", (
        ("recipe", "a packaged recipe whose settings replace these defaults (see `hcgnet recipes`)"),
        ("seed", "seed of initialisation, data split, shuffling and augmentation"),
        ("max_steps_per_epoch", "cut every epoch short after N steps (smoke runs)"),
        ("max_test_images", "score at most N images in the final test pass"),
    )),
)
DEFAULT_TEXT = {
    "model_kwargs": "none: the paper's network",
    "stem": "the variant's own; a spec: cifar for 3 blocks, imagenet for 4",
    "initial_checkpoint": "none: random initialisation",
    "data": "none, required",
    "data_dir": "$HCGNET_DATA or ~/.cache/hcgnet/data",
    "val_size": "automatic: a fraction of a small set, a count of a large one",
    "test_size": "automatic",
    "image_size": "cifar10/100, fashion-mnist: their own; imagefolder: the model's input size, 32 for the CIFAR "
                  "stem, 224 for the ImageNet stem",
    "lr_base_batch": "none: lr as given",
    "cycle_epochs": "one cycle over the whole run",
    "restart_every": "never",
    "drop_rate": "the variant's own: 0.1 for ImageNet networks, else 0",
    "recipe": "none",
    "max_steps_per_epoch": "whole epochs",
    "max_test_images": "the whole test set",
    "device": "the GPU when there is one, else the CPU",
}


def default_text(name: str) -> str:
    """The default of an option, as ``hcgnet train --help`` shows it."""
    default = FIELDS[name].default
    if default is None:
        return DEFAULT_TEXT[name]
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"{default:g}" if isinstance(default, float) else str(default)
