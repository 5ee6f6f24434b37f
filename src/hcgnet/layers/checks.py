"""A map of the wrong shape given to a building block (a plug-in user's mistake) as one line naming the block
and what it takes, instead of an error from deep inside torch. Checked in eager mode only: a traced, scripted,
compiled or exported graph carries no check (and pays nothing for it)."""
import torch
from torch import Tensor

from hcgnet.errors import ModelSpecError


def check_maps(x: Tensor, channels: int, owner: str) -> None:
    """A :class:`ModelSpecError` unless ``x`` is (N, ``channels``, H, W); ``owner`` names the block. Callers guard
    the call with ``if not torch.jit.is_scripting()``, which TorchScript leaves uncompiled."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or isinstance(x, torch.fx.Proxy):
        return
    if x.dim() != 4 or x.shape[1] != channels:
        raise ModelSpecError(f"{owner} over {channels} channels takes (N, {channels}, H, W) maps, got a tensor of "
                             f"shape {tuple(x.shape)}")
