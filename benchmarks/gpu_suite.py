"""The GPU checks of issue 17 in one prepared script, to run the moment a session is lent a GPU.

A lent GPU comes with 15 minutes of device time in all, so everything that needs one is here, in the order
that matters most, under one time budget (``--budget-s``, 420 s: meant to end within 8 minutes on an
H100/H200). Steps:

    cuda_paths        a few training steps of a tiny HCGNet through the trainer's step with fp16 + GradScaler,
                      bf16 autocast and channels_last, each against fp32 (finite losses, the first loss, the
                      statistics the BatchNorms take in the first step; eval logits) within TOLERANCES
    trainer           hcgnet.training's Run end to end on a generated image folder (fp16 amp), stopped by
                      SIGTERM after epoch 1 and resumed: the resumed weights against an uninterrupted run's
    inference         hcgnet eval (fp32 and --amp fp16) and predict (--device cuda:0, --workers 2) on the GPU
                      against the CPU: the loss, and every image's top class and probabilities
    torchrun          `torchrun -m hcgnet train`, one process per GPU (NCCL; 1 GPU: one process), and a
                      one-rank NCCL process group with DDP in this process
    timings           A1 training at batch 128, B training at batch 64, B inference at batch 256 and 1:
                      fp32, fp32 channels_last, bf16 and fp16 (channels_last), bf16 with cudnn.benchmark,
                      with torch.cuda.max_memory_allocated (hcgnet.bench.run_config); with --published, the
                      published implementation beside hcgnet with identical weights (bench.against_published)
    timings_compiled  the timing workloads compiled with CUDA graphs (bf16 channels_last, "reduce-overhead"),
                      compile time included; A1 training (the recipe estimate's) first
    compile_modes     torch.compile's "reduce-overhead" (CUDA graphs) on A1 inference at batch 1 and 256,
                      against eager; with --autotune also "max-autotune-no-cudagraphs" (minutes of autotuning)
    estimate          wall time of the CIFAR-10 A1 recipe (1270 epochs of 50,000 images at batch 128) from
                      the measured A1 training images/s, ours and (with --published) the published code's

A step that fails is recorded with its one-line error (the traceback is kept in the JSON) and the suite goes
on; a step that would start after the budget is spent is skipped with a note, and a compilation is not
started with less time left than it took on an H200 (COMPILE_SECONDS). The JSON (written after every row, so
a killed run keeps what it measured) holds the device, torch/CUDA/cuDNN versions, the date and every figure;
the exit code is 1 when a step failed.

    PYTHONPATH=src python benchmarks/gpu_suite.py                       # on the GPU machine
    PYTHONPATH=src python benchmarks/gpu_suite.py --published ../HCGNet # also the published implementation
    PYTHONPATH=src python benchmarks/gpu_suite.py --only timings_compiled --json more.json
    PYTHONPATH=src python benchmarks/gpu_suite.py --dry-run --json /tmp/dry.json   # CPU, toy sizes, < 1 min

An existing results file is replaced only with ``--force``; the dry run's default file is not the GPU's.

``--dry-run`` runs every step on the CPU at toy sizes (a tiny network, 16x16 images, batch 4, 2 steps): fp16
with torch.amp.GradScaler("cpu"), bf16 for the trainer's amp (hcgnet refuses fp16 on a CPU), gloo with two
processes under torchrun, torch.compile with the eager backend (inductor takes minutes on 2 cores); what has
no CPU counterpart (cudnn.benchmark, fp16 timings) is skipped with a note.
"""
import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# The hcgnet of this checkout, whatever is installed: the suite checks the code it ships with.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from hcgnet.bench import BenchConfig, run_config  # noqa: E402
from hcgnet.distributed import Dist  # noqa: E402
from hcgnet.errors import HCGNetError  # noqa: E402
from hcgnet.evaluation import AMP_DTYPES, autocast  # noqa: E402
from hcgnet.files import check_output_file, write_json  # noqa: E402
from hcgnet.models import create_model  # noqa: E402

DEFAULT_JSON = REPO / "benchmarks" / "results" / "gpu_suite.json"
DRY_RUN_JSON = REPO / "benchmarks" / "results" / "gpu_suite_dry_run.json"  # never the GPU figures' file
# No compilation starts with less time left than it is expected to take. Measured on an H200 (2026-12-04,
# benchmarks/results/gpu_suite.json and gpu_suite_compile_modes.log): A1 training compiled in 173 s, A1 inference
# with CUDA graphs in 53 s (batch 1) and 63 s (batch 256). B is not measured yet: guessed from its depth.
COMPILE_SECONDS = {"a1-train": 175.0, "a1-infer": 65.0, "b-train": 300.0, "b-infer": 120.0, "b-latency": 120.0}
COMPILE_RESERVE_S = 90.0  # anything else
CIFAR10_TRAIN_IMAGES = 50_000  # the published code trains on all of them; our recipe holds 5,000 out

# Each path against fp32 (run without TF32, so that channels_last differs from NCHW by summation order only):
# first_loss: |loss - fp32's| / fp32's; logits: the largest |difference| / the largest |fp32 logit| (the project's
# bf16 tolerance, tests/test_fast_paths.py); bn_stats: the batch mean and variance every BatchNorm takes in the
# first step, a mean's difference in its channel's standard deviations, a variance's relative to it. bf16 keeps
# 8 mantissa bits, fp16 11: the gates' BatchNorm1d normalise an FC output over the batch whose variance is a
# small difference of large terms, so bf16 moves it by ~10% (0.10-0.11 measured on the CPU), fp16 by ~1%.
TOLERANCES = {
    "channels_last": {"first_loss": 1e-4, "bn_stats": 1e-3, "logits": 1e-4},
    "fp16": {"first_loss": 2e-3, "bn_stats": 5e-2, "logits": 1e-2},
    "fp16 channels_last": {"first_loss": 2e-3, "bn_stats": 5e-2, "logits": 1e-2},
    "bf16": {"first_loss": 1e-2, "bn_stats": 0.25, "logits": 5e-2},
    "bf16 channels_last": {"first_loss": 1e-2, "bn_stats": 0.25, "logits": 5e-2},
}
RESUME_TOLERANCE_GPU = 1e-3  # cuDNN's kernels need not add in the same order twice; on the CPU: bit for bit


@dataclass(frozen=True)
class Scale:
    """How big everything is: the GPU run's sizes, or the dry run's toy ones."""

    tiny: str             # the network of cuda_paths, trainer and torchrun
    side: int             # its input side
    batch: int
    steps: int            # training steps of cuda_paths
    timed_steps: int
    warmup: int
    workloads: Dict[str, Tuple[str, str, int, int]]  # name: (model, mode, batch, side)
    compile_model: str    # compile_modes: inference of this network at these batch sizes
    compile_side: int
    compile_batches: Tuple[int, ...]


GPU = Scale("HCGNet-(2,2,2)-(k=8,16,24)", 32, 32, 5, 10, 3,
            {"a1-train": ("hcgnet_a1", "train", 128, 32), "b-train": ("hcgnet_b", "train", 64, 224),
             "b-infer": ("hcgnet_b", "infer", 256, 224), "b-latency": ("hcgnet_b", "latency", 1, 224)},
            "hcgnet_a1", 32, (1, 256))
_TOY = "HCGNet-(1,1,1)-(k=4,4,4)"
DRY = Scale(_TOY, 16, 4, 2, 2, 1,
            {"a1-train": (_TOY, "train", 4, 16), "b-train": (_TOY, "train", 4, 16),
             "b-infer": (_TOY, "infer", 4, 16), "b-latency": (_TOY, "latency", 1, 16)},
            _TOY, 16, (4,))
PUBLISHED_CLASSES = {"hcgnet_a1": "HCGNet_A1", "hcgnet_b": "HCGNet_B"}  # our name -> the published factory


class CheckFailed(Exception):
    """A step ran but a figure is outside its tolerance."""


class Skip(Exception):
    """The step cannot run here (no figures to build on); recorded as skipped with this note."""


# ------------------------------------------------------------------------------------------------ the suite


class Suite:
    """Runs the steps in order under the budget, records each, prints as it goes, keeps the JSON current."""

    def __init__(self, args: argparse.Namespace, device: torch.device, scale: Scale, json_path: Path) -> None:
        self.args, self.device, self.scale, self.json_path = args, device, scale, json_path
        self.dry = args.dry_run
        self.start = time.monotonic()
        self.report: Dict[str, Any] = {"environment": environment(device, self.dry), "settings": {
            "dry_run": self.dry, "budget_s": args.budget_s, "published": args.published,
            "compile_seconds": COMPILE_SECONDS, "compile_reserve_s": COMPILE_RESERVE_S, "tolerances": TOLERANCES,
            "scale": asdict(scale)},
            "steps": []}
        self.step_record: Dict[str, Any] = {}

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def note(self, text: str) -> None:
        self.step_record.setdefault("notes", []).append(text)
        say(f"    note: {text}")

    def check(self, name: str, value: float, tolerance: float) -> bool:
        """A figure against its tolerance (recorded; a step with a failed check is failed)."""
        ok = math.isfinite(value) and value <= tolerance
        self.step_record.setdefault("checks", []).append({"name": name, "value": value, "tolerance": tolerance,
                                                           "ok": ok})
        return ok

    def require(self, name: str, ok: bool) -> bool:
        """A yes-or-no check, recorded like :meth:`check`."""
        self.step_record.setdefault("checks", []).append({"name": name, "ok": bool(ok)})
        return bool(ok)

    def row(self, record: Dict[str, Any], line: str) -> None:
        self.step_record.setdefault("results", []).append(record)
        say(f"    {line}")
        self.write()  # a run killed in the middle of a step (a compilation past the limit) keeps its rows

    def run(self, steps: Sequence[Tuple[str, str, Callable[["Suite"], None], bool]]) -> int:
        env = self.report["environment"]
        say(f"hcgnet GPU suite: {env['device_name']}, torch {env['torch']}"
            + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if self.device.type == "cuda" else "")
            + f", {env['date']}" + (" (DRY RUN: CPU, toy sizes)" if self.dry else ""))
        say(f"budget {self.args.budget_s:.0f} s; results: {self.json_path}")
        for i, (name, title, fn, always) in enumerate(steps, 1):
            self.step_record = {"name": name, "title": title}
            self.report["steps"].append(self.step_record)
            say(f"[{i}/{len(steps)}] {name}: {title}")
            if self.args.only and name not in self.args.only:
                self.finish_step("skipped", 0.0, "not in --only")
                continue
            if not always and self.left() <= 0:
                self.finish_step("skipped", 0.0, f"the {self.args.budget_s:g} s budget was spent before it began")
                continue
            started = time.monotonic()
            try:
                if self.args.fail_step == name:
                    raise RuntimeError("made to fail by --fail-step (a test of the suite itself)")
                fn(self)
                failed = [c for c in self.step_record.get("checks", []) if not c["ok"]]
                if failed:
                    raise CheckFailed("; ".join(f"{c['name']}: {c['value']:.3g} > {c['tolerance']:g}" if "value" in c
                                                else f"{c['name']}: no" for c in failed))
                failed_items = [r for r in self.step_record.get("results", []) if r.get("status") == "failed"]
                if failed_items:
                    raise CheckFailed(f"{len(failed_items)} of {len(self.step_record['results'])} items failed, "
                                      f"first: {failed_items[0]['what']}: {failed_items[0]['error']}")
                self.finish_step("ok", time.monotonic() - started)
            except Skip as e:
                self.finish_step("skipped", time.monotonic() - started, str(e))
            except Exception as e:  # recorded, and the suite goes on: one broken path must not hide the others
                self.step_record["traceback"] = traceback.format_exc()
                self.finish_step("failed", time.monotonic() - started, error=one_line(e))
            finally:
                release_memory()
        total = time.monotonic() - self.start
        self.report["total_seconds"] = total
        self.write()
        counts = {s: sum(r["status"] == s for r in self.report["steps"]) for s in ("ok", "failed", "skipped")}
        say(f"done in {total:.0f} s: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped; "
            f"{self.json_path}")
        return 1 if counts["failed"] else 0

    def finish_step(self, status: str, seconds: float, note: Optional[str] = None,
                    error: Optional[str] = None) -> None:
        self.step_record.update(status=status, seconds=round(seconds, 2))
        if note:
            self.step_record["note"] = note
        if error:
            self.step_record["error"] = error
        say(f"    {status.upper()}" + (f": {error or note}" if error or note else "") + f" ({seconds:.1f} s)")
        self.report["total_seconds"] = time.monotonic() - self.start
        self.write()

    def write(self) -> None:
        write_json(self.json_path, self.report, indent=1, default=str)

    def result(self, name: str) -> Optional[Dict[str, Any]]:
        return next((s for s in self.report["steps"] if s["name"] == name), None)


def say(text: str) -> None:
    print(text, flush=True)


def one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment(device: torch.device, dry: bool) -> Dict[str, Any]:
    cuda = device.type == "cuda"
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else f"CPU ({cpu_name()})",
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(), "cpu": cpu_name(), "threads": torch.get_num_threads(),
        # fp32 timings run with PyTorch's defaults: on a GPU, cuDNN convolutions in TF32, matrix products not
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit, "dry_run": dry,
    }


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def cuda_flags(**flags: bool):
    """torch.backends.cudnn / .cuda.matmul flags for the block (``cudnn_benchmark=True``, ...), restored after."""
    targets = {"cudnn_benchmark": (torch.backends.cudnn, "benchmark"),
               "cudnn_deterministic": (torch.backends.cudnn, "deterministic"),
               "cudnn_allow_tf32": (torch.backends.cudnn, "allow_tf32"),
               "matmul_allow_tf32": (torch.backends.cuda.matmul, "allow_tf32")}
    before = {name: getattr(*targets[name]) for name in flags}
    try:
        for name, value in flags.items():
            setattr(*targets[name], value)
        yield
    finally:
        for name, value in before.items():
            setattr(*targets[name], value)


def relative_error(a: torch.Tensor, reference: torch.Tensor) -> float:
    a, reference = a.detach().double().cpu(), reference.detach().double().cpu()
    return float((a - reference).abs().max() / reference.abs().max().clamp_min(1e-12))


# ------------------------------------------------------------------------------------------------ 1. cuda_paths


def batches_for(scale: Scale, n: int, seed: int = 0) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Random images that differ as photographs do, each its own colour and contrast (on pure noise every
    image pools to nearly the same context, and the gates' batch statistics are all rounding)."""
    g = torch.Generator().manual_seed(seed)
    shape = (scale.batch, 3, scale.side, scale.side)
    return [(torch.randn(scale.batch, 3, 1, 1, generator=g) + torch.rand(scale.batch, 1, 1, 1, generator=g)
             * torch.randn(shape, generator=g), torch.randint(0, 10, (scale.batch,), generator=g)) for _ in range(n)]


def train_path(suite: Suite, amp: str, channels_last: bool, batches, eval_x: torch.Tensor) -> Dict[str, Any]:
    """``scale.steps`` steps of the trainer's own step (hcgnet.training.engine) from seed-0 weights: the losses,
    the batch statistics every BatchNorm takes into its running statistics in the first step (the same weights
    in every path, so only the arithmetic differs; later steps start from weights that drifted apart), and the
    eval logits of the result in the same precision."""
    from hcgnet.training.engine import StepContext, train_one_epoch

    device = suite.device
    torch.manual_seed(0)
    model = create_model(suite.scale.tiny, num_classes=10).to(device)
    stats: Dict[str, Tuple[torch.Tensor, torch.Tensor, float]] = {}

    def batch_statistics(name: str) -> Callable:
        def hook(module: nn.Module, inputs) -> None:
            if module.training and name not in stats:
                x = inputs[0].detach().double()
                dims = [0] + list(range(2, x.dim()))
                stats[name] = (x.mean(dims).cpu(), x.var(dims, unbiased=False).cpu(), module.eps)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.register_forward_pre_hook(batch_statistics(name))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = AMP_DTYPES[amp]
    # fp16 needs the grad scaler; on the CPU (dry run) torch's own CPU scaler, which the trainer never uses
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses: List[float] = []
    ctx = StepContext(optimizer, nn.CrossEntropyLoss(), Dist(device=device), dtype, scaler, channels_last=channels_last)
    train_one_epoch(model, batches, ctx, lambda i: None, on_step=lambda i, loss: losses.append(loss))
    model.eval()
    x = eval_x.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(device, dtype):
        logits = model(x).float().cpu()
    return {"losses": losses, "stats": stats, "logits": logits, "model": model,
            "scale": scaler.get_scale() if scaler else None}


def statistics_error(got: Dict[str, Tuple], reference: Dict[str, Tuple]) -> float:
    """The largest difference of the BatchNorm batch statistics: of a mean in standard deviations of its channel,
    of a variance relative to it (each with the BatchNorm's eps added, as the BatchNorm itself adds it)."""
    worst = 0.0
    for name, (mean, var, eps) in reference.items():
        other_mean, other_var, _ = got[name]
        worst = max(worst, float(((other_mean - mean).abs() / (var + eps).sqrt()).max()),
                    float(((other_var - var).abs() / (var + eps)).max()))
    return worst


def step_cuda_paths(suite: Suite) -> None:
    scale, device = suite.scale, suite.device
    if suite.dry:
        suite.note("dry run: CPU autocast (fp16 with torch.amp.GradScaler('cpu')), not CUDA's kernels")
    batches = batches_for(scale, scale.steps)
    eval_x = batches_for(scale, 1, seed=1)[0][0]
    with cuda_flags(cudnn_allow_tf32=False, matmul_allow_tf32=False):  # a true fp32 reference
        ref = train_path(suite, "none", False, batches, eval_x)
        ref_model = ref.pop("model")
        suite.row({"path": "fp32", "losses": ref["losses"]},
                  f"{'fp32 (reference)':22s} losses {' '.join(f'{v:.4f}' for v in ref['losses'])}")
        for path in TOLERANCES:
            amp = "fp16" if "fp16" in path else "bf16" if "bf16" in path else "none"
            cl = "channels_last" in path
            got = train_path(suite, amp, cl, batches, eval_x)
            got.pop("model")
            tol = TOLERANCES[path]
            finite = all(math.isfinite(v) for v in got["losses"])
            first = abs(got["losses"][0] - ref["losses"][0]) / abs(ref["losses"][0])
            stats = statistics_error(got["stats"], ref["stats"])
            logits = relative_error(got["logits"], ref["logits"])
            # the fp32 weights (trained above) evaluated in this path's precision: inference alone
            x = eval_x.to(device)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), autocast(device, AMP_DTYPES[amp]):
                same_weights = relative_error(ref_model.to(memory_format=torch.channels_last if cl else
                                                           torch.contiguous_format)(x).float().cpu(), ref["logits"])
            ok = [suite.require(f"{path}: losses finite", finite),
                  suite.check(f"{path}: first loss", first, tol["first_loss"]),
                  suite.check(f"{path}: BatchNorm statistics of the first step", stats, tol["bn_stats"]),
                  suite.check(f"{path}: eval logits, fp32 weights", same_weights, tol["logits"])]
            suite.row({"path": path, "losses": got["losses"], "first_loss_rel": first, "bn_stats_rel": stats,
                       "eval_logits_rel_same_weights": same_weights, "eval_logits_rel_own_weights": logits,
                       "grad_scale": got["scale"], "ok": all(ok)},
                      f"{path:22s} losses {' '.join(f'{v:.4f}' for v in got['losses'])}  first {first:.1e} "
                      f"(<= {tol['first_loss']:g})  BN stats {stats:.1e} (<= {tol['bn_stats']:g})  logits "
                      f"{same_weights:.1e} (<= {tol['logits']:g})"
                      + (f"  scale {got['scale']:g}" if got["scale"] else "")
                      + ("" if all(ok) else "  OUT OF TOLERANCE"))


# ------------------------------------------------------------------------------------------------ 2. trainer


def make_image_folder(root: Path, side: int, classes: int = 3, per_class: int = 24, seed: int = 0) -> Path:
    """Class folders of small PNGs, each class its own colour plus noise: learnable in a few steps."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array([[220, 40, 40], [40, 200, 40], [40, 40, 220]][c % 3], dtype=np.float64)
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 40, size=(side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def train_overrides(suite: Suite, images: Path, out: Path, **extra) -> Dict[str, Any]:
    scale = suite.scale
    values = dict(model=scale.tiny, data=f"imagefolder:{images}", image_size=scale.side, val_size=0.2,
                  test_size=0.2, workers=0 if suite.dry else 2, output=str(out), epochs=2, batch_size=8, lr=0.05,
                  max_steps_per_epoch=3, amp="bf16" if suite.dry else "fp16", log_every=1)
    values.update(extra)
    return values


def step_trainer(suite: Suite) -> None:
    from safetensors.torch import load_file

    from hcgnet.training import make_config
    from hcgnet.training.interrupts import TrainingInterrupted
    from hcgnet.training.trainer import Run

    device = "cuda" if suite.device.type == "cuda" else "cpu"
    if suite.dry:
        suite.note("dry run: --amp bf16 on the CPU (hcgnet refuses fp16 without a GPU)")
    with tempfile.TemporaryDirectory() as tmp, cuda_flags(cudnn_deterministic=True, cudnn_benchmark=False):
        root = Path(tmp)
        images = make_image_folder(root / "images", suite.scale.side)
        lines: List[str] = []
        started = time.monotonic()
        reference = Run.launch(make_config(overrides=train_overrides(suite, images, root / "reference")),
                               lines.append, device=device)
        seconds = time.monotonic() - started

        def stop_after_epoch_1(line: str) -> None:
            lines.append(line)
            if line.startswith("epoch 1/"):  # the line after last.pt is saved: stop as a scheduler would
                os.kill(os.getpid(), signal.SIGTERM)

        out = root / "run"
        try:
            Run.launch(make_config(overrides=train_overrides(suite, images, out)), stop_after_epoch_1, device=device)
            raise CheckFailed("SIGTERM after epoch 1 did not stop the run")
        except TrainingInterrupted as e:
            interrupted = str(e)
        state = torch.load(out / "last.pt", weights_only=True, map_location="cpu")
        resume_lines: List[str] = []
        resumed = Run.launch(make_config(overrides=train_overrides(suite, images, out, resume=True)),
                             resume_lines.append, device=device)
        a, b = load_file(root / "reference" / "final.safetensors"), load_file(out / "final.safetensors")
        worst = max((relative_error(b[k].float(), a[k].float()) for k in a if a[k].is_floating_point()
                     and a[k].abs().max() > 0), default=0.0)
        identical = all(torch.equal(a[k], b[k]) for k in a)
    tolerance = 0.0 if device == "cpu" else RESUME_TOLERANCE_GPU
    suite.check("resumed final weights against the uninterrupted run's", worst, tolerance)
    suite.require("the second run resumed at epoch 2", any(line.startswith("resumed ") and "at epoch 2, step 0" in line
                                                            for line in resume_lines))
    suite.require("test loss finite", math.isfinite(resumed["test_loss"]))
    if not suite.dry:
        suite.require("last.pt holds the fp16 grad scaler", bool(state.get("scaler")))
    suite.row({"device": device, "amp": "bf16" if suite.dry else "fp16", "interrupted": interrupted,
               "saved_at": [state["epoch"], state["step_in_epoch"]], "scaler": state.get("scaler"),
               "resumed_vs_reference_rel": worst, "bit_identical": identical,
               "reference_seconds": seconds, "reference_test_top1": reference["test_top1"],
               "resumed_test_top1": resumed["test_top1"]},
              f"uninterrupted 2 epochs in {seconds:.1f} s; {interrupted.split(';')[0]}; resumed: weights "
              f"{'bit-identical' if identical else f'within {worst:.1e}'} of the uninterrupted run's "
              f"(<= {tolerance:g}); scaler in last.pt: {'yes' if state.get('scaler') else 'no'}")


def step_inference(suite: Suite) -> None:
    """``hcgnet eval`` and ``predict`` on the GPU against the CPU, as a user runs them: a checkpoint of the tiny
    network (seed-0 weights, batch-norm statistics from training-mode passes) that records an image folder of its
    own, scored whole (``--split all``) and classified on ``--device cuda:0`` with ``--workers 2`` reading ahead,
    in fp32 and with ``--amp fp16``."""
    from hcgnet.inference import evaluate_checkpoint, predict
    from hcgnet.models import save_safetensors

    device = "cuda:0" if suite.device.type == "cuda" else "cpu"
    amp = "fp16" if suite.device.type == "cuda" else "bf16"
    if suite.dry:
        suite.note("dry run: the CPU against itself, --amp bf16 for fp16 (the code path, not the numerics)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = make_image_folder(root / "images", suite.scale.side, per_class=12)
        torch.manual_seed(0)
        model = create_model(suite.scale.tiny, num_classes=3).train()
        with torch.no_grad():
            for x, _ in batches_for(suite.scale, 3):
                model(x)
        path = root / "model.safetensors"
        classes = json.dumps([f"class_{c}" for c in range(3)])
        save_safetensors(model.eval(), path, {"model_name": suite.scale.tiny, "class_names": classes,
                                               "data": f"imagefolder:{images}"})
        quiet = dict(progress=False, log=lambda line: None)
        scored = {(dev, a): evaluate_checkpoint(str(path), split="all", batch_size=16, workers=0, device=dev, amp=a,
                                                **quiet)
                  for dev, a in (("cpu", "none"), (device, "none"), (device, amp))}
        files = sorted(str(f) for f in images.rglob("*.png"))
        cpu = predict(str(path), files, topk=3, batch_size=8, device="cpu", workers=0, **quiet)
        gpu = predict(str(path), files, topk=3, batch_size=8, device=device, workers=2, **quiet)
    reference = scored[("cpu", "none")]
    for (dev, a), got in scored.items():
        if (dev, a) == ("cpu", "none"):
            continue
        loss = abs(got["loss"] - reference["loss"]) / max(abs(reference["loss"]), 1e-12)
        suite.check(f"eval on {dev}, amp {a}: loss against the CPU's (relative)", loss,
                    1e-3 if a == "none" else 2e-2)
        suite.require(f"eval on {dev}, amp {a}: {got['count']} images scored", got["count"] == reference["count"])
        suite.row({"what": "eval", "device": dev, "amp": a, "top1": got["top1"], "loss": got["loss"],
                   "cpu_top1": reference["top1"], "cpu_loss": reference["loss"], "loss_rel": loss},
                  f"eval {dev} amp {a}: top-1 {got['top1']:.4f} (CPU {reference['top1']:.4f}), loss {got['loss']:.5f} "
                  f"(CPU {reference['loss']:.5f}, {loss:.1e} apart)")
    same = [a["image"] == b["image"] and a["top"][0]["index"] == b["top"][0]["index"] for a, b in zip(cpu, gpu)]
    worst = max(abs(x["probability"] - y["probability"]) for a, b in zip(cpu, gpu) for x, y in zip(a["top"], b["top"]))
    suite.require(f"predict on {device} with 2 reading threads: every image, the CPU's top class", len(gpu) == len(cpu)
                  and all(same))
    suite.check(f"predict on {device}: probabilities against the CPU's", worst, 1e-3)
    suite.row({"what": "predict", "device": device, "workers": 2, "images": len(gpu), "same_top1": sum(same),
               "max_probability_diff": worst},
              f"predict {device} --workers 2: {sum(same)} of {len(cpu)} images with the CPU's top class, "
              f"probabilities within {worst:.1e}")


# ------------------------------------------------------------------------------------------------ 3. torchrun


def step_torchrun(suite: Suite) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    cuda = suite.device.type == "cuda"
    nproc = torch.cuda.device_count() if cuda else 2
    backend = "nccl" if cuda else "gloo"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run stays on the CPU (gloo) even where a GPU is
        suite.note("dry run: 2 CPU processes with gloo")
    elif nproc == 1:
        suite.note("1 GPU: torchrun starts one process, which joins no process group (hcgnet uses DDP from 2 "
                   "processes on); NCCL and DDP are checked in this process instead (below)")
    with tempfile.TemporaryDirectory() as tmp:
        images = make_image_folder(Path(tmp) / "images", suite.scale.side, per_class=40)
        out = Path(tmp) / "run"
        o = train_overrides(suite, images, out, epochs=1, batch_size=4 * nproc)
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                "-m", "hcgnet", "train"] + [a for k, v in o.items() if k not in ("log_every",)
                                             for a in (f"--{k.replace('_', '-')}", str(v))]
        started = time.monotonic()
        rc, output = run_bounded(argv, env, timeout=120 if suite.dry else min(300.0, max(suite.left(), 60.0)))
        seconds = time.monotonic() - started
        if rc != 0:
            raise RuntimeError(f"torchrun exited {rc}: {last_line(output)}")
        result = json.loads((out / "results.json").read_text())
    suite.require(f"torchrun world size is {nproc}", result["world_size"] == nproc)
    suite.require("replicas identical at the end", result["replicas_identical"])
    suite.row({"nproc": nproc, "backend": backend if nproc > 1 else None, "seconds": seconds, "results": result},
              f"torchrun --nproc-per-node {nproc} -m hcgnet train ({backend if nproc > 1 else 'no process group'}): "
              f"exit 0 in {seconds:.1f} s, world size {result['world_size']}, test top-1 {result['test_top1']:.3f}")

    # One rank of a real process group in this process: the collective and DDP's gradient all-reduce.
    device = suite.device
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        t = torch.arange(4.0, device=device)
        dist.all_reduce(t)
        torch.manual_seed(0)
        model = create_model(suite.scale.tiny, num_classes=10).to(device)
        plain = create_model(suite.scale.tiny, num_classes=10).to(device)
        plain.load_state_dict(model.state_dict())
        ddp = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        x, y = batches_for(suite.scale, 1)[0]
        x, y = x.to(device), y.to(device)
        with cuda_flags(cudnn_deterministic=True, cudnn_benchmark=False):  # the same kernels for both models
            for m in (ddp, plain):
                nn.functional.cross_entropy(m(x), y).backward()
        worst = max(relative_error(a.grad, b.grad) for a, b in zip(model.parameters(), plain.parameters()))
    finally:
        dist.destroy_process_group()
    suite.check(f"{backend} all_reduce of one rank", relative_error(t, torch.arange(4.0)), 0.0)
    suite.check(f"DDP ({backend}, 1 rank) gradients against the plain model's", worst, 1e-6)
    suite.row({"backend": backend, "ddp_grad_rel": worst},
              f"{backend} process group of 1 in this process: all_reduce ok, DDP gradients within {worst:.1e}")


def run_bounded(argv: List[str], env: Dict[str, str], timeout: float) -> Tuple[int, str]:
    """Run a command in its own process group; on timeout the whole group (torchrun and its workers) is killed."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return 124, (output or "") + f"\n(killed after {timeout:.0f} s)"
    return proc.returncode, output


def last_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error:" in line]
    return (errors or lines or ["no output"])[-1].strip()


# ------------------------------------------------------------------------------------------------ 4. timings

EAGER_CONFIGS = [("fp32", BenchConfig("x"), {}), ("fp32 channels_last", BenchConfig("x", channels_last=True), {}),
                 ("bf16 channels_last", BenchConfig("x", "bf16", True), {}),
                 ("fp16 channels_last", BenchConfig("x", "fp16", True), {}),
                 ("bf16 channels_last cudnn.benchmark", BenchConfig("x", "bf16", True), {"cudnn_benchmark": True})]
# Compiled with CUDA graphs: on the H200 eager HCGNet is bound by kernel launches (A1 inference took 35 ms a step at
# batch 1 and 37 ms at batch 256), and torch.compile's default mode gave A1 training only 1.06x over eager bf16.
COMPILED_CONFIG = ("bf16 channels_last compile (CUDA graphs)", BenchConfig("x", "bf16", True), {})


def compiled(suite: Suite, model: nn.Module, mode: str = "reduce-overhead") -> nn.Module:
    """``model`` under torch.compile in ``mode``; in the dry run with the eager backend (dynamo's trace, no
    Inductor code, no CUDA graphs): it checks that the network traces, not its speed."""
    if suite.device.type == "cuda":
        return torch.compile(model, mode=mode, dynamic=False)
    return torch.compile(model, backend="eager", dynamic=False)


def compile_budget(suite: Suite, workload: str) -> Optional[str]:
    """Why a compilation of ``workload`` must not start now (None: it may)."""
    need = COMPILE_SECONDS.get(workload, COMPILE_RESERVE_S) if suite.device.type == "cuda" else 0.0
    left = suite.left()
    return f"budget: {max(left, 0):.0f} s left, a compilation needs about {need:.0f}" if left <= need else None


def time_workload(suite: Suite, key: str, label: str, cfg: BenchConfig, flags: Dict[str, bool],
                  graphs: bool = False) -> None:
    """One configuration of one workload through hcgnet.bench.run_config, recorded as a row; ``graphs``: the
    network compiled with CUDA graphs (:func:`compiled`)."""
    model, mode, batch, side = suite.scale.workloads[key]
    what = f"{key} {label}"
    cuda = suite.device.type == "cuda"
    skip = None
    if not cuda and (cfg.dtype == "fp16" or flags):
        skip = "CUDA only (the dry run has no GPU)"
    elif graphs:
        skip = compile_budget(suite, key)
    elif suite.left() <= 0:
        skip = "budget spent"
    if skip:
        suite.row({"what": what, "workload": key, "config": label, "status": "skipped", "note": skip},
                  f"{what:48s} skipped: {skip}")
        return
    release_memory()
    build = None
    if graphs:
        torch.compiler.reset()  # the workloads' networks share HCGNet.forward: no graph cache from the one before
        build = lambda _: compiled(suite, create_model(model, num_classes=10))  # noqa: E731 (seeded by run_config)
    try:
        with cuda_flags(**flags):
            r = run_config(model, replace(cfg, mode=mode), batch, (side, side), suite.scale.timed_steps,
                           suite.scale.warmup, suite.device, build=build)
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None  # run_config reset it before its steps
    except Exception as e:
        suite.step_record.setdefault("tracebacks", {})[what] = traceback.format_exc()
        suite.row({"what": what, "workload": key, "config": label, "status": "failed", "error": one_line(e)},
                  f"{what:48s} FAILED: {one_line(e)}")
        return
    r.update(what=what, workload=key, config=label, model=model, status="ok", max_memory_allocated_mb=peak, **flags)
    if graphs:
        r.update(compile=True, compile_mode="reduce-overhead" if cuda else "eager backend (dry run)")
    figure = f"{r['latency_ms']:8.2f} ms" if mode == "latency" else f"{r['images_per_s']:8.1f} img/s"
    memory = f"peak {peak:7.0f} MB" if peak is not None else f"+{r['peak_memory_added_mb']:.0f} MB rss"
    loss = f"  first loss {r['first_loss']:.4f}" if "first_loss" in r else ""
    first = f"  first step {r['first_step_s']:.0f} s" if graphs else ""
    suite.row(r, f"{what:48s} {figure}  {memory}{loss}{first}")


def step_timings(suite: Suite) -> None:
    for key in suite.scale.workloads:
        for label, cfg, flags in EAGER_CONFIGS:
            time_workload(suite, key, label, cfg, flags)
    if suite.args.published:
        time_published(suite)
    else:
        suite.note("no --published (or HCGNET_PUBLISHED): the published implementation was not timed")


def step_timings_compiled(suite: Suite) -> None:
    label, cfg, flags = COMPILED_CONFIG
    for key in ("a1-train", "b-latency", "b-infer", "b-train"):  # the recipe estimate's workload first
        time_workload(suite, key, label, cfg, flags, graphs=True)


# --- the published implementation beside hcgnet: hcgnet.bench.against_published (its own class from the clone,
# the same weights through load_checkpoint, the logits checked equal before anything is timed)

SIDE_BY_SIDE = [BenchConfig("x"), BenchConfig("x", "bf16", True)]  # hcgnet's, beside the published eager fp32


def time_published(suite: Suite) -> None:
    from hcgnet.bench import against_published, describe

    for key, (model_name, mode, batch, side) in suite.scale.workloads.items():
        if suite.dry and key != "a1-train":
            continue  # the published code has no toy network: its A1 at the toy size stands for the four
        name = "hcgnet_a1" if suite.dry else model_name
        what = f"{key} published vs hcgnet"
        if suite.left() <= 0:
            suite.row({"what": what, "status": "skipped", "note": "budget spent"}, f"{what:48s} skipped: budget")
            continue
        release_memory()
        try:
            result = against_published(suite.args.published, name, [replace(c, mode=mode) for c in SIDE_BY_SIDE],
                                       batch, (side, side), suite.scale.timed_steps, suite.scale.warmup, rounds=1,
                                       device=suite.device.type)
        except Exception as e:
            suite.step_record.setdefault("tracebacks", {})[what] = traceback.format_exc()
            suite.row({"what": what, "status": "failed", "error": one_line(e)}, f"{what:48s} FAILED: {one_line(e)}")
            continue
        for r in result["rows"]:
            label = describe(r) if r["implementation"] == "published" else f"hcgnet {describe(r)}"
            figure = f"{r['latency_ms']:8.2f} ms" if mode == "latency" else f"{r['images_per_s']:8.1f} img/s"
            suite.row({**r, "what": f"{key} {label}", "workload": key, "model": name, "side_by_side": True,
                       "status": "ok"},
                      f"{key + ' ' + label:48s} {figure}  {r['speedup']:.2f}x the published code's speed")


# ------------------------------------------------------------------------------------------------ 5. compile_modes


def step_compile_modes(suite: Suite) -> None:
    """Inference of A1 (bf16 channels_last) eager, then compiled with CUDA graphs and with autotuning: CUDA graphs
    first (batch 1, where launches dominate, then the large batch), autotuning after, as the budget allows. Each
    compiled model is checked against eager's logits, then timed by run_config like every other row."""
    scale, device = suite.scale, suite.device
    cuda = device.type == "cuda"
    if not cuda:
        suite.note("dry run: torch.compile with the eager backend (dynamo's trace, no inductor code, no CUDA "
                   "graphs): it checks that the network traces, not its speed")
    name, size = scale.compile_model, (scale.compile_side, scale.compile_side)
    cfg = BenchConfig("infer", "bf16", channels_last=True)
    small, large = min(scale.compile_batches), max(scale.compile_batches)
    items = list(dict.fromkeys([(small, "reduce-overhead"), (large, "reduce-overhead"),
                                (large, "max-autotune-no-cudagraphs"), (small, "max-autotune-no-cudagraphs")]))
    timed_eager = set()
    for batch, mode in items:
        what = f"batch {batch} {mode}"
        if mode.startswith("max-autotune") and not suite.args.autotune:
            note = ("only with --autotune: on an H200 it autotuned every matrix product of A1 at batch 256 (about 7 s "
                    "each) for over 200 s without finishing")
            suite.row({"what": what, "batch": batch, "compile_mode": mode, "status": "skipped", "note": note},
                      f"batch {batch:3d} {mode:28s} skipped: only with --autotune")
            continue
        if batch not in timed_eager:
            timed_eager.add(batch)
            r = run_config(name, cfg, batch, size, scale.timed_steps, scale.warmup, device)
            suite.row({**r, "what": f"batch {batch} eager", "compile_mode": "eager", "status": "ok"},
                      f"batch {batch:3d} {'eager':28s} {1000 * r['median_s']:8.2f} ms/step  "
                      f"{r['images_per_s']:9.0f} img/s")
        skip = compile_budget(suite, "a1-infer" if name == "hcgnet_a1" else "")
        if skip:
            suite.row({"what": what, "batch": batch, "compile_mode": mode, "status": "skipped", "note": skip},
                      f"batch {batch:3d} {mode:28s} skipped: {skip}")
            continue
        release_memory()
        try:
            if cuda:  # each mode compiles afresh (the dry run's eager backend may reuse its one trace)
                torch.compiler.reset()
            torch.manual_seed(0)
            model = create_model(name, num_classes=10).to(device).eval().to(memory_format=torch.channels_last)
            x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=torch.channels_last)
            program = compiled(suite, model, mode)
            with torch.no_grad(), autocast(device, torch.bfloat16):
                reference = model(x).float().cpu()
                started = time.perf_counter()
                torch.compiler.cudagraph_mark_step_begin()  # a replay may overwrite the outputs of the one before
                gap = relative_error(program(x).float().cpu(), reference)
                compile_s = time.perf_counter() - started
            r = run_config(name, cfg, batch, size, scale.timed_steps, scale.warmup, device, build=lambda _: program)
        except Exception as e:
            suite.step_record.setdefault("tracebacks", {})[what] = traceback.format_exc()
            suite.row({"what": what, "batch": batch, "compile_mode": mode, "status": "failed", "error": one_line(e)},
                      f"batch {batch:3d} {mode:28s} FAILED: {one_line(e)}")
            continue
        ok = suite.check(f"{what}: logits against eager", gap, TOLERANCES["bf16 channels_last"]["logits"])
        suite.row({**r, "what": what, "compile_mode": mode, "status": "ok", "logits_rel": gap, "compile_s": compile_s},
                  f"batch {batch:3d} {mode:28s} {1000 * r['median_s']:8.2f} ms/step  {r['images_per_s']:9.0f} img/s  "
                  f"compile {compile_s:.0f} s  logits {gap:.1e}" + ("" if ok else " OUT OF TOLERANCE"))


# ------------------------------------------------------------------------------------------------ 6. estimate


def step_estimate(suite: Suite) -> None:
    from hcgnet.training import load_recipe

    recipe = load_recipe("cifar10-a1")
    epochs, batch = recipe["epochs"], recipe["batch_size"]
    images = epochs * CIFAR10_TRAIN_IMAGES
    rows = [r for step in ("timings", "timings_compiled") for r in (suite.result(step) or {}).get("results", [])
            if r.get("workload") == "a1-train" and r.get("status") == "ok"]
    ours = [r for r in rows if "config" in r]  # hcgnet.bench.run_config's rows
    published = [r for r in rows if r.get("side_by_side") and r["implementation"] == "published"]
    beside = {r["dtype"]: r["speedup"] for r in rows if r.get("side_by_side") and r["implementation"] == "hcgnet"
              and not r["channels_last"]}
    if not ours:
        raise Skip("no A1 training figure was measured (timings did not run)")
    if suite.dry:
        suite.note("dry run: the toy network's figures, not an estimate")
    suite.note(f"training steps only ({epochs} epochs x {CIFAR10_TRAIN_IMAGES:,} images at batch {batch}): no "
               "data loading, no evaluation pass; our recipe trains on 45,000 (5,000 held out), 10% less")
    for who, ips in [(f"hcgnet {r['config']}", r["images_per_s"]) for r in ours] + \
                    [(f"published code, eager fp32 (hcgnet fp32 {beside.get('fp32', math.nan):.2f}x its speed)",
                      r["images_per_s"]) for r in published]:
        hours = images / ips / 3600
        suite.row({"who": who, "images_per_s": ips, "hours": hours, "epochs": epochs, "batch": batch},
                  f"{who:64s} {ips:9.1f} img/s -> {hours:7.1f} h ({hours / 24:.2f} days)")
    if not published:
        suite.note("the published code's time needs --published (its A1 measured beside ours on this GPU)")


# ------------------------------------------------------------------------------------------------ main

STEPS = [
    ("cuda_paths", "fp16 + GradScaler, bf16, channels_last training and eval against fp32", step_cuda_paths, False),
    ("trainer", "the trainer end to end with fp16 amp, interrupted and resumed", step_trainer, False),
    ("inference", "hcgnet eval and predict on cuda:0 (fp32, --amp fp16, --workers 2) against the CPU", step_inference,
     False),
    ("torchrun", "torchrun -m hcgnet train, one process per GPU (NCCL)", step_torchrun, False),
    ("timings", "A1 train b128, B train b64, B infer b256 and b1: fp32 / channels_last / bf16 / fp16", step_timings,
     False),
    ("timings_compiled", "the timing workloads compiled (bf16 channels_last)", step_timings_compiled, False),
    ("compile_modes", "torch.compile reduce-overhead (CUDA graphs) vs max-autotune-no-cudagraphs, A1 inference",
     step_compile_modes, False),
    ("estimate", "wall time of the CIFAR-10 A1 recipe from the measured images/s", step_estimate, True),
]
STEP_NAMES = [name for name, *_ in STEPS]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU at toy sizes (under a minute)")
    p.add_argument("--json", default=None, help=f"results file (default {DEFAULT_JSON.relative_to(REPO)}; "
                   f"with --dry-run {DRY_RUN_JSON.relative_to(REPO)})")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="seconds after which no further step starts (default 420: meant to end within 8 minutes "
                   "on an H100/H200)")
    p.add_argument("--published", default=os.environ.get("HCGNET_PUBLISHED"),
                   help="a clone of github.com/winycg/HCGNet: time its models beside hcgnet's with the same "
                   "weights (default: $HCGNET_PUBLISHED)")
    p.add_argument("--autotune", action="store_true",
                   help="compile_modes also tries torch.compile's max-autotune-no-cudagraphs (minutes of autotuning)")
    p.add_argument("--only", default=None, help=f"comma-separated steps to run: {', '.join(STEP_NAMES)}")
    p.add_argument("--fail-step", default=None, choices=STEP_NAMES, help=argparse.SUPPRESS)  # tests the suite
    args = p.parse_args(argv)
    if args.only:
        args.only = args.only.split(",")
        unknown = [s for s in args.only if s not in STEP_NAMES]
        if unknown:
            p.error(f"--only: unknown step {unknown[0]!r}; steps are {', '.join(STEP_NAMES)}")
    if args.budget_s <= 0:
        p.error("--budget-s must be positive")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        json_path = check_output_file(args.json or (DRY_RUN_JSON if args.dry_run else DEFAULT_JSON), "--json",
                                      args.force)
        if args.published:
            from hcgnet.published import check_clone

            check_clone(args.published)  # a wrong path is refused now, not after minutes of GPU time
        if not args.dry_run and not torch.cuda.is_available():
            raise HCGNetError("no usable GPU here (CUDA not available); use --dry-run to check the suite on the CPU")
    except HCGNetError as e:
        print(f"gpu_suite: error: {e}", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", torch.cuda.current_device())
    if args.dry_run:
        torch.set_num_threads(1)  # on shared cores two threads stall (tests/conftest.py); toy sizes need one
    return Suite(args, device, DRY if args.dry_run else GPU, json_path).run(STEPS)


if __name__ == "__main__":
    sys.exit(main())
