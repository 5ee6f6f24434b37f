"""Shared BatchNorm statistics, measured where HCGNet has them: several pre-activation BatchNorm + ReLU of one
feature map, each with its own weight and bias (issue 17, "Where the time goes": an idea weighed).

    python benchmarks/shared_statistics.py --rounds 7 --json benchmarks/results/shared_statistics.json  # --force to replace

Every consumer of a feature map in HCGNet normalises it with the same batch statistics: the excitation cell's
two depthwise branches read the same squeezed map (2 consumers), and a chunk of a hybrid block is read by every
later module of the block (up to depth - 1 consumers). Two ways to compute ``relu(bn_c(x))`` for c consumers:

    per consumer   c BatchNorm2d modules (hcgnet.layers.BatchNorm2d, as the network has them), each reducing x
                   and normalising it, forward and backward
    shared         x normalised once (a BatchNorm2d without affine parameters), then each consumer's
                   ``relu(x_hat * weight_c + bias_c)``; autograd sums the consumers' gradients of x_hat and runs
                   one normalisation backward

Forward and backward of ``sum_c <relu(bn_c(x)), g_c>`` with fixed random g_c, interleaved over rounds; the
outputs and input gradients of the two ways are checked equal first (float32, relative to the largest value).
Eager by default: compiled (``--compile on``), this fragment saves a boolean ReLU mask for the backward pass,
and Inductor's CPU kernels that store boolean masks ran 20x slower than eager here (torch 2.14.1), which swamps
everything else; the whole network's compiled training graph saves no such masks, so that figure would say
nothing about it.
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch
from torch import Tensor, nn

from hcgnet.bench import machine_description
from hcgnet.errors import script_errors
from hcgnet.files import script_output_file, write_json
from hcgnet.layers import BatchNorm2d


class PerConsumer(nn.Module):
    def __init__(self, channels: int, consumers: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(BatchNorm2d(channels) for _ in range(consumers))

    def forward(self, x: Tensor) -> List[Tensor]:
        return [torch.relu(norm(x)) for norm in self.norms]


class Shared(nn.Module):
    def __init__(self, channels: int, consumers: int) -> None:
        super().__init__()
        self.norm = BatchNorm2d(channels, affine=False)
        self.weight = nn.Parameter(torch.ones(consumers, 1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(consumers, 1, channels, 1, 1))

    def forward(self, x: Tensor) -> List[Tensor]:
        x_hat = self.norm(x)
        return [torch.relu(torch.addcmul(b, x_hat, w)) for w, b in zip(self.weight, self.bias)]


def copy_affine(per: PerConsumer, shared: Shared) -> None:
    with torch.no_grad():
        for i, norm in enumerate(per.norms):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
            shared.weight[i].copy_(norm.weight.view(1, -1, 1, 1))
            shared.bias[i].copy_(norm.bias.view(1, -1, 1, 1))


def loss_of(outs: List[Tensor], grads: List[Tensor]) -> Tensor:
    """sum_c <out_c, g_c>: its gradient with respect to out_c is g_c."""
    return sum((o.float() * g).sum() for o, g in zip(outs, grads))


def step_fn(model: nn.Module, x: Tensor, grads: List[Tensor]) -> Callable[[], Tensor]:
    def step() -> Tensor:
        x.grad = None
        for p in model.parameters():
            p.grad = None
        loss = loss_of(model(x), grads)
        loss.backward()
        return loss
    return step


def check_equal(per: PerConsumer, shared: Shared, x: Tensor, grads: List[Tensor]) -> Dict[str, float]:
    results = {}
    for name, model in (("per", per), ("shared", shared)):
        xx = x.detach().clone().requires_grad_(True)
        outs = model(xx)
        loss_of(outs, grads).backward()
        results[name] = (torch.stack([o.detach().float() for o in outs]), xx.grad.float())
    out_gap = float((results["per"][0] - results["shared"][0]).abs().max() / results["per"][0].abs().max())
    grad_gap = float((results["per"][1] - results["shared"][1]).abs().max() / results["per"][1].abs().max())
    return {"outputs": out_gap, "input_gradient": grad_gap}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="A1's training batch")
    p.add_argument("--channels", type=int, default=12, help="a chunk's channels (A1's first growth rate)")
    p.add_argument("--side", type=int, default=32, help="map side (A1's first stage)")
    p.add_argument("--consumers", default="2,8", help="comma-separated consumer counts")
    p.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    p.add_argument("--compile", default="off", help="off and/or on (see above)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration and round")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    # a file that would be replaced is refused before the minutes of timing, not after
    json_path = script_output_file(args.json, args.force, "shared_statistics")
    torch.manual_seed(0)
    configs = []
    for consumers in map(int, args.consumers.split(",")):
        for dtype in args.dtypes.split(","):
            for comp in args.compile.split(","):
                per, shared = PerConsumer(args.channels, consumers), Shared(args.channels, consumers)
                copy_affine(per, shared)
                x = torch.randn(args.batch, args.channels, args.side, args.side).contiguous(
                    memory_format=torch.channels_last).requires_grad_(True)
                grads = [torch.randn(x.shape).contiguous(memory_format=torch.channels_last) for _ in range(consumers)]
                gaps = check_equal(per, shared, x, grads)
                for name, model in (("per consumer", per), ("shared", shared)):
                    runner = torch.compile(model) if comp == "on" else model
                    step = step_fn(runner, x, grads)
                    amp = dtype == "bf16"

                    def timed(step=step, amp=amp) -> float:
                        with torch.autocast("cpu", torch.bfloat16, enabled=amp):
                            start = time.perf_counter()
                            step()
                            return time.perf_counter() - start

                    timed()  # warm-up (compilation)
                    configs.append({"consumers": consumers, "dtype": dtype, "compile": comp == "on", "way": name,
                                    "timed": timed, "gaps": gaps, "round_medians_s": []})
    for r in range(args.rounds):
        for c in configs:
            c["round_medians_s"].append(statistics.median(c["timed"]() for _ in range(args.steps)))
        print(f"round {r + 1} done", flush=True)
    rows = []
    for per, shared in zip(configs[::2], configs[1::2]):
        ratios = [s / p for s, p in zip(shared["round_medians_s"], per["round_medians_s"])]
        row = {k: per[k] for k in ("consumers", "dtype", "compile", "gaps")}
        row.update(per_consumer_ms=1000 * statistics.median(per["round_medians_s"]),
                   shared_ms=1000 * statistics.median(shared["round_medians_s"]),
                   shared_over_per=statistics.median(ratios), ratio_range=[min(ratios), max(ratios)],
                   shared_faster_rounds=sum(x < 1 for x in ratios), rounds=len(ratios))
        rows.append(row)
        print(f"{row['consumers']} consumers {row['dtype']:4s} compile {'on ' if row['compile'] else 'off'}  "
              f"per consumer {row['per_consumer_ms']:7.2f} ms  shared {row['shared_ms']:7.2f} ms  "
              f"shared/per {row['shared_over_per']:.3f} ({row['ratio_range'][0]:.3f}-{row['ratio_range'][1]:.3f}, "
              f"faster in {row['shared_faster_rounds']} of {row['rounds']})  outputs {row['gaps']['outputs']:.1e}  "
              f"input gradient {row['gaps']['input_gradient']:.1e}")
    if json_path:
        report = {"machine": machine_description(), "threads": torch.get_num_threads(), "batch": args.batch,
                  "channels": args.channels, "side": args.side, "rows": rows}
        write_json(json_path, report, indent=1)
        print(f"wrote {json_path}")


if __name__ == "__main__":
    with script_errors("shared_statistics"):  # a mistake in what was asked: one line, exit code 2
        main()
