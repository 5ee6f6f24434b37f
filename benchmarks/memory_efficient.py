"""Peak memory and step time of a training step, plain vs ``memory_efficient=True``.

Memory: each mode in a fresh process (on a CPU the allocator keeps what a process freed, so only a
process's first configuration has an exact figure). Time: both modes again in one process, one after the
other (timings drift between processes on shared machines).

    python benchmarks/memory_efficient.py --model hcgnet_a2 --batch-size 64 --steps 5
"""
import argparse
import json

from hcgnet.bench import benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hcgnet_a2")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    settings = dict(modes=("train",), memory_efficient=(False, True), batch=args.batch_size,
                    size=(args.size, args.size), steps=args.steps, warmup=args.warmup)
    memory = benchmark(args.model, isolate=True, **settings)
    timing = benchmark(args.model, **settings)
    for mode, m, t in zip(("plain", "memory-efficient"), memory, timing):
        print(f"{mode:17s} peak memory added {m['peak_memory_added_mb']:7.0f} MB   step {t['median_s']:.2f} s "
              f"({t['images_per_s']:.1f} images/s)")
    ratio_memory = memory[1]["peak_memory_added_mb"] / memory[0]["peak_memory_added_mb"]
    ratio_time = timing[1]["median_s"] / timing[0]["median_s"]
    print(f"memory ratio {ratio_memory:.2f}, time ratio {ratio_time:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "memory": memory, "timing": timing, "memory_ratio": ratio_memory,
                       "time_ratio": ratio_time}, f, indent=2)


if __name__ == "__main__":
    main()
