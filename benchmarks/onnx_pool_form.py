"""The attention pooling's form in an ONNX export: hcgnet's (``position_scores`` and ``weighted_sum`` of
``hcgnet.layers.attention_pool`` while exporting: a 1x1 convolution scores the map as it is, a batched
matrix-vector product pools it) against the matrix products the export held before
(the map reshaped to (B, C, H*W) for the scores too) and an unreshaped form (the scores as hcgnet's, the pooling as a
sum over H and W, so that the map is never reshaped), each run by ONNX Runtime fp32 and by OpenVINO at fp32 and bf16.

    python benchmarks/onnx_pool_form.py --model hcgnet_b --rounds 9 --json benchmarks/results/onnx_pool_form_b.json
    python benchmarks/onnx_pool_form.py --model hcgnet_a1 --batch 256 --steps 3 --warmup 1 --rounds 5 \
        --json benchmarks/results/onnx_pool_form_a1.json

Random weights (seed 0), one export per form (each checked against the eager model by ``export_model``); every
round times --steps calls of each of the nine after --warmup untimed ones, in turn. A figure is the median of the
per-round means; a ratio (a form over the matrix products, below 1 is faster) the median of the per-round ratios of
the same runtime, with a 95% bootstrap interval of that median (2000 resamples of the rounds, seed 0): "faster"
or "slower" when the interval is on one side of 1, "undecided" when it straddles it.
"""
import argparse
import contextlib
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hcgnet import create_model
from hcgnet.bench import machine_description, model_defaults
from hcgnet.errors import script_errors
from hcgnet.export import OpenVINOModel, export_model
from hcgnet.files import script_output_file, write_json
from hcgnet.layers import attention_pool
from hcgnet.quantize import OnnxRuntimeModel

FORMS = ("hcgnet", "matrix products", "unreshaped")


def matrix_product_scores(x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """The scores with the map reshaped to (B, C, H*W) for a matrix product: the export's form until 2026-12-05."""
    b, c, h, w = x.shape
    return torch.matmul(weight.reshape(1, c), x.reshape(b, c, h * w)).reshape(b, h * w) + bias


def summed_pooling(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The pooling as a sum over H and W, so that the map is never reshaped (with hcgnet's scores)."""
    return (x * weights).sum((2, 3))


# form -> the functions of hcgnet.layers.attention_pool it replaces while exporting
ALTERNATIVES = {"hcgnet": {}, "matrix products": {"position_scores": matrix_product_scores},
                "unreshaped": {"weighted_sum": summed_pooling}}


@contextlib.contextmanager
def exported_as(form: str):
    originals = {name: getattr(attention_pool, name) for name in ALTERNATIVES[form]}
    for name, function in ALTERNATIVES[form].items():
        setattr(attention_pool, name, function)
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(attention_pool, name, function)


def bootstrap_median_interval(values, resamples: int = 2000, seed: int = 0):
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hcgnet_b", help="a variant (its own input size and classes)")
    p.add_argument("--batch", type=int, default=1, help="images per call")
    p.add_argument("--steps", type=int, default=20, help="timed calls per configuration and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before each timed run")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "onnx_pool_form")
    size, num_classes = model_defaults(args.model)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=num_classes).eval()
    x = torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, form in enumerate(FORMS):
            with exported_as(form):
                path = export_model(model, str(Path(tmp) / f"form{i}.onnx"), "onnx", (3, *size))
            runs[("onnxruntime fp32", form)] = OnnxRuntimeModel(path, num_classes)
            for dtype in ("fp32", "bf16"):
                runs[(f"openvino {dtype}", form)] = OpenVINOModel(path, dtype)
        scale = expected.abs().max().item()
        agreement = {k: (run(x) - expected).abs().max().item() / scale for k, run in runs.items()}
        times = {k: [] for k in runs}
        for r in range(args.rounds):
            for k, run in runs.items():
                for _ in range(args.warmup):
                    run(x)
                start = time.perf_counter()
                for _ in range(args.steps):
                    run(x)
                times[k].append((time.perf_counter() - start) / args.steps)
            print(f"round {r + 1}: " + ", ".join(f"{rt} {form} {v[-1] * 1e3:.1f} ms" for (rt, form), v in times.items()),
                  flush=True)
    runtimes = list(dict.fromkeys(rt for rt, _ in runs))
    result = {"model": args.model, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
              "rounds": args.rounds, "machine": machine_description(), "runtimes": {}}
    for rt in runtimes:
        result["runtimes"][rt] = {
            "median_ms": {form: statistics.median(times[(rt, form)]) * 1e3 for form in FORMS},
            "seconds": {form: times[(rt, form)] for form in FORMS},
            "largest_difference_to_eager_fp32_of_scale": {form: agreement[(rt, form)] for form in FORMS},
            "over_matrix_products": {}}
        for form in (FORMS[0], FORMS[2]):  # each over the matrix products
            ratios = [a / b for a, b in zip(times[(rt, form)], times[(rt, FORMS[1])])]
            low, high = bootstrap_median_interval(ratios)
            verdict = "faster" if high < 1 else "slower" if low > 1 else "undecided"
            result["runtimes"][rt]["over_matrix_products"][form] = {
                "median": statistics.median(ratios), "interval_95": [low, high], "min": min(ratios), "max": max(ratios),
                "faster_rounds": sum(q < 1 for q in ratios), "verdict": verdict}
            ms = result["runtimes"][rt]["median_ms"]
            print(f"{rt}: {form} {ms[form]:.1f} ms, matrix products {ms[FORMS[1]]:.1f} ms; ratio "
                  f"{statistics.median(ratios):.3f} (95% {low:.3f}-{high:.3f}), faster in {sum(q < 1 for q in ratios)} "
                  f"of {args.rounds} rounds: {verdict}")
    if json_path:
        write_json(json_path, result)


if __name__ == "__main__":
    with script_errors("onnx_pool_form"):  # a mistake in what was asked: one line, exit code 2
        main()
