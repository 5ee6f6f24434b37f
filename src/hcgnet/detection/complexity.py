"""Parameters and multiply-adds of a detector, part by part, beside the paper's Table 4.

What is counted: PyTorch's ``FlopCounterMode`` (convolutions and matrix products, halved to multiply-adds;
norms, activations, RoIAlign and NMS are not counted) over the most work one eval forward pass can do: the
backbone, the FPN and the RPN head over the whole padded image, the box head over the RPN's test-time maximum
of proposals (torchvision: 1000) and the mask head over the most detections kept (100). The number an
actual image costs depends on how many proposals survive NMS and how many detections pass the score
threshold; this is its upper bound, and it is the convention of mmdetection's ``get_flops`` (1000 proposals
into the box head, 100 RoIs into the mask head). Everything runs on the ``meta`` device: no arithmetic.
"""
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hcgnet.complexity import count_params
from hcgnet.errors import HCGNetError

# The paper's Table 4 (Mask R-CNN + FPN, COCO): parameters and "FLOPs" (multiply-adds).
PAPER_TABLE4 = {"hcgnet_b": ("32.1M", "230.4G"), "resnet50": ("44.2M", "275.6G")}
DEFAULT_IMAGE_SIZE = (800, 1333)


def _macs(fn, *args):
    """``fn(*args)`` and its multiply-adds."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return out, counter.get_total_flops() // 2


def network_input_size(model: nn.Module, image_size: Sequence[int]) -> Tuple[int, int]:
    """The (H, W) the network sees for an image of ``image_size``: torchvision's test-time resize (shorter side
    to ``min_size`` unless the longer would pass ``max_size``), then padding to a multiple of 32."""
    transform = model.transform
    h, w = (int(s) for s in image_size)
    scale = min(float(transform.min_size[-1]) / min(h, w), float(transform.max_size) / max(h, w))
    h, w = int(h * scale), int(w * scale)  # torchvision's interpolate floors the scaled size
    d = int(transform.size_divisible)
    return -(-h // d) * d, -(-w // d) * d


def detector_macs(model: nn.Module, image_size: Sequence[int] = DEFAULT_IMAGE_SIZE) -> Dict[str, int]:
    """Multiply-adds of a torchvision Mask/Faster R-CNN in eval mode by part (see the module doc); ``total``
    sums them."""
    device = next(model.parameters()).device
    h, w = network_input_size(model, image_size)
    backbone, heads = model.backbone, model.roi_heads
    parts: Dict[str, int] = OrderedDict()
    with torch.no_grad():
        x = torch.zeros(1, 3, h, w, device=device)
        taps, parts["backbone"] = _macs(backbone.taps if hasattr(backbone, "taps") else backbone.body, x)
        features, parts["fpn"] = _macs(backbone.fpn, taps)
        _, parts["rpn_head"] = _macs(model.rpn.head, list(features.values()))
        proposals = int(model.rpn._post_nms_top_n["testing"])
        rois = torch.zeros(proposals, backbone.out_channels, *heads.box_roi_pool.output_size, device=device)
        _, parts["box_head"] = _macs(lambda r: heads.box_predictor(heads.box_head(r)), rois)
        if heads.has_mask():
            kept = int(heads.detections_per_img)
            rois = torch.zeros(kept, backbone.out_channels, *heads.mask_roi_pool.output_size, device=device)
            _, parts["mask_head"] = _macs(lambda r: heads.mask_predictor(heads.mask_head(r)), rois)
    parts["total"] = sum(parts.values())
    return parts


def parse_image_size(text: str) -> Tuple[int, int]:
    """``"800x1333"`` -> (800, 1333): height x width."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise HCGNetError(f"image size {text!r} must be HEIGHTxWIDTH in pixels, e.g. 800x1333") from None
    if h < 32 or w < 32:
        raise HCGNetError(f"image size {text!r} is too small for a detector; use at least 32x32, e.g. 800x1333")
    return h, w


def detection_info(model: str = "hcgnet_b", task: str = "mask", num_classes: int = 91,
                   image_size: Sequence[int] = DEFAULT_IMAGE_SIZE, options: Optional[Dict[str, Any]] = None) -> dict:
    """One row for ``hcgnet info --detection``: parameters (``nn.Parameter`` elements, trainable or frozen; the
    frozen BatchNorms' constants are not counted, as in torchvision's own figures), multiply-adds by part, and
    the paper's Table 4 figures where it has them (Mask R-CNN, 91 classes, 800x1333, torchvision's settings:
    none with ``options``, which may change the heads). The image is counted at ``image_size`` as given (only
    padded to a multiple of 32), not resized to the detector's 800 px. ``options``: torchvision's keyword
    arguments, as a checkpoint records them (:func:`checkpoint_detection_info`)."""
    from hcgnet.detection.models import build_detector

    h, w = (int(v) for v in image_size)
    with torch.device("meta"):  # shapes only; resizing to (h, w) keeps the image at the size asked for
        detector = build_detector(model, task, num_classes, trainable_stages=0, trained=True,
                                  min_size=min(h, w), max_size=max(h, w), **(options or {})).eval()
    macs = detector_macs(detector, image_size)
    key = model.strip().lower()
    paper = PAPER_TABLE4.get(key) if task == "mask" and not options else None
    h, w = network_input_size(detector, image_size)
    return dict(
        model=model, task=task, classes=num_classes, image="x".join(map(str, image_size)), network_input=f"{h}x{w}",
        params=count_params(detector), backbone_params=count_params(detector.backbone.body),
        paper_params=paper[0] if paper else None,
        gmacs=macs["total"] / 1e9, paper_gmacs=paper[1] if paper and tuple(image_size) == DEFAULT_IMAGE_SIZE else None,
        gmacs_by_part={k: v / 1e9 for k, v in macs.items() if k != "total"},
        proposals=int(detector.rpn._post_nms_top_n["testing"]), detections=int(detector.roi_heads.detections_per_img),
    )


def checkpoint_detection_info(path, image_size: Optional[Sequence[int]] = None) -> dict:
    """``hcgnet info --detection FILE``: :func:`detection_info` of the detector a file of ``hcgnet detect train``
    holds, built from its metadata alone (backbone, task, classes, detector options; no weights read), counted
    at ``image_size`` or, by default, at the size it was trained for (``--image-size`` x ``--max-size``: an
    image of that shape reaches the network unresized). ``checkpoint``, ``class_names`` and ``category_ids``
    say which file and what it detects."""
    from hcgnet.detection.checkpoint import read_detector_info

    info = read_detector_info(path, classifier=f"count a classifier with hcgnet info {path}, without --detection")
    size = tuple(image_size) if image_size is not None else (info["min_size"], info["max_size"])
    row = detection_info(info["model"], info["task"], info["num_classes"], size, info["options"])
    row.update(checkpoint=str(path), class_names=info["class_names"], category_ids=info["category_ids"])
    return row
