"""THROW-AWAY stand-in for DET's ``hcgnet.detection.models`` (agreed interface 3), so that the COCO data,
trainer, evaluation and CLI can be built and tested before the HCGNet backbone lands. The lead keeps DET's
file at merge. It wraps torchvision's ResNet FPN backbones (weights=None) in Mask R-CNN / Faster R-CNN."""
from typing import Optional

from torch import nn

from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from hcgnet.errors import HCGNetError

STAND_IN_BACKBONES = ("resnet18", "resnet50")


def build_detector(model: str = "hcgnet_b", task: str = "mask", num_classes: int = 91,
                   weights_backbone: Optional[str] = None, trainable_stages: int = 3, **kwargs):
    if model not in STAND_IN_BACKBONES:
        raise HCGNetError(f"unknown detection backbone {model!r} (this stand-in builds {', '.join(STAND_IN_BACKBONES)})")
    if task not in ("mask", "box"):
        raise HCGNetError(f"task must be 'mask' or 'box', got {task!r}")
    if not 0 <= trainable_stages <= 5:
        raise HCGNetError(f"trainable_stages must be 0..5, got {trainable_stages}")
    if weights_backbone is not None:
        raise HCGNetError("this stand-in backbone takes no --weights-backbone")
    backbone = resnet_fpn_backbone(backbone_name=model, weights=None, trainable_layers=trainable_stages,
                                   norm_layer=nn.BatchNorm2d)  # frozen identity norms diverge from scratch
    return (MaskRCNN if task == "mask" else FasterRCNN)(backbone, num_classes=num_classes, **kwargs)
