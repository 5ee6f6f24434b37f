"""Operators dispatched per step, hcgnet against the published code: what an eager step costs where the host
launches kernels one by one (a GPU at HCGNet's sizes, BENCHMARKS.md "The first GPU run").

    python benchmarks/dispatch_count.py --published ~/HCGNet-published \\
        --json benchmarks/results/dispatch_count.json  # --force to replace

Each model (the published code's own class and hcgnet's twin with its weights, hcgnet.published) runs one
training step (forward and backward of the logits' sum) and one inference on a batch of 2, fp32, NCHW, one
thread, under a TorchDispatchMode that counts every ATen operator call. "kernels" leaves out the operators that
only make views or allocate (they launch no kernel on a GPU, but each costs the host a dispatch). Counts, not
times: they do not depend on the machine.
"""
import argparse
import collections
from typing import Counter, Dict

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hcgnet.bench import model_defaults
from hcgnet.errors import script_errors
from hcgnet.files import script_output_file, write_json
from hcgnet.published import hcgnet_twin, published_model

# Operators that make a view or an uninitialised tensor: no kernel runs.
NO_KERNEL = {"view", "t", "unsqueeze", "squeeze", "expand", "expand_as", "select", "slice", "reshape", "permute",
             "transpose", "as_strided", "_unsafe_view", "_reshape_alias", "detach", "alias", "split",
             "split_with_sizes", "unbind", "narrow", "lift_fresh", "empty", "empty_like", "empty_strided",
             "new_empty", "new_empty_strided"}


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count(model: nn.Module, x: torch.Tensor, train: bool) -> Counter[str]:
    model.train(train)
    with _Count() as counter:
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return counter.ops


def summary(ops: Counter[str]) -> Dict[str, int]:
    return {"operators": sum(ops.values()), "kernels": sum(n for op, n in ops.items() if op not in NO_KERNEL)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--published", required=True, help="a clone of github.com/winycg/HCGNet")
    p.add_argument("--models", default="hcgnet_a1,hcgnet_b", help="comma-separated variants the clone has")
    p.add_argument("--side", type=int, default=None, help="input side (default: the model's; B at 64 is as good)")
    p.add_argument("--json", default=None, help="write the counts here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "dispatch_count")
    torch.set_num_threads(1)
    results = []
    for name in args.models.split(","):
        (height, width), num_classes = model_defaults(name)
        side = args.side or min(height, 64)  # counts do not depend on the size; B at 224 only takes longer
        published = published_model(args.published, name, num_classes)
        ours = hcgnet_twin(published, name, num_classes)
        x = torch.randn(2, 3, side, side)
        for mode in ("infer", "train"):
            a, b = count(published, x, mode == "train"), count(ours, x, mode == "train")
            differ = {op: [a.get(op, 0), b.get(op, 0)] for op in sorted(set(a) | set(b))
                      if a.get(op, 0) != b.get(op, 0)}
            row = {"model": name, "mode": mode, "side": side, "published": summary(a), "hcgnet": summary(b),
                   "differing_operators": differ}
            results.append(row)
            print(f"{name:10s} {mode:5s}  operators: published {row['published']['operators']:5d}, hcgnet "
                  f"{row['hcgnet']['operators']:5d}   kernels: published {row['published']['kernels']:5d}, "
                  f"hcgnet {row['hcgnet']['kernels']:5d}")
            for op, (n_pub, n_ours) in sorted(differ.items(), key=lambda kv: -abs(kv[1][1] - kv[1][0]))[:8]:
                print(f"    {op:24s} published {n_pub:5d}  hcgnet {n_ours:5d}")
    if json_path:
        write_json(json_path, {"torch": torch.__version__, "rows": results}, indent=1)
        print(f"wrote {json_path}")


if __name__ == "__main__":
    with script_errors("dispatch_count"):  # a mistake in what was asked: one line, exit code 2
        main()
