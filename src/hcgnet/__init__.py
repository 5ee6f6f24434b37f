"""hcgnet: HCGNet (Gated Convolutional Networks with Hybrid Connectivity, AAAI 2020) for PyTorch.

    import hcgnet
    model = hcgnet.create_model("hcgnet_a1", num_classes=100)
    model = hcgnet.create_model("HCGNet-(8,8,8)-(k=12,24,36)")
    hcgnet.load_checkpoint(model, "HCGNet_B_best.pth.tar")

Importing hcgnet also registers the variants with timm (``timm.create_model("hcgnet_b")``).
"""
from hcgnet.errors import CheckpointError, HCGNetError, ModelSpecError
from hcgnet.models import HCGNet, create_model, list_models, load_checkpoint, save_safetensors

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "HCGNet", "HCGNetError", "ModelSpecError", "__version__", "create_model", "list_models",
    "load_checkpoint", "save_safetensors",
]
