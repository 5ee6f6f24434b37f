"""HCGNet networks, their variants, registry and checkpoints."""
from hcgnet.models import baselines  # noqa: F401  registers DenseNet-BC and the CIFAR ResNets with timm
from hcgnet.models.checkpoints import load_checkpoint, read_state_dict, save_safetensors
from hcgnet.models.hcgnet import HCGNet, HCGStage, HybridBlock, Transition
from hcgnet.models.registry import create_model, list_models
from hcgnet.models.variants import VARIANTS, Variant, format_spec, parse_spec

__all__ = [
    "HCGNet", "HCGStage", "HybridBlock", "Transition", "VARIANTS", "Variant", "create_model", "format_spec",
    "list_models", "load_checkpoint", "parse_spec", "read_state_dict", "save_safetensors",
]
