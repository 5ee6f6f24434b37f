"""Deployment formats: ONNX, TorchScript and ``torch.export`` (.pt2), each with dynamic batch and input size.

    hcgnet export --checkpoint runs/a1/best.safetensors --format onnx --output a1.onnx

The exported program is checked against the eager model on a second input shape before the file is kept. A file
can carry what it needs to be used without hcgnet (``metadata``: its class names and preprocessing, as
``hcgnet export`` writes them): in ONNX the model's ``metadata_props`` (ONNX Runtime's
``get_modelmeta().custom_metadata_map``), in TorchScript and .pt2 an extra file ``hcgnet.json`` in the archive.
:func:`read_export_metadata` reads either back without loading the program.
"""
import json
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from hcgnet.errors import HCGNetError
from hcgnet.evaluation import device_of, fast_path_flags
from hcgnet.files import atomic_path, check_output_file, reported_write
from hcgnet.models.checkpoints import is_onnx_export

FORMATS = ("onnx", "torchscript", "pt2")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}
#: The extra file of a TorchScript or .pt2 archive that holds an export's metadata (a JSON object of strings).
METADATA_FILE = "hcgnet.json"


class ExportError(HCGNetError):
    pass


def format_of(output: str) -> str:
    """The export format a file name says (``.onnx``, ``.pt``, ``.pt2``), or a one-line :class:`ExportError`."""
    suffix = Path(output).suffix.lower()
    found = next((fmt for fmt, s in SUFFIXES.items() if s == suffix), None)
    if found is None:
        raise ExportError(f"{output} does not say which format to write; name it .onnx, .pt or .pt2, or pass "
                          f"--format {'/'.join(FORMATS)}")
    return found


def check_export_path(output: str, fmt: str, force: bool = False) -> Path:
    """``output`` as a file ``fmt`` may be written to, refused in one line otherwise: a name that says
    another format (``--format onnx --output model.pt``), an existing file without ``force``, a folder,
    a folder that does not exist or cannot be written."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(output)
    suffix, wanted = out.suffix.lower(), SUFFIXES[fmt]
    if out.is_dir():   # said as a folder, not as a file with no suffix
        raise ExportError(f"--output {out} is a folder; give the name of a file to write inside it, e.g. "
                          f"{out / ('model' + wanted)}")
    claimed = next((f for f, s in SUFFIXES.items() if s == suffix and f != fmt), None)
    if claimed or (fmt != "torchscript" and suffix != wanted) or suffix in (".safetensors", ".pth"):
        what = f"a {claimed} file" if claimed else f"a {suffix or 'nameless'} file"
        raise ExportError(f"{out} names {what} but --format is {fmt}; use --output {out.with_suffix(wanted)}")
    return check_output_file(out, "--output", force)


def _sizes(model: nn.Module, input_size: Tuple[int, int, int]):
    """An example input and a second shape to check. The smallest side keeps the last stage at 2x2 or more
    (a 1x1 last stage is a special case the exporters would have to guard)."""
    reduction = model.feature_info[-1]["reduction"]
    c, h, w = input_size
    low = 2 * reduction
    example = torch.randn(2, c, max(h, low), max(w, low))
    check = torch.randn(3, c, max(h, low) + reduction, max(w, low) + 2 * reduction)
    return example, check, low


def export_model(
    model: nn.Module, output: str, fmt: str, input_size: Tuple[int, int, int], atol: float = 1e-4,
    opset: Optional[int] = None, metadata: Optional[Dict[str, str]] = None,
) -> Path:
    """Write ``model`` (eval mode) to ``output`` in ``fmt`` and return the path; atomic, and only after the
    exported program matched the eager model (max abs difference <= ``atol``) on another input shape.
    ``metadata`` (strings by name) goes into the file (:func:`read_export_metadata`)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(output)
    if not out.parent.is_dir():
        raise ExportError(f"folder {out.parent} does not exist; create it first")
    model = model.eval()
    example, check, low = _sizes(model, input_size)
    batch, height, width = (torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("height", min=low, max=4096),
                            torch.export.Dim("width", min=low, max=4096))
    with reported_write(out), atomic_path(out, suffix=SUFFIXES[fmt]) as tmp, torch.no_grad():
        expected = model(check)
        if fmt == "torchscript":
            with warnings.catch_warnings():  # TorchScript is deprecated upstream; it is still what many deploy
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.script(model).save(tmp, _extra_files=_archive_files(metadata))
                got = torch.jit.load(tmp)(check)
        elif fmt == "pt2":
            program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch, 2: height, 3: width}})
            torch.export.save(program, tmp, extra_files=_archive_files(metadata))
            got = torch.export.load(tmp).module()(check)
        else:
            got = _export_onnx(model, example, check, tmp, batch, height, width, opset, metadata)
        diff = (got - expected).abs().max().item()
        if not diff <= atol:
            raise ExportError(f"the {fmt} export differs from the eager model by {diff:.2e} (> {atol}); not written")
    return out


def _export_onnx(model, example, check, path, batch, height, width, opset, metadata):
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'hcgnet[export]'") from None
    program = torch.onnx.export(model, (example,), dynamic_shapes={"x": {0: batch, 2: height, 3: width}},
                                dynamo=True, opset_version=opset, verbose=False)
    program.model.metadata_props.update(metadata or {})   # the ONNX model's metadata_props, saved with it
    program.save(path)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: check.numpy()})[0])


def _archive_files(metadata: Optional[Dict[str, str]]) -> Dict[str, str]:
    return {METADATA_FILE: json.dumps(metadata)} if metadata else {}


def write_onnx_metadata(path, metadata: Optional[Dict[str, str]]) -> None:
    """Add ``metadata`` to the ONNX file at ``path`` (its ``metadata_props``, replacing keys of the same name)."""
    if not metadata:
        return
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=str(value))
    onnx.save(proto, str(path))


def read_export_metadata(path) -> Dict[str, str]:
    """The metadata an exported file carries (:func:`export_model`'s ``metadata``; ``{}`` when it has none), read
    without loading the program: ONNX ``metadata_props``, or the ``hcgnet.json`` of a TorchScript or .pt2 archive.
    A file that is neither is a one-line :class:`ExportError`. An ONNX file is told by its name or its bytes."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if is_onnx_export(path):
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception:
            raise ExportError(f"{path} is not an ONNX file") from None
        return {p.key: p.value for p in proto.metadata_props}
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")), None)
            return json.loads(archive.read(name)) if name else {}
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError):
        raise ExportError(f"{path} is not a TorchScript or .pt2 file written by hcgnet export") from None


OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


def check_openvino_precision(precision: str) -> None:
    """A precision OpenVINO runs (:data:`OPENVINO_PRECISIONS`), or a one-line :class:`ExportError`."""
    if precision not in OPENVINO_PRECISIONS:
        raise ExportError(f"OpenVINO runs fp32 or bf16, not {precision}")


def import_openvino():
    """The ``openvino`` package, or a one-line :class:`ExportError` saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise ExportError("the OpenVINO runtime needs openvino: pip install 'hcgnet[openvino]'") from None
    return openvino


class OpenVINOModel:
    """An ONNX export (:func:`export_model`) run by OpenVINO's CPU plugin: a callable from a float32 tensor to a
    float32 tensor, tuned for one request at a time (``PERFORMANCE_HINT`` LATENCY) on ``threads`` threads
    (default: torch's). ``dtype`` is OpenVINO's inference precision: ``"bf16"`` computes in bfloat16 where the
    CPU has it (AVX512-BF16 or AMX) and in float32 where it has not.

    Refused in one line (:class:`ExportError`): a precision OpenVINO does not run, a missing file, one that is
    not a model. The export's batch and spatial sizes are dynamic, but OpenVINO runs a model faster with them
    fixed (BENCHMARKS.md, "OpenVINO with the input's sizes fixed"), so each new input shape is compiled once,
    with its sizes fixed (seconds), and kept: ``requests`` maps the shapes seen to their compiled models'
    requests."""

    def __init__(self, path, dtype: str = "fp32", threads: Optional[int] = None) -> None:
        check_openvino_precision(dtype)
        openvino = import_openvino()
        from openvino.frontend import FrontEndManager
        self.path, self.dtype = Path(path).expanduser(), dtype
        if not self.path.is_file():
            what = "is a folder, not an ONNX file" if self.path.is_dir() else "not found"
            raise ExportError(f"{self.path} {what}; write one with hcgnet export --format onnx")
        if not is_onnx_export(self.path):
            raise ExportError(f"{self.path} is not an ONNX file; write one with hcgnet export --format onnx")
        # The ONNX frontend itself: Core.read_model tries every frontend on a broken file and TensorFlow's
        # prints to stderr. Its failures carry a page of OpenVINO's C++ call stack.
        frontend = FrontEndManager().load_by_framework("onnx")
        try:
            self.model = frontend.convert(frontend.load(str(self.path)))
        except Exception:
            raise ExportError(f"OpenVINO cannot read {self.path} as a model; write it again with hcgnet export "
                              "--format onnx") from None
        self.core = openvino.Core()
        self.config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
                       "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[dtype]}
        self.requests = {}  # input shape -> infer request of the model compiled for it

    def _request(self, shape: Tuple[int, ...]):
        if shape not in self.requests:
            model = self.model.clone()
            model.reshape({model.inputs[0]: list(shape)})
            try:
                compiled = self.core.compile_model(model, "CPU", self.config)
            except RuntimeError:
                raise ExportError(f"OpenVINO's CPU plugin cannot compile {self.path} at {self.dtype} for input "
                                  f"{list(shape)}; try fp32, or ONNX Runtime") from None
            self.requests[shape] = compiled.create_infer_request()
        return self.requests[shape]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().cpu().float().contiguous()
        return torch.from_numpy(self._request(tuple(x.shape)).infer({0: x.numpy()})[0].copy())


def check_openvino_options(precision: str, compile: bool = False, int8: Optional[str] = None, amp: str = "none",
                           channels_last: bool = False, device: Optional[str] = None) -> None:
    """Refuse, in one line, what ``--openvino`` cannot go with: OpenVINO compiles the model itself, at its own
    precision and layout, on the CPU."""
    check_openvino_precision(precision)
    given = fast_path_flags(compile, int8, amp, channels_last)
    if given:
        raise ExportError(f"--openvino and {given[0]} do not go together: OpenVINO compiles the model at its own "
                          f"precision and layout; drop one")
    if device is not None and device_of(device).type != "cpu":
        raise ExportError(f"--openvino runs on the CPU, not --device {device}")


def openvino_model(model: nn.Module, input_size: Tuple[int, int, int], precision: str = "fp32") -> OpenVINOModel:
    """``model`` exported to ONNX (checked against eager, as ``hcgnet export`` does) in a temporary folder and read
    into OpenVINO at ``precision``: what ``hcgnet eval --openvino`` and ``predict --openvino`` classify with.
    OpenVINO keeps the model in memory; the file is removed."""
    check_openvino_precision(precision)  # both before the export, which takes a while
    import_openvino()
    with tempfile.TemporaryDirectory() as folder:
        path = export_model(model.eval(), str(Path(folder) / "model.onnx"), "onnx", input_size)
        return OpenVINOModel(path, precision)
