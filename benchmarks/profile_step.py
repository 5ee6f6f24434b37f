"""Where a training step (or an inference batch) of HCGNet spends its time: torch.profiler, per operator and
per part of the network.

    python benchmarks/profile_step.py --model hcgnet_a1 --batch 64 --mode train \\
        --json benchmarks/results/profile_a1_train.json  # --force to replace
    python benchmarks/profile_step.py --model hcgnet_a1 --batch 256 --mode infer --channels-last
    python benchmarks/profile_step.py --model hcgnet_a1 --batch 256 --mode infer --channels-last --dtype bf16 --compile
    python benchmarks/profile_step.py --model hcgnet_a1 --batch 256 --mode infer --int8

Per operator: self CPU time of each ATen operator over the profiled steps (the backward pass's kernels are
operators too). Per part: the forward pass's time inside each kind of leaf module (the SMG's squeeze and
excitation cells, split into BatchNorm, ReLU and convolution; the gates; the transitions), the
concatenations (``aten::cat``) and the rest, from ``record_function`` ranges opened by module hooks.

``--compile`` (inference: ``hcgnet eval --compile``, weights frozen) and ``--int8`` (``hcgnet eval --int8``:
torchao PT2E, compiled, calibrated here on random batches) profile the compiled program instead: its
oneDNN calls are operators, and Inductor's own kernels appear by name (``cpp_fused_`` and the operations
fused into each), summed on a line of their own. No per-part table there: module hooks do not run inside a
compiled graph.
"""
import argparse
import re
import time
from collections import defaultdict

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from hcgnet.bench import machine_description, model_defaults
from hcgnet.compiled import compile_frozen
from hcgnet.errors import script_errors
from hcgnet.files import script_output_file, write_json
from hcgnet.models import create_model

PREFIX = "part:"


def part_name(name: str) -> str:
    """A leaf module's kind: its path with the stage and layer indices dropped, blocks and transitions apart."""
    name = re.sub(r"^stages\.\d+\.", "", name)
    name = re.sub(r"^block\.layers\.\d+\.", "block.", name)
    return name


def add_ranges(model: nn.Module) -> None:
    """A ``record_function`` range around every leaf module's forward, named by its kind."""
    for name, module in model.named_modules():
        if list(module.children()):
            continue
        label = PREFIX + part_name(name)

        def enter(mod, args, label=label):
            mod._range = record_function(label)
            mod._range.__enter__()

        def leave(mod, args, output):
            mod._range.__exit__(None, None, None)

        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)


def compiled_runner(model: nn.Module, x: torch.Tensor, int8: bool):
    """The model compiled as ``hcgnet eval --compile`` or ``--int8`` compiles it (for ``x``'s batch size), its
    Inductor kernels profiled under their own names. The compilation happens in the warm-up steps."""
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True
    model.eval()
    if not int8:
        return compile_frozen(model, len(x))
    from hcgnet.quantize import quantize_pt2e

    g = torch.Generator().manual_seed(1)
    calibration = [torch.randn(x.shape, generator=g) for _ in range(2)]
    return quantize_pt2e(model, calibration, compile=True, batch=len(x))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hcgnet_a1", help="a variant or spec (default: %(default)s)")
    p.add_argument("--batch", type=int, default=64, help="images per step (default: %(default)s)")
    p.add_argument("--size", type=int, default=None, help="input side (default: the model's)")
    p.add_argument("--mode", choices=("train", "infer"), default="train",
                   help="a training step (forward, backward, SGD) or a forward pass without gradients")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: under CPU autocast")
    p.add_argument("--channels-last", action="store_true", help="model and input in channels_last")
    p.add_argument("--compile", action="store_true",
                   help="inference compiled with frozen weights (hcgnet eval --compile)")
    p.add_argument("--int8", action="store_true", help="inference through the PT2E int8 program (hcgnet eval --int8)")
    p.add_argument("--steps", type=int, default=3, help="profiled steps, after 2 warm-up steps")
    p.add_argument("--top", type=int, default=15, help="operators to list")
    p.add_argument("--json", default=None, help="write the tables here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    compiled = args.compile or args.int8
    if compiled and args.mode != "infer":
        p.error("--compile and --int8 profile inference: add --mode infer")
    if args.int8 and args.dtype != "fp32":
        p.error("--int8 computes in int8 with float32 around it: drop --dtype")
    json_path = script_output_file(args.json, args.force, "profile_step")

    (height, width), num_classes = model_defaults(args.model)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=num_classes)
    x = torch.randn(args.batch, 3, *((args.size, args.size) if args.size else (height, width)))
    y = torch.randint(0, num_classes, (args.batch,))
    if args.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    model.train(args.mode == "train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    runner = compiled_runner(model, x, args.int8) if compiled else model

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            if args.mode == "infer":
                with torch.no_grad():
                    return runner(x)
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    plain = (time.perf_counter() - start) / args.steps
    if not compiled:
        add_ranges(model)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            with record_function(PREFIX + "step"):
                step()
    events = prof.key_averages()
    total = next(e.cpu_time_total for e in events if e.key == PREFIX + "step")
    ops = sorted((e for e in events if not e.key.startswith(PREFIX) and e.self_cpu_time_total > 0),
                 key=lambda e: -e.self_cpu_time_total)
    op_rows = [{"op": e.key, "calls": e.count // args.steps, "self_ms": e.self_cpu_time_total / 1e3 / args.steps,
                "share": e.self_cpu_time_total / total} for e in ops]
    parts = defaultdict(float)
    for e in events:
        if e.key.startswith(PREFIX) and e.key != PREFIX + "step":
            kind = e.key[len(PREFIX):]
            # group a cell's BN / ReLU / convolution across cells; the gates as a whole
            gate = re.match(r"(block|transition)\.(update_gate|forget_gate)", kind)
            parts[gate.group(0) if gate else kind] += e.cpu_time_total
    if not compiled:
        parts["concatenation (aten::cat)"] = next((e.cpu_time_total for e in events if e.key == "aten::cat"), 0.0)
    forward = sum(parts.values())
    part_rows = sorted(({"part": k, "forward_ms": v / 1e3 / args.steps, "share_of_step": v / total}
                        for k, v in parts.items()), key=lambda r: -r["forward_ms"])
    step_ms = total / 1e3 / args.steps
    fused = [r for r in op_rows if "cpp_fused_" in r["op"]]
    path = "int8 (PT2E, compiled)" if args.int8 else args.dtype + (" compiled (frozen)" if args.compile else "")
    print(f"{args.model} {args.mode}, batch {args.batch}, {x.shape[2]}x{x.shape[3]}, {path}"
          f"{' channels_last' if args.channels_last else ''}: {1000 * plain:.0f} ms per step unprofiled, "
          f"{step_ms:.0f} ms profiled"
          + ("" if compiled else f"; forward inside modules {forward / total:.0%} of the step"))
    print(f"\n{'operator':58s} {'calls':>6s} {'ms/step':>9s} {'share':>6s}")
    for r in op_rows[:args.top]:
        print(f"{r['op'][:58]:58s} {r['calls']:6d} {r['self_ms']:9.1f} {r['share']:6.1%}")
    if fused:
        label = f"all of Inductor's fused kernels ({len(fused)})"
        print(f"{label:58s} {'':6s} {sum(r['self_ms'] for r in fused):9.1f} {sum(r['share'] for r in fused):6.1%}")
    if not compiled:
        print(f"\n{'forward, by part':58s} {'ms/step':>9s} {'share':>6s}")
        for r in part_rows[:25]:
            print(f"{r['part'][:58]:58s} {r['forward_ms']:9.1f} {r['share_of_step']:6.1%}")
    if json_path:
        write_json(json_path, {
            "model": args.model, "mode": args.mode, "batch": args.batch, "size": list(x.shape[2:]),
            "dtype": args.dtype, "channels_last": args.channels_last, "compile": args.compile, "int8": args.int8,
            "step_ms_unprofiled": 1000 * plain, "step_ms_profiled": step_ms,
            "machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "operators": op_rows,
            "parts": part_rows})


if __name__ == "__main__":
    with script_errors("profile_step"):  # a mistake in what was asked: one line, exit code 2
        main()
