"""The gates' attention pooling, forward and backward, at HCGNet-A1's map sizes (batch 64): hcgnet's
``AttentionPool`` (the products in the map's own layout) against the same equations as a 1x1 convolution with
one output channel and a batched matrix product (the published code's formulation, written here from the
paper's eqs. 5-6).

    python benchmarks/attention_pool.py [--rounds 5] [--json benchmarks/results/attention_pool.json]  # --force to replace

Interleaved rounds, each timing both formulations once per case; medians of the per-round medians and of
the per-round ratios (hcgnet over conv + bmm: below 1 is faster).
"""
import argparse
import statistics
import time

import torch

from hcgnet.bench import machine_description
from hcgnet.errors import script_errors
from hcgnet.files import script_output_file, write_json
from hcgnet.layers.attention_pool import AttentionPool

CASES = ((64, 12, 32), (64, 24, 16), (64, 36, 8))  # A1's three stages: (batch, growth rate k, side)


def conv_bmm(pool: AttentionPool, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    logits = pool.score(x).reshape(b, 1, h * w)
    weights = torch.softmax(logits.float(), dim=-1).to(x.dtype).reshape(b, h * w, 1)
    return torch.bmm(x.reshape(b, c, h * w), weights).reshape(b, c)


def time_step(fn, x, grad, steps: int) -> float:
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        x.grad = None
        fn(x).backward(grad)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--steps", type=int, default=10, help="timed forward+backward passes per round and case")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "attention_pool")
    rows = []
    for batch, channels, side in CASES:
        for dtype in (torch.float32, torch.bfloat16):
            for channels_last in (False, True):
                torch.manual_seed(0)
                pool = AttentionPool(channels)
                x = torch.randn(batch, channels, side, side, dtype=dtype)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                x.requires_grad_(True)
                grad = torch.randn(batch, channels, dtype=dtype)
                pool = pool.to(dtype)
                ours, theirs = [], []
                for _ in range(args.rounds):
                    ours.append(time_step(pool, x, grad, args.steps))
                    theirs.append(time_step(lambda t: conv_bmm(pool, t), x, grad, args.steps))
                row = {"batch": batch, "channels": channels, "side": side, "dtype": str(dtype).split(".")[1],
                       "channels_last": channels_last, "hcgnet_ms": 1e3 * statistics.median(ours),
                       "conv_bmm_ms": 1e3 * statistics.median(theirs),
                       "ratio": statistics.median(a / b for a, b in zip(ours, theirs))}
                rows.append(row)
                print(f"{batch}x{channels}x{side}x{side} {row['dtype']:8s} {'channels_last' if channels_last else 'NCHW':13s}"
                      f" hcgnet {row['hcgnet_ms']:6.2f} ms   conv+bmm {row['conv_bmm_ms']:6.2f} ms   "
                      f"ratio {row['ratio']:.2f}", flush=True)
    if json_path:
        write_json(json_path, {"machine": machine_description(), "threads": torch.get_num_threads(),
                                         "rows": rows})


if __name__ == "__main__":
    with script_errors("attention_pool"):  # a mistake in what was asked: one line, exit code 2
        main()
