"""What DilatedDepthwiseConv2d's own backward pass gives a compiled fp32 HCGNet-A1 training step on a CPU.

    python benchmarks/compiled_dilated_backward.py --rounds 10 --json benchmarks/results/compiled_dilated_backward.json

Under ``torch.compile`` on a CPU, the excitation cells' dilated depthwise convolutions train with hcgnet's
backward pass (``hcgnet.layers.conv``: the input gradient from the flipped kernel, the weight gradient over the
map's phase sub-maps, whose copies Inductor writes into its own kernels) instead of torch's (oneDNN's dilated
backward kernels). This times a training step (SGD with momentum, cross-entropy, channels_last, batch 64 at
32x32) compiled both ways in interleaved rounds of one process: the network as built, and the same network with
every DilatedDepthwiseConv2d calling torch's convolution directly. Reports the median ratio hcgnet's / torch's
per round. fp32 by default: in bf16 torch's weight gradient is wrong on channels_last maps of 30x30 or more
(README), so that comparison times a wrong program.
"""
import types

from loop_tails import interleaved_pairs, named_pair_row, step_arguments, write_report
from torch import nn

from hcgnet.errors import script_errors
from hcgnet.files import script_output_file
from hcgnet.layers import DilatedDepthwiseConv2d


def torchs_backward(model: nn.Module) -> None:
    """Every DilatedDepthwiseConv2d of ``model`` runs nn.Conv2d's forward, and so torch's backward, in place."""
    for module in model.modules():
        if isinstance(module, DilatedDepthwiseConv2d):
            module.forward = types.MethodType(nn.Conv2d.forward, module)


WAYS = {"hcgnet's backward": ({}, None), "torch's backward (oneDNN)": ({}, torchs_backward)}


def main() -> None:
    parser = step_arguments(__doc__)
    parser.set_defaults(dtypes="fp32")
    args = parser.parse_args()
    # a file that would be replaced is refused before the minutes of compiling, not after
    json_path = script_output_file(args.json, args.force, "compiled_dilated_backward")
    rows = [named_pair_row(dtype, "torchs", torchs, "hcgnets", hcgnets)  # hcgnet's / torch's, per round
            for dtype, hcgnets, torchs in interleaved_pairs(args, WAYS)]
    if json_path:
        write_report(json_path, args, rows)


if __name__ == "__main__":
    with script_errors("compiled_dilated_backward"):  # a mistake in what was asked: one line, exit code 2
        main()
