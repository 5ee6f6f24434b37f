"""HCGNet as a detection backbone: torchvision's Mask R-CNN / Faster R-CNN with an HCGNet + FPN backbone,
trained and scored on COCO-format data (``hcgnet detect train|eval|predict``).

``evaluate_coco`` and ``predict`` do not import the trainer; ``train`` loads it on first
use, so ``import hcgnet.detection`` stays light for inference.
"""
from hcgnet.detection.backbone import HCGNetFPN, TrainableStagesError, hcgnet_fpn_backbone
from hcgnet.detection.config import DetectConfig
from hcgnet.detection.data import CocoData, CocoFormatError, read_coco
from hcgnet.detection.draw import predict
from hcgnet.detection.evaluate import evaluate_coco
from hcgnet.detection.models import build_detector, fasterrcnn_hcgnet, maskrcnn_hcgnet

__all__ = [
    "CocoData", "CocoFormatError", "DetectConfig", "HCGNetFPN", "TrainableStagesError", "build_detector",
    "evaluate_coco", "fasterrcnn_hcgnet", "hcgnet_fpn_backbone", "maskrcnn_hcgnet", "predict", "read_coco", "train",
]


def __getattr__(name):
    if name == "train":  # the trainer imports hcgnet.training: only when asked for
        from hcgnet.detection.trainer import train

        return train
    raise AttributeError(f"module 'hcgnet.detection' has no attribute {name!r}")
