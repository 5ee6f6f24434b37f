"""The excitation cell's dilated depthwise 3x3, forward + backward: autograd's standard backward pass
against hcgnet's (``DilatedDepthwiseConv2d.forward_fast_backward``: flipped-kernel input gradient,
phase-map weight gradient), for every layout and dtype.

    python benchmarks/dilated_depthwise.py --json benchmarks/results/dilated_depthwise.json  # --force to replace

Shapes are HCGNet-A1's at batch 64: the hybrid blocks' k-channel maps (12 x 32^2, 24 x 16^2, 36 x 8^2)
and two transitions'. The undilated 3x3 of the same shape is timed too, for scale. Medians of repeated passes, all forms one after the other.
"""
import argparse
import itertools

import torch
from gate_passes import median_seconds  # the sibling script (this folder is on sys.path when run)

from hcgnet.errors import script_errors
from hcgnet.files import script_output_file, write_json
from hcgnet.layers.conv import DilatedDepthwiseConv2d


def timed(fn, x, weight, repeats):
    """Milliseconds of one forward pass and both gradients."""
    grad = torch.randn_like(fn(x))
    return 1000 * median_seconds(lambda: torch.autograd.grad(fn(x), (x, weight), grad), repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20, help="timed passes per case (default 20)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "dilated_depthwise")
    torch.manual_seed(0)
    rows = []
    for (c, h), layout, dtype in itertools.product(((12, 32), (24, 16), (36, 8), (60, 16), (126, 8)),
                                                  ("NCHW", "NHWC"), (torch.float32, torch.bfloat16)):
        conv = DilatedDepthwiseConv2d(c)
        undilated = torch.nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        x = torch.randn(64, c, h, h, dtype=dtype)
        if layout == "NHWC":
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        # fp32 weights cast to the map's dtype, as autocast does
        standard = lambda t: conv._conv_forward(t, conv.weight.to(dtype), None)  # noqa: E731
        plain = lambda t: undilated._conv_forward(t, undilated.weight.to(dtype), None)  # noqa: E731
        torch.testing.assert_close(conv.forward_fast_backward(x), standard(x), rtol=0, atol=0)
        ms = {name: timed(fn, x, weight, args.repeats) for name, fn, weight in
              (("standard", standard, conv.weight), ("fast", conv.forward_fast_backward, conv.weight),
               ("undilated", plain, undilated.weight))}
        dt = str(dtype).replace("torch.", "")
        rows.append({"shape": [64, c, h, h], "layout": layout, "dtype": dt, "standard_ms": ms["standard"],
                     "fast_ms": ms["fast"], "undilated_ms": ms["undilated"],
                     "speedup": ms["standard"] / ms["fast"]})
        print(f"{str((64, c, h, h)):16s} {layout} {dt:8s} standard {ms['standard']:7.2f} ms   "
              f"fast {ms['fast']:6.2f} ms   x{ms['standard'] / ms['fast']:.2f}   "
              f"(undilated 3x3: {ms['undilated']:.2f} ms)", flush=True)
    if json_path:
        write_json(json_path, {"threads": torch.get_num_threads(), "pass": "forward + backward",
                                         "rows": rows})


if __name__ == "__main__":
    with script_errors("dilated_depthwise"):  # a mistake in what was asked: one line, exit code 2
        main()
