"""BatchNorm2d training (forward and backward) on narrow channels_last maps: hcgnet's ``BatchNorm2d`` (the wide
view, ``hcgnet.layers.batch_norm``) against torch's ``nn.BatchNorm2d`` on the same channels_last map and on the
map in NCHW; then a whole HCGNet-A1 training step (batch 64, channels_last) with hcgnet's norms against the same
network with torch's.

    python benchmarks/batch_norm.py [--rounds 5] [--json benchmarks/results/batch_norm.json]  # --force to replace

Interleaved rounds; medians of the per-round medians and of the per-round ratios (hcgnet over torch on the same
channels_last map: below 1 is faster).
"""
import argparse
import copy
import statistics
import time

import torch
from torch import nn

from hcgnet.bench import machine_description
from hcgnet.errors import script_errors
from hcgnet.files import script_output_file, write_json
from hcgnet.layers import BatchNorm2d
from hcgnet.models import create_model

#: (batch, channels, side): the excitation cells' inputs of HCGNet-A1 (k = 12 at 32x32) and narrower maps
CASES = ((64, 12, 32), (64, 8, 32), (64, 12, 16), (64, 4, 56))


def time_pass(norm: nn.Module, x: torch.Tensor, grad: torch.Tensor, steps: int) -> float:
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        torch.autograd.grad(norm(x), (x, norm.weight, norm.bias), grad)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def with_torch_norms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose hcgnet BatchNorm2d modules are torch's, with the same state."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, BatchNorm2d):
            plain = nn.BatchNorm2d(module.num_features).to(memory_format=torch.channels_last)
            plain.load_state_dict(module.state_dict())
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, plain)
    return model


def norm_rows(rounds: int, steps: int):
    rows = []
    for batch, channels, side in CASES:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(batch, channels, side, side, dtype=dtype)
            grad = torch.randn_like(x)
            nchw = (x.clone().requires_grad_(), grad)
            last = (x.contiguous(memory_format=torch.channels_last).requires_grad_(),
                    grad.contiguous(memory_format=torch.channels_last))
            ours, theirs = BatchNorm2d(channels), nn.BatchNorm2d(channels)
            t = {"hcgnet": [], "torch": [], "torch_nchw": []}
            for _ in range(rounds):
                t["hcgnet"].append(time_pass(ours, *last, steps))
                t["torch"].append(time_pass(theirs, *last, steps))
                t["torch_nchw"].append(time_pass(theirs, *nchw, steps))
            row = {"batch": batch, "channels": channels, "side": side, "dtype": str(dtype).split(".")[1],
                   **{f"{k}_ms": 1e3 * statistics.median(v) for k, v in t.items()},
                   "ratio": statistics.median(a / b for a, b in zip(t["hcgnet"], t["torch"]))}
            rows.append(row)
            print(f"{batch}x{channels}x{side}x{side} {row['dtype']:8s} channels_last: hcgnet {row['hcgnet_ms']:6.2f} ms"
                  f"  torch {row['torch_ms']:6.2f} ms  ratio {row['ratio']:.2f}   (torch NCHW {row['torch_nchw_ms']:.2f} ms)",
                  flush=True)
    return rows


def step_rows(rounds: int, steps: int):
    torch.manual_seed(0)
    ours = create_model("hcgnet_a1", num_classes=10).to(memory_format=torch.channels_last).train()
    theirs = with_torch_norms(ours)
    x = torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (64,))
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        def step(model):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), labels)
            loss.backward()

        def timed(model):
            times = []
            for _ in range(steps + 1):
                start = time.perf_counter()
                step(model)
                times.append(time.perf_counter() - start)
            return statistics.median(times[1:])

        t = {"hcgnet": [], "torch": []}
        for _ in range(rounds):
            t["hcgnet"].append(timed(ours))
            t["torch"].append(timed(theirs))
        row = {"model": "hcgnet_a1", "batch": 64, "dtype": str(dtype).split(".")[1], "channels_last": True,
               **{f"{k}_step_ms": 1e3 * statistics.median(v) for k, v in t.items()},
               "ratio": statistics.median(a / b for a, b in zip(t["hcgnet"], t["torch"]))}
        rows.append(row)
        print(f"A1 training step, batch 64, {row['dtype']}, channels_last: hcgnet norms {row['hcgnet_step_ms']:.0f} ms, "
              f"torch's {row['torch_step_ms']:.0f} ms, ratio {row['ratio']:.2f}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=10, help="timed passes per round and case (training steps: a third)")
    p.add_argument("--no-step", action="store_true", help="time the norms alone, not the A1 training step")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "batch_norm")
    result = {"machine": machine_description(), "threads": torch.get_num_threads(),
              "norms": norm_rows(args.rounds, args.steps)}
    if not args.no_step:
        result["a1_step"] = step_rows(args.rounds, max(1, args.steps // 3))
    if json_path:
        write_json(json_path, result)


if __name__ == "__main__":
    with script_errors("batch_norm"):  # a mistake in what was asked: one line, exit code 2
        main()
