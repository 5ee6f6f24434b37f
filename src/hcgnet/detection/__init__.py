"""HCGNet as a detection backbone: torchvision's Mask R-CNN / Faster R-CNN with an HCGNet + FPN backbone,
trained and scored on COCO-format data (``hcgnet detect train|eval|predict``).

``evaluate_coco`` and ``predict`` do not import the trainer; ``train`` loads it on first
use, so ``import hcgnet.detection`` stays light for inference; every name loads on first use (the command
line reads :class:`DetectConfig`'s defaults without importing torch).
"""
from hcgnet.lazy import lazy_dir, lazy_exports

_LATER = {
    **dict.fromkeys(("HCGNetFPN", "TrainableStagesError", "hcgnet_fpn_backbone"), "hcgnet.detection.backbone"),
    "DetectConfig": "hcgnet.detection.config",
    **dict.fromkeys(("CocoData", "CocoFormatError", "read_coco"), "hcgnet.detection.data"),
    "predict": "hcgnet.detection.draw",
    "evaluate_coco": "hcgnet.detection.evaluate",
    **dict.fromkeys(("build_detector", "fasterrcnn_hcgnet", "maskrcnn_hcgnet"), "hcgnet.detection.models"),
    "train": "hcgnet.detection.trainer",  # the trainer imports hcgnet.training: only when asked for
}

__all__ = sorted(_LATER)

__getattr__ = lazy_exports(__name__, _LATER)
__dir__ = lazy_dir(__name__, _LATER)
