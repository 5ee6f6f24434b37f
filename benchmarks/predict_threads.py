"""hcgnet predict with its images read by threads a batch ahead of the model (``--workers``) against one batch
after the other in the main thread (``--workers 0``), interleaved rounds.

    python benchmarks/predict_threads.py --model hcgnet_a1 --json benchmarks/results/predict_threads_a1.json

Writes ``--images`` JPEGs of 500x375 (a camera photo, scaled down) into a temporary folder and a checkpoint of
``--model`` (random weights, seed 0) beside them, then times ``hcgnet.inference.predict`` over the folder with
each thread count, ``--rounds`` times in turn. Reports images/s (medians) and the ratio per round.
"""
import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hcgnet.bench import model_defaults
from hcgnet.errors import script_errors
from hcgnet.files import script_output_file, write_json
from hcgnet.inference import predict
from hcgnet.models import create_model, save_safetensors


def write_photos(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(root / f"{i:05d}.jpg", quality=90)


def seconds(checkpoint: str, folder: str, workers: int, batch_size: int) -> float:
    start = time.perf_counter()
    results = predict(checkpoint, [folder], batch_size=batch_size, workers=workers, log=lambda line: None,
                      progress=False)
    elapsed = time.perf_counter() - start
    assert all("top" in r for r in results)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hcgnet_a1", help="a variant or spec (default hcgnet_a1)")
    parser.add_argument("--images", type=int, default=256, help="JPEGs to write and classify (default 256)")
    parser.add_argument("--batch-size", type=int, default=32, help="predict's --batch-size (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="the threads compared with 0 (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved repeats; medians reported (default 5)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = parser.parse_args()
    if min(args.images, args.batch_size, args.workers, args.rounds) < 1:
        parser.error("--images, --batch-size, --workers and --rounds must be 1 or more")
    json_path = script_output_file(args.json, args.force, "predict_threads")
    model_defaults(args.model)  # an unknown network is refused before any image is written
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder, checkpoint = Path(tmp) / "photos", str(Path(tmp) / "model.safetensors")
        write_photos(folder, args.images)
        model = create_model(args.model)
        save_safetensors(model, checkpoint, {"model_name": args.model, "num_classes": model.num_classes})
        seconds(checkpoint, str(folder), args.workers, args.batch_size)  # warm-up: the first pass pays one-offs
        times = {"threads": [], "main_thread": []}
        for _ in range(args.rounds):
            times["threads"].append(seconds(checkpoint, str(folder), args.workers, args.batch_size))
            times["main_thread"].append(seconds(checkpoint, str(folder), 0, args.batch_size))
    ratios = [a / b for a, b in zip(times["threads"], times["main_thread"])]
    result = {
        "model": args.model, "images": args.images, "size": "500x375 JPEG", "batch_size": args.batch_size,
        "workers": args.workers, "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads_images_per_s": args.images / statistics.median(times["threads"]),
        "main_thread_images_per_s": args.images / statistics.median(times["main_thread"]),
        "time_ratio_per_round": ratios, "time_ratio_median": statistics.median(ratios), "all_s": times,
    }
    print(f"{args.model}, {args.images} images, batch {args.batch_size}: "
          f"{result['threads_images_per_s']:.1f} images/s with {args.workers} reading threads, "
          f"{result['main_thread_images_per_s']:.1f} in the main thread; time ratio {result['time_ratio_median']:.3f} "
          f"(rounds {min(ratios):.3f}-{max(ratios):.3f}), medians of {args.rounds}")
    if json_path:
        write_json(json_path, result)


if __name__ == "__main__":
    with script_errors("predict_threads"):  # a mistake in what was asked: one line, exit code 2
        main()
