"""Training images/s with the data loader in the loop, against the model alone on tensors already in memory.

If the two are close, the loader is not the bottleneck. Both are measured in one process, one after the
other (this machine's timings are noisy), as medians over steps after a warm-up.

    python benchmarks/train_throughput.py --model hcgnet_a1 --data fashion-mnist --batch-size 128 \
        --amp bf16 --channels-last --steps 20 --json out.json
"""
import argparse
import platform
import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

import hcgnet
from hcgnet.bench import model_defaults
from hcgnet.data import build_data
from hcgnet.errors import script_errors
from hcgnet.evaluation import autocast
from hcgnet.files import script_output_file, write_json


def timed_steps(model, batches, optimizer, amp_dtype, channels_last, warmup):
    times = []
    loss_fn = nn.CrossEntropyLoss()
    it = iter(batches)
    for i, (x, y) in enumerate(it):
        start = time.perf_counter()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(torch.device("cpu"), amp_dtype):
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hcgnet_a1", help="a variant or spec (default hcgnet_a1)")
    p.add_argument("--data", default="fashion-mnist",
                   help="a dataset as hcgnet train --data takes it (default fashion-mnist)")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    p.add_argument("--workers", type=int, default=1, help="data loading processes (default 1)")
    p.add_argument("--amp", choices=("none", "bf16"), default="bf16", help="autocast dtype (default bf16)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="model and images in channels_last (default on)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them (default 3)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "train_throughput")

    model_defaults(args.model)  # an unknown network is refused before the data loads
    data = build_data(args.data, val_size=0, download=False)
    torch.manual_seed(0)
    model = hcgnet.create_model(args.model, num_classes=data.num_classes, in_chans=data.config.input_size[0])
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else None
    n = args.steps + args.warmup

    loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        drop_last=True)
    batches = [next(iter(loader))] * n  # the model alone: the same batch, already decoded and in memory

    def limited(loader):
        for i, b in enumerate(loader):
            if i >= n:
                return
            yield b

    results = {}
    # Loader first, then the model alone, then the loader again: a drift of the machine shows up as a
    # difference between the two loader runs.
    for name, source in (("with_loader", lambda: limited(loader)), ("model_only", lambda: batches),
                         ("with_loader_again", lambda: limited(loader))):
        times = timed_steps(model, source(), optimizer, amp_dtype, args.channels_last, args.warmup)
        results[name] = {"images_per_s": args.batch_size / statistics.median(times),
                         "spread_s": [min(times), max(times)]}
        print(f"{name:18s} {results[name]['images_per_s']:7.1f} images/s (median of {len(times)} steps)", flush=True)
    loader_speed = statistics.mean([results["with_loader"]["images_per_s"], results["with_loader_again"]["images_per_s"]])
    ratio = loader_speed / results["model_only"]["images_per_s"]
    print(f"with loader / model alone: {ratio:.3f}")
    record = {"args": vars(args), "results": results, "ratio": ratio, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if json_path:
        write_json(json_path, record)


if __name__ == "__main__":
    with script_errors("train_throughput"):  # a mistake in what was asked: one line, exit code 2
        main()
