"""Classify images with an ONNX file written by ``hcgnet export``, without hcgnet: ONNX Runtime, NumPy and Pillow
only. The file carries its class names and its preprocessing (metadata ``class_names`` and ``data_config``); this
script reads them and prepares each image as ``hcgnet predict`` does, so the two give the same classes and
probabilities (tests/test_export.py checks it).

    hcgnet export --checkpoint runs/demo/best.safetensors --output a1.onnx
    python docs/onnx_predict.py a1.onnx shirt.jpg boot.png

A sketch to copy into a deployment, not a command of hcgnet: one image at a time, no error handling.
"""
import argparse
import json

import numpy as np
import onnxruntime
from PIL import Image


def preprocess(image: Image.Image, config: dict) -> np.ndarray:
    """``image`` as the (C, H, W) float32 array the network takes: hcgnet's eval transform
    (``hcgnet.data.transforms.build_eval_transform``)."""
    c, h, w = config["input_size"]
    image = image.convert("L" if c == 1 else "RGB")
    iw, ih = image.size
    if config["resize"] is not None:  # ImageNet-style: the shorter side to `resize` (torchvision's Resize(int))
        short, long = sorted((iw, ih))
        new_short, new_long = config["resize"], int(config["resize"] * long / short)
        size = (new_short, new_long) if iw <= ih else (new_long, new_short)
    elif (iw, ih) == (w, h):  # CIFAR-style: an image of the native size is used as it is ...
        size = (iw, ih)
    else:  # ... any other is scaled to the smallest size that covers H x W, aspect ratio kept
        scale = max(h / ih, w / iw)
        size = (max(w, round(iw * scale)), max(h, round(ih * scale)))
    if size != (iw, ih):
        image = image.resize(size, Image.BILINEAR)
    left, top = int(round((size[0] - w) / 2.0)), int(round((size[1] - h) / 2.0))  # the centre H x W
    image = image.crop((left, top, left + w, top + h))
    x = np.asarray(image, dtype=np.float32).reshape(h, w, c).transpose(2, 0, 1) / 255.0
    mean, std = np.array(config["mean"], np.float32), np.array(config["std"], np.float32)
    return (x - mean[:, None, None]) / std[:, None, None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an .onnx file written by hcgnet export")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON as hcgnet predict --json does")
    args = p.parse_args()
    session = onnxruntime.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    config, classes = json.loads(meta["data_config"]), json.loads(meta["class_names"])
    results = []
    for path in args.images:
        x = preprocess(Image.open(path), config)[None]
        logits = session.run(None, {session.get_inputs()[0].name: x})[0][0].astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        top = np.argsort(-probabilities, kind="stable")[:args.topk]
        results.append({"image": path, "top": [{"class": classes[i], "index": int(i),
                                                "probability": float(probabilities[i])} for i in top]})
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(r["image"])
        for t in r["top"]:
            print(f"  {100 * t['probability']:6.2f}%  {t['class']}")


if __name__ == "__main__":
    main()
