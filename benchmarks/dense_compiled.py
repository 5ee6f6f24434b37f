"""Compiled A1 inference with one buffer per hybrid block (``HybridBlock.forward_buffer``) and with the
concatenations as written, side by side with the published implementation's own A1 (eager fp32), same weights.

    python benchmarks/dense_compiled.py --published ~/HCGNet-published --rounds 7 \\
        --json benchmarks/results/dense_compiled.json

hcgnet's two are ``hcgnet eval --compile`` (bf16 autocast, channels_last, weights frozen) with
``HybridBlock.compiled_buffer`` True (the default) and False. Each is compiled once; then every round
times ``--steps`` batches of each, the published code first; a figure is the median of the per-round medians,
a ratio the median of the per-round ratios, with the range over rounds.
"""
import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from hcgnet.bench import machine_description
from hcgnet.compiled import compile_frozen
from hcgnet.models.hcgnet import set_compiled_buffer
from hcgnet.published import paired_models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--published", required=True, metavar="PATH", help="a clone of github.com/winycg/HCGNet")
    p.add_argument("--model", default="hcgnet_a1", help="hcgnet_a1, a2 or a3 (CIFAR, 32x32)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed batches per configuration and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    published, ours = paired_models(args.published, args.model, 10, (32, 32))
    x = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    bf16 = lambda: torch.autocast("cpu", torch.bfloat16)  # noqa: E731
    runners = {"published eager fp32": (published.eval(), x, torch.no_grad)}
    for name, on in (("buffer", True), ("concatenation", False)):
        model = set_compiled_buffer(copy.deepcopy(ours), on).eval().to(memory_format=torch.channels_last)
        start = time.perf_counter()
        compiled = compile_frozen(model, args.batch)
        with torch.no_grad(), bf16():
            compiled(x_cl)
        print(f"bf16 channels_last compiled, {name}: compiled in {time.perf_counter() - start:.0f} s", flush=True)
        runners[f"bf16 channels_last compiled, {name}"] = (compiled, x_cl, bf16)
    with torch.no_grad():
        published(x)  # warm-up
    rounds = {name: [] for name in runners}
    for r in range(args.rounds):
        for name, (run, inp, context) in runners.items():
            times = []
            with torch.no_grad(), context():
                for _ in range(args.steps):
                    start = time.perf_counter()
                    run(inp)
                    times.append(time.perf_counter() - start)
            rounds[name].append(statistics.median(times))
            print(f"round {r + 1}: {name:45s} {rounds[name][-1]:.3f} s a batch", flush=True)
    base = rounds["published eager fp32"]
    rows = []
    for name, medians in rounds.items():
        ratios = [m / b for m, b in zip(medians, base)]
        rows.append({"configuration": name, "median_s": statistics.median(medians), "round_medians_s": medians,
                     "time_ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)]})
        print(f"{name:45s} {rows[-1]['median_s']:.3f} s  {rows[-1]['time_ratio']:.3f}x the published time "
              f"({min(ratios):.3f}-{max(ratios):.3f}), {1 / rows[-1]['time_ratio']:.2f}x faster")
    pair = [c / h for c, h in zip(rounds["bf16 channels_last compiled, buffer"],
                                  rounds["bf16 channels_last compiled, concatenation"])]
    print(f"buffer / concatenation: {statistics.median(pair):.3f} (rounds {min(pair):.3f}-{max(pair):.3f})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "model": args.model, "batch": args.batch, "steps": args.steps, "rounds": args.rounds, "rows": rows,
            "buffer_over_concatenation": pair, "machine": machine_description(),
            "date": time.strftime("%Y-%m-%d")}, indent=2))


if __name__ == "__main__":
    main()
