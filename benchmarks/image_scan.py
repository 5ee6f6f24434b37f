"""How long the full decode of an image folder before training takes (every image opened and decoded, so
truncated files are caught), with threads against one at a time.

    python benchmarks/image_scan.py --json benchmarks/results/image_scan.json  # --force to replace

Writes ``--images`` JPEGs of 300x200 (as a phone photo folder, scaled down) into a temporary folder and
times ``hcgnet.data.images.scan_images`` over them, threaded and sequential, interleaved ``--rounds`` times.
"""
import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image

from hcgnet.data import images
from hcgnet.errors import script_errors
from hcgnet.files import script_output_file, write_json


def write_folder(root: Path, count: int) -> list:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = root / f"class_{i % 3}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def seconds(paths, workers: int) -> float:
    with mock.patch.object(images, "_workers", lambda: workers):
        start = time.perf_counter()
        bad = images.scan_images(paths, "bench")
        elapsed = time.perf_counter() - start
    assert not bad
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1400, help="JPEGs to write and check (default 1400)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved repeats; medians reported (default 5)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = parser.parse_args()
    if args.images < 1 or args.rounds < 1:
        parser.error("--images and --rounds must be 1 or more")
    json_path = script_output_file(args.json, args.force, "image_scan")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_folder(Path(tmp), args.images)
        threads = images._workers()
        times = {"threads": [], "sequential": []}
        for _ in range(args.rounds):
            times["threads"].append(seconds(paths, threads))
            times["sequential"].append(seconds(paths, 1))
    result = {
        "images": args.images, "size": "300x200 JPEG", "threads": threads, "rounds": args.rounds,
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "threaded_s": statistics.median(times["threads"]), "sequential_s": statistics.median(times["sequential"]),
        "all_s": times,
    }
    result["speed_up"] = result["sequential_s"] / result["threaded_s"]
    print(f"{args.images} images: {result['threaded_s']:.2f} s with {threads} threads, "
          f"{result['sequential_s']:.2f} s one at a time ({result['speed_up']:.2f}x); medians of {args.rounds}")
    if json_path:
        write_json(json_path, result)


if __name__ == "__main__":
    with script_errors("image_scan"):  # a mistake in what was asked: one line, exit code 2
        main()
