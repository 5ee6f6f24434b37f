"""Training steps/s and peak memory of Mask R-CNN + FPN with HCGNet-B against torchvision's ResNet-50, in one
process, interleaved (issue 11).

    PYTHONPATH=src python benchmarks/detection_step.py --device cpu --image-size 320 --batch 2 --steps 3  # --force to replace
    PYTHONPATH=src python benchmarks/detection_step.py --device cuda --image-size 800 --batch 2 --steps 20 --amp bf16

Synthetic images (a shorter side of --image-size, 4:3) with three boxes and masks each; the detector's default
settings (trainable_stages 3, frozen norms, 2000/1000 proposals). Writes benchmarks/results/detection_step.json
(or --json; an existing file only with --force). Peak memory: CUDA only, the models' weights included.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from hcgnet.detection import build_detector
from hcgnet.errors import script_errors
from hcgnet.evaluation import AMP_DTYPES, autocast
from hcgnet.files import script_output_file, write_json

DEFAULT_JSON = Path(__file__).parent / "results" / "detection_step.json"


def batch(n, size, device):
    h, w = size, size * 4 // 3
    images = [torch.rand(3, h, w, device=device) for _ in range(n)]
    targets = []
    for _ in range(n):
        boxes = torch.tensor([[10, 10, w // 3, h // 3], [w // 2, h // 4, w - 10, h // 2], [20, h // 2, w // 2, h - 5]],
                             dtype=torch.float32, device=device)
        masks = torch.zeros(3, h, w, dtype=torch.uint8, device=device)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
            m[y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2, 3], device=device), "masks": masks})
    return images, targets


def step_fn(model, images, targets, amp):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def once():
        with autocast(images[0].device, AMP_DTYPES[amp]):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if images[0].is_cuda:
            torch.cuda.synchronize()
    return once


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--image-size", type=int, default=320, help="square image side (default 320)")
    p.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    p.add_argument("--amp", default="none", choices=sorted(AMP_DTYPES), help="autocast dtype (default none)")
    p.add_argument("--json", default=str(DEFAULT_JSON),
                   help="write the results here (default: benchmarks/results/detection_step.json)")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "detection_step")
    device = torch.device(args.device)
    images, targets = batch(args.batch, args.image_size, device)
    steps, times, peak = {}, {}, {}
    for name in ("hcgnet_b", "resnet50"):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        torch.manual_seed(0)
        # trained=True: fine-tuning as with ImageNet weights (random ones here; the step costs the same)
        model = build_detector(name, "mask", num_classes=4, trained=True, min_size=args.image_size,
                               max_size=args.image_size * 4 // 3).to(device).train()
        steps[name] = step_fn(model, images, targets, args.amp)
        steps[name]()  # warm-up, which also gives the peak memory of a step
        times[name] = []
        if device.type == "cuda":
            peak[name] = torch.cuda.max_memory_allocated(device) / 2**30
    for _ in range(args.rounds):
        for name, once in steps.items():  # interleaved: the machine's noise falls on both
            for _ in range(args.steps):
                start = time.perf_counter()
                once()
                times[name].append(time.perf_counter() - start)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "image_size": args.image_size, "batch": args.batch, "amp": args.amp}
    for name, ts in times.items():
        result[name] = {"median_s_per_step": statistics.median(ts), "steps_per_s": 1 / statistics.median(ts),
                        "images_per_s": args.batch / statistics.median(ts), "runs_s": ts,
                        "peak_memory_gib": peak.get(name)}
    print(json.dumps(result, indent=1))
    write_json(json_path, result, indent=1)


if __name__ == "__main__":
    with script_errors("detection_step"):  # a mistake in what was asked: one line, exit code 2
        main()
