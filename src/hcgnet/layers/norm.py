"""Frozen batch normalisation, for fine-tuning with small batches (detection: 1-2 images per GPU).

``freeze_batch_norm(model)`` replaces every BatchNorm (1d, 2d, 3d, SyncBatchNorm) by a
:class:`FrozenBatchNorm` that applies the running statistics and the affine weights as constants: the
BN's eval-mode output in every mode and for any batch size, a batch of one included. torchvision's
``FrozenBatchNorm2d`` covers only 2d maps and drops ``num_batches_tracked`` from the state dict; HCGNet's
gates normalise (B, C) vectors with BatchNorm1d, and a frozen network must keep the same state dict keys so
that ImageNet weights load before or after freezing and a frozen detector's weights load back strictly
into an unfrozen one.
"""
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from hcgnet.errors import HCGNetError


class FrozenBatchNorm(nn.Module):
    """``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` over dim 1 of an (N, C, *) input,
    statistics as buffers, never updated. ``weight``/``bias`` are buffers too, or with ``trainable_affine``
    parameters (mmdetection's ``norm_eval`` with trainable scale and shift). Its state dict has the keys of the
    BatchNorm it replaces (``num_batches_tracked`` included, kept only for that)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True,
                 trainable_affine: bool = False) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        if affine and trainable_affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_buffer("weight", torch.ones(num_features) if affine else None)
            self.register_buffer("bias", torch.zeros(num_features) if affine else None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batch_norm(cls, bn: _BatchNorm, trainable_affine: bool = False) -> "FrozenBatchNorm":
        if bn.running_mean is None or bn.running_var is None:
            raise HCGNetError(f"cannot freeze {bn}: it has no running statistics (track_running_stats=False), so "
                              "its eval-mode output depends on the batch")
        frozen = cls(bn.num_features, bn.eps, affine=bn.weight is not None, trainable_affine=trainable_affine)
        with torch.no_grad():  # the BN's own tensors' values, device and dtype, detached from autograd
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                value: Optional[Tensor] = getattr(bn, name)
                if value is not None:
                    value = value.detach().clone()
                    setattr(frozen, name, nn.Parameter(value) if isinstance(getattr(frozen, name), nn.Parameter) else value)
        return frozen

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # A file written before PyTorch 0.4.1 has no count (BatchNorm itself accepts that too).
        state_dict.setdefault(prefix + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        # Scale and shift in float32 (float64 for a float64 model), then in x's dtype: under autocast a float16 map
        # stays float16.
        dtype = torch.promote_types(self.running_var.dtype, torch.float32)
        scale = (self.running_var.to(dtype) + self.eps).rsqrt()
        shift = -self.running_mean.to(dtype) * scale
        if self.weight is not None:
            scale = scale * self.weight.to(dtype)
            shift = shift * self.weight.to(dtype) + self.bias.to(dtype)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(shift.to(x.dtype).reshape(shape), x, scale.to(x.dtype).reshape(shape))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batch_norm(module: nn.Module, trainable_affine: bool = False) -> nn.Module:
    """Replace every BatchNorm in ``module`` (``module`` itself too) by a :class:`FrozenBatchNorm` holding
    its statistics and weights; returns ``module`` changed in place (or the frozen norm if ``module`` is a
    BatchNorm). The state dict keeps its keys, so weights load strictly before or after freezing. With
    ``trainable_affine`` only the statistics are frozen: scale and shift stay parameters."""
    if isinstance(module, _BatchNorm):
        return FrozenBatchNorm.from_batch_norm(module, trainable_affine)
    for name, child in module.named_children():
        frozen = freeze_batch_norm(child, trainable_affine)
        if frozen is not child:
            setattr(module, name, frozen)
    return module
