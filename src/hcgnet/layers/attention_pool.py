"""Softmax attention pooling over all spatial positions (the gates' "spatial attention and pooling")."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcgnet.errors import check_whole
from hcgnet.layers.checks import check_maps


class AttentionPool(nn.Module):
    """Pools a (B, C, H, W) map to a (B, C) context vector with learned spatial weights.

    A 1x1 convolution scores each position, a softmax over all H*W positions normalises the scores
    (eq. 5 of the paper) and the map is averaged with those weights (eq. 6). Works for any H x W.

    The softmax runs in float32 even under autocast: with bf16 logits over thousands of positions it is
    the first place mixed precision goes wrong. ``attention`` is an identity that carries the
    (B, 1, H, W) attention map, so a forward hook on it can read the map (e.g. for visualisation).

    The scoring convolution (``score``, kept as a module for its weights) and the pooling are computed as
    the products they are, in the map's own layout (:func:`position_scores`, :func:`weighted_sum`): a 1x1
    convolution with one output channel and a batch of matrix-vector products run 2-4x slower forward and
    backward on a CPU (``benchmarks/attention_pool.py``), and the three pools of every SMG module took about
    9% of an HCGNet-A1 training step. An ONNX export holds the scores as the convolution they are and the pooling as
    a matrix product, which OpenVINO runs faster (ONNX Runtime about the same).
    Under ``torch.compile`` both are products and sums in every layout: Inductor fuses them with their
    neighbours, where a matrix product stays a separate library call (an HCGNet-A1 bf16 compiled training step
    2% faster; BENCHMARKS.md).
    ``score`` is therefore never called: a forward hook on it sees nothing (hook ``attention`` for the map).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        check_whole("AttentionPool's channels", channels)
        self.channels = channels
        self.score = nn.Conv2d(channels, 1, kernel_size=1)
        self.attention = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_maps(x, self.channels, "AttentionPool")
        b, c, h, w = x.shape
        logits = position_scores(x, self.score.weight, self.score.bias)
        weights = softmax_in_float32_or_wider(logits, dim=-1).to(x.dtype)
        weights = self.attention(weights.reshape(b, 1, h, w))
        return weighted_sum(x, weights)


def softmax_in_float32_or_wider(x: Tensor, dim: int) -> Tensor:
    """``softmax(x)`` computed in float32 when ``x`` is narrower (bf16, fp16 under autocast), in ``x``'s own
    dtype when it is float32 or float64: a float64 model stays float64 throughout."""
    return torch.softmax(x.to(torch.promote_types(x.dtype, torch.float32)), dim=dim)


def position_scores(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The scoring 1x1 convolution (``weight`` (1, C, 1, 1), ``bias`` (1,)) of a (B, C, H, W) map, as (B, H*W).

    A leaf of FX graphs (``torch.fx.wrap`` below), as :func:`weighted_sum`: it picks its formula by the map's
    memory layout, which a symbolic trace cannot read."""
    b, c, h, w = x.shape
    weight = weight.reshape(1, c).to(x.dtype)
    if bias is not None:
        bias = bias.to(x.dtype)
    if _exporting_to_onnx():
        # The 1x1 convolution itself, on the map as it is: OpenVINO runs it in its own blocked layout, where a matrix
        # product would first reorder the map (HCGNet-B at batch 1 in OpenVINO bf16: 0.81-0.90 of the latency, in
        # two runs; A1 at batch 256 and ONNX Runtime undecided; benchmarks/onnx_forms.py).
        return F.conv2d(x, weight.reshape(1, c, 1, 1), bias).reshape(b, h * w)
    if pools_by_matrix_products(x):  # (B, H, W, C) in memory: one matrix-vector product
        return F.linear(x.permute(0, 2, 3, 1).reshape(b, h * w, c), weight, bias).reshape(b, h * w)
    scores = (x * weight.reshape(1, c, 1, 1)).sum(1).reshape(b, h * w)
    return scores if bias is None else scores + bias


def weighted_sum(x: Tensor, weights: Tensor) -> Tensor:
    """``sum over positions of x * weights``: (B, C, H, W) and (B, 1, H, W) -> (B, C)."""
    b, c, h, w = x.shape
    if _exporting_to_onnx():  # a sum over H and W took A1 at batch 256 1.35-1.42x the time in OpenVINO bf16
        return torch.bmm(x.reshape(b, c, h * w), weights.reshape(b, h * w, 1)).reshape(b, c)
    if pools_by_matrix_products(x):
        return torch.bmm(weights.reshape(b, 1, h * w), x.permute(0, 2, 3, 1).reshape(b, h * w, c)).reshape(b, c)
    # Both as (B, *, H*W): ONNX Runtime's symbolic shape inference (its quantization tools) then sees equal sizes.
    return (x.reshape(b, c, h * w) * weights.reshape(b, 1, h * w)).sum(2)


def pools_by_matrix_products(x: Tensor) -> bool:
    """Eager on a channels_last map: the scoring and the pooling as matrix products over (B, H*W, C)."""
    if torch.jit.is_scripting():
        return x.is_contiguous(memory_format=torch.channels_last)
    else:  # compiled, Inductor fuses the elementwise forms instead
        return x.is_contiguous(memory_format=torch.channels_last) and not torch.compiler.is_compiling()


def _exporting_to_onnx() -> bool:
    if torch.jit.is_scripting():  # TorchScript compiles only this branch (it cannot compile the ONNX check)
        return False
    else:
        return torch.onnx.is_in_onnx_export()


torch.fx.wrap("position_scores")
torch.fx.wrap("weighted_sum")
