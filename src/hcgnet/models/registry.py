"""``create_model`` / ``list_models``, and registration of the variants with timm.

After ``import hcgnet``, ``timm.create_model("hcgnet_b", ...)`` builds the same network as
``hcgnet.create_model("hcgnet_b", ...)``, with timm's ``pretrained_cfg``, ``features_only`` and friends.
"""
import contextlib
import fnmatch
import inspect
import json
import operator
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import (
    FeatureDictNet, FeatureGraphNet, FeatureHookNet, FeatureListNet, PretrainedCfg, build_model_with_cfg,
    generate_default_cfgs, register_model, resolve_pretrained_cfg,
)
from timm.models._features import FeatureGetterNet  # not re-exported by timm.models
import torch
from torch import nn

from hcgnet.errors import CheckpointError, ModelSpecError
from hcgnet.models.checkpoints import (
    adapt_pretrained, checkpoint_filter_fn, load_state_dict_into, num_classes_in, read_state_dict,
)
from hcgnet.models.hcgnet import HCGNet
from hcgnet.models.variants import PUBLISHED_TAG, VARIANTS, Variant, format_spec, resolve

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# features_only: timm's wrappers by the names timm.create_model's feature_cls takes
FEATURE_CLASSES = {"list": FeatureListNet, "dict": FeatureDictNet, "hook": FeatureHookNet, "fx": FeatureGraphNet,
                   "getter": FeatureGetterNet}
GENERIC = "hcgnet"  # timm's name for a network of any depth and width: block_depths/growth_rates as arguments
PUBLISHED_REPO = "https://github.com/winycg/HCGNet"
# The published weights come under the published repository's research-only licence: not one of the licences
# timm names, hence "other" (timm's value for a licence of its own) and a note saying which.
PUBLISHED_LICENSE = "other"
PUBLISHED_NOTE = "weights published by the authors at github.com/winycg/HCGNet, under its research-only licence"


def stem_cfg(stem: str) -> dict:
    """The preprocessing and input of a stem: CIFAR 32x32 as-is with CIFAR-10 statistics, ImageNet 224
    centre crop of a 256 resize (crop_pct 0.875) with ImageNet statistics, as in the paper."""
    cifar = stem == "cifar"
    return dict(
        input_size=(3, 32, 32) if cifar else (3, 224, 224),
        crop_pct=1.0 if cifar else 0.875,
        crop_mode="center",
        interpolation="bilinear",
        mean=CIFAR_MEAN if cifar else IMAGENET_DEFAULT_MEAN,
        std=CIFAR_STD if cifar else IMAGENET_DEFAULT_STD,
    )


def _pool_size(variant: Variant, input_size: Optional[Sequence[int]] = None) -> tuple:
    """The final feature map's size at the stem's input size: the stem's stride (1 CIFAR, 4 ImageNet)
    times 2 per transition."""
    reduction = (1 if variant.stem == "cifar" else 4) * 2 ** (len(variant.block_depths) - 1)
    return tuple(-(-int(s) // reduction) for s in (input_size or stem_cfg(variant.stem)["input_size"])[1:])


def _cfg(variant: Variant, architecture: Optional[str] = None, **extra) -> dict:
    """A complete timm ``pretrained_cfg`` for ``variant``; ``extra`` adds the weights' own fields."""
    return {
        "url": "",
        "hf_hub_id": "",  # none on the Hugging Face Hub yet; "hf-hub:ORG/NAME" works once uploaded (README)
        "num_classes": variant.num_classes,
        **stem_cfg(variant.stem),
        "pool_size": _pool_size(variant),
        "first_conv": "stem.conv0",
        "classifier": "classifier",
        "paper_name": "Gated Convolutional Networks with Hybrid Connectivity for Image Classification",
        "paper_ids": "arXiv:1908.09699",
        "origin_url": PUBLISHED_REPO,
        "architecture": architecture or variant.spec,
        **extra,
    }


def _published_cfg(name: str, variant: Variant, **extra) -> dict:
    return _cfg(variant, name, license=PUBLISHED_LICENSE, notes=(PUBLISHED_NOTE,),
                description=f"{variant.spec} with the authors' ImageNet-1k weights ({variant.published_checkpoint})",
                **extra)


# Tags: ".published_in1k" for the authors' released ImageNet weights (B and C); the CIFAR variants have no
# released weights, so they carry an untagged, weightless config (``pretrained_cfg_overlay=dict(file=...)``
# loads any file, e.g. one's own or a published-format checkpoint). The published configs name their file
# (so that timm.list_pretrained lists them); it is looked up in weights_dir() when a model is built with them.
default_cfgs = generate_default_cfgs({
    **{(f"{name}.{PUBLISHED_TAG}" if v.published_checkpoint else name):
       (_published_cfg(name, v, file=v.published_checkpoint) if v.published_checkpoint else _cfg(v, name))
       for name, v in VARIANTS.items()},
    GENERIC: _cfg(Variant((1,), (4,), "imagenet", 1000), GENERIC),
})


def _feature_cfg(n_stages: int) -> dict:
    return dict(flatten_sequential=True, out_indices=tuple(range(n_stages)))


def check_out_indices(out_indices: Union[None, int, Sequence[int]], n_stages: int) -> Optional[tuple]:
    """The stage indices as a tuple, as timm reads them: an int ``n`` is the last ``n`` stages, negative
    indices count from the end; indices the network does not have are a one-line :class:`ModelSpecError`."""
    if out_indices is None:
        return None
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        if not 1 <= out_indices <= n_stages:
            raise ModelSpecError(f"out_indices={out_indices} (the last {out_indices} stages): this network has "
                                 f"{n_stages} stages")
        return tuple(range(n_stages - out_indices, n_stages))
    try:
        indices = tuple(operator.index(i) for i in out_indices)  # ints (NumPy's too), not 1.5 or "1"
    except (TypeError, ValueError):
        raise ModelSpecError(f"out_indices must be stage indices (e.g. (1, 2)) or a count of last stages, not "
                             f"{out_indices!r}") from None
    bad = [i for i in indices if not -n_stages <= i < n_stages]
    if bad:
        raise ModelSpecError(f"out_indices {indices} out of range: this network has stages 0..{n_stages - 1}")
    return indices


def _variant_of(name: str, kwargs: dict) -> Variant:
    """The architecture timm is asked for: the registered variant (with another ``stem`` if given), or for
    ``hcgnet`` the network its ``block_depths``/``growth_rates`` describe."""
    base = VARIANTS.get(name)
    if base is not None:
        check_architecture(name, base, kwargs)
        return resolve(name, kwargs.get("stem"))[1]
    depths, growth = kwargs.get("block_depths"), kwargs.get("growth_rates")
    if depths is None or growth is None:
        raise ModelSpecError(f"{name} needs block_depths and growth_rates, e.g. block_depths=(2, 2, 2), "
                             f"growth_rates=(8, 8, 8); or use a variant ({', '.join(VARIANTS)})")
    return resolve(format_spec(depths, growth), kwargs.get("stem"))[1]


def check_architecture(name: str, variant: Variant, kwargs: dict) -> None:
    """A named variant is its depths and growth rates: ``block_depths``/``growth_rates`` other than its own are
    a one-line :class:`ModelSpecError` naming the spec that builds them (a model called ``hcgnet_a1`` with
    other depths would carry the variant's name and config while being another network)."""
    try:
        depths = tuple(kwargs.get("block_depths", variant.block_depths))
        growth = tuple(kwargs.get("growth_rates", variant.growth_rates))
    except TypeError:
        raise ModelSpecError("block_depths and growth_rates are sequences of whole numbers, one per hybrid block, "
                             "e.g. (8, 8, 8)") from None
    if (depths, growth) != (variant.block_depths, variant.growth_rates):
        raise ModelSpecError(f"{name} is {variant.spec}; for block_depths={depths} and growth_rates={growth} "
                             f"build the spec {format_spec(depths, growth)!r} (timm: 'hcgnet' with those arguments)")


class OtherNetwork(CheckpointError):
    """A checkpoint whose metadata names another network (``recorded``) than the one asked for (``name``)."""

    def __init__(self, weights, recorded: str, name: str, spec: str, advice: str) -> None:
        super().__init__(f"{weights} holds {recorded} (by its metadata), not {name} ({spec}); {advice}")
        self.weights, self.recorded, self.name, self.spec = weights, recorded, name, spec


def check_recorded_network(weights, metadata: dict, name: str, variant: Variant) -> None:
    """A checkpoint whose metadata names another network than ``name`` (another variant, spec or a baseline) is
    refused naming both, before a tensor's shape would say only that it is "for another model"."""
    recorded = metadata.get("model_name")
    if not recorded:
        return
    try:
        theirs = resolve(recorded)[1]
        same = (theirs.block_depths, theirs.growth_rates) == (variant.block_depths, variant.growth_rates)
    except ModelSpecError:  # a baseline's name
        same = False
    if not same:
        raise OtherNetwork(weights, recorded, name, variant.spec, f"create {recorded!r} instead, or let "
                           "hcgnet.inference.load_model read the network from the file")


def placed(build: Callable[[], nn.Module], device=None, dtype=None) -> nn.Module:
    """timm's ``device=``/``dtype=`` arguments: the model's tensors created on ``device`` (``"meta"``: shapes
    only, no memory), then cast to ``dtype``."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build()
    return model.to(dtype=dtype) if dtype is not None else model


def check_loadable_on(device) -> None:
    """Weights cannot be loaded into a model on the meta device (torch warns once per tensor and loads nothing):
    a one-line :class:`ModelSpecError` instead."""
    if device is not None and torch.device(device).type == "meta":
        raise ModelSpecError("weights cannot be loaded into a model on the meta device: leave device='meta' out, or "
                             "build it there without weights and load them after model.to_empty(device='cpu')")


def _create_timm(name: str, pretrained: bool = False, **kwargs) -> HCGNet:
    variant = _variant_of(name, kwargs)
    if kwargs.get("out_indices") is not None:
        kwargs["out_indices"] = check_out_indices(kwargs["out_indices"], len(variant.block_depths))
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    own_cfg = not isinstance(kwargs.get("pretrained_cfg"), (dict, PretrainedCfg))
    if own_cfg:
        # The preprocessing follows the stem actually built (a CIFAR variant with the ImageNet stem, a
        # spec); a config that came with weights (local-dir:, hf-hub:) describes them and is kept.
        overlay = {**stem_cfg(variant.stem), "pool_size": _pool_size(variant), **overlay}
    if pretrained and not _has_weights(name, kwargs.get("pretrained_cfg"), overlay):
        overlay["file"] = str(find_pretrained(name))  # $HCGNET_HOME; a one-line error says what to fetch
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    if pretrained:
        check_loadable_on(device)
    return placed(lambda: build_model_with_cfg(
        HCGNet, name, pretrained, feature_cfg=_feature_cfg(len(variant.block_depths)),
        pretrained_filter_fn=checkpoint_filter_fn, pretrained_cfg_overlay=overlay,
        **{**variant.model_kwargs(), **kwargs},
    ), device, dtype)


def _has_weights(name: str, pretrained_cfg, overlay: dict) -> bool:
    """Whether the config timm will load from says where its weights are; the published configs' bare file
    name (``default_cfgs``) does not: that file is found in :func:`weights_dir`."""
    cfg = resolve_pretrained_cfg(name, pretrained_cfg, overlay)
    variant = VARIANTS.get(name)
    file = cfg.file if variant is None or cfg.file != variant.published_checkpoint else None
    return bool(cfg.url or cfg.hf_hub_id or file or cfg.state_dict is not None
                or cfg.source in ("hf-hub", "local-dir"))


@register_model
def hcgnet(pretrained: bool = False, **kwargs) -> HCGNet:
    """Any HCGNet: ``block_depths`` and ``growth_rates`` (and ``stem``) as arguments; what a model built from
    a spec saves as its architecture, so that ``local-dir:``/``hf-hub:`` can rebuild it."""
    return _create_timm(GENERIC, pretrained, **kwargs)


@register_model
def hcgnet_a1(pretrained: bool = False, **kwargs) -> HCGNet:
    """HCGNet-(8,8,8)-(k=12,24,36), CIFAR."""
    return _create_timm("hcgnet_a1", pretrained, **kwargs)


@register_model
def hcgnet_a2(pretrained: bool = False, **kwargs) -> HCGNet:
    """HCGNet-(8,8,8)-(k=24,36,64), CIFAR."""
    return _create_timm("hcgnet_a2", pretrained, **kwargs)


@register_model
def hcgnet_a3(pretrained: bool = False, **kwargs) -> HCGNet:
    """HCGNet-(12,12,12)-(k=36,48,80), CIFAR."""
    return _create_timm("hcgnet_a3", pretrained, **kwargs)


@register_model
def hcgnet_b(pretrained: bool = False, **kwargs) -> HCGNet:
    """HCGNet-(3,6,12,8)-(k=32,48,64,96), ImageNet."""
    return _create_timm("hcgnet_b", pretrained, **kwargs)


@register_model
def hcgnet_c(pretrained: bool = False, **kwargs) -> HCGNet:
    """HCGNet-(6,12,18,14)-(k=48,56,72,112), ImageNet."""
    return _create_timm("hcgnet_c", pretrained, **kwargs)


def list_models(filter: Union[str, Sequence[str]] = "", pretrained: bool = False,
                include_tags: Optional[bool] = None) -> List[str]:
    """Names of the registered variants, in the paper's order (any other network can be given as a spec), as
    ``timm.list_models`` gives them: ``filter`` a shell-style pattern or several (``"hcgnet_a*"``);
    ``pretrained=True`` only those with published weights, named with their weights' tag
    (``hcgnet_b.published_in1k``, which :func:`create_model` takes) unless ``include_tags=False``."""
    include_tags = pretrained if include_tags is None else include_tags
    patterns = [filter] if isinstance(filter, str) else list(filter)
    names = []
    for name, variant in VARIANTS.items():
        if pretrained and not variant.published_checkpoint:
            continue
        if patterns != [""] and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        names.append(f"{name}.{PUBLISHED_TAG}" if include_tags and variant.published_checkpoint else name)
    return names


def weights_dir() -> Path:
    """Where ``pretrained=True`` looks for weights: ``$HCGNET_HOME`` or ``~/.cache/hcgnet``."""
    return Path(os.environ.get("HCGNET_HOME", Path.home() / ".cache" / "hcgnet"))


def find_pretrained(name: str) -> Path:
    """The local weights file for a variant. hcgnet never downloads: a missing file is an error that
    says what to fetch and where to put it."""
    variant = VARIANTS.get(name)
    if variant is None or variant.published_checkpoint is None:
        raise CheckpointError(
            f"no pretrained weights were published for {name}; train it (hcgnet train) or pass checkpoint_path="
        )
    folder = weights_dir()
    for candidate in (folder / f"{name}.safetensors", folder / variant.published_checkpoint):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"pretrained weights for {name} are not in {folder} and hcgnet does not download them: get "
        f"{variant.published_checkpoint} from the authors' release (github.com/winycg/HCGNet) and put it in "
        f"that folder (or set HCGNET_HOME), or pass checkpoint_path="
    )


def create_model(
    name_or_spec: str,
    num_classes: Optional[int] = None,
    pretrained: bool = False,
    checkpoint_path: Optional[str] = None,
    features_only: bool = False,
    out_indices: Optional[Sequence[int]] = None,
    stem: Optional[str] = None,
    strict: bool = True,
    drop_block_rate: float = 0.0,
    feature_cls: str = "list",
    **kwargs,
) -> nn.Module:
    """Build a variant (``"hcgnet_b"``) or any network in the paper's notation
    (``"HCGNet-(8,8,8)-(k=12,24,36)"``); any other name timm knows (``"resnet18"``) builds that timm
    model, as a baseline to compare with (``timm.create_model``; weights only from ``checkpoint_path``).

    Args:
        num_classes: classifier outputs; defaults to the variant's (10 CIFAR, 1000 ImageNet), or to the
            checkpoint's when weights are loaded.
        pretrained: load the published weights from :func:`weights_dir` (never downloaded); with another
            ``num_classes`` or ``in_chans`` as timm's ``pretrained=True``: a new classifier, the first convolution
            adapted (:func:`~hcgnet.models.checkpoints.adapt_pretrained`).
        checkpoint_path: load weights from this file (published format, hcgnet's, or ``.safetensors``);
            the class count and input channels come from it unless given, and an hcgnet run's file gives
            its preprocessing to ``model.pretrained_cfg`` (what ``timm.data.resolve_data_config`` reads).
        strict: with weights, every key must fit (``False``: load the keys that fit, e.g. for fine-tuning
            with another ``num_classes``).
        features_only: return a timm ``FeatureListNet`` giving the stage outputs (``out_indices``).
        feature_cls: with ``features_only``, timm's other wrappers by the names ``timm.create_model`` takes:
            ``"dict"`` (``FeatureDictNet``), ``"hook"`` (``FeatureHookNet``: forward hooks), ``"fx"``
            (``FeatureGraphNet``: an FX graph), ``"getter"`` (``FeatureGetterNet``: ``forward_intermediates``).
        stem: ``"cifar"`` or ``"imagenet"`` to override the stem a spec or variant implies; the
            ``pretrained_cfg`` (input size, mean/std, crop, pool size) follows it.
        drop_block_rate: DropBlock (block size 2) after each transition, as the published CIFAR
            training; 0 adds nothing.
        **kwargs: ``device``/``dtype`` as timm's (:func:`placed`); the rest passed to :class:`HCGNet` (``drop_rate``,
            ``in_chans``, and the design switches
            ``connectivity``, ``forget_gate``, ``update_gate``, ``gate_act``, ``wide_branch``, ...). A checkpoint of
            hcgnet's records the switches it was trained with (metadata ``switches``): they are used unless given.
    """
    if not isinstance(name_or_spec, str):
        raise ModelSpecError(f"create_model takes a model name ('hcgnet_a1', 'resnet18') or a network in the paper's "
                             f"notation ('HCGNet-(8,8,8)-(k=12,24,36)'), got {name_or_spec!r}")
    if name_or_spec.strip().startswith(TIMM_SOURCES):  # a folder of timm's save_for_hf, or the Hub: timm reads it
        return _create_from_timm_source(name_or_spec.strip(), num_classes, pretrained, checkpoint_path, features_only,
                                        out_indices, feature_cls, **kwargs)
    if not isinstance(feature_cls, str) or feature_name(feature_cls) not in FEATURE_CLASSES:
        raise ModelSpecError(f"unknown feature_cls {feature_cls!r}; use one of {', '.join(FEATURE_CLASSES)}")
    feature_cls = feature_name(feature_cls)
    if is_timm_baseline(name_or_spec):
        if features_only and feature_cls != "list":
            kwargs["feature_cls"] = feature_cls
        return _create_baseline(name_or_spec, num_classes, pretrained, checkpoint_path, features_only, out_indices,
                                stem, strict, drop_block_rate, **kwargs)
    try:
        resolve(name_or_spec, stem)
    except ModelSpecError as e:  # neither HCGNet nor timm: say that timm's names work too
        raise ModelSpecError(f"{e}; or a timm model name such as resnet18") from None
    weights = checkpoint_path or (find_pretrained(resolve(name_or_spec, stem)[0]) if pretrained else None)
    state_dict, metadata = None, {}
    if weights is not None:
        state_dict, metadata = read_state_dict(weights)
        for key, value in parse_model_kwargs(metadata.get("switches"), f"{weights}: switches").items():
            kwargs.setdefault(key, value)  # the network the weights were trained as
        if num_classes is None:
            num_classes = num_classes_in(state_dict) or 0
        stem_weight = state_dict.get("stem.conv0.weight")
        if stem_weight is not None and stem_weight.dim() == 4:
            kwargs.setdefault("in_chans", int(stem_weight.shape[1]))
            if stem is None:  # e.g. a run trained with --stem: only the ImageNet stem has norms
                stem = "imagenet" if "stem.norm0.weight" in state_dict else "cifar"
    name, variant = resolve(name_or_spec, stem)
    check_architecture(name_or_spec.strip(), variant, kwargs)
    if weights is not None:
        check_recorded_network(weights, metadata, name_or_spec.strip(), variant)
    for key in ("block_depths", "growth_rates"):  # the variant's own (checked): it passes them
        kwargs.pop(key, None)
    if features_only:
        out_indices = check_out_indices(out_indices, len(variant.block_depths))
    model_kwargs = variant.model_kwargs()
    if num_classes is not None:
        model_kwargs["num_classes"] = num_classes
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    if weights is not None:
        check_loadable_on(device)
    unknown = sorted(set(kwargs) - set(inspect.signature(HCGNet).parameters))
    if unknown:
        raise ModelSpecError(f"HCGNet takes no argument {unknown[0]!r}; see help(hcgnet.HCGNet) for its arguments "
                             "(the design switches: connectivity, forget_gate, update_gate, gate_act, wide_branch)")
    model = placed(lambda: HCGNet(**{**model_kwargs, "drop_block_rate": drop_block_rate, **kwargs}), device, dtype)
    model.pretrained_cfg = model.default_cfg = _cfg_of(model, name, variant, weights, metadata, pretrained)
    # What timm's save_for_hf writes as model_args, so that local-dir:/hf-hub: rebuild this network.
    model._model_args = dict(block_depths=list(variant.block_depths), growth_rates=list(variant.growth_rates),
                             stem=variant.stem, **kwargs)
    if state_dict is not None:
        fresh_head = False
        if pretrained and checkpoint_path is None:  # timm's pretrained=True: other in_chans/num_classes adapt
            state_dict, fresh_head = adapt_pretrained(state_dict, model)
        load_state_dict_into(model, state_dict, weights, strict=strict, keep=("classifier.",) if fresh_head else ())
    if features_only:
        indices = out_indices if out_indices is not None else _feature_cfg(len(model.stages))["out_indices"]
        model = feature_net(model, feature_cls, indices)
    return model


#: Model names that are places timm reads a network and its weights from (``save_for_hf``'s folder, the Hub).
TIMM_SOURCES = ("local-dir:", "hf-hub:")


def _create_from_timm_source(source: str, num_classes, pretrained, checkpoint_path, features_only, out_indices,
                             feature_cls, **kwargs) -> nn.Module:
    """``timm.create_model(source, ...)`` for a ``local-dir:``/``hf-hub:`` name: its config.json names the network
    (importing hcgnet registered it), timm loads the weights. ``hf-hub:`` downloads, as its name asks."""
    import timm

    if source.startswith("local-dir:"):
        folder = Path(source[len("local-dir:"):]).expanduser()
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{source}: no config.json in {folder}; give a folder that timm's save_for_hf wrote")
        source = f"local-dir:{folder}"
    extra = {k: v for k, v in dict(num_classes=num_classes, checkpoint_path=checkpoint_path,
                                   out_indices=out_indices).items() if v is not None}
    if features_only:
        extra.update(features_only=True, feature_cls=feature_cls)
    return timm.create_model(source, pretrained=pretrained, **extra, **kwargs)


def feature_name(feature_cls: str) -> str:
    """timm's reading of a ``feature_cls`` name: any case, and any name with "hook" in it is ``"hook"``."""
    low = feature_cls.lower()
    return "hook" if "hook" in low else low


def feature_net(model: HCGNet, feature_cls: str, out_indices: Sequence[int]) -> nn.Module:
    """``model`` in timm's feature wrapper ``feature_cls`` (a :data:`FEATURE_CLASSES` name), as
    ``timm.create_model(..., features_only=True)`` wraps it: module wrappers over the flattened stages, the
    model's ``in_chans`` and its ``pretrained_cfg`` for features (what ``resolve_data_config`` reads)."""
    wrapper = FEATURE_CLASSES[feature_cls]
    extra = dict(flatten_sequential=True) if issubclass(wrapper, (FeatureDictNet, FeatureHookNet)) else {}
    net = wrapper(model, out_indices=out_indices, **extra)
    net.in_chans = model.in_chans
    # timm's pretrained config for a backbone: what describes the classifier goes
    cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ("num_classes", "classifier", "global_pool")}
    net.pretrained_cfg = net.default_cfg = cfg
    return net


def parse_model_kwargs(text: Optional[str], where: str = "--model-kwargs") -> dict:
    """A JSON object of :class:`HCGNet` arguments (``'{"forget_gate": false}'``) -> a dict; None or "" -> {}.
    Anything else is a one-line :class:`ModelSpecError`."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelSpecError(f"{where} is not valid JSON ({e.msg}); write e.g. '{{\"forget_gate\": false}}'") from None
    if not isinstance(value, dict):
        raise ModelSpecError(f"{where} must be a JSON object of model arguments, e.g. '{{\"forget_gate\": false}}'")
    return value


def _cfg_of(model: HCGNet, name: str, variant: Variant, weights, metadata: dict, pretrained: bool) -> dict:
    """``model.pretrained_cfg``: the stem's standard one, the published weights' when those were loaded, and
    an hcgnet run's own preprocessing (its ``data_config``) when its checkpoint was. A variant with published
    weights built without any weights gets their config, without ``file``, as ``timm.create_model`` gives a
    model its default tag's config."""
    architecture = name if name in VARIANTS else GENERIC
    published = pretrained or metadata.get("source") == "published" or weights is None
    if published and variant.published_checkpoint and name in VARIANTS:
        cfg = {**_published_cfg(name, variant), "tag": PUBLISHED_TAG}
        if weights is not None:
            cfg["file"] = str(weights)
    else:
        cfg = _cfg(variant, architecture)
    if metadata.get("data_config"):
        cfg.update(cfg_from_data_config(json.loads(metadata["data_config"])))
    cfg["num_classes"] = model.num_classes
    cfg["input_size"] = (model.in_chans, *cfg["input_size"][1:])
    cfg["pool_size"] = _pool_size(variant, cfg["input_size"])
    return cfg


def cfg_from_data_config(data_config: dict) -> dict:
    """timm ``pretrained_cfg`` fields from the ``data_config`` an hcgnet run stores in its checkpoints
    (``hcgnet.data.DataConfig`` as a dict): eval resize of the shorter side then centre crop."""
    c, h, w = (int(v) for v in data_config["input_size"])
    resize = data_config.get("resize")
    cfg = dict(
        input_size=(c, h, w), mean=tuple(data_config["mean"]), std=tuple(data_config["std"]),
        crop_pct=min(h, w) / resize if resize else 1.0, crop_mode="center", interpolation="bilinear",
    )
    if data_config.get("class_names"):
        cfg["label_names"] = tuple(data_config["class_names"])
    return cfg


# ------------------------------------------------------------------------------------------------ baselines


def is_timm_baseline(name: str) -> bool:
    """Whether ``name`` is a timm model that is not an HCGNet (a baseline for comparisons, e.g. ``resnet18``)."""
    try:
        resolve(name)
        return False
    except ModelSpecError:
        pass
    import timm

    return timm.is_model(name.strip()) and not name.strip().lower().startswith(GENERIC)


def first_conv_in_chans(model: nn.Module) -> int:
    """Input channels of any network: the first convolution's (for a timm ``FeatureListNet`` too)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    raise ModelSpecError(f"{type(model).__name__} has no convolution to read its input channels from")


def _create_baseline(name: str, num_classes, pretrained, checkpoint_path, features_only, out_indices, stem, strict,
                     drop_block_rate, **kwargs) -> nn.Module:
    """A timm model (never downloaded): weights from ``checkpoint_path`` read with hcgnet's reader; the class
    count and input channels from the file unless given; an hcgnet run's preprocessing in its
    ``pretrained_cfg``."""
    import timm
    from timm.models import get_pretrained_cfg_value, is_model_pretrained

    name = name.strip()
    if pretrained and not is_model_pretrained(name):  # hcgnet's own baselines: nobody published weights
        raise CheckpointError(f"no pretrained weights exist for {name}; train them (hcgnet train --model {name}) and "
                              "pass checkpoint_path=")
    if pretrained:
        raise CheckpointError(f"hcgnet does not download timm's weights for {name}; pass checkpoint_path= (a file "
                              "of hcgnet train, or timm's weights saved locally)")
    if stem is not None:
        raise ModelSpecError(f"stem is an HCGNet setting; {name} is a timm model with its own stem")
    state_dict, metadata = (None, {})
    if checkpoint_path is not None:
        state_dict, metadata = read_state_dict(checkpoint_path)
        for key, value in parse_model_kwargs(metadata.get("switches"), f"{checkpoint_path}: switches").items():
            kwargs.setdefault(key, value)  # e.g. the depth a DenseNet-BC run was trained with
        classifier = get_pretrained_cfg_value(name, "classifier") or ""
        first_conv = get_pretrained_cfg_value(name, "first_conv") or ""
        head = state_dict.get(f"{classifier}.weight")
        if num_classes is None:
            num_classes = int(metadata["num_classes"]) if metadata.get("num_classes") else (
                int(head.shape[0]) if head is not None and head.dim() == 2 else None)
        conv = state_dict.get(f"{first_conv}.weight")
        if metadata.get("in_chans"):
            kwargs.setdefault("in_chans", int(metadata["in_chans"]))
        elif conv is not None and conv.dim() == 4:
            kwargs.setdefault("in_chans", int(conv.shape[1]))
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if drop_block_rate:
        kwargs["drop_block_rate"] = drop_block_rate
    if features_only:
        kwargs["features_only"] = True
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
    try:
        model = timm.create_model(name, **kwargs)
    except TypeError as e:  # an argument this architecture does not take (e.g. drop_block_rate)
        raise ModelSpecError(f"{name} is not an HCGNet and cannot be built with these settings: {e}") from None
    if state_dict is not None:
        load_state_dict_into(model, state_dict, checkpoint_path, strict=strict)
        if metadata.get("data_config") and hasattr(model, "pretrained_cfg"):
            cfg = dict(model.pretrained_cfg)
            cfg.update(cfg_from_data_config(json.loads(metadata["data_config"])))
            model.pretrained_cfg = model.default_cfg = cfg
    return model
