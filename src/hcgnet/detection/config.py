"""``DetectConfig``: the settings of ``hcgnet detect train``, and the 1x learning-rate schedule.

The defaults are the paper's 1x schedule (12 epochs, lr 0.02 per 16 images, x0.1 after epochs 8 and 11) with
torchvision's detection reference for what the paper does not say: BatchNorm scale and shift frozen, a
1,000-step warm-up from 0.001 of the rate, no gradient clipping. ``DetectConfig.preset("published")`` takes
the published mmdetection config's choices instead (:data:`PUBLISHED`).

Kept apart from the trainer so that the command line (and ``detect eval/predict``) can read the defaults
without importing :mod:`hcgnet.training`.
"""
import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from hcgnet.errors import HCGNetError, check_resume_or_overwrite


@dataclass
class DetectConfig:
    images: Optional[str] = None            # training images folder
    annotations: Optional[str] = None       # its COCO instances JSON
    val_images: Optional[str] = None        # scored at the end of every epoch when given
    val_annotations: Optional[str] = None
    model: str = "hcgnet_b"                 # backbone: an HCGNet name or spec, or resnet50 (torchvision's baseline)
    task: str = "mask"                      # mask: Mask R-CNN; box: Faster R-CNN
    weights_backbone: Optional[str] = None  # ImageNet weights of the backbone
    trainable_stages: Optional[int] = None  # with weights_backbone: 3 (or every stage if fewer); without: all train
    bn_affine: str = "frozen"               # frozen (torchvision) or trainable (published) BN scale and shift
    image_size: int = 800                   # shorter side the detector resizes to (torchvision's min_size)
    max_size: int = 1333                    # longer side at most
    detector_options: Optional[Dict[str, Any]] = None  # more keyword arguments of torchvision's MaskRCNN/FasterRCNN
                                            # (numbers: rpn_post_nms_top_n_train, box_batch_size_per_image, ...)
    epochs: int = 12
    batch_size: int = 16                    # GLOBAL batch, divided over the torchrun processes
    lr: float = 0.02                        # for a global batch of lr_base_batch; scaled linearly
    lr_base_batch: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 1000
    warmup_factor: float = 0.001            # the warm-up starts at this fraction of the rate
    clip_grad: Optional[float] = None       # clip the gradients' global L2 norm to this (None: never)
    lr_steps: tuple = (8 / 12, 11 / 12)     # x0.1 once these fractions of the run's steps are done
    amp: str = "none"
    device: Optional[str] = None            # cpu or cuda; None: the GPU when there is one
    workers: int = 2
    seed: int = 0
    checkpoint_every: int = 0               # also save last.pt every N steps (0: at epoch ends only)
    log_every: int = 20
    max_steps_per_epoch: Optional[int] = None
    output: str = "runs/detect"
    resume: bool = False
    overwrite: bool = False

    @classmethod
    def preset(cls, name: str, **values) -> "DetectConfig":
        """A config with the settings of ``name`` ("torchvision": the defaults; "published": :data:`PUBLISHED`)
        under ``values``."""
        if name not in PRESETS:
            raise HCGNetError(f"unknown preset {name!r}; use {' or '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **values})

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_steps"] = list(self.lr_steps)
        return d


#: The published mmdetection config's choices where they differ from the defaults (torchvision's): BN scale and
#: shift trained outside the frozen stages, 500 warm-up iterations from 1/3 of the rate, gradients clipped at 35.
PUBLISHED = dict(bn_affine="trainable", warmup_steps=500, warmup_factor=1 / 3, clip_grad=35.0)
PRESETS = {"torchvision": {}, "published": PUBLISHED}


def check_config(c: DetectConfig) -> None:
    """One-line refusals of settings that cannot work, before anything is read or written."""
    check_resume_or_overwrite(c.resume, c.overwrite)
    if not (c.images and c.annotations):
        raise HCGNetError("give the training data: --images DIR --annotations instances.json")
    if bool(c.val_images) != bool(c.val_annotations):
        raise HCGNetError("give both --val-images and --val-annotations, or neither")
    for name, value, least in (("epochs", c.epochs, 1), ("batch-size", c.batch_size, 1), ("image-size", c.image_size, 32),
                               ("workers", c.workers, 0), ("warmup-steps", c.warmup_steps, 0),
                               ("log-every", c.log_every, 1)):
        if value < least:
            raise HCGNetError(f"--{name} must be {least} or more, got {value}")
    if c.max_size < c.image_size:
        raise HCGNetError(f"--max-size {c.max_size} is smaller than --image-size {c.image_size}")
    options = c.detector_options or {}
    if not isinstance(options, dict) or not all(isinstance(v, (int, float, str, bool)) for v in options.values()):
        raise HCGNetError("--detector-options takes a JSON object of numbers or strings, e.g. "
                          "'{\"box_batch_size_per_image\": 128}'")
    if options:
        from hcgnet.detection.models import check_detector_options  # torchvision: only when options are given

        check_detector_options(options)
    if c.lr <= 0:
        raise HCGNetError(f"--lr must be positive, got {c.lr}")
    if not 0 < c.warmup_factor <= 1:
        raise HCGNetError(f"--warmup-factor is the warm-up's first fraction of the rate: 0 < it <= 1, got {c.warmup_factor}")
    if c.clip_grad is not None and not c.clip_grad > 0:
        raise HCGNetError(f"--clip-grad must be a positive gradient norm, got {c.clip_grad}")
    if c.bn_affine not in ("frozen", "trainable"):
        raise HCGNetError(f"--bn-affine must be frozen or trainable, got {c.bn_affine!r}")
    if c.task not in ("mask", "box"):
        raise HCGNetError(f"--task must be mask or box, got {c.task!r}")
    if c.amp not in ("none", "bf16", "fp16"):  # hcgnet.evaluation.AMP_DTYPES' names (no torch here)
        raise HCGNetError(f"unknown --amp {c.amp!r}; use none, bf16 or fp16")
    if c.device:
        from hcgnet.evaluation import device_of  # torch: only when a device is named

        device_of(c.device)


def lr_milestones(total: int, c: DetectConfig) -> list:
    """The first global step of each x0.1 drop: the first step with a fraction ``lr_steps`` of the ``total``
    steps done (12 epochs of S steps: 8S and 11S, mmdetection's ``step=[8, 11]``). Rounded up, never down: a
    run too short for a drop keeps its rate (2 steps: 8/12 of them is 1.33, so no drop before step 2, the end),
    and no drop falls on step 0."""
    # Fractions as written (8/12, not the float below it): 12 epochs' milestones land exactly on epoch ends.
    return [math.ceil(Fraction(f).limit_denominator(10_000) * total) for f in c.lr_steps]


def learning_rate(step: int, total: int, base: float, c: DetectConfig) -> float:
    """The 1x schedule at global step ``step`` of ``total``: linear warm-up (at most the whole run), then
    x0.1 from each of :func:`lr_milestones` on."""
    warmup = min(c.warmup_steps, total)
    factor = 1.0
    if step < warmup:
        alpha = step / warmup
        factor = c.warmup_factor * (1 - alpha) + alpha
    drops = sum(step >= m for m in lr_milestones(total, c))
    return base * factor * 0.1 ** drops


def resume_detect_config(output: str, overrides: Dict[str, Any]) -> DetectConfig:
    """The settings of the run in ``output`` (its ``config.yaml``) with ``overrides`` (None ignored) on top."""
    saved = Path(output) / "config.yaml"
    if not saved.is_file():  # worded as hcgnet train --resume's
        what = "it holds no config.yaml" if Path(output).is_dir() else "no such folder"
        raise HCGNetError(f"nothing to resume: there is no run in {output} ({what}); check --output, or start a run "
                          "there with --images ... --annotations ...")
    values = yaml.safe_load(saved.read_text()) or {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["lr_steps"] = tuple(values.get("lr_steps", DetectConfig.lr_steps))
    return DetectConfig(**{**values, "output": str(output), "resume": True})
