"""The squeeze cell's 3x3 group conv, forward + backward: the plain convolution against the form
``GroupConv2d`` takes in CPU training (the transposed convolution of the transposed kernel), for every layout
and dtype.

    python benchmarks/group_conv.py --json benchmarks/results/group_conv.json  # --force to replace

Shapes are HCGNet-A1's hybrid blocks at batch 64: 4k channels squeezed to k in 4 groups (48 -> 12 at 32^2,
96 -> 24 at 16^2, 144 -> 36 at 8^2), so 3, 6 and 9 outputs per group. The forms alternate pass by pass
(interleaved), and each figure is the median of its passes. The two forms' outputs and gradients are
checked against each other first.
"""
import argparse
import itertools
import statistics
import time

import torch
import torch.nn.functional as F

from hcgnet.bench import machine_description
from hcgnet.errors import script_errors
from hcgnet.files import script_output_file, write_json
from hcgnet.layers.conv import GroupConv2d

SHAPES = ((48, 12, 32), (96, 24, 16), (144, 36, 8))  # input channels, output channels, side


def passes(conv: GroupConv2d, x: torch.Tensor):
    """One forward pass and both gradients of each form, as functions of no arguments."""
    weight = conv.weight
    grad = torch.randn_like(F.conv2d(x.detach(), weight.to(x.dtype), None, 1, 1, 1, conv.groups))
    plain = lambda: torch.autograd.grad(  # noqa: E731
        F.conv2d(x, weight.to(x.dtype), None, 1, 1, 1, conv.groups), (x, weight), grad)
    # the training form, as the layer runs it (gradients on, on a CPU; under bf16 autocast for bf16 maps)
    training = lambda: torch.autograd.grad(conv(x), (x, weight), grad)  # noqa: E731
    return {"plain": plain, "transposed": training}


def interleaved_ms(forms, rounds: int, warmup: int = 3):
    """Median milliseconds of each form, the forms alternating pass by pass."""
    for once in forms.values():
        for _ in range(warmup):
            once()
    times = {name: [] for name in forms}
    for _ in range(rounds):
        for name, once in forms.items():
            start = time.perf_counter()
            once()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20, help="timed passes of each form")
    p.add_argument("--json", default=None, help="write the rows here (JSON)")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "group_conv")
    torch.manual_seed(0)
    rows = []
    for (cin, cout, side), layout, dtype in itertools.product(SHAPES, ("NCHW", "NHWC"),
                                                              (torch.float32, torch.bfloat16)):
        conv = GroupConv2d(cin, cout, 3, groups=4)
        x = torch.randn(64, cin, side, side, dtype=dtype)
        if layout == "NHWC":
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        forms = passes(conv, x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            for a, b in zip(forms["plain"](), forms["transposed"]()):
                torch.testing.assert_close(b.float(), a.float(), rtol=0.02, atol=0.02 * a.abs().max().item())
            ms = interleaved_ms(forms, args.rounds)
        dt = str(dtype).replace("torch.", "")
        rows.append({"shape": [64, cin, side, side], "out_channels": cout, "groups": 4, "layout": layout, "dtype": dt,
                     "plain_ms": ms["plain"], "transposed_ms": ms["transposed"],
                     "transposed_over_plain": ms["transposed"] / ms["plain"]})
        print(f"{cin:3d} -> {cout:2d} at {side:2d}^2 {layout} {dt:8s} plain {ms['plain']:6.2f} ms   "
              f"transposed {ms['transposed']:6.2f} ms   ratio {ms['transposed'] / ms['plain']:.2f}", flush=True)
    if json_path:
        write_json(json_path, {"machine": machine_description(), "pass": "forward + backward",
                                         "rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
    with script_errors("group_conv"):  # a mistake in what was asked: one line, exit code 2
        main()
