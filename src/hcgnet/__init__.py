"""hcgnet: HCGNet (Gated Convolutional Networks with Hybrid Connectivity, AAAI 2020) for PyTorch.

    import hcgnet
    model = hcgnet.create_model("hcgnet_a1", num_classes=100)
    model = hcgnet.create_model("HCGNet-(8,8,8)-(k=12,24,36)")
    hcgnet.load_checkpoint(model, "HCGNet_B_best.pth.tar")

Importing hcgnet also registers the variants with timm (``timm.create_model("hcgnet_b")``).

``import hcgnet`` itself imports neither torch nor timm (the command line prints ``--version``, its help and
usage errors without them): the models load on first use of a name below, or as soon as timm is imported.
"""
import importlib
import importlib.abc
import importlib.util
import sys

from hcgnet.errors import CheckpointError, HCGNetError, ModelSpecError
from hcgnet.lazy import lazy_dir, lazy_exports

__version__ = "0.1.0"

_MODELS = ("HCGNet", "create_model", "list_models", "load_checkpoint", "save_safetensors")

__all__ = ["CheckpointError", "HCGNetError", "ModelSpecError", "__version__", *_MODELS]


__getattr__ = lazy_exports(__name__, dict.fromkeys(_MODELS, "hcgnet.models"))
__dir__ = lazy_dir(__name__, dict.fromkeys(_MODELS, "hcgnet.models"))


class _RegisterWithTimm(importlib.abc.MetaPathFinder):
    """Imports hcgnet.models (which registers the variants with timm) right after timm itself is imported."""

    def find_spec(self, name, path, target=None):
        if name != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            importlib.import_module("hcgnet.models")

        spec.loader.exec_module = exec_then_register
        return spec


if "timm" in sys.modules:  # torch is loaded already: nothing to save
    importlib.import_module("hcgnet.models")
else:
    sys.meta_path.insert(0, _RegisterWithTimm())
