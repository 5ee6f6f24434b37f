"""The published implementation (github winycg/HCGNet) beside hcgnet, for side-by-side measurements.

Its code is imported from a clone the user makes (``git clone https://github.com/winycg/HCGNet``) and never
enters this package (its licence is research-only). :func:`paired_models` builds one of its networks and the
same network of hcgnet holding the very same weights, passed through :func:`hcgnet.models.load_checkpoint` as a
file in the published checkpoint format, and checks that both give the same logits before anything is timed.
"""
import importlib
import sys
import tempfile
from pathlib import Path
from typing import Dict, Tuple

import torch
from torch import nn

from hcgnet.errors import HCGNetError

#: hcgnet's name -> (the published module, its model function). The CIFAR and ImageNet modules of the
#: published repository hold one copy of the network each.
PUBLISHED_MODELS: Dict[str, Tuple[str, str]] = {
    "hcgnet_a1": ("models.HCGNet_CIFAR", "HCGNet_A1"),
    "hcgnet_a2": ("models.HCGNet_CIFAR", "HCGNet_A2"),
    "hcgnet_a3": ("models.HCGNet_CIFAR", "HCGNet_A3"),
    "hcgnet_b": ("models.HCGNet_ImageNet", "HCGNet_B"),
    "hcgnet_c": ("models.HCGNet_ImageNet", "HCGNet_C"),
}
PUBLISHED_URL = "https://github.com/winycg/HCGNet"
#: The published repository's top-level packages its model modules import.
_PACKAGES = ("models", "regularization")
#: Logits of the two implementations in float32 agree to this (their arithmetic is grouped differently).
LOGIT_TOLERANCE = 1e-4
_imported: Dict[Tuple[str, str], object] = {}


def published_names() -> Tuple[str, ...]:
    return tuple(PUBLISHED_MODELS)


def _shim_numpy() -> None:
    """NumPy 1.24 removed ``np.int``; the published DropBlock scheduler calls it in every CIFAR transition's
    forward, so the alias stays set for the life of the process."""
    import numpy

    if "int" not in numpy.__dict__:
        numpy.int = int


def check_clone(path: str) -> Path:
    """``path`` as a clone of the published repository, or a one-line refusal saying what it is instead and how to
    make one (``git clone`` makes a folder, or fills an empty one: into anything else it cannot)."""
    root = Path(path).expanduser()
    if (root / "models" / "HCGNet_CIFAR.py").is_file():
        return root
    clone = f"git clone {PUBLISHED_URL}"
    if root.is_file():
        raise HCGNetError(f"{path} is a file, not a clone of the published HCGNet repository (a folder); clone it "
                          f"into a new folder: {clone} ~/HCGNet-published, and pass that folder")
    if root.is_dir() and any(root.iterdir()):
        raise HCGNetError(f"{path} is not a clone of the published HCGNet repository (it has no "
                          f"models/HCGNet_CIFAR.py); clone it into a new folder: {clone} {root / 'HCGNet'}, and "
                          "pass that folder")
    raise HCGNetError(f"{path} is not a clone of the published HCGNet repository (it has no models/HCGNet_CIFAR.py); "
                      f"make one with: {clone} {path}")


def import_published(path: str, module: str):
    """The published repository's ``module`` (e.g. ``models.HCGNet_CIFAR``), imported from the clone at ``path``
    without leaving its top-level packages (``models``, ``regularization``) in ``sys.modules``, where they
    would shadow modules of the same names."""
    root = check_clone(path)
    key = (str(root.resolve()), module)
    if key in _imported:
        return _imported[key]
    _shim_numpy()

    def ours(name: str) -> bool:
        return name.split(".")[0] in _PACKAGES

    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if ours(name)}
    sys.path.insert(0, str(root))
    try:
        _imported[key] = importlib.import_module(module)
    except Exception as e:  # a clone of another version, a dependency missing
        raise HCGNetError(f"cannot import {module} from {path}: {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
    return _imported[key]


def published_model(path: str, name: str, num_classes: int, seed: int = 0) -> nn.Module:
    """The published implementation's ``name`` (hcgnet's name, e.g. ``hcgnet_a1``), initialised from ``seed``."""
    if name not in PUBLISHED_MODELS:
        raise HCGNetError(f"the published implementation has no {name!r}; it has {', '.join(PUBLISHED_MODELS)}")
    module, function = PUBLISHED_MODELS[name]
    builder = getattr(import_published(path, module), function, None)
    if builder is None:
        raise HCGNetError(f"{path}: {module} has no {function}; is it a clone of winycg/HCGNet?")
    torch.manual_seed(seed)
    return builder(num_classes=num_classes)


def hcgnet_twin(published: nn.Module, name: str, num_classes: int, **kwargs) -> nn.Module:
    """hcgnet's ``name`` holding ``published``'s weights, loaded by :func:`hcgnet.models.load_checkpoint` from a
    file in the published format (``{"net": state_dict}`` with ``module.`` keys, as its scripts saved them)."""
    from hcgnet.models import create_model, load_checkpoint

    model = create_model(name, num_classes=num_classes, **kwargs)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "published.pth.tar"
        torch.save({"net": {f"module.{k}": v for k, v in published.state_dict().items()}}, path)
        load_checkpoint(model, path)
    return model


def logit_difference(a: nn.Module, b: nn.Module, size: Tuple[int, int], batch: int = 2, seed: int = 0) -> float:
    """Largest absolute difference of the two models' eval-mode logits on one random batch, relative to the
    logits' scale."""
    from hcgnet.models.registry import first_conv_in_chans

    in_chans = first_conv_in_chans(a)
    x = torch.randn(batch, in_chans, *size, generator=torch.Generator().manual_seed(seed))
    modes = a.training, b.training
    a.eval(), b.eval()
    with torch.no_grad():
        ya, yb = a(x), b(x)
    a.train(modes[0]), b.train(modes[1])
    return ((ya - yb).abs().max() / ya.abs().max().clamp_min(1.0)).item()


def paired_models(path: str, name: str, num_classes: int, size: Tuple[int, int], seed: int = 0,
                  **kwargs) -> Tuple[nn.Module, nn.Module]:
    """(published, hcgnet): the same network with the same weights, refused in one line unless their logits
    agree to :data:`LOGIT_TOLERANCE`. ``kwargs`` go to hcgnet's ``create_model`` (e.g. ``memory_efficient``)."""
    published = published_model(path, name, num_classes, seed)
    ours = hcgnet_twin(published, name, num_classes, **kwargs)
    difference = logit_difference(published, ours, size)
    if not difference <= LOGIT_TOLERANCE:
        raise HCGNetError(f"the published {name} at {path} and hcgnet's disagree (largest logit difference "
                          f"{difference:.2e} of the logits' scale, above {LOGIT_TOLERANCE:g}) with the same weights: "
                          "not the same network, so their timings would not compare")
    return published, ours
