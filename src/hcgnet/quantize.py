"""int8 inference: post-training static quantization, calibrated on the checkpoint's own training images.

    hcgnet eval --checkpoint runs/a1/best.safetensors --data cifar10 --int8
    hcgnet predict --checkpoint runs/a1/best.safetensors --int8 photos/
    hcgnet export --checkpoint runs/a1/best.safetensors --format onnx --int8 --output a1-int8.onnx

Two backends, each the field's own tool for its runtime (``torch.ao.quantization`` is deprecated and Intel
Extension for PyTorch archived: neither is used):

``pt2e``
    torchao's PT2E flow with the ``X86InductorQuantizer`` (torch.export, ``prepare_pt2e``, calibration,
    ``convert_pt2e``), then ``torch.compile`` with Inductor's freezing on, whose passes turn the
    quantize/dequantize pairs around convolutions and linears into oneDNN int8 kernels. Uncompiled
    (``compile=False``), the converted program computes in float32 between quantize/dequantize pairs: the
    same int8 rounding, none of the speed.
``onnxruntime``
    ONNX Runtime static quantization in the QDQ format (``quantize_static``, per-channel weights), for ONNX
    users: what ``hcgnet export --int8`` writes.

Both quantize what the x86 quantizer does (convolutions and linears; the gates' softmax, tanh and
attention products stay float) and calibrate on ``calibration`` images drawn, seeded, from the training split
of the data the checkpoint was trained on, with the evaluation transform: never the images then scored.
"""
import contextlib
import copy
import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from hcgnet.compiled import compile_frozen
from hcgnet.errors import HCGNetError, plural
from hcgnet.evaluation import device_of
from hcgnet.export import export_model, write_onnx_metadata
from hcgnet.files import atomic_path, reported_write
from hcgnet.inference import (
    Log, bad_images_setting, checkpoint_split, data_config_of, export_metadata, load_model, metadata_value,
    model_io, note_on_stderr, run_data_dir,
)
from hcgnet.layers import freeze_batch_norm

BACKENDS = ("pt2e", "onnxruntime")
#: Calibration images by default: a few hundred is what PTQ recipes use (ONNX Runtime's and TensorRT's
#: examples, torchvision's reference scripts); the observers' ranges settle by then, while each image more
#: costs a forward pass with observers.
DEFAULT_CALIBRATION = 512
#: The seed of the calibration sample: the same images on every run, so int8 results repeat.
CALIBRATION_SEED = 0
#: The operators both backends quantize: the x86 quantizer's convolutions and linears (ONNX: Conv, Gemm).
ONNX_OPS = ("Conv", "Gemm")
#: Images per ONNX Runtime calibration batch: its calibrator has the model return every intermediate tensor of a
#: batch at once (at 224 px, many times the batch's own size), where PT2E's observers reduce them as they go.
ONNX_CALIBRATION_BATCH = 16


class Int8Error(HCGNetError):
    pass


def check_int8_options(backend: str, calibration: Optional[int] = None, amp: str = "none",
                       channels_last: bool = False, device: Optional[str] = None) -> None:
    """Refuse, in one line, what int8 inference cannot do: another backend, no calibration images, a float
    precision or layout of its own (the int8 programs choose theirs), a GPU. ``calibration`` None: the default."""
    calibration = DEFAULT_CALIBRATION if calibration is None else calibration
    if backend not in BACKENDS:
        raise Int8Error(f"unknown --int8-backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if calibration < 1:
        raise Int8Error(f"--calibration must be 1 or more training images, got {calibration}")
    if amp != "none":
        raise Int8Error(f"--int8 and --amp {amp} do not go together: int8 replaces the float precision; drop one")
    if channels_last:
        raise Int8Error("--int8 and --channels-last do not go together: the int8 program lays out its own tensors")
    if device is not None and device_of(device).type != "cpu":
        raise Int8Error(f"--int8 runs on the CPU (x86 int8 kernels or ONNX Runtime), not --device {device}")
    if backend == "pt2e" and platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        raise Int8Error(f"--int8-backend pt2e needs an x86 CPU (this is {platform.machine()}); "
                        "use --int8-backend onnxruntime")


# ------------------------------------------------------------------------------------------------ calibration


def calibration_loader(path: str, model: nn.Module, meta: Dict[str, str], calibration: Optional[int] = None,
                       batch_size: int = 64, workers: int = 0, data_dir: Optional[str] = None,
                       log: Optional[Log] = None) -> Tuple[DataLoader, str, str]:
    """Batches of ``calibration`` training images of the data ``path`` was trained on (its training split, as the
    run made it; a seeded sample, evaluation transform), a phrase saying which, and one for the "calibrating on"
    line naming the unreadable images left out of the folder ("" if none). Refused in one line for a
    checkpoint that does not record its data (a published one): int8 calibrates on the model's own data."""
    asked = calibration is not None
    calibration = DEFAULT_CALIBRATION if calibration is None else calibration
    data = metadata_value(meta, "data")
    if data is None:
        raise Int8Error(f"--int8 calibrates on the training images of the checkpoint's own data, and {path} does not "
                        "record its data (a published checkpoint?); use a checkpoint written by hcgnet train")
    skip, _ = bad_images_setting(meta, None, log)  # as the checkpoint's training run did
    left_out: List[str] = []   # said in the calibration line: eval has named them already for its own split
    train, _ = checkpoint_split(data, run_data_dir(data, data_dir, meta), "train", meta, model_io(model, meta), path,
                                skip, left_out.append)
    n = min(calibration, len(train))
    if n == 0:
        raise Int8Error(f"the training split of {data} is empty: nothing to calibrate --int8 on")
    if n < calibration and log is not None:
        wanted = f"--calibration {calibration}" if asked else f"int8 calibrates on {calibration} by default"
        log(f"note: the training split of {data} has {plural(n, 'image')} ({wanted}); using all")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(CALIBRATION_SEED))
    loader = DataLoader(Subset(train, sorted(order[:n].tolist())), batch_size=min(batch_size, n), num_workers=workers)
    skipped = f"; {left_out[0]} of the folder, as the checkpoint's training run did" if left_out else ""
    return loader, f"{plural(n, 'training image')} of {data}", skipped


def _images(loader: Iterable) -> Iterable[torch.Tensor]:
    for batch in loader:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


# ------------------------------------------------------------------------------------------------ pt2e


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def quantize_pt2e(model: nn.Module, images: Iterable[torch.Tensor], compile: bool = True,
                  batch: Optional[int] = None) -> nn.Module:
    """``model`` quantized by torchao's PT2E flow with the X86InductorQuantizer's default config (per-channel
    int8 weights, uint8 activations with histogram observers), calibrated on ``images`` (batches). With
    ``compile``: compiled by Inductor into int8 kernels for batches of ``batch`` images (default: the first
    calibration batch's), wrapped to take any batch (:class:`~hcgnet.compiled.PaddedBatch`); the compilation happens on the first
    call. Without: the converted program, any batch size, float32 arithmetic between quantize/dequantize pairs."""
    try:
        with _quiet_logger("torch.utils._pytree"):  # torchao 0.18 trips a deprecation notice of torch's on import
            import torchao.quantization.pt2e  # noqa: F401
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config,
        )
        from hcgnet.observers import with_fast_histograms
    except ImportError:
        raise Int8Error("--int8-backend pt2e needs torchao: pip install 'hcgnet[int8]'") from None
    # Eval-mode batch norm as the fixed scale and shift it is. HCGNet's norms come before their convolutions
    # (pre-activation), so PT2E cannot fold them into one; left in the graph, they make convert_pt2e run its
    # quantization-aware-training conv/BN folding, which traces ~100 pattern graphs (10-30 s) to find nothing.
    float_model = freeze_batch_norm(copy.deepcopy(model).cpu()).eval()
    batches = iter(_images(images))
    first = next(batches, None)
    if first is None:
        raise Int8Error("no calibration images")
    example = first if len(first) > 1 else torch.cat([first, first])  # a batch of 1 would fix the batch size at 1
    with torch.no_grad():
        program = torch.export.export(
            float_model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}}).module()
        prepared = prepare_pt2e(program, X86InductorQuantizer().set_global(
            with_fast_histograms(get_default_x86_inductor_quantization_config())))
        prepared(first)
        for x in batches:
            prepared(x)
        converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)  # evaluation calls .eval(), which an exported program refuses
    return compile_int8(converted, batch or len(first)) if compile else converted


def compiled_now(converted: nn.Module, batch: int, loader: Iterable, log: Optional[Log] = None) -> nn.Module:
    """:func:`compile_int8`, compiled here, on zeros shaped as ``loader``'s images, rather than on the first call:
    the minutes it takes are said, not spent under the caller's progress bar at 0%."""
    if log is not None:
        log("int8 (pt2e): compiling with Inductor (minutes for a full HCGNet)")
    started = time.perf_counter()
    compiled = compile_int8(converted, batch)
    shape = next(iter(_images(loader))).shape[1:]
    with torch.no_grad():   # as evaluation and prediction call it: the same guards, no second compilation
        compiled(torch.zeros(batch, *shape))
    if log is not None:
        log(f"int8 (pt2e): compiled in {time.perf_counter() - started:.0f} s")
    return compiled


def compile_int8(converted: nn.Module, batch: int) -> nn.Module:
    """A PT2E-converted program compiled by Inductor (freezing on) into int8 kernels for batches of ``batch``
    images, taking any batch (:class:`~hcgnet.compiled.PaddedBatch`); the compilation happens on the first call."""
    return compile_frozen(converted, batch)


# ------------------------------------------------------------------------------------------------ onnxruntime


def _onnxruntime():
    try:
        import onnxruntime
        from onnxruntime import quantization
    except ImportError:
        raise Int8Error("--int8-backend onnxruntime needs onnx, onnxscript and onnxruntime: "
                        "pip install 'hcgnet[export]'") from None
    return onnxruntime, quantization


def quantize_onnx(model: nn.Module, images: Iterable[torch.Tensor], output: str,
                  input_size: Tuple[int, int, int]) -> Path:
    """Write ``model`` as an int8 QDQ ONNX file at ``output``: exported (dynamic batch and input size, checked
    against the eager model), pre-processed and quantized by ONNX Runtime's ``quantize_static`` (per-channel
    int8 weights, int8 activations from min/max calibration on ``images``; convolutions and linears)."""
    _, quantization = _onnxruntime()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="hcgnet-int8-") as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        export_model(model, str(fp32), "onnx", input_size)
        # ONNX Runtime's symbolic shape inference leaves temporary files in the working directory when it fails.
        with contextlib.chdir(tmp):
            quant_pre_process(str(fp32), str(prepared))
        quantization.quantize_static(
            str(prepared), str(output), _CalibrationReader(images, _input_name(prepared)),
            quant_format=quantization.QuantFormat.QDQ, per_channel=True, op_types_to_quantize=list(ONNX_OPS),
            activation_type=quantization.QuantType.QInt8, weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax)
    return Path(output)


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader protocol (``get_next``: one input feed, None at the end)."""

    def __init__(self, images: Iterable[torch.Tensor], name: str) -> None:
        self.batches, self.name = iter(_images(images)), name

    def get_next(self) -> Optional[Dict[str, Any]]:
        x = next(self.batches, None)
        return None if x is None else {self.name: x.contiguous().numpy()}


class OnnxRuntimeModel(nn.Module):
    """An ONNX file run by ONNX Runtime (CPU, torch's thread count) as a module: float32 images in, logits out,
    so evaluation and prediction call it like the eager model."""

    def __init__(self, path: str, num_classes: int) -> None:
        super().__init__()
        onnxruntime, _ = _onnxruntime()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.detach().cpu().contiguous().numpy()})[0])


# ------------------------------------------------------------------------------------------------ both


def int8_model(path: str, model: nn.Module, meta: Dict[str, str], backend: str = "pt2e",
               calibration: Optional[int] = None, batch_size: int = 64, workers: int = 0,
               data_dir: Optional[str] = None, compile: bool = True, log: Optional[Log] = None,
               ) -> Tuple[nn.Module, Dict[str, Any]]:
    """``model`` (loaded from ``path``, whose metadata is ``meta``) as an int8 module of ``backend`` that
    evaluation and prediction call like the float one, calibrated on ``calibration`` of its training images
    (None: :data:`DEFAULT_CALIBRATION`), and what was done: ``{"backend", "calibration_images",
    "calibrated_on"}``. ``compile`` (pt2e): Inductor's int8 kernels for batches of ``batch_size``, else the
    float32-arithmetic reference program."""
    check_int8_options(backend, calibration)
    calibration_batch = batch_size if backend == "pt2e" else min(batch_size, ONNX_CALIBRATION_BATCH)
    loader, what, skipped = calibration_loader(path, model, meta, calibration, calibration_batch, workers, data_dir,
                                               log)
    if log is not None:
        log(f"int8 ({backend}): calibrating on {what}{skipped}")
    about = {"backend": backend, "calibration_images": len(loader.dataset), "calibrated_on": what}
    if backend == "pt2e":
        quantized = quantize_pt2e(model, loader, compile=False)
        return (compiled_now(quantized, batch_size, loader, log) if compile else quantized), about
    with tempfile.TemporaryDirectory(prefix="hcgnet-int8-") as tmp:  # the session keeps the model in memory
        onnx_path = quantize_onnx(model, loader, str(Path(tmp) / "int8.onnx"), data_config_of(model, meta).input_size)
        return OnnxRuntimeModel(str(onnx_path), model.num_classes), about


def export_int8(path: str, output: str, fmt: str = "onnx", model_name: Optional[str] = None,
                calibration: Optional[int] = None, log: Log = note_on_stderr, run_data: bool = True) -> Dict[str, Any]:
    """Write the checkpoint at ``path`` as an int8 QDQ ONNX file at ``output`` (:func:`quantize_onnx`, atomic),
    calibrated on ``calibration`` of its training images, and say how close it stays to the float model on them:
    ``{"calibrated_on", "agreement" (share of the same top-1), "max_diff" (largest logit difference)}``."""
    if fmt != "onnx":
        raise Int8Error(f"export --int8 writes ONNX Runtime's QDQ format: use --format onnx, not {fmt}")
    check_int8_options("onnxruntime", calibration)
    model, meta = load_model(path, model_name)
    loader, what, skipped = calibration_loader(path, model, meta, calibration, ONNX_CALIBRATION_BATCH, log=log)
    log(f"int8 (onnxruntime): calibrating on {what}{skipped}")
    out = Path(output)
    same, count, max_diff = 0, 0, 0.0
    with reported_write(out), atomic_path(out, suffix=".onnx") as tmp:
        quantize_onnx(model, loader, tmp, data_config_of(model, meta).input_size)
        write_onnx_metadata(tmp, export_metadata(model, meta, model_name, run_data))
        quantized = OnnxRuntimeModel(tmp, model.num_classes)
        with torch.no_grad():
            for x in _images(loader):
                expected, got = model(x), quantized(x)
                same += int((expected.argmax(1) == got.argmax(1)).sum())
                count += len(x)
                max_diff = max(max_diff, float((expected - got).abs().max()))
    return {"calibrated_on": what, "agreement": same / count, "max_diff": max_diff}
