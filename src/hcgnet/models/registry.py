"""``create_model`` / ``list_models``, and registration of the variants with timm.

After ``import hcgnet``, ``timm.create_model("hcgnet_b", ...)`` builds the same network as
``hcgnet.create_model("hcgnet_b", ...)``, with timm's ``pretrained_cfg``, ``features_only`` and friends.
"""
import os
from pathlib import Path
from typing import List, Optional, Sequence

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import FeatureListNet
from torch import nn

from hcgnet.errors import CheckpointError
from hcgnet.models.checkpoints import load_state_dict_into, num_classes_in, read_state_dict
from hcgnet.models.hcgnet import HCGNet
from hcgnet.models.variants import VARIANTS, Variant, resolve

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _cfg(variant: Variant) -> dict:
    cifar = variant.stem == "cifar"
    return {
        "url": "",
        "num_classes": variant.num_classes,
        "input_size": variant.input_size,
        "pool_size": (8, 8) if cifar else (7, 7),
        "crop_pct": 1.0 if cifar else 0.875,
        "interpolation": "bilinear",
        "mean": CIFAR_MEAN if cifar else IMAGENET_DEFAULT_MEAN,
        "std": CIFAR_STD if cifar else IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv0",
        "classifier": "classifier",
        "paper_name": "Gated Convolutional Networks with Hybrid Connectivity for Image Classification",
        "architecture": variant.spec,
    }


default_cfgs = generate_default_cfgs({name: _cfg(v) for name, v in VARIANTS.items()})


def _feature_cfg(variant: Variant) -> dict:
    return dict(flatten_sequential=True, out_indices=tuple(range(len(variant.block_depths))))


def _create_timm(name: str, pretrained: bool = False, **kwargs) -> HCGNet:
    variant = VARIANTS[name]
    return build_model_with_cfg(
        HCGNet, name, pretrained, feature_cfg=_feature_cfg(variant), **{**variant.model_kwargs(), **kwargs}
    )


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


def list_models() -> List[str]:
    """Names of the registered variants (any other network can be given as a spec)."""
    return list(VARIANTS)


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
    **kwargs,
) -> nn.Module:
    """Build a variant (``"hcgnet_b"``) or any network in the paper's notation
    (``"HCGNet-(8,8,8)-(k=12,24,36)"``).

    Args:
        num_classes: classifier outputs; defaults to the variant's (10 CIFAR, 1000 ImageNet), or to the
            checkpoint's when weights are loaded.
        pretrained: load the published weights from :func:`weights_dir` (never downloaded).
        checkpoint_path: load weights from this file (published format, hcgnet's, or ``.safetensors``);
            the class count and input channels come from it unless given.
        strict: with weights, every key must fit (``False``: load the keys that fit, e.g. for fine-tuning
            with another ``num_classes``).
        features_only: return a timm ``FeatureListNet`` giving the stage outputs (``out_indices``).
        stem: ``"cifar"`` or ``"imagenet"`` to override the stem a spec implies.
        **kwargs: passed to :class:`HCGNet` (``drop_rate``, ``in_chans``, ``gate_act``, ...).
    """
    name, variant = resolve(name_or_spec, stem)
    weights = checkpoint_path or (find_pretrained(name) if pretrained else None)
    state_dict = None
    if weights is not None:
        state_dict, _ = read_state_dict(weights)
        if num_classes is None:
            num_classes = num_classes_in(state_dict) or 0
        stem_weight = state_dict.get("stem.conv0.weight")
        if stem_weight is not None and stem_weight.dim() == 4:
            kwargs.setdefault("in_chans", int(stem_weight.shape[1]))
    model_kwargs = variant.model_kwargs()
    if num_classes is not None:
        model_kwargs["num_classes"] = num_classes
    model = HCGNet(**{**model_kwargs, **kwargs})
    model.pretrained_cfg = model.default_cfg = {**_cfg(variant), "num_classes": model.num_classes}
    if state_dict is not None:
        load_state_dict_into(model, state_dict, weights, strict=strict)
    if features_only:
        indices = tuple(out_indices) if out_indices is not None else _feature_cfg(variant)["out_indices"]
        model = FeatureListNet(model, out_indices=indices, flatten_sequential=True)
    return model
