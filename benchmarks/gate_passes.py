"""The gates' arithmetic: hcgnet's fused forms against the textbook ones, forward + backward, same results.

* attention pooling: one batched matrix product over positions, against multiplying the map by the
  attention weights, average-pooling and rescaling by the number of positions (three passes over the map);
* the SMG output ``v + X' * f``: one ``addcmul``, against a multiply and then an add.

    python benchmarks/gate_passes.py --json benchmarks/results/gate_passes.json  # --force to replace

Shapes are those of HCGNet-A1's first hybrid block at batch 64 (and of the last one). Medians of
repeated forward + backward passes, both forms one after the other in one process.
"""
import argparse
import itertools
import statistics
import time

import torch

from hcgnet.errors import script_errors
from hcgnet.files import script_output_file, write_json


def pool_bmm(x, w):  # w: (B, HW) softmax weights
    b, c, h, wd = x.shape
    return torch.bmm(x.reshape(b, c, h * wd), w.reshape(b, h * wd, 1)).reshape(b, c)


def pool_textbook(x, w):
    b, c, h, wd = x.shape
    return (x * w.reshape(b, 1, h, wd)).mean(dim=(2, 3)) * (h * wd)


def gate_fused(x, f, v):
    return torch.addcmul(v, x, f)


def gate_textbook(x, f, v):
    return x * f + v


def median_seconds(once, repeats, warmup=3):
    """Median wall time of ``once()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(fn, inputs, repeats, backward=True):
    def once():
        if backward:
            out = fn(*inputs)
            out.backward(torch.ones_like(out))
        else:
            with torch.no_grad():
                fn(*inputs)

    return median_seconds(once, repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=50, help="timed passes per case (default 50)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "gate_passes")
    torch.manual_seed(0)
    rows = []
    for (b, c, h), layout, dtype, backward in itertools.product(
            ((64, 12, 32), (64, 36, 8)), ("NCHW", "NHWC"), (torch.float32, torch.bfloat16), (False, True)):
        x = torch.randn(b, c, h, h, dtype=dtype)
        if layout == "NHWC":
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w = torch.softmax(torch.randn(b, h * h), dim=1).to(dtype).requires_grad_()
        f = torch.rand(b, c, 1, 1, dtype=dtype, requires_grad=True)
        v = torch.randn(b, c, 1, 1, dtype=dtype, requires_grad=True)
        for name, fused, textbook, inputs in (("attention pooling", pool_bmm, pool_textbook, (x, w)),
                                              ("v + X' * f", gate_fused, gate_textbook, (x, f, v))):
            torch.testing.assert_close(fused(*inputs).float(), textbook(*inputs).float(), rtol=2e-2, atol=2e-2)
            t_fused = timed(fused, inputs, args.repeats, backward)
            t_textbook = timed(textbook, inputs, args.repeats, backward)
            pass_ = "fwd+bwd" if backward else "fwd"
            dt = str(dtype).replace("torch.", "")
            rows.append({"op": name, "shape": [b, c, h, h], "layout": layout, "dtype": dt, "pass": pass_,
                         "fused_ms": 1000 * t_fused, "textbook_ms": 1000 * t_textbook, "speedup": t_textbook / t_fused})
            print(f"{name:18s} {str((b, c, h, h)):16s} {layout} {dt:8s} {pass_:7s} fused {1000 * t_fused:7.3f} ms   "
                  f"textbook {1000 * t_textbook:7.3f} ms   x{t_textbook / t_fused:.2f}", flush=True)
    if json_path:
        write_json(json_path, {"threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    with script_errors("gate_passes"):  # a mistake in what was asked: one line, exit code 2
        main()
