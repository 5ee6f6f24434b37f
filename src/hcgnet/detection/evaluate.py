"""COCO box and mask AP with pycocotools' COCOeval: the library side of ``hcgnet detect eval`` and of the
trainer's validation.

The detector's outputs are already in each image's original pixels (torchvision's detectors resize inside
and scale back); labels map back to the dataset's category ids, boxes become [x, y, w, h], and masks are the
0.5-thresholded probability maps, RLE-encoded with ``pycocotools.mask.encode``. Does not import the trainer.
"""
import contextlib
import copy
import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from hcgnet.detection.data import CocoData, CocoDetectionSet, CocoFormatError, collate, read_coco
from hcgnet.distributed import Dist, gather_objects, leave_stop_signals_to_the_main_process
from hcgnet.evaluation import autocast, device_of
from hcgnet.files import write_json
from hcgnet.provenance import provenance

#: COCOeval's first six summary numbers, in its order.
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = {"box": ("bbox",), "mask": ("bbox", "segm")}
KIND = {"bbox": "box", "segm": "mask"}


def to_coco_results(outputs: Sequence[Dict[str, torch.Tensor]], image_ids: Sequence[int],
                    category_ids: Sequence[int], mask_threshold: float = 0.5) -> Tuple[List[dict], List[dict]]:
    """torchvision detector outputs -> COCO result entries: (box results, mask results)."""
    from pycocotools import mask as mask_utils

    boxes_out, masks_out = [], []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = out["scores"].detach().float().cpu().tolist()
        categories = [category_ids[int(label) - 1] for label in out["labels"].cpu()]
        for box, score, category in zip(xywh, scores, categories):
            boxes_out.append({"image_id": int(image_id), "category_id": int(category), "bbox": box, "score": score})
        if "masks" in out and len(scores):
            binary = (out["masks"].detach().float().cpu()[:, 0] > mask_threshold).numpy().astype(np.uint8)
            for rle, score, category in zip(mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))),
                                            scores, categories):
                masks_out.append({"image_id": int(image_id), "category_id": int(category), "score": score,
                                  "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    return boxes_out, masks_out


def score_results(coco_gt, results: List[dict], iou_type: str, image_ids: Optional[Sequence[int]] = None
                  ) -> Dict[str, Optional[float]]:
    """COCOeval's AP, AP50, AP75, APs, APm, APl (None where the dataset has no object of that size) of
    ``results`` against ``coco_gt`` on ``image_ids`` (default: every image)."""
    from pycocotools.cocoeval import COCOeval

    if not results:  # loadRes refuses an empty list; nothing detected scores 0
        return {m: 0.0 for m in METRICS}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
        detections = coco_gt.loadRes(copy.deepcopy(results))
        evaluation = COCOeval(coco_gt, detections, iou_type)
        if image_ids is not None:
            evaluation.params.imgIds = list(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {m: (None if v < 0 else float(v)) for m, v in zip(METRICS, evaluation.stats[:6])}


def check_categories(data: CocoData, category_ids: Sequence[int], source: str) -> None:
    if sorted(category_ids) != data.category_ids:
        raise CocoFormatError(f"{data.annotations} has categories {_ids(data.category_ids)} but {source} was trained "
                              f"on {_ids(category_ids)}; evaluate on data with the same categories")


def _ids(ids: Sequence[int]) -> str:
    ids = sorted(ids)
    return str(ids) if len(ids) <= 8 else f"[{ids[0]}, {ids[1]}, ..., {ids[-1]}] ({len(ids)} ids)"


@torch.no_grad()
def detect(model: nn.Module, data: CocoData, image_ids: Sequence[int], task: str, device: torch.device,
           amp_dtype: Optional[torch.dtype] = None, batch_size: int = 2, workers: int = 0,
           progress: Optional[Callable[[int], None]] = None) -> List[Tuple[int, Dict[str, torch.Tensor]]]:
    """The model's outputs (on the CPU) for ``image_ids``, in order, as ``(image_id, output)``."""
    model.eval()
    dataset = CocoDetectionSet(data, image_ids, train=False, masks=False)
    # Workers in their own process group: a SIGTERM to the group during the trainer's validation pass reaches
    # only the main process, which stops the run at its next step with a resumable checkpoint.
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        worker_init_fn=leave_stop_signals_to_the_main_process)
    found = []
    for images, targets in loader:
        with autocast(device, amp_dtype):
            outputs = model([im.to(device) for im in images])
        for target, out in zip(targets, outputs):
            found.append((target["image_id"], {k: v.float().cpu() for k, v in out.items()}))
        if progress is not None:
            progress(1)
    return found


def evaluate_detector(model: nn.Module, data: CocoData, category_ids: Sequence[int], task: str, device: torch.device,
                      amp_dtype: Optional[torch.dtype] = None, batch_size: int = 2, workers: int = 0,
                      dist: Optional[Dist] = None, progress=None) -> Optional[Dict[str, Any]]:
    """Box (and mask) AP of ``model`` on every image of ``data``. With DDP each rank runs its share of the
    images and rank 0 scores them all (other ranks return None)."""
    dist = dist or Dist(device=device)
    ids = data.image_ids[dist.rank::dist.world_size]
    found = detect(model, data, ids, task, device, amp_dtype, batch_size, workers, progress)
    boxes, masks = to_coco_results([o for _, o in found], [i for i, _ in found], category_ids)
    gathered = gather_objects((boxes, masks, len(found)), dist)
    if not dist.is_main:
        return None
    parts = gathered if dist.enabled else [gathered]
    boxes, masks = [r for part in parts for r in part[0]], [r for part in parts for r in part[1]]
    metrics: Dict[str, Any] = {"images": sum(part[2] for part in parts)}  # scored, over every process
    for iou_type in IOU_TYPES[task]:
        metrics[KIND[iou_type]] = score_results(data.coco, boxes if iou_type == "bbox" else masks, iou_type)
    metrics["results"] = {"bbox": boxes, "segm": masks}
    return metrics


def evaluate_coco(checkpoint, images, annotations, batch_size: int = 2, workers: int = 2,
                  device: Optional[str] = None, amp: str = "none", log: Callable[[str], None] = print
                  ) -> Dict[str, Any]:
    """``hcgnet detect eval``: box (and, for a mask model, mask) AP of a trained detector on a COCO-format
    dataset. Returns ``{"checkpoint", "annotations", "images", "task", "box": {AP...}, "mask": {...},
    "results": {"bbox": [...], "segm": [...]}}``."""
    from hcgnet.detection.checkpoint import load_detector
    from hcgnet.inference import check_eval_options, batch_progress

    dev = device_of(device)
    amp_dtype = check_eval_options(batch_size, workers, amp, dev)
    data = read_coco(images, annotations)  # the data first: its mistakes cost no model loading
    for note in data.notes:
        log(note)
    model, info = load_detector(checkpoint, dev)
    check_categories(data, info["category_ids"], str(checkpoint))
    total = -(-len(data.image_ids) // batch_size)
    with batch_progress(total, "detect eval", None, log) as bar:
        metrics = evaluate_detector(model, data, info["category_ids"], info["task"], dev, amp_dtype, batch_size,
                                    workers, progress=bar.update)
    return {"checkpoint": str(checkpoint), "annotations": str(annotations), "task": info["task"], "amp": amp,
            **metrics, "provenance": provenance([checkpoint], dev)}


# ------------------------------------------------------------------------------------------------ reports


def table(metrics: Dict[str, Any]) -> str:
    """The AP table for the terminal: one row per kind (box, mask), percentages."""
    kinds = [k for k in ("box", "mask") if k in metrics]
    lines = ["        " + "".join(f"{m:>8}" for m in METRICS)]
    for kind in kinds:
        cells = ["-" if metrics[kind][m] is None else f"{100 * metrics[kind][m]:.1f}" for m in METRICS]
        lines.append(f"{kind:<8}" + "".join(f"{c:>8}" for c in cells))
    return "\n".join(lines)


def summary(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """The metrics without the per-detection results (what --json and metrics.json hold)."""
    return {k: v for k, v in metrics.items() if k != "results"}


#: What ``write_reports`` may write (``detections_segm.json`` for mask models only).
REPORTS = ("metrics.json", "metrics.csv", "detections_bbox.json", "detections_segm.json")


def write_reports(metrics: Dict[str, Any], folder) -> List[Path]:
    """metrics.json, metrics.csv (one row per kind) and the detections in COCO's results format."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "metrics.json", summary(metrics))
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", *METRICS])
        for kind in ("box", "mask"):
            if kind in metrics:
                writer.writerow([kind, *("" if metrics[kind][m] is None else f"{metrics[kind][m]:.6f}" for m in METRICS)])
    written = [folder / "metrics.json", folder / "metrics.csv"]
    for iou_type, results in metrics.get("results", {}).items():
        if results or iou_type == "bbox":
            path = folder / f"detections_{iou_type}.json"
            path.write_text(json.dumps(results))
            written.append(path)
    return written
