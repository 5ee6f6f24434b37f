"""Whether a forward pass is being traced for Inductor to compile, as opposed to eager, TorchScript or an export."""
import torch


@torch.jit.unused
def compiling_not_exporting() -> bool:
    """Inside ``torch.compile``, not an export (ONNX, ``torch.export``, the int8 flow). The fast paths that pay
    only because Inductor writes their arithmetic as its own kernels (the norms' per-image sums, the dilated
    convolutions' phase maps, one buffer per hybrid block) apply here; an export keeps the plain operators that
    its consumers know."""
    return torch.compiler.is_compiling() and not torch.compiler.is_exporting()
