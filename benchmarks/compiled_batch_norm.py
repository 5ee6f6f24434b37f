"""What hcgnet's batch statistics from per-image sums give a compiled HCGNet-A1 training step on a CPU.

    python benchmarks/compiled_batch_norm.py --rounds 5 --json benchmarks/results/compiled_batch_norm.json

Inside ``torch.compile`` on a CPU, ``hcgnet.layers.BatchNorm2d`` computes training-mode statistics from per-image
shifted sums (``hcgnet.layers.batch_norm``) instead of handing torch's batch norm to Inductor, which lowers it to
Welford reductions that sweep the whole batch once per channel vector. This times a training step (SGD with
momentum, cross-entropy, channels_last, batch 64 at 32x32) compiled both ways, fp32 and bf16 autocast, in
interleaved rounds of one process: the network as built, and the same network with every norm turned back into
torch's ``nn.BatchNorm2d`` (same parameters and buffers). Reports the median ratio sums / torch's per round.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from loop_tails import training_step
from torch import nn

from hcgnet.bench import machine_description
from hcgnet.files import atomic_path, script_output_file
from hcgnet.layers import BatchNorm2d


def torchs_norms(model: nn.Module) -> None:
    """Every hcgnet BatchNorm2d of ``model`` becomes torch's own class, in place (it is a subclass: same state)."""
    for module in model.modules():
        if isinstance(module, BatchNorm2d):
            module.__class__ = nn.BatchNorm2d


WAYS = {"per-image sums (hcgnet)": None, "torch's batch norm (Inductor's Welford)": torchs_norms}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hcgnet_a1", help="the network (A1: the issue's training workload)")
    p.add_argument("--batch", type=int, default=64, help="images per step")
    p.add_argument("--side", type=int, default=32, help="image side (CIFAR's 32)")
    p.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration and round")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    # a file that would be replaced is refused before the minutes of compiling, not after
    json_path = script_output_file(args.json, args.force, "compiled_batch_norm")
    configs = []
    for dtype in args.dtypes.split(","):
        for way, prepare in WAYS.items():
            step = training_step(args.model, args.batch, args.side, dtype == "bf16", {}, prepare=prepare)
            start = time.perf_counter()
            step(), step()  # compiles forward and backward, then one warm step
            print(f"{dtype} {way}: compiled and warm in {time.perf_counter() - start:.0f} s", flush=True)
            configs.append({"dtype": dtype, "way": way, "step": step, "round_medians_s": []})
    for r in range(args.rounds):
        for c in configs:
            c["round_medians_s"].append(statistics.median(c["step"]() for _ in range(args.steps)))
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    rows = []
    for sums, torchs in zip(configs[::2], configs[1::2]):
        ratios = [a / b for a, b in zip(sums["round_medians_s"], torchs["round_medians_s"])]
        row = {"dtype": sums["dtype"], "sums_s": statistics.median(sums["round_medians_s"]),
               "torchs_s": statistics.median(torchs["round_medians_s"]), "sums_over_torchs": statistics.median(ratios),
               "ratio_range": [min(ratios), max(ratios)], "sums_faster_rounds": sum(x < 1 for x in ratios),
               "rounds": len(ratios)}
        rows.append(row)
        print(f"{row['dtype']}: per-image sums {row['sums_s']:.3f} s, torch's {row['torchs_s']:.3f} s, "
              f"ratio {row['sums_over_torchs']:.3f} ({row['ratio_range'][0]:.3f}-{row['ratio_range'][1]:.3f}), "
              f"sums faster in {row['sums_faster_rounds']} of {row['rounds']}")
    if json_path:
        report = {"machine": machine_description(), "threads": torch.get_num_threads(), "model": args.model,
                  "batch": args.batch, "side": args.side, "steps": args.steps, "rows": rows}
        with atomic_path(json_path) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
