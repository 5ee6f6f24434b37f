"""int8 inference against fp32 on the CPU: HCGNet-A1 at batch 256 on 32x32 images, HCGNet-B at batch 1 on 224x224.

    python benchmarks/int8.py --json benchmarks/results/int8.json  # --force to replace

For each model, the runs compared (same weights, same input):

* ``fp32 eager``: the float model, as ``hcgnet eval`` runs it;
* ``fp32 compiled``: the float model compiled by Inductor (what int8 pt2e gains from compilation alone);
* ``int8 pt2e``: torchao's PT2E program compiled by Inductor into oneDNN int8 kernels (``hcgnet eval --int8``);
* ``int8 pt2e uncompiled``: the same program uncompiled (``--no-int8-compile``): int8 rounding, float arithmetic;
* ``fp32 onnxruntime`` and ``int8 onnxruntime``: the float ONNX export and its QDQ quantization
  (``hcgnet export --int8``), in ONNX Runtime.

Seconds per batch are medians of ``--rounds`` interleaved rounds (each round times every run once, so a load
that comes and goes hits them alike), after one untimed warm-up call each; ``--threads`` intra-op threads for
torch and ONNX Runtime alike. The one-off costs (quantization with calibration, compilation, ONNX export and
quantization) are recorded too. Weights are random, with batch-norm statistics from a few training-mode passes
(realistic activations); calibration is one batch of random images: this measures speed only (accuracy:
BENCHMARKS.md, from ``hcgnet eval --int8`` on a trained checkpoint).
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import hcgnet
from hcgnet.bench import machine_description
from hcgnet.errors import HCGNetError, script_errors
from hcgnet.export import export_model
from hcgnet.files import script_output_file, write_json
from hcgnet.quantize import OnnxRuntimeModel, compile_int8, quantize_onnx, quantize_pt2e

CASES = (("hcgnet_a1", 256, 32), ("hcgnet_b", 1, 224))


def _model(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = hcgnet.create_model(name).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
    return model.eval()


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_case(name: str, batch: int, size: int, rounds: int, workdir: Path) -> dict:
    model = _model(name, size)
    x = torch.randn(batch, 3, size, size)
    calibration = [torch.randn(max(batch, 8), 3, size, size)]
    setup, runs = {}, {}
    with torch.no_grad():
        runs["fp32 eager"] = model
        fp32_compiled = torch.compile(model, dynamic=False)
        _, setup["fp32 compile, first call (s)"] = _timed(lambda: fp32_compiled(x))
        runs["fp32 compiled"] = fp32_compiled
        reference, setup["pt2e quantize (s)"] = _timed(lambda: quantize_pt2e(model, calibration, compile=False))
        compiled = compile_int8(reference, batch)
        _, setup["pt2e compile, first call (s)"] = _timed(lambda: compiled(x))
        runs["int8 pt2e"] = compiled
        runs["int8 pt2e uncompiled"] = reference
        fp32_onnx = workdir / f"{name}.onnx"
        _, setup["onnx export (s)"] = _timed(lambda: export_model(model, str(fp32_onnx), "onnx", (3, size, size)))
        int8_onnx = workdir / f"{name}-int8.onnx"
        _, setup["onnx export + quantize (s)"] = _timed(
            lambda: quantize_onnx(model, calibration, str(int8_onnx), (3, size, size)))
        runs["fp32 onnxruntime"] = OnnxRuntimeModel(str(fp32_onnx), model.num_classes)
        runs["int8 onnxruntime"] = OnnxRuntimeModel(str(int8_onnx), model.num_classes)
        expected = model(x)
        agreement, max_diff = {}, {}
        for label, run in runs.items():
            out = run(x)  # the untimed warm-up call
            agreement[label] = float((out.argmax(1) == expected.argmax(1)).float().mean())
            max_diff[label] = float((out - expected).abs().max())
        times = {label: [] for label in runs}
        for _ in range(rounds):
            for label, run in runs.items():
                times[label].append(_timed(lambda: run(x))[1])
    medians = {label: statistics.median(t) for label, t in times.items()}
    return {
        "model": name, "batch": batch, "size": size, "rounds": rounds, "setup_s": setup,
        "median_s": medians, "images_per_s": {label: batch / s for label, s in medians.items()},
        "speedup_vs_fp32_eager": {label: medians["fp32 eager"] / s for label, s in medians.items()},
        "top1_agreement_with_fp32": agreement, "max_logit_diff": max_diff,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--models", default=",".join(c[0] for c in CASES), help="comma-separated subset of the cases")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "int8")
    torch.set_num_threads(args.threads)
    wanted = args.models.split(",")
    unknown = [name for name in wanted if name not in {case[0] for case in CASES}]
    if unknown:
        raise HCGNetError(f"--models: no case {unknown[0]!r}; choose from {', '.join(case[0] for case in CASES)}")
    import onnxruntime
    import torchao

    result = {"machine": machine_description(),
              "versions": {"torch": torch.__version__, "torchao": torchao.__version__,
                           "onnxruntime": onnxruntime.__version__},
              "date": time.strftime("%Y-%m-%d"), "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, batch, size in CASES:
            if name not in wanted:
                continue
            case = bench_case(name, batch, size, args.rounds, Path(tmp))
            result["cases"].append(case)
            print(json.dumps(case, indent=1), flush=True)
    if json_path:
        write_json(json_path, result, indent=1)


if __name__ == "__main__":
    with script_errors("int8"):  # a mistake in what was asked: one line, exit code 2
        main()
