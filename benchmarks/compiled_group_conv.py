"""What GroupConv2d's training form gives a compiled HCGNet-A1 training step on a CPU.

    python benchmarks/compiled_group_conv.py --rounds 10 --json benchmarks/results/compiled_group_conv.json

In CPU training the squeeze cells' 3x3 group convs (3-9 outputs per group in A1) run as transposed convolutions
of their transposed kernels (``hcgnet.layers.GroupConv2d``), whose oneDNN kernels are the fast ones for so few
outputs per group (``benchmarks/group_conv.py``, per shape). This times a training step (SGD with momentum,
cross-entropy, channels_last, batch 64 at 32x32) compiled both ways in interleaved rounds of one process: the
network as built, and the same network with every GroupConv2d calling torch's convolution directly. Reports the
median ratio transposed / plain per round.
"""
import types

from loop_tails import interleaved_pairs, named_pair_row, step_arguments, write_report
from torch import nn

from hcgnet.errors import script_errors
from hcgnet.files import script_output_file
from hcgnet.layers import GroupConv2d


def plain_convolutions(model: nn.Module) -> None:
    """Every GroupConv2d of ``model`` runs nn.Conv2d's forward, the plain group convolution, in place."""
    for module in model.modules():
        if isinstance(module, GroupConv2d):
            module.forward = types.MethodType(nn.Conv2d.forward, module)


WAYS = {"transposed (GroupConv2d)": ({}, None), "plain group conv": ({}, plain_convolutions)}


def main() -> None:
    args = step_arguments(__doc__).parse_args()
    # a file that would be replaced is refused before the minutes of compiling, not after
    json_path = script_output_file(args.json, args.force, "compiled_group_conv")
    rows = [named_pair_row(dtype, "plain", plain, "transposed", transposed)  # transposed / plain, per round
            for dtype, transposed, plain in interleaved_pairs(args, WAYS)]
    if json_path:
        write_report(json_path, args, rows)


if __name__ == "__main__":
    with script_errors("compiled_group_conv"):  # a mistake in what was asked: one line, exit code 2
        main()
