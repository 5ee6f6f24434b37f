"""Reading and writing weights: the published checkpoint format, hcgnet's own, and safetensors.

Nothing here unpickles code: ``.pth``/``.tar`` files go through ``torch.load(weights_only=True)`` and
``.safetensors`` through safetensors. Every failure is a :class:`CheckpointError` with a one-line
message that names the file, or the key, at fault.
"""
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from hcgnet.errors import CheckpointError
from hcgnet.files import atomic_path

PathLike = Union[str, os.PathLike]
SAFETENSORS_FORMAT = "hcgnet-1"
# What hcgnet's checkpoints say about themselves (safetensors metadata, or top-level keys of a .pt).
METADATA_KEYS = ("model_name", "num_classes", "in_chans", "class_names", "data_config", "val_size", "seed",
                 "switches")

#: Key prefixes of torchvision's detectors (``hcgnet detect train`` writes their state dicts): a checkpoint holding
#: them is a whole detector, which no classifier loads (its metadata also says ``detector``, as a .pt need not).
DETECTOR_PREFIXES = ("backbone.body.", "backbone.fpn.", "rpn.", "roi_heads.")
FIRST_CONV = "stem.conv0.weight"  # the stem's first convolution: what in_chans changes

# Module names of the published implementation inside one SMG module -> ours. Its "conv_5x5" is the
# dilated 3x3 depthwise conv; its fully connected layers are 1x1 convs (reshaped on load).
_PUBLISHED_SMG_NAMES = {
    "conv1_1x1": "squeeze.conv1x1",
    "conv2_3x3": "squeeze.conv3x3",
    "conv_3x3": "excite.conv3x3",
    "conv_5x5": "excite.conv3x3_dilated",
    "global_context3x3": "update_gate.context_a.score",
    "global_context5x5": "update_gate.context_b.score",
    "fcall": "update_gate.bottleneck.fc",
    "bn_attention": "update_gate.bottleneck.norm",
    "fc3x3": "update_gate.expand_a",
    "fc5x5": "update_gate.expand_b",
    "global_forget_context": "forget_gate.context.score",
    "fc1": "forget_gate.bottleneck.fc",
    "bn_forget": "forget_gate.bottleneck.norm",
    "fc2": "forget_gate.expand",
}
_BLOCK_KEY = re.compile(r"^features\.(?:HybridBlock|hybridblock)(\d+)\.SMG(\d+)\.([A-Za-z0-9_]+)\.(.+)$")
_TRANSITION_KEY = re.compile(r"^features\.(?:Transition|transition)(\d+)\.([A-Za-z0-9_]+)\.(.+)$")
_STEM_KEY = re.compile(r"^features\.((?:conv|norm)[0-2])\.(.+)$")


def published_to_hcgnet_key(key: str) -> Optional[str]:
    """Our name for a key of the published implementation (``module.`` already removed), or None."""
    m = _BLOCK_KEY.match(key)
    if m and m.group(3) in _PUBLISHED_SMG_NAMES:
        block, smg, name, rest = m.groups()
        return f"stages.{int(block) - 1}.block.layers.{int(smg) - 1}.{_PUBLISHED_SMG_NAMES[name]}.{rest}"
    m = _TRANSITION_KEY.match(key)
    if m and m.group(2) in _PUBLISHED_SMG_NAMES:
        index, name, rest = m.groups()
        return f"stages.{int(index)}.transition.{_PUBLISHED_SMG_NAMES[name]}.{rest}"
    m = _STEM_KEY.match(key)
    if m:
        return f"stem.{m.group(1)}.{m.group(2)}"
    if key.startswith("features.norm5."):
        return "norm." + key[len("features.norm5."):]
    if key.startswith("classifier."):
        return key
    return None


def is_published_format(state_dict: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("features.") for k in state_dict)


#: Key prefixes of wrappers: DataParallel/DistributedDataParallel (``module.``) and ``torch.compile``
#: (``_orig_mod.``), in either order when a compiled model was wrapped or the reverse.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _strip_prefix(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    stripped = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped


def _pickled_global(path: Path) -> Optional[str]:
    """The first importable name a pickle would call (``os.system``...), or None if it calls none or is
    not a pickle. Reads a torch zip archive's ``data.pkl``; never unpickles anything."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(name)
        else:
            data = path.read_bytes()
        strings: list = []
        for opcode, arg, _ in pickletools.genops(data):
            name = None
            if opcode.name in ("GLOBAL", "INST"):
                name = str(arg).replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = f"{strings[-2]}.{strings[-1]}"
            if name and not name.startswith(("torch.", "collections.OrderedDict")):  # what torch.save writes
                return name
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # not a (complete) pickle
        return None
    return None


#: The deployment files hcgnet tells apart from checkpoints, by format: what each is called in messages.
EXPORT_KINDS = {"torchscript": "a TorchScript export", "pt2": "a torch.export program (.pt2)",
                "openvino": "an OpenVINO model (.xml)", "onnx": "an ONNX export"}


def export_format(path: Path) -> Optional[str]:
    """Which deployment format ``path`` is in (a key of :data:`EXPORT_KINDS`), or None, told by its bytes (an ONNX
    file by its name too) without loading it."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            inside = {name.split("/", 1)[-1] for name in archive.namelist()}   # below the archive's own folder
        if any(name.startswith("code/") for name in inside):
            return "torchscript"
        if "archive_format" in inside or "models/model.json" in inside:
            return "pt2"
        return None
    if head.lstrip().startswith(b"<?xml"):
        return "openvino"
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and b"pytorch" in head):  # ONNX: ir_version first
        return "onnx"
    return None


def exported_kind(path: Path) -> Optional[str]:
    """What deployment file ``path`` is ("a TorchScript export", ...), or None: exports hold programs, not the
    weights and metadata hcgnet reads (``torch.load`` refuses a TorchScript archive under ``weights_only``, but
    after a warning, and the error would only say the file is not a checkpoint)."""
    fmt = export_format(path)
    return None if fmt is None else EXPORT_KINDS[fmt]


def is_onnx_export(path) -> bool:
    """Whether ``path`` is an ONNX file (by its name or its first bytes): what eval and predict run as exported."""
    path = Path(path)
    return path.is_file() and export_format(path) == "onnx"


def torch_load_weights_only(path: Path) -> object:
    kind = exported_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path} is {kind}, not a checkpoint: hcgnet reads the weights files that train and "
                              "convert write (.safetensors, .pt, .pth); pass the checkpoint it was exported from")
    try:
        with warnings.catch_warnings():   # torch's notice about an old pickle protocol is not for hcgnet's users
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the weights-only unpickler fails on arbitrary bytes in many ways
        if isinstance(e, pickle.UnpicklingError):
            called = _pickled_global(path)
            if called is not None:
                raise CheckpointError(
                    f"refused to load {path}: it holds pickled objects ({called}) other than tensors, which could "
                    "run code; hcgnet only loads plain weights (re-save just the state_dict where you trust the file)"
                ) from None
        if zipfile.is_zipfile(path) or isinstance(e, EOFError) or "zip" in str(e).lower():
            raise CheckpointError(f"{path} is truncated or corrupt: it is not a complete PyTorch checkpoint") from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (truncated, corrupt or another format)") from None


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length followed by '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


#: The suffixes of the checkpoint files hcgnet reads (``.tar``: the published ``.pth.tar``).
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".tar")


def names_a_file(name: str) -> bool:
    """Whether a name given where a model name or a checkpoint may go is a file's: one that exists, a path, or a
    checkpoint's file name (no model or spec has either)."""
    return os.path.exists(name) or os.sep in name or name.lower().endswith(CHECKPOINT_SUFFIXES)


def check_checkpoint_file(path: PathLike) -> Path:
    """``path`` if it is a file; a one-line :class:`CheckpointError` if it is missing or a folder (most often a
    run's: the error names the file to pass)."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = sorted(q.name for q in path.iterdir() if q.suffix in CHECKPOINT_SUFFIXES)
        pick = next((f for f in ("best.safetensors", "final.safetensors") if f in found), found[0] if found else None)
        hint = f"e.g. {path / pick}" if pick else "give a .safetensors, .pt or .pth file"
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; {hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def read_state_dict(path: PathLike) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """Read a checkpoint file into ``(state_dict, metadata)`` with hcgnet's key names.

    Accepts the published format (``{'net': state_dict}`` saved from DataParallel), hcgnet's own
    checkpoints (``{'model': state_dict, ...}``), a bare state dict, and ``.safetensors``.
    """
    path = check_checkpoint_file(path)
    metadata: Dict[str, str] = {}
    if is_safetensors_file(path):
        state_dict, metadata = read_safetensors(path)
    else:
        obj = torch_load_weights_only(path)
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path} is not a model checkpoint (it holds a {type(obj).__name__}, not a dict)")
        state_dict, metadata = unwrap_state_dict(obj, path)
    if metadata.get("detector") == "1" or any(k.startswith(DETECTOR_PREFIXES) for k in _strip_prefix(state_dict)):
        # said here, where every command reads its weights, not as an "unexpected key" of another model
        raise CheckpointError(f"{path} is a detector checkpoint (hcgnet detect train): use it with hcgnet detect "
                              "eval or hcgnet detect predict; classifiers load classifier checkpoints")
    if is_published_format(_strip_prefix(state_dict)):
        metadata.setdefault("source", "published")
    return to_hcgnet_names(state_dict, path), metadata


def unwrap_state_dict(obj: Mapping, source: PathLike) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """The state dict inside a loaded checkpoint (``{'model'|'state_dict'|'net': state_dict, ...}`` or a
    bare state dict) and what the checkpoint says about itself."""
    state_dict, metadata = obj, {}
    for field in ("model", "state_dict", "net"):
        if isinstance(obj.get(field), dict):
            state_dict, metadata = obj[field], {k: str(v) for k, v in obj.items() if k in METADATA_KEYS}
            break
    if not state_dict or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{source} is not a model checkpoint (no state dict of tensors found)")
    return dict(state_dict), metadata


def to_hcgnet_names(state_dict: Mapping[str, Tensor], source: PathLike) -> Dict[str, Tensor]:
    """Keys without wrappers' prefixes (:data:`WRAPPER_PREFIXES`) and, for the published format, renamed to
    hcgnet's."""
    state_dict = _strip_prefix(state_dict)
    if is_published_format(state_dict):
        state_dict = _convert_published(state_dict, source)
    return state_dict


def checkpoint_filter_fn(state_dict: Mapping, model: nn.Module) -> Dict[str, Tensor]:
    """timm's ``pretrained_filter_fn``: whatever timm read (a published ``{'net': ...}`` checkpoint, an
    hcgnet checkpoint or safetensors) -> a state dict that loads into ``model`` as it is. The classifier and
    the first convolution are passed through unchecked: timm drops the one when the class count differs and
    adapts the other to ``in_chans`` (``adapt_input_conv``) after this filter."""
    state_dict, _ = unwrap_state_dict(state_dict, "pretrained weights")
    state_dict = to_hcgnet_names(state_dict, "pretrained weights")
    expected = model.state_dict()
    passed = {k: v for k, v in state_dict.items() if k.startswith("classifier.") or k == FIRST_CONV}
    body = {k: v for k, v in state_dict.items() if k not in passed}
    return {**fit_state_dict({k: v for k, v in expected.items() if k not in passed}, body, "pretrained weights",
                             strict=True), **passed}


def adapt_pretrained(state_dict: Mapping[str, Tensor], model: nn.Module) -> Tuple[Dict[str, Tensor], bool]:
    """Pretrained weights for a model built with other ``in_chans`` or ``num_classes``, as timm's
    ``pretrained=True`` does: the first convolution adapted by timm's ``adapt_input_conv`` (RGB summed for one
    channel, repeated and rescaled for more), the classifier left out where the class count differs (the
    model keeps its new one). Returns the state dict and whether the classifier was left out."""
    from timm.models import adapt_input_conv

    state_dict, expected = dict(state_dict), model.state_dict()
    conv, target = state_dict.get(FIRST_CONV), expected.get(FIRST_CONV)
    if conv is not None and target is not None and conv.dim() == 4 and conv.shape[1] != target.shape[1]:
        state_dict[FIRST_CONV] = adapt_input_conv(int(target.shape[1]), conv)
    fresh_head = num_classes_in(state_dict) != num_classes_in(expected)
    if fresh_head:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
    return state_dict, fresh_head


def _published_keys_hook(module: nn.Module, state_dict: Dict, prefix: str, *args) -> None:
    """``load_state_dict`` pre-hook: a whole published checkpoint (``{'net': ...}``, with or without
    ``module.``) is renamed to hcgnet's keys in place, before any submodule reads it."""
    if prefix or not state_dict:
        return
    wrapped = isinstance(state_dict.get("net"), dict)
    if not wrapped and not is_published_format(_strip_prefix(state_dict)):
        return
    converted = to_hcgnet_names(unwrap_state_dict(dict(state_dict), "state dict")[0], "state dict")
    expected = module.state_dict()
    for key, value in converted.items():  # the published gates store their FC layers as 1x1 convs
        if value.dim() == 4 and value.shape[2:] == (1, 1) and key in expected and expected[key].dim() == 2:
            converted[key] = value.flatten(1)
    state_dict.clear()
    state_dict.update(converted)


def accept_published_state_dicts(model: nn.Module) -> nn.Module:
    """Let ``model.load_state_dict`` (and so timm's ``create_model(..., checkpoint_path=...)``, which calls
    it with whatever the file holds) take a published checkpoint as it is."""
    model.register_load_state_dict_pre_hook(_published_keys_hook)
    return model


def read_metadata(path: PathLike) -> Dict[str, str]:
    """What a checkpoint says about itself (model name, classes, preprocessing...), without its tensors
    where the format allows (safetensors)."""
    path = Path(path)
    if path.is_file() and is_safetensors_file(path):
        return _safetensors_metadata(path)
    return read_state_dict(path)[1]


def read_safetensors(path: Path) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """A safetensors file's tensors and metadata, as saved (no key renaming); a truncated or corrupt file is
    refused in one line."""
    metadata = _safetensors_metadata(path)
    try:
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError):
        raise CheckpointError(f"{path} is truncated or corrupt: it is not a valid safetensors file") from None


def is_safetensors_file(path: Path) -> bool:
    """Whether ``path`` is a safetensors file, by its name or its first bytes."""
    return path.suffix == ".safetensors" or _is_safetensors(path)


def _safetensors_metadata(path: Path) -> Dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        raise CheckpointError(f"{path} is truncated or corrupt: it is not a valid safetensors file") from None


def _convert_published(state_dict: Mapping[str, Tensor], path: PathLike) -> Dict[str, Tensor]:
    converted = {}
    for key, value in state_dict.items():
        new_key = published_to_hcgnet_key(key)
        if new_key is None:
            raise CheckpointError(f"{path}: key {key!r} is not part of any published HCGNet")
        converted[new_key] = value
    return converted


def num_classes_in(state_dict: Mapping[str, Tensor]) -> Optional[int]:
    """Classifier outputs stored in a state dict with hcgnet's names (None if it has no classifier)."""
    w = state_dict.get("classifier.weight")
    return None if w is None else int(w.shape[0])


def load_checkpoint(model: nn.Module, path: PathLike, strict: bool = True) -> Dict[str, str]:
    """Load weights from ``path`` into ``model`` and return the file's metadata.

    Any missing, unexpected or mis-shaped key is a :class:`CheckpointError` naming it; a different
    class count gets its own message. With ``strict=False`` only the keys that fit are loaded.
    """
    state_dict, metadata = read_state_dict(path)
    load_state_dict_into(model, state_dict, path, strict)
    return metadata


def load_state_dict_into(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: PathLike, strict: bool = True,
    keep: Tuple[str, ...] = (),
) -> None:
    """Load a state dict with hcgnet's names (from :func:`read_state_dict`) into ``model``; ``source``
    names the file in error messages. The model's keys starting with a prefix in ``keep`` (e.g. a new
    classifier) keep their values and are left out of the strict check."""
    expected = {k: v for k, v in model.state_dict().items() if not (keep and k.startswith(keep))}
    fitted = fit_state_dict(expected, state_dict, source, strict)
    model.load_state_dict(fitted, strict=False)


def fit_state_dict(
    expected: Mapping[str, Tensor], state_dict: Mapping[str, Tensor], source: PathLike, strict: bool = True
) -> Dict[str, Tensor]:
    """The entries of ``state_dict`` (hcgnet's names) that fit a model whose state dict is ``expected``:
    the gates' 1x1-conv FC weights flattened, ``num_batches_tracked`` set to 0 where a file written
    before PyTorch 0.4.1 has none at all. With ``strict`` anything else is a :class:`CheckpointError`."""
    n_file, n_model = num_classes_in(state_dict), num_classes_in(expected)
    if strict and n_file is not None and n_model is not None and n_file != n_model:
        raise CheckpointError(
            f"{source} was trained for {n_file} classes but the model has {n_model}; "
            f"create the model with num_classes={n_file}, or load with strict=False to keep its new classifier "
            "(fine-tuning: every other tensor is loaded)"
        )
    if not any(k.endswith(".num_batches_tracked") for k in state_dict):
        # PyTorch 0.4.0 and earlier had no such buffer: the count only matters for momentum=None norms.
        state_dict = {**state_dict, **{k: torch.zeros((), dtype=v.dtype) for k, v in expected.items()
                                        if k.endswith(".num_batches_tracked")
                                        and k[: -len("num_batches_tracked")] + "running_mean" in state_dict}}
    fitted, unexpected = {}, []
    for key, value in state_dict.items():
        target = expected.get(key)
        if target is None:
            unexpected.append(key)
            continue
        if value.dim() == 4 and target.dim() == 2 and value.shape[2:] == (1, 1):
            value = value.flatten(1)  # published gates store their FC layers as 1x1 convs
        if value.shape != target.shape:
            if strict:
                raise CheckpointError(
                    f"{source}: {key!r} has shape {tuple(value.shape)} but the model expects "
                    f"{tuple(target.shape)}: the checkpoint is for another model"
                )
            continue
        fitted[key] = value
    if strict and unexpected:
        # a parameter named rather than a BatchNorm's step counter: it says which layer the model lacks
        shown = next((k for k in unexpected if not k.endswith(".num_batches_tracked")), unexpected[0])
        more = f" ({len(unexpected)} unexpected)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{source}: unexpected key {shown!r}{more}: the checkpoint is for another model"
                              + _switch_hint(unexpected))
    missing = [k for k in expected if k not in fitted]
    if strict and missing:
        raise CheckpointError(
            f"{source}: missing key {missing[0]!r} ({len(missing)} missing): the checkpoint is for another model"
        )
    return fitted


def _switch_hint(keys) -> str:
    """What to say when the file has gates the model lacks: most often the model was built with a gate switched
    off and given the weights of the network with it."""
    gates = [gate for gate in ("forget_gate", "update_gate") if any(f".{gate}." in k for k in keys)]
    if not gates:
        return ""
    names = " and ".join(g.replace("_", " ") + "s" for g in gates)
    return f" (the file has {names} this model was built without: leave out {', '.join(f'{g}=False' for g in gates)})"


def save_safetensors(
    model: Union[nn.Module, Mapping[str, Tensor]], path: PathLike, metadata: Optional[Mapping[str, str]] = None
) -> None:
    """Write a model's state dict (or a state dict) to ``path`` atomically (a temporary file, then
    ``os.replace``). A model's file says what rebuilds it (:func:`model_metadata`: its name, class count, input
    channels and design switches), so that ``hcgnet eval``/``predict`` and ``hcgnet.inference.load_model`` need
    no ``--model``; ``metadata`` adds to or overrides that (a training run adds its preprocessing)."""
    path = Path(path)
    described = model_metadata(model) if isinstance(model, nn.Module) else {}
    meta = {"format": SAFETENSORS_FORMAT, **described, **{k: str(v) for k, v in (metadata or {}).items()}}
    state_dict = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def model_metadata(model: nn.Module) -> Dict[str, str]:
    """What a checkpoint records to rebuild ``model``: ``model_name`` (a variant's name, or the paper's notation
    of any other HCGNet; a timm model's architecture), ``num_classes``, ``in_chans`` and HCGNet's ``switches``."""
    import json

    from hcgnet.models.variants import VARIANTS

    cfg = getattr(model, "pretrained_cfg", None) or {}
    architecture, spec = cfg.get("architecture"), getattr(model, "spec", None)
    if spec is not None:   # an HCGNet: its variant's name where it is that variant, else its spec
        variant = VARIANTS.get(architecture)
        name = architecture if variant is not None and variant.spec == spec else spec
    else:
        name = architecture
    found = {"model_name": name, "num_classes": getattr(model, "num_classes", None),
             "in_chans": getattr(model, "in_chans", None)}
    described = {k: str(v) for k, v in found.items() if isinstance(v, (str, int)) and not isinstance(v, bool)}
    if isinstance(getattr(model, "switches", None), dict):
        described["switches"] = json.dumps(model.switches)
    return described
