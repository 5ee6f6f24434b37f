"""Peak memory and step time of a training step, plain vs ``memory_efficient=True``.

Memory: each mode in a fresh process (on a CPU the allocator keeps what a process freed, so only a
process's first configuration has an exact figure), measured twice: with glibc's default allocator
settings (the resident set then also holds heap fragmentation), and with its mmap threshold fixed at
64 KiB, so that every tensor is mapped on allocation and unmapped when freed and the resident set follows
the live tensors (what ``torch.cuda.max_memory_allocated`` reports on a GPU). Time: both modes again in
one process, one after the other, with the default allocator (timings drift between processes).

    python benchmarks/memory_efficient.py --model hcgnet_a2 --batch-size 64 --steps 5
"""
import argparse
import os

from hcgnet.bench import benchmark
from hcgnet.errors import script_errors
from hcgnet.files import script_output_file, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hcgnet_a2", help="a variant or spec (default hcgnet_a2)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--size", type=int, default=32, help="square input side (default 32)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "memory_efficient")
    settings = dict(modes=("train",), memory_efficient=(False, True), batch=args.batch_size,
                    size=(args.size, args.size), steps=args.steps, warmup=args.warmup)
    resident = benchmark(args.model, isolate=True, as_trained=False, **settings)
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)  # read by glibc when each spawned process starts
    try:
        live = benchmark(args.model, isolate=True, as_trained=False, **settings)
    finally:
        del os.environ["MALLOC_MMAP_THRESHOLD_"]
    timing = benchmark(args.model, **settings)
    for mode, r, m, t in zip(("plain", "memory-efficient"), resident, live, timing):
        print(f"{mode:17s} peak added: resident {r['peak_memory_added_mb']:6.0f} MB, live tensors "
              f"{m['peak_memory_added_mb']:6.0f} MB   step {t['median_s']:.2f} s ({t['images_per_s']:.1f} images/s)")
    ratios = {name: rows[1]["peak_memory_added_mb"] / rows[0]["peak_memory_added_mb"]
              for name, rows in (("resident", resident), ("live", live))}
    ratio_time = timing[1]["median_s"] / timing[0]["median_s"]
    print(f"memory ratio {ratios['live']:.2f} (live tensors), {ratios['resident']:.2f} (resident set); "
          f"time ratio {ratio_time:.2f}")
    if json_path:
        write_json(json_path, {
            "args": vars(args), "resident": resident, "live": live, "timing": timing,
            "memory_ratio_live": ratios["live"], "memory_ratio_resident": ratios["resident"],
            "time_ratio": ratio_time})


if __name__ == "__main__":
    with script_errors("memory_efficient"):  # a mistake in what was asked: one line, exit code 2
        main()
