"""The performance issue's workloads: hcgnet's fast paths against its plain fp32 eager path, in one process.

The published implementation cannot run here (it needs libraries that no longer install), so the plain
fp32 eager path of hcgnet, with the same weights, stands in for it; the published implementation's own
figures (measured by the issue's author on another machine) are printed beside ours for scale only.

    python benchmarks/targets.py --json benchmarks/results/targets.json     # the CPU (or, on a GPU, GPU) set
    python benchmarks/targets.py --only a1-infer,b-latency --steps 10

Each workload runs its configurations one after the other in one process (see ``hcgnet.bench``),
``--rounds`` times over, then its first configuration (the fp32 eager stand-in) once more. A
configuration's figure is the median over its rounds; ratios are against the stand-in's median over all
its runs, so that a machine that speeds up or slows down during the workload favours no configuration.
"""
import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

from hcgnet.bench import BenchConfig, describe, run_config

FP32, FP32_CL, BF16_CL = BenchConfig("x"), BenchConfig("x", channels_last=True), BenchConfig("x", "bf16", True)
COMPILED_FP32_CL = BenchConfig("x", channels_last=True, compile=True)
COMPILED_BF16_CL = BenchConfig("x", "bf16", True, compile=True)

# name: (model, mode, batch, side, configurations, the published implementation's eager fp32 figure)
WORKLOADS = {
    "a1-train": ("hcgnet_a1", "train", 64, 32, [FP32, FP32_CL, BF16_CL, COMPILED_FP32_CL, COMPILED_BF16_CL],
                 "35.5 images/s"),
    "a2-train": ("hcgnet_a2", "train", 64, 32, [FP32, FP32_CL, BF16_CL], "18.4 images/s"),
    "b-train": ("hcgnet_b", "train", 8, 224, [FP32, FP32_CL, BF16_CL], "7.65 images/s"),
    "a1-infer": ("hcgnet_a1", "infer", 256, 32, [FP32, FP32_CL, BF16_CL, COMPILED_BF16_CL,
                                                 BenchConfig("x", runtime="onnx"), BenchConfig("x", runtime="pt2")],
                 "97 images/s"),
    "a1-latency": ("hcgnet_a1", "latency", 1, 32, [FP32, FP32_CL, BenchConfig("x", runtime="onnx")], "23 ms"),
    "b-latency": ("hcgnet_b", "latency", 1, 224, [FP32, FP32_CL, BF16_CL, COMPILED_FP32_CL,
                                                  BenchConfig("x", runtime="onnx")], "55 ms"),
    # The GPU workloads (run where a GPU is lent; no published GPU figures to print beside them).
    "gpu-a1-train": ("hcgnet_a1", "train", 128, 32, [FP32, FP32_CL, BF16_CL, COMPILED_BF16_CL], "-"),
    "gpu-b-train": ("hcgnet_b", "train", 64, 224, [FP32, FP32_CL, BF16_CL, COMPILED_BF16_CL], "-"),
    "gpu-b-infer": ("hcgnet_b", "infer", 256, 224, [FP32, FP32_CL, BF16_CL, COMPILED_BF16_CL], "-"),
    "gpu-b-latency": ("hcgnet_b", "latency", 1, 224, [FP32, FP32_CL, BF16_CL, COMPILED_BF16_CL], "-"),
}
CPU_DEFAULT = [k for k in WORKLOADS if not k.startswith("gpu-")]
GPU_DEFAULT = [k for k in WORKLOADS if k.startswith("gpu-")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(WORKLOADS)} (default: "
                   "the CPU workloads on a CPU, the gpu- ones on a GPU)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1, help="run the configurations this many times, interleaved")
    p.add_argument("--json", default=None, help="write every result here (merged into an existing file)")
    args = p.parse_args()
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--rounds and --steps must be at least 1, --warmup at least 0")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'cpu'}, " \
        f"{torch.get_num_threads()} threads"
    out = Path(args.json) if args.json else None
    report = json.loads(out.read_text()) if out and out.exists() else {"workloads": {}}
    report.update(torch=torch.__version__, machine=machine)
    keys = args.only.split(",") if args.only else (GPU_DEFAULT if device.type == "cuda" else CPU_DEFAULT)
    for key in keys:
        if key not in WORKLOADS:
            sys.exit(f"unknown workload {key!r}; choose from {', '.join(WORKLOADS)}")
        model, mode, batch, side, configs, published = WORKLOADS[key]
        print(f"\n{key}: {model} {mode}, batch {batch}, {side}x{side} (published implementation, fp32 eager, "
              f"other machine: {published})", flush=True)
        runs: list = [[] for _ in configs]
        for i in [*range(len(configs))] * args.rounds + [0]:
            cfg = configs[i]
            cfg = BenchConfig(mode, cfg.dtype, cfg.channels_last, cfg.memory_efficient, cfg.compile, cfg.runtime)
            r = run_config(model, cfg, batch, (side, side), args.steps, args.warmup, device)
            runs[i].append(r)
            figure = f"{r['latency_ms']:.1f} ms" if mode == "latency" else f"{r['images_per_s']:.1f} images/s"
            loss = f"   loss {r['first_loss']:.4f} -> {r['final_loss']:.4f}" if "final_loss" in r else ""
            print(f"  {describe(r):32s} {figure:>16s}   (spread {r['min_s']:.3f}-{r['max_s']:.3f} s){loss}",
                  flush=True)
        rows = []
        for config_runs in runs:  # the run with the median time stands for the configuration (spread, memory)
            r = dict(sorted(config_runs, key=lambda r: r["median_s"])[(len(config_runs) - 1) // 2])
            r["round_medians_s"] = [c["median_s"] for c in config_runs]
            r["median_s"] = statistics.median(r["round_medians_s"])
            r.update({"latency_ms": 1000 * r["median_s"]} if mode == "latency" else
                     {"images_per_s": r["batch"] / r["median_s"]})
            rows.append(r)
        for r in rows:
            r["speedup"] = rows[0]["median_s"] / r["median_s"]
        print("  ratios to the stand-in: " + ", ".join(f"{describe(r)} x{r['speedup']:.2f}" for r in rows[1:]),
              flush=True)
        report["workloads"][key] = {"model": model, "mode": mode, "batch": batch, "size": side,
                                    "published": published, "results": rows}
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
