"""Peak memory and step time of a training step, plain vs ``memory_efficient=True``.

Each mode runs in its own process (peak RSS only grows within a process), one after the other:

    python benchmarks/memory_efficient.py --model hcgnet_a2 --batch-size 64 --steps 5
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def child(model_name: str, batch: int, size: int, steps: int, memory_efficient: bool) -> dict:
    import torch

    import hcgnet

    torch.manual_seed(0)
    model = hcgnet.create_model(model_name, memory_efficient=memory_efficient).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"memory_efficient": memory_efficient, "peak_rss_mb": peak / 1024, "before_step_rss_mb": base / 1024,
            "step_s_median": statistics.median(times[1:]), "images_per_s": batch / statistics.median(times[1:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hcgnet_a2")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--json", default=None)
    p.add_argument("--child", choices=("plain", "lean"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.batch_size, args.size, args.steps, args.child == "lean")))
        return
    rows = []
    for mode in ("plain", "lean"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--model", args.model, "--batch-size",
                              str(args.batch_size), "--size", str(args.size), "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{mode:6s} peak RSS {r['peak_rss_mb']:8.0f} MB   step {r['step_s_median']:.2f} s   "
              f"{r['images_per_s']:.1f} images/s", flush=True)
    print(f"memory ratio {rows[1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}, "
          f"time ratio {rows[1]['step_s_median'] / rows[0]['step_s_median']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
