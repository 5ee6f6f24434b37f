"""Compiled inference with one buffer per hybrid block (``HybridBlock.forward_buffer``) and with the
concatenations as written, side by side with the published implementation's own network (eager fp32), same
weights: A1 at batch 256 by default, any variant at its own input size and any batch.

    python benchmarks/dense_compiled.py --published ~/HCGNet-published --rounds 7 \\
        --json benchmarks/results/dense_compiled.json  # --force to replace
    python benchmarks/dense_compiled.py --published ~/HCGNet-published --model hcgnet_b --batch 1 \\
        --steps 20 --rounds 5 --json benchmarks/results/dense_compiled_b_latency.json  # --force to replace

hcgnet's two are ``hcgnet eval --compile`` (bf16 autocast, channels_last, weights frozen) with
``HybridBlock.compiled_buffer`` True in every block (``buffer_min_positions`` 0, whatever the maps' size) and
False. Each is compiled once; then every round
times ``--steps`` batches of each, the published code first; a figure is the median of the per-round medians,
a ratio the median of the per-round ratios, with the range over rounds.
"""
import argparse
import contextlib
import copy
import statistics
import sys
import time

import torch

from hcgnet.bench import machine_description, model_defaults
from hcgnet.compiled import compile_frozen
from hcgnet.errors import script_errors
from hcgnet.files import script_output_file, write_json
from hcgnet.models.hcgnet import set_compiled_buffer
from hcgnet.published import paired_models


def label(dtype: str, form: str) -> str:
    return f"{dtype} channels_last compiled, {form}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--published", required=True, metavar="PATH", help="a clone of github.com/winycg/HCGNet")
    p.add_argument("--model", default="hcgnet_a1", help="a variant (its own input size and classes)")
    p.add_argument("--batch", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--steps", type=int, default=3, help="timed batches per configuration and round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--dtypes", default="bf16", help="comma-separated: bf16 (autocast), fp32")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "dense_compiled")
    contexts = {"bf16": lambda: torch.autocast("cpu", torch.bfloat16), "fp32": contextlib.nullcontext}
    dtypes = args.dtypes.split(",")
    if set(dtypes) - set(contexts):
        print(f"dense_compiled: error: --dtypes: choose from {', '.join(contexts)}", file=sys.stderr)
        sys.exit(2)
    size, num_classes = model_defaults(args.model)
    published, ours = paired_models(args.published, args.model, num_classes, size)
    x = torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(0))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    runners = {"published eager fp32": (published.eval(), x, contextlib.nullcontext)}
    for dtype in dtypes:
        for name, on in (("buffer", True), ("concatenation", False)):
            # min_positions 0: the buffer in every block, whatever the map's size, to compare the two forms
            model = set_compiled_buffer(copy.deepcopy(ours), on, min_positions=0).eval()
            model = model.to(memory_format=torch.channels_last)
            start = time.perf_counter()
            compiled = compile_frozen(model, args.batch)
            with torch.no_grad(), contexts[dtype]():
                compiled(x_cl)
            print(f"{label(dtype, name)}: compiled in {time.perf_counter() - start:.0f} s", flush=True)
            runners[label(dtype, name)] = (compiled, x_cl, contexts[dtype])
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
    pairs = {}
    for dtype in dtypes:
        pair = pairs[dtype] = [c / h for c, h in zip(rounds[label(dtype, "buffer")],
                                                     rounds[label(dtype, "concatenation")])]
        print(f"{dtype} buffer / concatenation: {statistics.median(pair):.3f} "
              f"(rounds {min(pair):.3f}-{max(pair):.3f})")
    if json_path:
        write_json(json_path, {
            "model": args.model, "batch": args.batch, "size": list(size), "steps": args.steps,
            "rounds": args.rounds, "rows": rows, "buffer_over_concatenation": pairs,
            "machine": machine_description(), "date": time.strftime("%Y-%m-%d")})


if __name__ == "__main__":
    with script_errors("dense_compiled"):  # a mistake in what was asked: one line, exit code 2
        main()
