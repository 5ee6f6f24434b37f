"""HCGNet in torchvision's detectors: Mask R-CNN / Faster R-CNN with an HCGNet + FPN backbone."""
from hcgnet.detection.backbone import HCGNetFPN, TrainableStagesError, hcgnet_fpn_backbone
from hcgnet.detection.models import build_detector, fasterrcnn_hcgnet, maskrcnn_hcgnet

__all__ = [
    "HCGNetFPN", "TrainableStagesError", "build_detector", "fasterrcnn_hcgnet", "hcgnet_fpn_backbone",
    "maskrcnn_hcgnet",
]
