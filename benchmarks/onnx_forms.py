"""Forms of a layer in an ONNX export, each timed by ONNX Runtime fp32 and by OpenVINO at fp32 and bf16 (--part):

- ``attention-pool``: hcgnet's attention pooling (``position_scores`` and ``weighted_sum`` of
  ``hcgnet.layers.attention_pool`` while exporting: a 1x1 convolution scores the map as it is, a batched
  matrix-vector product pools it) against the matrix products the export held before 2026-12-05 (the map
  reshaped to (B, C, H*W) for the scores too) and two unreshaped forms (the scores as hcgnet's, the pooling as a sum
  over H and W, or as a mean times H*W, so that the map is never reshaped);
- ``update-gate``: hcgnet's update gate (a head per branch, a softmax across the two) against one head whose
  logistic gives the same proportions (``sigmoid(s_a - s_b)``; tried 2026-12-06, not adopted).

    python benchmarks/onnx_forms.py --model hcgnet_b --rounds 9 --json benchmarks/results/onnx_pool_form_b.json
    python benchmarks/onnx_forms.py --model hcgnet_a1 --batch 256 --steps 3 --warmup 1 --rounds 5 \
        --json benchmarks/results/onnx_pool_form_a1.json
    python benchmarks/onnx_forms.py --part update-gate --model hcgnet_b --rounds 9 \
        --json benchmarks/results/onnx_update_gate_b.json

Random weights (seed 0), one export per form (each checked against the eager model by ``export_model``); every
round times --steps calls of each export in each runtime after --warmup untimed ones, in turn. A figure is the
median of the per-round means; a ratio (a form over the part's baseline, below 1 is faster) the median of the
per-round ratios of the same runtime, with a 95% bootstrap interval of that median (2000 resamples of the rounds,
seed 0): "faster" or "slower" when the interval is on one side of 1, "undecided" when it straddles it.
"""
import argparse
import contextlib
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hcgnet import create_model
from hcgnet.bench import machine_description, model_defaults
from hcgnet.errors import script_errors
from hcgnet.export import OpenVINOModel, export_model
from hcgnet.files import script_output_file, write_json
from hcgnet.layers import UpdateGate, attention_pool
from hcgnet.quantize import OnnxRuntimeModel

def matrix_product_scores(x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """The scores with the map reshaped to (B, C, H*W) for a matrix product: the export's form until 2026-12-05."""
    b, c, h, w = x.shape
    return torch.matmul(weight.reshape(1, c), x.reshape(b, c, h * w)).reshape(b, h * w) + bias


def summed_pooling(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The pooling as a sum over H and W, so that the map is never reshaped (with hcgnet's scores)."""
    return (x * weights).sum((2, 3))


def averaged_pooling(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The pooling as a mean over H and W times H*W (which OpenVINO may run as a global average pooling)."""
    return (x * weights).mean((2, 3)) * (x.shape[2] * x.shape[3])


def logistic_update_gate(self, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """``UpdateGate.forward`` with the branch proportions as the logistic of the scores' difference: a softmax over
    two is ``sigmoid(s_a - s_b)``, which one head computes, ``(W_a - W_b) h + (b_a - b_b)`` (the export folds
    the weights' difference), and ``v = z_b + u_a (z_a - z_b)``."""
    z_a, z_b = self.context_a(x_a), self.context_b(x_b)
    h = self.bottleneck(torch.stack((z_a, z_b), dim=1).flatten(1))
    u_a = torch.sigmoid(F.linear(h, self.expand_a.weight - self.expand_b.weight,
                                 self.expand_a.bias - self.expand_b.bias))
    return (z_b + u_a * (z_a - z_b))[:, :, None, None]


# part -> (the earlier form every other is compared with, {form: [(owner, attribute, replacement while exporting)]})
PARTS = {
    "attention-pool": ("matrix products", {
        "hcgnet": [],
        "matrix products": [(attention_pool, "position_scores", matrix_product_scores)],
        "unreshaped": [(attention_pool, "weighted_sum", summed_pooling)],
        "unreshaped mean": [(attention_pool, "weighted_sum", averaged_pooling)]}),
    "update-gate": ("hcgnet", {
        "hcgnet": [],
        "one head": [(UpdateGate, "forward", logistic_update_gate)]}),
}


@contextlib.contextmanager
def exported_as(replacements):
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in replacements]
    for owner, name, replacement in replacements:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def bootstrap_median_interval(values, resamples: int = 2000, seed: int = 0):
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=PARTS, default="attention-pool", help="the layer whose export forms are timed")
    p.add_argument("--model", default="hcgnet_b", help="a variant (its own input size and classes)")
    p.add_argument("--batch", type=int, default=1, help="images per call")
    p.add_argument("--steps", type=int, default=20, help="timed calls per configuration and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before each timed run")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    json_path = script_output_file(args.json, args.force, "onnx_forms")
    size, num_classes = model_defaults(args.model)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=num_classes).eval()
    x = torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    baseline, forms = PARTS[args.part]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (form, replacements) in enumerate(forms.items()):
            with exported_as(replacements):
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
    result = {"part": args.part, "baseline": baseline, "model": args.model, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
              "rounds": args.rounds, "machine": machine_description(), "runtimes": {}}
    for rt in runtimes:
        result["runtimes"][rt] = {
            "median_ms": {form: statistics.median(times[(rt, form)]) * 1e3 for form in forms},
            "seconds": {form: times[(rt, form)] for form in forms},
            "largest_difference_to_eager_fp32_of_scale": {form: agreement[(rt, form)] for form in forms},
            "over_baseline": {}}
        for form in (f for f in forms if f != baseline):
            ratios = [a / b for a, b in zip(times[(rt, form)], times[(rt, baseline)])]
            low, high = bootstrap_median_interval(ratios)
            verdict = "faster" if high < 1 else "slower" if low > 1 else "undecided"
            result["runtimes"][rt]["over_baseline"][form] = {
                "median": statistics.median(ratios), "interval_95": [low, high], "min": min(ratios), "max": max(ratios),
                "faster_rounds": sum(q < 1 for q in ratios), "verdict": verdict}
            ms = result["runtimes"][rt]["median_ms"]
            print(f"{rt}: {form} {ms[form]:.1f} ms, {baseline} {ms[baseline]:.1f} ms; ratio "
                  f"{statistics.median(ratios):.3f} (95% {low:.3f}-{high:.3f}), faster in {sum(q < 1 for q in ratios)} "
                  f"of {args.rounds} rounds: {verdict}")
    if json_path:
        write_json(json_path, result)


if __name__ == "__main__":
    with script_errors("onnx_forms"):  # a mistake in what was asked: one line, exit code 2
        main()
