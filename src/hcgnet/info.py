"""The rows of ``hcgnet info``: each network's parameters and multiply-adds beside the published figures."""
import json
import os
from typing import List, Optional, Sequence

import torch

from hcgnet.complexity import count_macs, count_params
from hcgnet.errors import CheckpointError, HCGNetError
from hcgnet.models import VARIANTS, create_model
from hcgnet.models.baselines import PAPER
from hcgnet.models.checkpoints import check_checkpoint_file, export_format, names_a_file
from hcgnet.models.registry import first_conv_in_chans, is_timm_baseline
from hcgnet.models.variants import resolve


def model_info(names: Sequence[str], num_classes: Optional[int], size: Optional[int] = None,
               model_kwargs: Optional[dict] = None, stem: Optional[str] = None) -> List[dict]:
    """One row of ``hcgnet info`` per model name or spec: parameters and multiply-adds at ``size`` (default: the
    model's own input), with ``model_kwargs`` (design switches) and ``stem`` (None: each network's own), beside the
    published and paper figures where the network is the paper's. A name that is a file is a checkpoint:
    :func:`checkpoint_info`."""
    model_kwargs = dict(model_kwargs or {})
    stem = stem or model_kwargs.pop("stem", None)
    rows = []
    for requested in names:
        if names_a_file(requested):
            if num_classes is not None or model_kwargs or stem:
                raise HCGNetError(f"--num-classes, --model-kwargs and --stem describe a variant; the checkpoint "
                                  f"{requested} holds its own: drop them")
            rows.append(checkpoint_info(requested, size))
            continue
        if requested.strip().lower() in PAPER:
            if stem is not None:
                raise HCGNetError(f"--stem is an HCGNet setting; {requested} has its own stem")
            rows.append(baseline_info(requested.strip().lower(), num_classes, size, model_kwargs))
            continue
        name, variant = resolve(requested, stem)
        classes = variant.num_classes if num_classes is None else num_classes
        with torch.device("meta"):  # shapes only: counting C costs no arithmetic
            model = create_model(requested, num_classes=classes, stem=stem, **model_kwargs)
        switches = model.switch_info()  # the published figures are for the paper's network, RGB, only
        # a variant with another stem is another network: no variant name, no published or paper figures
        paper_network = not switches and model.in_chans == variant.input_size[0] and VARIANTS.get(name) is variant
        input_size = counted_size(model, requested, (model.in_chans, *variant.input_size[1:]), size)
        own_stem = resolve(requested)[1].stem
        switches = ", ".join(s for s in (switches, f"{variant.stem} stem" if variant.stem != own_stem else "") if s)
        rows.append(dict(
            model=name if name in VARIANTS and VARIANTS[name] is variant else "-",
            spec=variant.spec + (f" [{switches}]" if switches else ""),
            stem=variant.stem,
            input=shape_text(input_size),
            classes=classes,
            params=count_params(model),
            published_params=variant.published_params.get(classes) if paper_network else None,
            paper_params=variant.paper_params if paper_network else None,
            gmacs=count_macs(model, input_size) / 1e9,
            paper_gmacs=variant.paper_gmacs if input_size == variant.input_size and paper_network else None,
        ))
    return rows


def shape_text(input_size: Sequence[int]) -> str:
    """An input size as the ``input`` column shows it, channels first: "3x224x224", a gray model "1x28x28"."""
    return "x".join(map(str, input_size))


def counted_size(model, name: str, native: Sequence[int], size: Optional[int]) -> tuple:
    """The (C, H, W) ``info`` counts at: the model's own, or ``--size`` if it is at least the total stride."""
    input_size = tuple(native) if size is None else (native[0], size, size)
    smallest = model.feature_info[-1]["reduction"]
    if input_size[-1] < smallest:
        raise HCGNetError(f"--size {size} is smaller than {name}'s total stride; use --size {smallest} or more")
    return input_size


def baseline_info(name: str, num_classes: Optional[int], size: Optional[int],
                  model_kwargs: Optional[dict] = None) -> dict:
    """``info`` of one of hcgnet's CIFAR baselines (DenseNet-BC, CIFAR ResNets) beside its paper's count (the
    paper's figures only for the paper's network: none once ``model_kwargs`` change it)."""

    classes = 10 if num_classes is None else num_classes
    with torch.device("meta"):
        model = create_model(name, num_classes=classes, **(model_kwargs or {}))
    native = model.pretrained_cfg["input_size"]
    input_size = counted_size(model, name, (model.in_chans, *native[1:]), size)
    architecture, paper_params, paper_gmacs = PAPER[name]
    changed = ", ".join(f"{k}={v}" for k, v in (model_kwargs or {}).items())
    return dict(model=name, spec=architecture + (f" [{changed}]" if changed else ""), stem="cifar",
                input=shape_text(input_size), classes=classes, params=count_params(model),
                published_params=None, paper_params=paper_params if classes == 10 and not changed else None,
                gmacs=count_macs(model, input_size) / 1e9,
                paper_gmacs=paper_gmacs if input_size == (3, 32, 32) and not changed else None)


def checkpoint_info(path: str, size: Optional[int] = None) -> dict:
    """``info`` of a checkpoint file: the network it holds (with its design switches), counted at the input
    size it was trained for (or ``size``), and what it was trained on (``data``, ``class_names``). A file that
    ``hcgnet export`` wrote is described from the metadata it carries (:func:`export_info`)."""
    from hcgnet.export import FORMATS
    from hcgnet.inference import data_config_of, named_checkpoint_model

    if os.path.isdir(path):
        check_checkpoint_file(path)   # a run's folder: the error names the checkpoint in it
    if not os.path.isfile(path):
        raise HCGNetError(f"no checkpoint file {path}; give a variant name, a spec or an existing file")
    fmt = export_format(path)
    if fmt in FORMATS:   # a file hcgnet export writes
        return export_info(path, fmt, size)
    try:
        model, meta = named_checkpoint_model(path)
    except CheckpointError:
        from hcgnet.detection.checkpoint import is_detector_file

        if is_detector_file(path):  # the loader's "use it with detect eval" would not say how info counts it
            raise CheckpointError(f"{path} is a detector checkpoint (hcgnet detect train); count it with hcgnet "
                                  f"info --detection {path}") from None
        raise
    config = data_config_of(model, meta)
    row = network_info(meta["model_name"], model.num_classes, first_conv_in_chans(model), meta.get("switches"),
                       config.input_size, size, getattr(model, "stem_kind", None))
    row.update(model=path, params=count_params(model), data=meta.get("data"), class_names=list(config.class_names))
    return row


def export_info(path: str, fmt: str, size: Optional[int] = None) -> dict:
    """``info`` of a file that ``hcgnet export`` wrote in ``fmt`` (ONNX, TorchScript or .pt2), from the metadata
    it carries (the program is neither loaded nor run): the network it names, counted as :func:`checkpoint_info`
    counts a checkpoint's, and what its run was trained on; ``exported`` says the format."""
    from hcgnet.inference import read_export

    io, meta = read_export(path)
    if not meta.get("model_name"):
        raise CheckpointError(f"{path} does not name its network; export it again with hcgnet export")
    row = network_info(meta["model_name"], io.num_classes, io.in_chans, meta.get("switches"), io.config.input_size,
                       size)
    row.update(model=path, data=meta.get("data"), class_names=list(io.config.class_names), exported=fmt)
    return row


def network_info(name: str, num_classes: int, in_chans: int, switches: Optional[str],
                 native: Sequence[int], size: Optional[int] = None, stem: Optional[str] = None) -> dict:
    """The ``info`` row of the network a file names: ``name`` with ``num_classes`` outputs, ``in_chans`` input
    channels, its design ``switches`` (JSON, as checkpoints record them) and ``stem`` (the one its weights were
    built with; None: the name's own), counted at ``native`` (C, H, W) or at ``size``."""
    if is_timm_baseline(name):  # a timm network: no published or paper figures to set beside it
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes, in_chans=in_chans)
        input_size = counted_size(model, name, native, size)
        return dict(model=name, spec=name, stem=None, input=shape_text(input_size), classes=num_classes,
                    params=count_params(model), published_params=None, paper_params=None,
                    gmacs=count_macs(model, input_size) / 1e9, paper_gmacs=None)
    kwargs = {**(json.loads(switches) if switches else {}), **({"in_chans": in_chans} if in_chans != 3 else {})}
    own = resolve(name)[1].stem
    row, = model_info([name], num_classes, size or native[-1], kwargs, stem if stem != own else None)
    return row
