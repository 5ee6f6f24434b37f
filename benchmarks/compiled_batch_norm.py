"""What hcgnet's batch statistics from per-image sums give a compiled HCGNet-A1 training step on a CPU.

    python benchmarks/compiled_batch_norm.py --rounds 5 --json benchmarks/results/compiled_batch_norm.json

Inside ``torch.compile`` on a CPU, ``hcgnet.layers.BatchNorm2d`` computes training-mode statistics from per-image
shifted sums (``hcgnet.layers.batch_norm``) instead of handing torch's batch norm to Inductor, which lowers it to
Welford reductions that sweep the whole batch once per channel vector. This times a training step (SGD with
momentum, cross-entropy, channels_last, batch 64 at 32x32) compiled both ways, fp32 and bf16 autocast, in
interleaved rounds of one process: the network as built, and the same network with every norm turned back into
torch's ``nn.BatchNorm2d`` (same parameters and buffers). Reports the median ratio sums / torch's per round.
"""
from loop_tails import interleaved_pairs, named_pair_row, step_arguments, write_report
from torch import nn

from hcgnet.errors import script_errors
from hcgnet.files import script_output_file
from hcgnet.layers import BatchNorm2d


def torchs_norms(model: nn.Module) -> None:
    """Every hcgnet BatchNorm2d of ``model`` becomes torch's own class, in place (it is a subclass: same state)."""
    for module in model.modules():
        if isinstance(module, BatchNorm2d):
            module.__class__ = nn.BatchNorm2d


WAYS = {"per-image sums (hcgnet)": ({}, None), "torch's batch norm (Inductor's Welford)": ({}, torchs_norms)}


def main() -> None:
    args = step_arguments(__doc__).parse_args()
    # a file that would be replaced is refused before the minutes of compiling, not after
    json_path = script_output_file(args.json, args.force, "compiled_batch_norm")
    rows = [named_pair_row(dtype, "torchs", torchs, "sums", sums)  # sums / torch's, per round
            for dtype, sums, torchs in interleaved_pairs(args, WAYS)]
    if json_path:
        write_report(json_path, args, rows)


if __name__ == "__main__":
    with script_errors("compiled_batch_norm"):  # a mistake in what was asked: one line, exit code 2
        main()
