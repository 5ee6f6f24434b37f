"""A tiny COCO-format dataset for the detection tests: small noisy images with filled rectangles ("box",
category id 3) and ellipses ("ball", category id 7; ids with a gap, as COCO's have), their boxes, polygon
masks for the rectangles and RLE masks for the ellipses."""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

CATEGORIES = [{"id": 3, "name": "box"}, {"id": 7, "name": "ball"}]


def _shape(rng, width, height):
    """A random box (x1, y1, x2, y2) covering a fair part of the image."""
    w, h = rng.integers(width // 3, width // 2 + 1), rng.integers(height // 3, height // 2 + 1)
    x, y = rng.integers(1, width - w - 1), rng.integers(1, height - h - 1)
    return int(x), int(y), int(x + w), int(y + h)


def make_coco(root, count=8, seed=0, sizes=((64, 64), (96, 64), (64, 96)), objects=(1, 2)):
    """Write ``root/images/*.png`` and ``root/instances.json``; return (images folder, annotation path)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for n in range(count):
        width, height = sizes[n % len(sizes)]
        pixels = np.clip(rng.normal(110, 25, size=(height, width, 3)), 0, 255).astype(np.uint8)
        picture = Image.fromarray(pixels)
        draw = ImageDraw.Draw(picture)
        for k in range(int(rng.integers(objects[0], objects[1] + 1))):
            x1, y1, x2, y2 = _shape(rng, width, height)
            ball = (n + k) % 2 == 1
            colour = (230, 60, 40) if ball else (40, 70, 230)
            canvas = Image.new("L", (width, height), 0)
            if ball:
                draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=colour)
                ImageDraw.Draw(canvas).ellipse((x1, y1, x2 - 1, y2 - 1), fill=1)
                rle = mask_utils.encode(np.asfortranarray(np.array(canvas, dtype=np.uint8)))
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
                bbox = [float(v) for v in mask_utils.toBbox(rle)]
            else:
                draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=colour)
                segmentation = [[x1, y1, x2, y1, x2, y2, x1, y2]]
                bbox = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
            annotations.append({"id": len(annotations) + 1, "image_id": n + 1, "category_id": 7 if ball else 3,
                                "bbox": bbox, "segmentation": segmentation, "iscrowd": 0,
                                "area": float(bbox[2] * bbox[3])})
        name = f"{n:03d}.png"
        picture.save(root / "images" / name)
        images.append({"id": n + 1, "file_name": name, "width": width, "height": height})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return root / "images", path


# The backbone the tests train: a small HCGNet spec once hcgnet.detection has the HCGNet backbone
# (backbone.py), else the COCO branch's stand-in ResNet-18; HCGNET_TOY_DETECTOR chooses another.
TOY_MODEL = os.environ.get("HCGNET_TOY_DETECTOR") or (
    "HCGNet-(1,1,1,1)-(k=8,8,8,8)" if importlib.util.find_spec("hcgnet.detection.backbone") else "resnet18")
# Fewer proposals and sampled regions than torchvision's defaults (2000/512): the toy images hold 1-2 objects,
# and the box head over 1,000 regions (the mask head over 100 detections) would dominate a CPU step.
TOY_OPTIONS = {"rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 100,
               "rpn_post_nms_top_n_test": 50, "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 32,
               "box_detections_per_img": 10}


def toy_config(images, annotations, output, **overrides):
    """A DetectConfig for the toy set: small images, batch 2, a short warm-up, no loader processes."""
    from hcgnet.detection import DetectConfig

    values = dict(images=str(images), annotations=str(annotations), output=str(output), model=TOY_MODEL, task="mask",
                  image_size=64, max_size=96, epochs=1, batch_size=2, lr=0.01, lr_base_batch=2, warmup_steps=4,
                  workers=0, device="cpu", detector_options=dict(TOY_OPTIONS))
    return DetectConfig(**{**values, **overrides})
