"""Using a trained model: load it from any checkpoint, score it on a dataset, classify image files.

The library side of ``hcgnet eval``, ``hcgnet predict`` and ``hcgnet convert``. A checkpoint that does not
say how it was trained (a published one) is used with its variant's standard preprocessing and class
indices, and the caller is told so once (``log``), never silently.
"""
import glob
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from hcgnet.data import (
    DataConfig, DataError, build_data, build_eval_dataset, build_eval_transform, image_size_note, load_image,
    resolve_data_config, skipped_note, spec_folder,
)
from hcgnet.data.image_folder import class_folders, layout
from hcgnet.data.images import IMAGE_EXTENSIONS
from hcgnet.compiled import compile_frozen
from hcgnet.errors import CheckpointError, HCGNetError, channels_mismatch
from hcgnet.files import check_output_file, reported_write
from hcgnet.models import create_model, save_safetensors
from hcgnet.models.checkpoints import is_onnx_export, is_safetensors_file, read_metadata, torch_load_weights_only
from hcgnet.models.registry import GENERIC, OtherNetwork, first_conv_in_chans, is_timm_baseline, parse_model_kwargs
from hcgnet.provenance import provenance
from hcgnet.models.variants import format_spec, resolve
from hcgnet.distributed import Dist
from hcgnet.evaluation import AMP_DTYPES, autocast, device_of, evaluate, fast_path_flags, images_to

SPLITS = ("test", "val", "all")
#: Where a training run's data was and how it was split, kept with its weights.
DATA_KEYS = ("data", "data_dir", "val_size", "test_size", "seed")
#: Those and the arithmetic the run scored its val and test sets in: read from a training checkpoint's ``config``
#: (or a run folder's ``config.yaml``) where its metadata lacks them.
RUN_KEYS = (*DATA_KEYS, "amp", "channels_last", "skip_bad_images")
#: What an export carries of its run, so that eval rebuilds the run's test split for it: the data and split
#: settings, and whether the run left unreadable images out.
EXPORTED_RUN_KEYS = (*DATA_KEYS, "skip_bad_images")
Log = Callable[[str], None]


def note_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bad_images_setting(meta: Dict[str, str], skip_bad_images: Optional[bool], log: Log) -> Tuple[bool, Log]:
    """Whether to leave a folder's unreadable images out (``skip_bad_images``; None: as the checkpoint's training
    run did), and the log for the note that names those left out and says why: a user scoring a folder is told
    what was not scored."""
    if skip_bad_images is None:
        skip, why = (metadata_value(meta, "skip_bad_images") == "true",
                     "as the checkpoint's training run did (--skip-bad-images)")
    else:
        skip, why = skip_bad_images, "as --skip-bad-images asks"
    return skip, lambda line: log(f"note: {line}, {why}")


def image_folders_read(data: Optional[str], checkpoints: Sequence[str]) -> List[str]:
    """The image folders a command scoring ``checkpoints`` on ``data`` reads: ``imagefolder:PATH``'s, or with no
    ``data`` each checkpoint's recorded one. For the output check before any work; a file that cannot be read
    is left to the command's own loader to refuse."""
    from hcgnet.data import spec_folder

    specs = [data] if data else []
    for path in [] if data else checkpoints:
        try:
            specs.append(metadata_value(checkpoint_metadata(path), "data"))
        except (HCGNetError, OSError):
            pass
    folders = []
    for spec in specs:
        try:
            folders.append(spec_folder(spec) if spec else None)
        except HCGNetError:
            pass
    return [f for f in folders if f]


def metadata_value(meta: Dict[str, str], key: str) -> Optional[str]:
    """A metadata value, None when absent or recorded as None (an automatic setting)."""
    value = meta.get(key)
    return None if value in (None, "", "None", "null") else value


def checkpoint_metadata(path: str) -> Dict[str, str]:
    """Everything a checkpoint says about itself: its metadata, and for a training checkpoint (``.pt``) the
    run's data and split settings from its ``config``. A ``.safetensors`` of a run, still in its run folder,
    takes what it does not record of them (its data before the data was recorded, the data folder of an earlier
    run) from the run's ``config.yaml``; one that timm's ``save_for_hf`` wrote takes the network from the
    ``config.json`` beside it."""
    meta = dict(read_metadata(path))
    p = Path(path)
    if not meta.get("model_name"):
        meta.update(timm_folder_metadata(p))
    run: Dict[str, Any] = {}
    if not is_safetensors_file(p):
        obj = torch_load_weights_only(p)
        run = obj.get("config") if isinstance(obj, dict) and isinstance(obj.get("config"), dict) else {}
    elif "seed" in meta and any(key not in meta for key in RUN_KEYS) and (p.parent / "config.yaml").is_file():
        import yaml

        try:
            saved = yaml.safe_load((p.parent / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            saved = {}
        if isinstance(saved, dict) and saved.get("model") == meta.get("model_name"):
            run = saved
    for key in RUN_KEYS:
        if key not in meta and key in run:
            meta[key] = json.dumps(run[key]) if isinstance(run[key], bool) else str(run[key])
    return meta


def precision_note(meta: Dict[str, str], split: str, amp: str, channels_last: bool) -> Optional[str]:
    """What to tell a user scoring a training run's own ``val``/``test`` split in other arithmetic than the run
    scored it in (None when the same, or the run's is not recorded): a bf16 run's results.json and an fp32
    ``eval`` differ in the last digits, which looks like a bug unless said."""
    run_amp = metadata_value(meta, "amp")
    if split not in ("test", "val") or run_amp is None:
        return None
    run_channels_last = metadata_value(meta, "channels_last") == "true"
    if run_amp == amp and (amp == "none" or run_channels_last == channels_last):
        return None    # in fp32 the memory layout changes nothing measurable
    flags = (f"--amp {run_amp}" if run_amp != "none" else "fp32") + " --channels-last" * run_channels_last
    this = f"--amp {amp}" if amp != "none" else "fp32"
    return (f"note: the training run scored its {split} split in {flags}, this evaluation is in {this}"
            f"{' --channels-last' * channels_last}: figures can differ from the run's in the last digits")


def load_model(path: str, model_name: Optional[str] = None) -> Tuple[nn.Module, Dict[str, str]]:
    """A model built and loaded from a checkpoint that says what it is (hcgnet's ``.safetensors`` and
    training checkpoints do); for published checkpoints pass ``model_name``. Returns ``(model, metadata)``."""
    meta = checkpoint_metadata(path)
    name = model_name or meta.get("model_name")
    if not name:
        raise CheckpointError(f"{path} does not say which model it holds; pass --model NAME (model_name= from Python)")
    try:   # the switches the file records, or a timm folder's config.json beside it
        return create_model(name, checkpoint_path=path, **parse_model_kwargs(meta.get("switches"))).eval(), meta
    except OtherNetwork as e:  # --model overrode what the file says it holds
        raise OtherNetwork(e.weights, e.recorded, e.name, e.spec, f"leave --model out or pass --model "
                           f"{e.recorded!r}") from None
    except CheckpointError as e:
        recorded = meta.get("model_name")
        if model_name and recorded and recorded != model_name:   # --model overrode what the file says it holds
            raise CheckpointError(f"{e} ({recorded}, by its metadata): leave --model out or pass --model "
                                  f"{recorded!r}") from None
        raise


def timm_folder_metadata(path: Path) -> Dict[str, str]:
    """The network of a ``model.safetensors`` that timm's ``save_for_hf`` (or ``push_to_hub``) wrote, from the
    ``config.json`` beside it, in hcgnet's metadata keys (``model_name``, ``num_classes``, ``switches``); {} for
    any other file."""
    config_file = path.parent / "config.json"
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return {}
    architecture = config.get("architecture") if isinstance(config, dict) else None
    if not isinstance(architecture, str):
        return {}
    args = dict(config.get("model_args") or {})
    depths, growth = args.pop("block_depths", None), args.pop("growth_rates", None)
    for key in ("stem", "in_chans", "num_classes", "global_pool"):  # the weights say these
        args.pop(key, None)
    name = format_spec(depths, growth) if architecture == GENERIC and depths and growth else architecture
    meta = {"model_name": name, "switches": json.dumps(args)}
    if isinstance(config.get("num_classes"), int):
        meta["num_classes"] = str(config["num_classes"])
    return meta


def named_checkpoint_model(path: str, **model_kwargs) -> Tuple[nn.Module, Dict[str, str]]:
    """The network a checkpoint names in its metadata, with its weights (``model_kwargs``: switches such as
    ``memory_efficient``), and the metadata: for commands with no ``--model`` to name it (``info``, ``bench``), a
    file that does not name its model is refused with how to name it in a copy."""
    meta = checkpoint_metadata(path)   # read once: a training .pt is a whole torch.load
    if not meta.get("model_name"):
        raise CheckpointError(f"{path} does not say which model it holds; name it in a copy: hcgnet convert {path} "
                              "NAMED.safetensors --model NAME")
    switches = parse_model_kwargs(meta.get("switches"), f"{path}: switches")
    return create_model(meta["model_name"], checkpoint_path=path, **{**switches, **model_kwargs}), meta


def recorded_data(checkpoints: Sequence[Tuple[str, Dict[str, str]]]) -> str:
    """The data every checkpoint (``(path, metadata)``) records it was trained on: what ``eval`` and ``attack``
    use without ``--data``. Refused in one line when one records none, when they differ, or when the recorded
    folder is not here."""
    recorded = {path: metadata_value(meta, "data") for path, meta in checkpoints}
    missing = [path for path, data in recorded.items() if data is None]
    if missing:
        raise CheckpointError(f"{missing[0]} does not record the data it was trained on; pass --data")
    found = sorted(set(recorded.values()))
    if len({_place(data) for data in found}) > 1:
        raise CheckpointError(f"the checkpoints were trained on different data ({', '.join(found)}); pass --data")
    # one folder recorded two ways (as given by an older checkpoint, absolute by a newer one): the one that is here
    data = next((d for d in found if _is_here(d)), found[0])
    if not _is_here(data):
        path = next(p for p, d in recorded.items() if d == data)
        relative = "" if os.path.isabs(spec_folder(data)) else (
            " (a relative path is relative to where the training run started)")
        raise CheckpointError(f"{path} was trained on {data}, which is not here{relative}; pass --data")
    return data


def _place(data: str) -> str:
    """What ``data`` names: an image folder by its real path (from this working folder), a dataset by its name."""
    folder = spec_folder(data)
    return data if folder is None else _real(folder)


def _is_here(data: str) -> bool:
    """Whether ``data`` can be read from this working folder (a named dataset is looked for later, in --data-dir)."""
    folder = spec_folder(data)
    return folder is None or os.path.isdir(folder)


def run_data_dir(data: str, data_dir: Optional[str], meta: Dict[str, str]) -> Optional[str]:
    """Where to look for ``data``: ``data_dir`` (``--data-dir``) if given; else, for the data the checkpoint's run
    trained on, the folder the run found it in, if that is here (None: the default, $HCGNET_DATA or the cache)."""
    if data_dir is not None or data != metadata_value(meta, "data"):
        return data_dir
    recorded = metadata_value(meta, "data_dir")
    return recorded if recorded is not None and os.path.isdir(os.path.expanduser(recorded)) else None


def data_config_of(model: nn.Module, meta: Dict[str, str]) -> DataConfig:
    """The eval preprocessing a checkpoint was trained with, or the model's own (its ``pretrained_cfg``)."""
    if meta.get("data_config"):
        return DataConfig.from_dict(json.loads(meta["data_config"]))
    classes = json.loads(meta["class_names"]) if meta.get("class_names") else [str(i) for i in range(model.num_classes)]
    cifar = model.pretrained_cfg["input_size"][-1] == 32
    return resolve_data_config(model.pretrained_cfg, classes, in_chans=first_conv_in_chans(model),
                               name="cifar10" if cifar else "imagefolder")


def export_metadata(model: nn.Module, meta: Dict[str, str], model_name: Optional[str] = None,
                    run_data: bool = True) -> Dict[str, str]:
    """What an exported file carries so that it can be used without hcgnet (``hcgnet export``): the model's name,
    its class names (a JSON list, in output order) and the eval preprocessing ``predict`` applies (``data_config``,
    a JSON :class:`DataConfig`: input size, mean, std, and ``resize``, the shorter side before the centre crop);
    and, as the checkpoint recorded them, the network's design ``switches`` (for ``hcgnet info``) and its run's
    data and split settings (:data:`EXPORTED_RUN_KEYS`; not with ``run_data=False``: they name local folders),
    with which ``eval`` scores the file on the run's own test split."""
    config = data_config_of(model, meta)
    name = model_name or meta.get("model_name") or model.pretrained_cfg.get("architecture", "")
    run = {key: meta[key] for key in ("switches", *(EXPORTED_RUN_KEYS if run_data else ())) if key in meta}
    # A checkpoint without class names (a published one) gets its output indices as names, marked as such, so
    # that eval labels a folder with the folder's classes, as it does for that checkpoint.
    indices = {} if meta.get("class_names") else {"class_indices": "true"}
    return {"model_name": name, "class_names": json.dumps(list(config.class_names)),
            "data_config": json.dumps(asdict(config)), **indices, **run}


@dataclass(frozen=True)
class ModelIO:
    """What building a split for a classifier needs of it: the preprocessing of its inputs, their channels, and
    its number of classes; from a model and its checkpoint's metadata (:func:`model_io`) or from an export's
    (:func:`read_export`)."""
    config: DataConfig
    in_chans: int
    num_classes: int


def model_io(model: nn.Module, meta: Dict[str, str]) -> ModelIO:
    return ModelIO(data_config_of(model, meta), first_conv_in_chans(model), model.num_classes)


def guess_note(path: str, config: DataConfig, meta: Dict[str, str], classes: str = "class indices",
               preprocessing: Optional[str] = None) -> Optional[str]:
    """The one-line note to show when a checkpoint lacks class names or preprocessing (None when it has both):
    what it lacks and what is used instead (``config``: the preprocessing :func:`data_config_of` gives)."""
    missing = [what for what, key in (("class names", "class_names"), ("preprocessing", "data_config"))
               if not meta.get(key)]
    if not missing:
        return None
    if preprocessing is None:
        stem = "CIFAR" if config.input_size[-1] == 32 else "ImageNet"
        preprocessing = f"the variant's standard {stem} preprocessing"
    used = [preprocessing] * (not meta.get("data_config")) + [classes] * (not meta.get("class_names"))
    return f"note: {path} carries no {' or '.join(missing)}; using {' and '.join(used)}"


# ------------------------------------------------------------------------------------------------ convert


def convert_checkpoint(
    source: str, output: str, model_name: Optional[str] = None, force: bool = False
) -> Tuple[nn.Module, Dict[str, str]]:
    """Write ``source`` (a published checkpoint, a training ``.pt`` or a ``.safetensors``) as ``output``
    (``.safetensors``), keeping all it says about itself: class names, preprocessing, input channels, split
    settings, the data it was trained on. Returns ``(model, metadata written)``."""
    out = Path(output)
    if out.suffix != ".safetensors":
        raise HCGNetError(f"output {out} must end in .safetensors")
    check_output_file(out, "output", force)
    meta = checkpoint_metadata(source)
    requested = model_name or meta.get("model_name")
    if not requested:
        raise CheckpointError(f"{source} does not say which model it holds; pass --model NAME (model_name= from Python)")
    name = requested.strip() if is_timm_baseline(requested) else resolve(requested)[0]
    model = create_model(name, checkpoint_path=source).eval()
    written = {k: v for k, v in meta.items() if k != "format"}  # save_safetensors writes its own format tag
    written.update(model_name=name, num_classes=str(model.num_classes),
                   in_chans=str(first_conv_in_chans(model)))
    with reported_write(out):
        save_safetensors(model, out, written)
    return model, written


# ------------------------------------------------------------------------------------------------ eval


def _real(folder: str) -> str:
    return os.path.realpath(os.path.expanduser(folder))


def _same_place(a: str, b: str) -> bool:
    return _real(a) == _real(b)


def choose_split(data: str, meta: Dict[str, str]) -> Tuple[str, Optional[str]]:
    """The split ``eval`` scores when none is asked for, and why, when that is not the obvious "test": a folder
    the checkpoint was not trained on is scored whole ("all")."""
    folder = spec_folder(data)
    if folder is None:
        return "test", None
    recorded = metadata_value(meta, "data")
    if recorded is not None:
        trained = spec_folder(recorded)
        if trained is not None and _same_place(trained, folder):
            return "test", None
        return "all", f"{folder} is not the data the checkpoint was trained on ({recorded}): scoring all of it"
    has_split = metadata_value(meta, "seed") is not None or metadata_value(meta, "val_size") is not None
    if not os.path.isdir(os.path.join(folder, "train")) and not has_split:
        return "all", f"the checkpoint records no training split: scoring all of {folder}"
    return "test", None


def check_split_data(data: str, meta: Dict[str, str], split: str) -> None:
    """Refuse ``--split test``/``val`` on a folder the checkpoint was not trained on: those splits are the
    training run's held-out images, which another folder does not hold."""
    folder, recorded = spec_folder(data), metadata_value(meta, "data")
    if folder is None or recorded is None:
        return
    trained = spec_folder(recorded)
    if trained is None or not _same_place(trained, folder):
        raise HCGNetError(f"--split {split} is the training run's held-out images of {recorded}, and {folder} is not "
                          "that data; pass --split all to score every image of it")


def folder_classes(folder: str) -> List[str]:
    """The class sub-folders of an image folder, sorted (ImageFolder's order): those of its ``train/`` when it
    has one (a ``train/`` + ``val/`` layout), not ``train`` and ``val`` themselves."""
    return class_folders(layout(folder)[0])   # layout refuses a missing folder and a file in one line


#: Seconds between progress lines when stderr is not a terminal (a log file, CI, a cluster job).
LOG_EVERY_S = 30.0


class _ProgressLines:
    """Progress for output that is not a terminal, where a bar would be noise: a line every LOG_EVERY_S."""

    def __init__(self, total: int, what: str, log: Log) -> None:
        self.total, self.what, self.log = total, what, log
        self.done, self.start = 0, time.monotonic()
        self.last = self.start

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= LOG_EVERY_S and self.done < self.total:
            self.last = now
            rate = self.done / (now - self.start)
            self.log(f"{self.what}: {self.done}/{self.total} batches, about {(self.total - self.done) / rate:.0f} s left")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def batch_progress(total: int, what: str, show: Optional[bool], log: Log):
    """A tqdm bar on a terminal, progress lines elsewhere (``show=None``); ``show=False``: nothing."""
    if show is None and not sys.stderr.isatty():
        return _ProgressLines(total, what, log)
    return tqdm(total=total, desc=what, unit="batch", disable=show is False, leave=False)


def check_compile_option(compile: bool, int8: Optional[str]) -> None:
    """``--compile`` is for the float model; the int8 program has its own (``--no-int8-compile``)."""
    if compile and int8 is not None:
        raise HCGNetError("--compile is for the float model; with --int8 the pt2e program is compiled already "
                          "(--no-int8-compile turns that off): drop --compile")


def check_eval_options(batch_size: int, workers: int, amp: str, dev: torch.device) -> Optional[torch.dtype]:
    if batch_size < 1:
        raise HCGNetError(f"--batch-size must be 1 or more, got {batch_size}")
    if workers < 0:
        raise HCGNetError(f"--workers must be 0 or more, got {workers}")
    if amp not in AMP_DTYPES:
        raise HCGNetError(f"unknown --amp {amp!r}; use none, bf16 or fp16")
    if amp == "fp16" and dev.type != "cuda":
        raise HCGNetError("--amp fp16 needs a GPU; on the CPU use --amp bf16")
    return AMP_DTYPES[amp]


def split_settings(meta: Dict[str, str]) -> Dict[str, Any]:
    """The hold-out settings (``val_size``, ``test_size``, ``seed``) a checkpoint's run recorded, as keyword
    arguments of the data builders, so its test and validation images can be rebuilt exactly."""
    kwargs: Dict[str, Any] = {}
    for key, cast in (("val_size", float), ("test_size", float), ("seed", int)):
        if key in meta:  # recorded; None means "automatic" and is passed on as such
            kwargs[key] = None if metadata_value(meta, key) is None else cast(float(meta[key]))
    if "test_size" not in meta and "val_size" in kwargs:  # runs from before test_size held out val_size twice
        kwargs["test_size"] = kwargs["val_size"]
    return kwargs


def checkpoint_split(data, data_dir, split, meta, io: ModelIO, path, skip_bad_images,
                     log: Optional[Log] = None) -> Tuple[Dataset, List[str]]:
    """The split ``split`` ("test", "val" or "train") of ``data`` as the checkpoint's training run made it
    (its split settings, in ``meta``), every image with the evaluation transform of ``io`` (the training images
    too: int8 calibration reads them); refused in one line when the data does not fit the model. Returns
    ``(dataset, class names)``; ``log`` gets a line naming the unreadable images left out (``skip_bad_images``),
    if any."""
    bundle = build_data(data, data_dir=data_dir, download=False, skip_bad_images=skip_bad_images,
                        preprocessing=io.config, augment=False, **split_settings(meta))
    if bundle.skipped_files and log is not None:
        log(skipped_note(bundle.skipped_files))
    if bundle.num_classes != io.num_classes:
        raise CheckpointError(
            f"{path} classifies {io.num_classes} classes but {data} has {bundle.num_classes}; "
            "evaluate it on the dataset it was trained for"
        )
    trained_on = json.loads(meta["class_names"]) if meta.get("class_names") else None
    if trained_on is not None and list(trained_on) != list(bundle.config.class_names):
        raise CheckpointError(
            f"{path} was trained on the classes {_few(trained_on)} but {data} has {_few(bundle.config.class_names)} "
            "(in this order); evaluate it on the dataset it was trained for"
        )
    if bundle.config.input_size[0] != io.in_chans:
        raise CheckpointError(channels_mismatch(str(path), io.in_chans, data, bundle.config.input_size[0], "evaluate"))
    return {"test": bundle.test, "val": bundle.val, "train": bundle.train}[split], list(bundle.config.class_names)


def _few(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def _all_dataset(data, data_dir, meta, io: ModelIO, path, skip_bad_images,
                 skipped_log: Log) -> Tuple[Dataset, List[str]]:
    folder = spec_folder(data)
    if folder is None:
        raise HCGNetError("--split all scores every image of a folder: use it with --data imagefolder:DIR")
    config = io.config
    found = folder_classes(folder)
    if not meta.get("class_names"):  # nothing to label with but the folder's own classes, in ImageFolder order
        if len(found) != io.num_classes:
            raise CheckpointError(
                f"{path} classifies {io.num_classes} classes but {folder} has {len(found)} class folders; "
                "evaluate it on a folder with one sub-folder per class it knows"
            )
        config = replace(config, class_names=found)
    dataset = build_eval_dataset(data, config, data_dir, "all", skip_bad_images=skip_bad_images, log=skipped_log)
    return dataset, list(config.class_names)


def float_runner(model: nn.Module, meta: Dict[str, str], batch: int, compile: bool, openvino: Optional[str],
                 log: Log) -> Callable[[torch.Tensor], torch.Tensor]:
    """What eval and predict classify with when not in int8: ``model``, compiled with its weights frozen for
    ``batch`` images at a time (``compile``), or exported to OpenVINO at precision ``openvino``."""
    if compile:
        log("compiling the model with torch.compile, weights frozen (the first batch takes minutes)")
        return compile_frozen(model, batch)
    if openvino is not None:
        from hcgnet.export import openvino_model

        log(f"exporting the model to ONNX for OpenVINO ({openvino}); each new batch shape compiles once (seconds)")
        return openvino_model(model, data_config_of(model, meta).input_size, openvino)
    return model


def check_exported_options(path: str, model_name: Optional[str] = None, compile: bool = False,
                           int8: Optional[str] = None, amp: str = "none", channels_last: bool = False,
                           device: Optional[str] = None) -> None:
    """Refuse, in one line, what an ONNX file given as ``--checkpoint`` cannot go with: it is run as it was
    exported, by ONNX Runtime (or OpenVINO) on the CPU, and names its own network."""
    given = ["--model"] * (model_name is not None) + fast_path_flags(compile, int8, amp, channels_last)
    if given:
        raise HCGNetError(f"{path} is an ONNX export, run as it was exported (ONNX Runtime, or OpenVINO with "
                          f"--openvino): drop {given[0]}" + ("; hcgnet export --int8 writes an int8 file"
                                                             if int8 is not None else ""))
    if device is not None and device_of(device).type != "cpu":
        raise HCGNetError(f"{path} is an ONNX export, run on the CPU, not --device {device}")


def read_export(path: str) -> Tuple[ModelIO, Dict[str, str]]:
    """What a file written by ``hcgnet export`` takes and gives, from the metadata it carries
    (:func:`export_metadata`), and that metadata; refused in one line for a file without it."""
    from hcgnet.export import read_export_metadata

    meta = read_export_metadata(path)
    if not meta.get("data_config"):
        raise CheckpointError(f"{path} carries no class names or preprocessing; write it with hcgnet export (which "
                              "records them), or pass the checkpoint it was exported from")
    try:
        config = DataConfig.from_dict(json.loads(meta["data_config"]))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its data_config is not JSON; export it again with hcgnet export") from None
    if metadata_value(meta, "class_indices") == "true":   # names the checkpoint did not record (export_metadata)
        meta = {key: value for key, value in meta.items() if key != "class_names"}
    return ModelIO(config, int(config.input_size[0]), len(config.class_names)), meta


def exported_classifier(path: str, io: ModelIO, openvino: Optional[str] = None) -> Callable[[torch.Tensor],
                                                                                            torch.Tensor]:
    """An ONNX file written by ``hcgnet export`` (``io``: :func:`read_export`) as eval and predict classify with
    it: run by ONNX Runtime, or by OpenVINO at precision ``openvino``."""
    if openvino is not None:
        from hcgnet.export import OpenVINOModel

        return OpenVINOModel(path, openvino)
    from hcgnet.quantize import OnnxRuntimeModel

    return OnnxRuntimeModel(path, io.num_classes)


def inference_device(path: str, exported: bool, model_name: Optional[str], compile: bool, int8: Optional[str],
                     calibration: Optional[int], openvino: Optional[str], amp: str, channels_last: bool,
                     device: Optional[str]) -> torch.device:
    """The device eval and predict run ``path`` on (an ONNX file if ``exported``), once the options that do not
    go together are refused in one line: an ONNX file, OpenVINO and int8 run on the CPU, each in its own
    precision and layout."""
    check_compile_option(compile, int8)
    if exported:
        check_exported_options(path, model_name, compile, int8, amp, channels_last, device)
        device = "cpu"
    if openvino is not None:
        from hcgnet.export import check_openvino_options

        check_openvino_options(openvino, compile, int8, amp, channels_last, device)
        device = "cpu"
    if int8 is not None:
        from hcgnet.quantize import check_int8_options  # here: quantize builds on this module

        check_int8_options(int8, calibration, amp, channels_last, device)
        device = "cpu"
    return device_of(device)


def empty_split(data: str, split: str, verb: str) -> DataError:
    """The one-line error for an empty ``split`` of ``data`` (nothing to ``verb``): a run that held no images out
    for it, so the message names the splits there are."""
    if split == "all":
        return DataError(f"{data} holds no images: nothing to {verb}")
    others = [s for s in SPLITS if s != split and (s != "all" or spec_folder(data) is not None)]
    return DataError(f"the {split} split of {data} is empty (its training run held none out): nothing to {verb}; "
                     f"pass --split {' or --split '.join(others)}")


def eval_dataset(path: str, data: Optional[str], data_dir: Optional[str], split: Optional[str], meta: Dict[str, str],
                 io: ModelIO, skip_bad_images: Optional[bool], log: Log) -> Tuple[str, str, Dataset, List[str]]:
    """What :func:`evaluate_checkpoint` scores ``path`` on (its metadata ``meta``, what it takes ``io``), as
    ``(data, split, dataset, class names)``: ``data`` (None: what its run recorded) and ``split`` (None: chosen,
    :func:`choose_split`), refused in one line where they do not fit it; ``log`` gets the notes on what was
    chosen, guessed or left out."""
    if data is None:
        data = recorded_data([(path, meta)])
    data_dir = run_data_dir(data, data_dir, meta)
    why = None
    if split is None:
        split, why = choose_split(data, meta)
    elif split != "all":
        check_split_data(data, meta, split)
    skip_bad_images, skipped_log = bad_images_setting(meta, skip_bad_images, log)
    if split == "all":
        dataset, class_names = _all_dataset(data, data_dir, meta, io, path, skip_bad_images, skipped_log)
        note = guess_note(path, io.config, meta, "the checkpoint's class names" if meta.get("class_names")
                          else "the folder's class names (sorted)")
    else:
        dataset, class_names = checkpoint_split(data, data_dir, split, meta, io, path, skip_bad_images, skipped_log)
        note = None if meta.get("class_names") else guess_note(
            path, io.config, meta, "the dataset's class names", "the dataset's standard preprocessing")
    if note:
        log(note)
    if len(dataset) == 0:
        raise empty_split(data, split, "evaluate")
    if why:  # said once the folder is known to be usable, so an error stays a single line
        log(f"note: {why} (--split all)")
    folder = spec_folder(data)
    if folder is not None and not meta.get("data_config"):  # the input size came from the model
        note = image_size_note(collect_images([folder])[0], io.config, folder)
        if note:
            log(note)
    return data, split, dataset, class_names


def evaluate_checkpoint(
    path: str, data: Optional[str] = None, data_dir: Optional[str] = None, split: Optional[str] = None,
    batch_size: int = 256, workers: int = 2, model_name: Optional[str] = None, device: Optional[str] = None,
    amp: str = "none",
    channels_last: bool = False, progress: Optional[bool] = None, log: Log = note_on_stderr,
    skip_bad_images: Optional[bool] = None, int8: Optional[str] = None, calibration: Optional[int] = None,
    int8_compile: bool = True, compile: bool = False, openvino: Optional[str] = None, limit: Optional[int] = None,
) -> Dict[str, Any]:
    """Top-1, top-5, loss, per-class accuracy and the confusion matrix of a checkpoint on ``split`` of
    ``data`` (None: the data the checkpoint records it was trained on): "test" or "val" (the training run's,
    rebuilt from the checkpoint's split settings) or "all"
    (every image of an ``imagefolder:DIR``). ``split=None`` chooses: "all" for a folder the checkpoint was not
    trained on, else "test". ``amp`` ("none", "bf16" or "fp16") and ``channels_last`` are the fast inference
    paths (see BENCHMARKS.md). ``progress``: a bar (default: when stderr is a terminal). ``skip_bad_images``:
    leave out unreadable images instead of refusing the folder (default: as the training run did).

    ``int8`` (a backend of :mod:`hcgnet.quantize`: "pt2e" or "onnxruntime"): score the model quantized to int8,
    calibrated on ``calibration`` of its training images (None: ``quantize.DEFAULT_CALIBRATION``), on the CPU; the float model is scored too, and the
    result says both: the int8 scores where the float ones are otherwise, ``"fp32"`` (its top-1, top-5 and
    loss) and ``"int8"`` (backend and calibration). ``int8_compile`` (pt2e): Inductor's int8 kernels, else the
    reference program (same rounding, float arithmetic; no compilation). ``compile``: the float model compiled
    by Inductor with its weights frozen (:func:`hcgnet.compiled.compile_frozen`), for batches of ``batch_size``
    (the first batch waits for the compilation: minutes on a CPU). ``openvino`` ("fp32" or "bf16"): the model
    exported to ONNX and run by OpenVINO's CPU runtime at that precision (:func:`hcgnet.export.openvino_model`).

    ``path`` may also be an ONNX file that ``hcgnet export`` wrote (its int8 ones too), run as it was exported,
    on the data and split its run recorded (:func:`check_exported_options` says which options it refuses).
    ``limit``: the first N images of the split only (those ``hcgnet attack --limit N`` attacks).

    The result says what was scored and how (``count`` of ``images_available``, ``limit``, ``amp``,
    ``channels_last``) and carries :func:`hcgnet.provenance.provenance` (code, machine, date, the checkpoint's
    SHA-256)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise HCGNetError(f"--limit must be 1 or more, got {limit}")
    exported = is_onnx_export(path)
    dev = inference_device(path, exported, model_name, compile, int8, calibration, openvino, amp, channels_last,
                           device)
    amp_dtype = check_eval_options(batch_size, workers, amp, dev)
    if split is not None and split not in SPLITS:
        raise HCGNetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if exported:
        io, meta = read_export(path)
    else:
        model, meta = load_model(path, model_name)
        io = model_io(model, meta)
    data, split, dataset, class_names = eval_dataset(path, data, data_dir, split, meta, io, skip_bad_images, log)
    note = None if exported or int8 or openvino else precision_note(meta, split, amp, channels_last)
    if note:
        log(note)
    available = len(dataset)
    if limit is not None and limit < available:
        dataset = Subset(dataset, range(limit))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    if exported:
        scored = exported_classifier(path, io, openvino)
    else:
        model = model.to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        scored = float_runner(model, meta, min(batch_size, len(dataset)), compile, openvino, log)
    with batch_progress(len(loader), f"evaluating {split}", progress, log) as bar:
        metrics = evaluate(scored, loader, Dist(device=dev), amp_dtype, channels_last, progress=bar,
                           num_classes=io.num_classes)
    result = {"checkpoint": str(path), "data": data, "split": split, "images_available": available, "limit": limit,
              "amp": amp, "channels_last": channels_last,
              "provenance": provenance([path], dev)}
    if int8 is not None:
        from hcgnet.quantize import int8_model

        quantized, about = int8_model(path, model, meta, int8, calibration, min(batch_size, len(dataset)), workers,
                                      data_dir, compile=int8_compile, log=log)
        result.update(fp32={k: metrics[k] for k in ("top1", "top5", "loss")}, int8=about)
        with batch_progress(len(loader), f"evaluating {split} in int8", progress, log) as bar:
            metrics = evaluate(quantized, loader, Dist(device=dev), progress=bar, num_classes=io.num_classes)
    return {**result, **metrics, "class_names": class_names}


# ------------------------------------------------------------------------------------------------ predict


def collect_images(inputs: Sequence[str]) -> Tuple[List[str], List[Dict[str, str]]]:
    """Image files from files, folders (searched recursively for :data:`~hcgnet.data.images.IMAGE_EXTENSIONS`,
    as training folders are) and glob patterns, in the order given (each folder's and pattern's files sorted);
    and one problem entry per input that named nothing. A file named explicitly is kept whatever its extension."""
    found: List[str] = []
    problems: List[Dict[str, str]] = []

    def images_under(folder: str) -> List[str]:
        return sorted(str(p) for p in Path(folder).rglob("*")
                      if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())

    for item in inputs:
        if os.path.isdir(item):
            hits = images_under(item)
        elif os.path.isfile(item):
            hits = [item]
        elif glob.has_magic(item):
            hits = []
            for match in sorted(glob.glob(os.path.expanduser(item), recursive=True)):
                if os.path.isdir(match):
                    hits += images_under(match)
                elif Path(match).suffix.lower() in IMAGE_EXTENSIONS:
                    hits.append(match)
        else:
            problems.append({"image": item, "error": f"no such file or folder: {item}"})
            continue
        if not hits:
            problems.append({"image": item, "error": f"no images in {item}"})
        found += hits
    seen = set()
    return [p for p in found if not (p in seen or seen.add(p))], problems


def _decode(path: str, transform) -> Tuple[Optional[torch.Tensor], Optional[str]]:
    """``path`` read and transformed, or why it could not be."""
    try:
        return transform(load_image(path, hint="")), None
    except Exception as e:  # an unreadable or undecodable file must not stop the others
        return None, str(e) if isinstance(e, DataError) else f"cannot read image {path}: {e}"


def _keep_readable(paths: Sequence[str], decoded, failures: List[Dict[str, Any]], log: Log):
    """The images of ``decoded`` (``_decode``'s pairs, in the order of ``paths``) that could be read, and their
    paths; each one that could not is warned about and appended to ``failures`` as ``{"image", "error"}``."""
    batch, readable = [], []
    for p, (image, error) in zip(paths, decoded):
        if error is None:
            batch.append(image)
            readable.append(p)
        else:
            log(f"hcgnet: warning: {error}; skipped")
            failures.append({"image": p, "error": error})
    return batch, readable


def read_images(paths: Sequence[str], transform, failures: List[Dict[str, Any]], log: Log):
    """The transformed images that could be read, and their paths; each one that could not is warned about
    and appended to ``failures`` as ``{"image", "error"}``."""
    return _keep_readable(paths, [_decode(p, transform) for p in paths], failures, log)


def read_ahead(paths: Sequence[str], batch_size: int, transform, workers: int):
    """``(paths, decoded)`` per batch of ``batch_size``: ``_decode``'s pairs, in order. With ``workers`` threads,
    each batch is decoded by the threads and the next one is decoded while the caller works on this one (Pillow
    and the transforms release the GIL); with 0, in the caller's thread."""
    starts = range(0, len(paths), batch_size)
    if workers == 0:
        for start in starts:
            chunk = paths[start:start + batch_size]
            yield chunk, [_decode(p, transform) for p in chunk]
        return
    with ThreadPoolExecutor(workers) as pool:
        def submit(start):
            return [pool.submit(_decode, p, transform) for p in paths[start:start + batch_size]]

        ahead = submit(0)
        for start in starts:
            current, ahead = ahead, (submit(start + batch_size) if start + batch_size < len(paths) else [])
            yield paths[start:start + batch_size], [f.result() for f in current]


def _top_classes(image: str, probs: torch.Tensor, k: int, names: Sequence[str]) -> Dict[str, Any]:
    values, indices = probs.topk(k)
    return {"image": image, "top": [
        {"class": names[i] if i < len(names) else str(i), "index": int(i), "probability": float(v)}
        for v, i in zip(values.tolist(), indices.tolist())]}


@torch.no_grad()
def predict(
    path: str, images: Sequence[str], topk: int = 5, model_name: Optional[str] = None, batch_size: int = 32,
    log: Log = note_on_stderr, progress: Optional[bool] = None, int8: Optional[str] = None, calibration: Optional[int] = None,
    int8_compile: bool = True, compile: bool = False, openvino: Optional[str] = None, device: Optional[str] = None,
    amp: str = "none", channels_last: bool = False, workers: int = 2,
) -> List[Dict[str, Any]]:
    """The ``topk`` classes and probabilities of every image in ``images`` (files, folders, glob patterns),
    ``batch_size`` images at a time, read by ``workers`` threads a batch ahead of the model (0: in this thread,
    one batch after the other). An input that cannot be read is skipped with a one-line warning through
    ``log`` and kept in the results as ``{"image": ..., "error": ...}``; the others go on. ``device`` (None: cuda
    when there is one), ``amp``, ``channels_last``, ``int8``, ``calibration``, ``int8_compile``, ``compile``
    and ``openvino`` as for :func:`evaluate_checkpoint`. ``path`` may also be an ONNX file that ``hcgnet export``
    wrote (:func:`exported_classifier`; :func:`check_exported_options` says which options it refuses)."""
    exported = is_onnx_export(path)
    dev = inference_device(path, exported, model_name, compile, int8, calibration, openvino, amp, channels_last,
                           device)
    if topk < 1:
        raise HCGNetError(f"--topk must be 1 or more, got {topk}")
    amp_dtype = check_eval_options(batch_size, workers, amp, dev)
    files, problems = collect_images(images)
    if not files:
        raise DataError("nothing to classify: " + "; ".join(p["error"] for p in problems[:3]))
    for p in problems:
        log(f"hcgnet: warning: {p['error']}; skipped")
    if exported:
        io, meta = read_export(path)
        config, classify = io.config, exported_classifier(path, io, openvino)
    else:
        model, meta = load_model(path, model_name)
        config = data_config_of(model, meta)
        model = model.to(dev, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        if int8 is not None:  # before the note: a checkpoint int8 can calibrate for records its data
            from hcgnet.quantize import int8_model

            classify, _ = int8_model(path, model, meta, int8, calibration, min(batch_size, len(files)), log=log,
                                     compile=int8_compile)
        else:
            classify = float_runner(model, meta, min(batch_size, len(files)), compile, openvino, log)
    note = guess_note(path, config, meta)
    if note:
        log(note)
    transform = build_eval_transform(config)
    names = list(config.class_names)
    k = min(topk, len(names))
    results: List[Dict[str, Any]] = []
    with batch_progress(-(-len(files) // batch_size), "predicting", progress, log) as bar:
        for chunk, decoded in read_ahead(files, batch_size, transform, workers):
            batch, readable = _keep_readable(chunk, decoded, results, log)
            if batch:
                x = images_to(torch.stack(batch), dev, channels_last)
                with autocast(dev, amp_dtype):
                    logits = classify(x).float()
                probs = torch.softmax(logits, dim=1).cpu()
                results += [_top_classes(p, row, k, names) for p, row in zip(readable, probs)]
            bar.update(1)
    order = {p: i for i, p in enumerate(files)}
    results.sort(key=lambda r: order[r["image"]])
    return results + problems
