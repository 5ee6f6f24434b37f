"""What Inductor's vectorised loop tails are worth to a compiled HCGNet-A1 training step on a CPU.

    python benchmarks/loop_tails.py --rounds 5 --json benchmarks/results/loop_tails.json  # --force to replace

Inductor's CPU code runs a loop's last, partial vector either vectorised with masks (its default) or as scalar
code (``cpp.enable_loop_tail_vec = False``). A1's maps have 12-252 channels, most not a multiple of 16 float32
lanes, so the tails are many. Turning them off was once weighed as a workaround for compiled fp32 gradients
that differed from float64 on one test batch; that difference turned out to be a ReLU kink that rounding puts
on either side (README, "--compile"), not a defect, and hcgnet compiles with Inductor's defaults. This times a
training step (SGD with momentum, cross-entropy, channels_last, batch 64 at 32x32) compiled both ways, fp32 and
bf16 autocast, in interleaved rounds, and reports the median ratio without tails / with tails per round.
"""
import argparse
import statistics
import time

import torch
from torch import nn

from hcgnet.bench import machine_description
from hcgnet.errors import script_errors
from hcgnet.files import script_output_file, write_json
from hcgnet.models import create_model

WAYS = {"with tails (the default)": {"cpp.enable_loop_tail_vec": True},
        "without tails": {"cpp.enable_loop_tail_vec": False}}


def training_step(model_name: str, batch: int, side: int, amp: bool, options: dict, seed: int = 0,
                  prepare=None):
    """A compiled training step of a fresh model (the same weights for every call with the same seed);
    ``prepare(model)``, if given, changes the model before it is compiled."""
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=10).to(memory_format=torch.channels_last).train()
    if prepare is not None:
        prepare(model)
    runner = torch.compile(model, options=dict(options))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(runner(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def step_arguments(doc: str) -> argparse.ArgumentParser:
    """The flags of a script that times compiled training steps two ways (this one, compiled_batch_norm.py,
    compiled_dilated_backward.py, compiled_group_conv.py)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hcgnet_a1", help="the network (A1: the issue's training workload)")
    p.add_argument("--batch", type=int, default=64, help="images per step")
    p.add_argument("--side", type=int, default=32, help="image side (CIFAR's 32)")
    p.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration and round")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    return p


def interleaved_pairs(args: argparse.Namespace, ways: dict) -> list:
    """For each dtype, the two ``ways`` (name: (Inductor options, prepare)) compiled, then timed in interleaved
    rounds, in that order: [(dtype, first way's per-round medians, second way's), ...]."""
    configs = []
    for dtype in args.dtypes.split(","):
        for way, (options, prepare) in ways.items():
            step = training_step(args.model, args.batch, args.side, dtype == "bf16", options, prepare=prepare)
            start = time.perf_counter()
            step(), step()  # compiles forward and backward, then one warm step
            print(f"{dtype} {way}: compiled and warm in {time.perf_counter() - start:.0f} s", flush=True)
            configs.append({"dtype": dtype, "step": step, "round_medians_s": []})
    for r in range(args.rounds):
        for c in configs:
            c["round_medians_s"].append(statistics.median(c["step"]() for _ in range(args.steps)))
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    return [(a["dtype"], a["round_medians_s"], b["round_medians_s"]) for a, b in zip(configs[::2], configs[1::2])]


def ratio_summary(first: list, second: list) -> dict:
    """``second`` over ``first``, per round: the median, the range, and in how many rounds ``second`` was
    faster."""
    ratios = [b / a for a, b in zip(first, second)]
    return {"ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
            "second_faster_rounds": sum(x < 1 for x in ratios), "rounds": len(ratios)}


def named_pair_row(dtype: str, first_name: str, first: list, second_name: str, second: list) -> dict:
    """One results row for two ways' per-round medians, keyed by their short names (``NAME_s``,
    ``SECOND_over_FIRST`` per round, its range, ``SECOND_faster_rounds``), printed as one line."""
    summary = ratio_summary(first, second)
    row = {"dtype": dtype, f"{second_name}_s": statistics.median(second), f"{first_name}_s": statistics.median(first),
           f"{second_name}_over_{first_name}": summary["ratio"], "ratio_range": summary["ratio_range"],
           f"{second_name}_faster_rounds": summary["second_faster_rounds"], "rounds": summary["rounds"]}
    low, high = summary["ratio_range"]
    print(f"{dtype}: {second_name} {row[f'{second_name}_s']:.3f} s, {first_name} {row[f'{first_name}_s']:.3f} s, "
          f"ratio {summary['ratio']:.3f} ({low:.3f}-{high:.3f}), {second_name} faster in "
          f"{summary['second_faster_rounds']} of {summary['rounds']}")
    return row


def write_report(json_path, args: argparse.Namespace, rows: list) -> None:
    report = {"machine": machine_description(), "threads": torch.get_num_threads(), "model": args.model,
              "batch": args.batch, "side": args.side, "steps": args.steps, "rows": rows}
    write_json(json_path, report, indent=1)
    print(f"wrote {json_path}")


def main() -> None:
    args = step_arguments(__doc__).parse_args()
    # a file that would be replaced is refused before the minutes of compiling, not after
    json_path = script_output_file(args.json, args.force, "loop_tails")
    rows = []
    for dtype, with_tails, without in interleaved_pairs(args, {way: (options, None) for way, options in WAYS.items()}):
        summary = ratio_summary(with_tails, without)
        row = {"dtype": dtype, "with_tails_s": statistics.median(with_tails),
               "without_tails_s": statistics.median(without), "without_over_with": summary["ratio"],
               "ratio_range": summary["ratio_range"], "without_faster_rounds": summary["second_faster_rounds"],
               "rounds": summary["rounds"]}
        rows.append(row)
        print(f"{row['dtype']}: with tails {row['with_tails_s']:.3f} s, without {row['without_tails_s']:.3f} s, "
              f"ratio {row['without_over_with']:.3f} ({row['ratio_range'][0]:.3f}-{row['ratio_range'][1]:.3f}), "
              f"without faster in {row['without_faster_rounds']} of {row['rounds']}")
    if json_path:
        write_report(json_path, args, rows)


if __name__ == "__main__":
    with script_errors("loop_tails"):  # a mistake in what was asked: one line, exit code 2
        main()
