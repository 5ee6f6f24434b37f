"""torchvision's Mask R-CNN / Faster R-CNN with an HCGNet + FPN backbone (the paper's Table 4), or with
torchvision's ResNet-50 + FPN as the baseline.

    from hcgnet.detection import maskrcnn_hcgnet
    model = maskrcnn_hcgnet("hcgnet_b", num_classes=91, weights_backbone="hcgnet_b.safetensors")

The result is a plain ``torchvision.models.detection.MaskRCNN`` (or ``FasterRCNN``): its training losses,
eval outputs, transforms and keyword arguments (``min_size``, ``max_size``, ``box_detections_per_img``...)
are torchvision's.
"""
from typing import Optional

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from hcgnet.errors import CheckpointError, ModelSpecError
from hcgnet.detection.backbone import HCGNetFPN, hcgnet_fpn_backbone, stage_count, stages_to_train
from hcgnet.layers import freeze_batch_norm
from hcgnet.models.checkpoints import load_state_dict_into, read_state_dict

TASKS = {"mask": MaskRCNN, "box": FasterRCNN}
RESNET50 = "resnet50"
RESNET50_STAGES = 4


def build_detector(model: str = "hcgnet_b", task: str = "mask", num_classes: int = 91,
                   weights_backbone: Optional[str] = None, trainable_stages: Optional[int] = None,
                   bn_affine: str = "frozen", trained: Optional[bool] = None, **kwargs) -> nn.Module:
    """A torchvision ``MaskRCNN`` (``task="mask"``) or ``FasterRCNN`` (``"box"``) for ``num_classes`` classes
    (background included, COCO: 91).

    Args:
        model: an HCGNet name or spec (any number of stages; built with the ImageNet stem), or ``"resnet50"``
            for torchvision's ResNet-50 FPN baseline.
        weights_backbone: an ImageNet checkpoint of that backbone (any file hcgnet reads; for ``resnet50`` a
            torchvision/timm ResNet-50 state dict); its classifier is dropped.
        trainable_stages: for a trained backbone, stages trained, counted from the last (default 3, or all
            when there are fewer); the stem and the others are frozen, and so are the statistics of every
            BatchNorm (:func:`hcgnet.layers.freeze_batch_norm`). An untrained backbone trains every layer, the
            stem included, with ordinary BatchNorms (torchvision's rule); giving this for it is an error.
        bn_affine: for a trained backbone, ``"frozen"`` (torchvision) or ``"trainable"`` (the published
            mmdetection config: scale and shift train outside the frozen stages, the statistics stay frozen).
        trained: whether the backbone's weights are trained ones (default: whether ``weights_backbone`` is
            given); ``True`` builds a detector whose trained weights are loaded afterwards.
        **kwargs: torchvision's ``MaskRCNN``/``FasterRCNN`` arguments.
    """
    if task not in TASKS:
        raise ModelSpecError(f"unknown detection task {task!r}; use 'mask' (Mask R-CNN) or 'box' (Faster R-CNN)")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ModelSpecError(f"num_classes counts the background too and must be 2 or more (COCO: 91), "
                             f"got {num_classes!r}")
    if model.strip().lower() == RESNET50:
        backbone = resnet50_fpn_backbone(weights_backbone, trainable_stages, bn_affine, trained)
    else:
        backbone = hcgnet_fpn_backbone(model, weights_backbone, trainable_stages, bn_affine, trained)
        kwargs = {**_level_defaults(backbone, task), **kwargs}
    return TASKS[task](backbone, num_classes=num_classes, **kwargs)


#: Keyword arguments of torchvision's detectors that hcgnet sets from its own flags.
OWN_FLAGS = {"min_size": "--image-size", "max_size": "--max-size"}


def detector_option_names() -> list:
    """The settings ``--detector-options`` may give: the number-valued keyword arguments of torchvision's
    ``FasterRCNN`` (``MaskRCNN`` adds only modules), read from its signature so they follow torchvision."""
    import inspect

    parameters = inspect.signature(FasterRCNN.__init__).parameters.values()
    return sorted(p.name for p in parameters if isinstance(p.default, (int, float)) and not isinstance(p.default, bool)
                  and p.name not in OWN_FLAGS)


def check_detector_options(options: dict) -> None:
    """Refuse, in one line, a key torchvision's detector would not take (a typo would otherwise reach it only
    as a TypeError after the data is read, or not at all), naming close matches or the accepted keys."""
    import difflib

    names = detector_option_names()
    for key in options:
        if key in OWN_FLAGS:
            raise ModelSpecError(f"--detector-options: give {key} with {OWN_FLAGS[key]}, not here")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.8)
            hint = f"did you mean {' or '.join(close)}?" if close else f"the options are {', '.join(names)}"
            raise ModelSpecError(f"--detector-options: unknown option {key!r} ({hint})")


def trained_stages(model: str, weights_backbone: Optional[str] = None, trainable_stages: Optional[int] = None) -> int:
    """How many backbone stages ``build_detector`` with these arguments trains (every one without weights)."""
    n = RESNET50_STAGES if model.strip().lower() == RESNET50 else stage_count(model)
    trainable = stages_to_train(model, n, weights_backbone is not None, trainable_stages)
    return n if trainable is None else trainable


def _level_defaults(backbone: HCGNetFPN, task: str) -> dict:
    """Anchors and RoI pooling for the backbone's levels: torchvision's own defaults for 4 stages (anchor sizes
    32..512, pooling from levels "0".."3"); for another count one anchor size per level (32 doubling) and
    pooling from every tap. Arguments the caller gives win."""
    names = backbone.featmap_names
    if len(names) == 4:
        return {}
    sizes = tuple((32 * 2 ** i,) for i in range(len(names) + 1))  # + the max-pooled level
    defaults = dict(
        rpn_anchor_generator=AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes)),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2),
    )
    if task == "mask":
        defaults["mask_roi_pool"] = MultiScaleRoIAlign(featmap_names=names, output_size=14, sampling_ratio=2)
    return defaults


def resnet50_fpn_backbone(weights_backbone: Optional[str] = None, trainable_stages: Optional[int] = None,
                          bn_affine: str = "frozen", trained: Optional[bool] = None) -> nn.Module:
    """torchvision's ResNet-50 FPN backbone as its ``maskrcnn_resnet50_fpn`` builds it: for fine-tuning frozen
    BatchNorms and ``trainable_backbone_layers=trainable_stages``, weights from a local file (never downloaded);
    untrained, ordinary BatchNorms and every layer trained (``trainable_backbone_layers=5``)."""
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    trained = weights_backbone is not None if trained is None else trained
    trainable = stages_to_train(RESNET50, RESNET50_STAGES, trained, trainable_stages, bn_affine)
    body = resnet50()
    if weights_backbone is not None:
        state_dict, _ = read_state_dict(weights_backbone)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        if not any(k.startswith("layer4.") for k in state_dict):
            raise CheckpointError(f"{weights_backbone} is not a ResNet-50 checkpoint (no layer4 weights)")
        body.fc = nn.Identity()
        load_state_dict_into(body, state_dict, weights_backbone, strict=True)
    if trainable is None:
        return _resnet_fpn_extractor(body, RESNET50_STAGES + 1)  # conv1 too
    return _resnet_fpn_extractor(freeze_batch_norm(body, trainable_affine=bn_affine == "trainable"), trainable)


def maskrcnn_hcgnet(name: str = "hcgnet_b", num_classes: int = 91, weights_backbone: Optional[str] = None,
                    trainable_stages: Optional[int] = None, **kwargs) -> MaskRCNN:
    """Mask R-CNN with an HCGNet + FPN backbone (the paper's Table 4 detector for ``hcgnet_b``)."""
    return build_detector(name, "mask", num_classes, weights_backbone, trainable_stages, **kwargs)


def fasterrcnn_hcgnet(name: str = "hcgnet_b", num_classes: int = 91, weights_backbone: Optional[str] = None,
                      trainable_stages: Optional[int] = None, **kwargs) -> FasterRCNN:
    """Faster R-CNN (boxes only) with an HCGNet + FPN backbone."""
    return build_detector(name, "box", num_classes, weights_backbone, trainable_stages, **kwargs)
