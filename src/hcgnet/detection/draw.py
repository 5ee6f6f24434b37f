"""``hcgnet detect predict``: a trained detector on image files, its boxes, class names, scores and masks
drawn with torchvision's ``draw_bounding_boxes`` / ``draw_segmentation_masks`` into one PNG per image. An
unreadable image is named and skipped; the others go on. Does not import the trainer."""
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from hcgnet.data.errors import DataError
from hcgnet.data.images import load_image
from hcgnet.errors import HCGNetError
from hcgnet.evaluation import device_of
from hcgnet.files import check_output_folder, reported_write

#: One colour per class (cycled), strong enough to see on photographs.
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#008080",
           "#9a6324", "#800000", "#000075"]


def draw_detections(image: torch.Tensor, output: Dict[str, torch.Tensor], class_names: Sequence[str],
                    score_threshold: float = 0.5, mask_threshold: float = 0.5) -> torch.Tensor:
    """``image`` (uint8, 3 x H x W) with the detections scoring at least ``score_threshold`` drawn on it."""
    keep = output["scores"] >= score_threshold
    labels = output["labels"][keep].tolist()
    colours = [PALETTE[(label - 1) % len(PALETTE)] for label in labels]
    if "masks" in output and keep.any():
        masks = output["masks"][keep][:, 0] > mask_threshold
        image = draw_segmentation_masks(image, masks, alpha=0.45, colors=colours)
    if keep.any():
        text = [f"{class_names[label - 1]} {score:.2f}" for label, score in zip(labels, output["scores"][keep].tolist())]
        image = draw_bounding_boxes(image, output["boxes"][keep], labels=text, colors=colours, width=2)
    return image


def _unique_name(path: str, taken: set) -> str:
    stem, name, n = Path(path).stem, Path(path).stem + ".png", 1
    while name in taken:  # same file name in two folders: keep both
        name, n = f"{stem}_{n}.png", n + 1
    taken.add(name)
    return name


@torch.no_grad()
def predict(checkpoint, inputs: Sequence[str], output, score_threshold: float = 0.5, device: Optional[str] = None,
            log: Callable[[str], None] = print, force: bool = False) -> List[Dict[str, Any]]:
    """Detect objects in the images named by ``inputs`` (files, folders, glob patterns) and write one PNG per
    image into the folder ``output``, which may not hold PNGs of those names already unless ``force``. Returns
    one entry per image: ``{"image", "png", "detections": [{"class", "category_id", "score", "bbox"}]}`` or
    ``{"image", "error"}``; the detections are the ones drawn, best first, each ``bbox`` [x, y, w, h] in the
    image's own pixels and ``category_id`` the dataset's, as in COCO's results format (``detect eval``'s)."""
    from hcgnet.detection.checkpoint import load_detector
    from hcgnet.inference import collect_images

    if not 0 <= score_threshold <= 1:
        raise HCGNetError(f"--score-threshold must be between 0 and 1, got {score_threshold}")
    paths, results = collect_images(inputs)
    for problem in results:
        log(f"hcgnet: warning: {problem['error']}; skipped")
    if not paths:
        raise DataError("no images to detect objects in (see the warnings above)")
    taken: set = set()
    pngs = [_unique_name(path, taken) for path in paths]
    out = check_output_folder(output, "the PNGs", results=pngs, force=force,
                              reads=[item for item in inputs if os.path.isdir(item)])
    dev = device_of(device)
    model, info = load_detector(checkpoint, dev)
    with reported_write(out):
        out.mkdir(parents=True, exist_ok=True)
    for path, png in zip(paths, pngs):
        try:
            image = F.pil_to_tensor(load_image(path, hint="").convert("RGB"))
        except DataError as e:
            log(f"hcgnet: warning: {e}; skipped")
            results.append({"image": path, "error": str(e)})
            continue
        found = {k: v.float().cpu() if k != "labels" else v.cpu()
                 for k, v in model([F.to_dtype(image, torch.float32, scale=True).to(dev)])[0].items()}
        png = out / png
        drawn = draw_detections(image, found, info["class_names"], score_threshold)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(png)
        keep = found["scores"] >= score_threshold
        boxes = found["boxes"][keep]
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)  # COCO's, as detect eval writes them
        results.append({"image": path, "png": str(png), "detections": [
            {"class": info["class_names"][label - 1], "category_id": info["category_ids"][label - 1],
             "score": score, "bbox": box}
            for label, score, box in zip(found["labels"][keep].tolist(), found["scores"][keep].tolist(),
                                         xywh.tolist())]})
    return results
