"""OpenVINO on hcgnet's ONNX export with the export's dynamic sizes and with the input's sizes fixed
(``hcgnet.export.OpenVINOModel`` compiles each input shape it meets with its sizes fixed), interleaved.

    python benchmarks/openvino_shapes.py --model hcgnet_b --batch 1 --steps 20 --rounds 7 \\
        --json benchmarks/results/openvino_shapes_b.json  # --force to replace
    python benchmarks/openvino_shapes.py --model hcgnet_a1 --batch 256 --steps 3 --rounds 7 \\
        --json benchmarks/results/openvino_shapes_a1.json  # --force to replace

Random weights (seed 0), one export, both compiled with the same settings (LATENCY hint, torch's thread count,
the precision of --dtype); every round times --steps calls of each after one untimed call. A figure is the
median of the per-round medians, the ratio (fixed / dynamic) the median of the per-round ratios, with their range.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hcgnet import create_model
from hcgnet.bench import machine_description, model_defaults
from hcgnet.errors import script_errors
from hcgnet.export import OpenVINOModel, export_model
from hcgnet.files import script_output_file, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hcgnet_b", help="a variant (its own input size and classes)")
    p.add_argument("--batch", type=int, default=1, help="images per call")
    p.add_argument("--dtype", default="bf16", choices=("fp32", "bf16"), help="OpenVINO's inference precision")
    p.add_argument("--steps", type=int, default=20, help="timed calls per configuration and round")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "openvino_shapes")
    size, num_classes = model_defaults(args.model)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=num_classes).eval()
    x = torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(model, str(Path(tmp) / "model.onnx"), "onnx", (3, *size))
        fixed = OpenVINOModel(path, args.dtype)
        request = fixed.core.compile_model(fixed.model, "CPU", fixed.config).create_infer_request()
        runs = {"dynamic sizes": lambda t: torch.from_numpy(request.infer({0: t.numpy()})[0].copy()),
                "sizes fixed": fixed}
        with torch.no_grad():
            expected = model(x)
        scale = expected.abs().max().item()
        agreement = {k: (run(x) - expected).abs().max().item() / scale for k, run in runs.items()}
        times = {k: [] for k in runs}
        for r in range(args.rounds):
            for k, run in runs.items():
                run(x)
                start = time.perf_counter()
                for _ in range(args.steps):
                    run(x)
                times[k].append((time.perf_counter() - start) / args.steps)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1] * 1e3:.1f} ms" for k, v in times.items()), flush=True)
    ratios = [f / d for f, d in zip(times["sizes fixed"], times["dynamic sizes"])]
    result = {"model": args.model, "batch": args.batch, "dtype": args.dtype, "steps": args.steps,
              "rounds": args.rounds, "machine": machine_description(), "seconds": times,
              "largest_difference_to_eager_fp32_of_scale": agreement,
              "median_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
              "fixed_over_dynamic": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                     "faster_rounds": sum(r < 1 for r in ratios)}}
    for k, v in result["median_ms"].items():
        print(f"{k}: {v:.1f} ms (largest difference to eager fp32: {agreement[k]:.1e} of the largest logit)")
    q = result["fixed_over_dynamic"]
    print(f"sizes fixed / dynamic sizes: {q['median']:.3f} ({q['min']:.3f}-{q['max']:.3f}), faster in "
          f"{q['faster_rounds']} of {args.rounds} rounds")
    if json_path:
        write_json(json_path, result)


if __name__ == "__main__":
    with script_errors("openvino_shapes"):  # a mistake in what was asked: one line, exit code 2
        main()
