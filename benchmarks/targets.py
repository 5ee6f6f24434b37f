"""The performance issue's workloads, side by side with the published implementation's own model classes.

    git clone https://github.com/winycg/HCGNet ~/HCGNet-published      # never copied into this repository
    python benchmarks/targets.py --published ~/HCGNet-published \\
        --json benchmarks/results/targets.json  # merged in; --force to replace a workload it holds
    python benchmarks/targets.py --published ~/HCGNet-published --only a1-infer,b-latency --rounds 5

Each workload is one :func:`hcgnet.bench.against_published` call: the published eager fp32 and hcgnet's
configurations with the same weights (logits checked equal first), interleaved over ``--rounds``; figures are
medians of the per-round medians, ratios medians of the per-round ratios. ``compile`` in inference is
``hcgnet eval --compile`` (weights frozen); ``int8`` is ``hcgnet eval --int8`` (torchao PT2E, compiled);
``openvino`` is the ONNX export in OpenVINO (``hcgnet.export.OpenVINOModel``) at its fp32 or bf16 precision.
The memory workloads also run each configuration in a fresh process for its peak resident memory. An existing
--json file is merged into: its other workloads are kept; replacing a workload it already holds takes --force.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from hcgnet.bench import BenchConfig, against_published, describe
from hcgnet.errors import script_errors
from hcgnet.files import script_output_file, write_json
from hcgnet.published import check_clone

# name: (model, mode, batch, side, hcgnet's configurations, measure memory, the target)
WORKLOADS = {
    "a1-train": ("hcgnet_a1", "train", 64, 32, [BenchConfig("train"), BenchConfig("train", channels_last=True),
                                                BenchConfig("train", "bf16", True),
                                                BenchConfig("train", channels_last=True, compile=True),
                                                BenchConfig("train", "bf16", True, compile=True)], False,
                 "at least 2.0x fp32, 3.0x bf16"),
    "a1-infer": ("hcgnet_a1", "infer", 256, 32, [BenchConfig("infer", channels_last=True),
                                                 BenchConfig("infer", "bf16", True),
                                                 BenchConfig("infer", channels_last=True, compile=True),
                                                 BenchConfig("infer", "bf16", True, compile=True),
                                                 BenchConfig("infer", runtime="onnx"),
                                                 BenchConfig("infer", runtime="int8"),
                                                 BenchConfig("infer", "fp32", runtime="openvino"),
                                                 BenchConfig("infer", "bf16", runtime="openvino")], False,
                 "at least 5x"),
    "b-latency": ("hcgnet_b", "latency", 1, 224, [BenchConfig("latency", channels_last=True),
                                                  BenchConfig("latency", channels_last=True, compile=True),
                                                  BenchConfig("latency", "bf16", True, compile=True),
                                                  BenchConfig("latency", runtime="onnx"),
                                                  BenchConfig("latency", runtime="int8"),
                                                  BenchConfig("latency", "fp32", runtime="openvino"),
                                                  BenchConfig("latency", "bf16", runtime="openvino")], False,
                  "at most 0.25x"),
    "a2-memory": ("hcgnet_a2", "train", 64, 32, [BenchConfig("train"), BenchConfig("train", memory_efficient=True)],
                  True, "memory_efficient: at most 0.5x peak resident memory"),
    "a3-memory": ("hcgnet_a3", "train", 128, 32, [BenchConfig("train", memory_efficient=True)], True,
                  "memory_efficient: at most 4 GB resident"),
}
MEMORY_STEPS = {"a2-memory": (2, 1), "a3-memory": (1, 0)}  # (steps, warm-up): the time is not the point


def earlier_report(path: Path) -> Optional[dict]:
    """The report an earlier run wrote at ``path``; None where there is no file or it holds no such report."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("workloads"), dict) else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--published", required=True, metavar="PATH", help="a clone of github.com/winycg/HCGNet")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(WORKLOADS)}")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration and round (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--json", default=None, help="write every result here (merged into an existing file)")
    p.add_argument("--force", action="store_true",
                   help="replace the workloads an existing --json file already holds (or a file that is no report)")
    args = p.parse_args()
    keys = args.only.split(",") if args.only else list(WORKLOADS)
    unknown = [k for k in keys if k not in WORKLOADS]
    if unknown:
        print(f"targets: error: unknown workload {unknown[0]!r}; choose from {', '.join(WORKLOADS)}", file=sys.stderr)
        sys.exit(2)
    earlier = earlier_report(Path(args.json)) if args.json else None
    # merging keeps the file's other workloads; replacing one it holds (or a file that is no report) needs
    # --force, refused before the minutes of timing
    replaces = args.json is not None and Path(args.json).exists() and (
        earlier is None or any(key in earlier["workloads"] for key in keys))
    out = script_output_file(args.json, args.force or not replaces, "targets")
    check_clone(args.published)
    report = earlier if earlier is not None else {"workloads": {}}
    for key in keys:
        model, mode, batch, side, configs, memory, target = WORKLOADS[key]
        steps, warmup = MEMORY_STEPS.get(key, (args.steps, args.warmup))
        print(f"\n{key}: {model} {mode}, batch {batch}, {side}x{side} (target: {target})", flush=True)
        result = against_published(
            args.published, model, configs, batch, (side, side), steps, warmup, 1 if memory else args.rounds,
            memory=memory, progress=lambda r: print(f"  round {r['round'] + 1}: {describe(r):32s} "
                                                    f"{r['median_s']:.3f} s a step", flush=True))
        for r in result["rows"]:
            rss = f"   peak RSS {r['process_peak_rss_mb']:.0f} MB ({r.get('rss_ratio', 1):.2f}x)" \
                if r.get("process_peak_rss_mb") else ""
            print(f"  {describe(r):32s} {r['median_s']:.3f} s   {r['time_ratio']:.2f}x the published time   "
                  f"{r['share_of_peak']:.1%} of the GEMM peak{rss}", flush=True)
        report["workloads"][key] = {**result, "target": target}
        report["machine"] = result["machine"]
        if out:
            write_json(out, report)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    with script_errors("targets"):  # a mistake in what was asked: one line, exit code 2
        main()
