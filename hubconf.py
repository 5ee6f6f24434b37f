"""torch.hub entry points: ``torch.hub.load("OWNER/hcgnet", "hcgnet_b")``, or ``source="local"`` with a clone.

Each builds the network as :func:`hcgnet.create_model` does, with its arguments (``num_classes``,
``checkpoint_path``, ``features_only``, ``in_chans``, the design switches, ...). hcgnet never downloads
weights: ``pretrained=True`` loads the authors' file from ``$HCGNET_HOME`` (or ``~/.cache/hcgnet``) and, when it
is not there, says which file to put where.
"""
import os as _os
import sys as _sys

# What importing hcgnet needs (torch.hub checks they are installed before loading this file).
dependencies = ["torch", "torchvision", "timm", "safetensors", "numpy", "yaml", "tqdm", "PIL"]

# A clone is not installed: hcgnet's package is in its src/ folder.
_SRC = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "src")
if _SRC not in _sys.path:
    _sys.path.insert(0, _SRC)

from hcgnet.models.registry import create_model as _create_model  # noqa: E402


def hcgnet_a1(pretrained: bool = False, **kwargs):
    """HCGNet-A1, HCGNet-(8,8,8)-(k=12,24,36), the CIFAR stem: 1,065,301 parameters with 10 classes.
    No published weights (``checkpoint_path=`` loads a file of one's own or in the published format)."""
    return _create_model("hcgnet_a1", pretrained=pretrained, **kwargs)


def hcgnet_a2(pretrained: bool = False, **kwargs):
    """HCGNet-A2, HCGNet-(8,8,8)-(k=24,36,64), the CIFAR stem: 3,069,149 parameters with 10 classes.
    No published weights."""
    return _create_model("hcgnet_a2", pretrained=pretrained, **kwargs)


def hcgnet_a3(pretrained: bool = False, **kwargs):
    """HCGNet-A3, HCGNet-(12,12,12)-(k=36,48,80), the CIFAR stem: 11,239,897 parameters with 10
    classes. No published weights."""
    return _create_model("hcgnet_a3", pretrained=pretrained, **kwargs)


def hcgnet_b(pretrained: bool = False, **kwargs):
    """HCGNet-B, HCGNet-(3,6,12,8)-(k=32,48,64,96), the ImageNet stem: 12,845,501 parameters.
    ``pretrained=True``: the authors' ImageNet-1k weights, ``HCGNet_B_best.pth.tar`` in ``$HCGNET_HOME``
    (research-only licence)."""
    return _create_model("hcgnet_b", pretrained=pretrained, **kwargs)


def hcgnet_c(pretrained: bool = False, **kwargs):
    """HCGNet-C, HCGNet-(6,12,18,14)-(k=48,56,72,112), the ImageNet stem: 42,153,208 parameters.
    ``pretrained=True``: the authors' ImageNet-1k weights, ``HCGNet_C_best.pth.tar`` in ``$HCGNET_HOME``
    (research-only licence)."""
    return _create_model("hcgnet_c", pretrained=pretrained, **kwargs)


def hcgnet(spec: str, **kwargs):
    """Any HCGNet in the paper's notation, e.g. ``hcgnet("HCGNet-(4,4,4)-(k=16,32,48)", stem="imagenet")``."""
    return _create_model(spec, **kwargs)
