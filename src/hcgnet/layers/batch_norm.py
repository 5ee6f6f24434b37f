"""BatchNorm2d for pre-activation convolutions, with a fast CPU training path for narrow channels_last maps.

PyTorch's CPU BatchNorm kernel for a channels_last map vectorises along the channels of each position. With
fewer channels than one vector register holds (16 float32 lanes with AVX-512) it runs scalar code: an HCGNet-A1
training step (batch 64) spent more time normalising its 12-channel excitation inputs, about 190 ms forward and
backward, than on any one convolution shape (BENCHMARKS.md, "BatchNorm on narrow channels_last maps").

A channels_last (N, C, H, W) map is, in memory, an (N*H*W, C) matrix; so it is also an (N*H*W / r, r*C)
matrix, whose rows hold r positions each. With r*C a multiple of 16 the same kernels vectorise fully: batch
statistics of r*C "channels" come out in one pass and combine exactly into the C channels' statistics (equal
counts: the mean of the means, the mean of the variances plus the variance of the means); normalising and the
backward pass's sums run over the same view with the C channels' values repeated r times.

Inside ``torch.compile`` on a CPU the kernels are Inductor's, and its own batch normalisation was the slowest part
of a compiled HCGNet-A1 training step: it computes each channel's statistics with Welford's update, one channel
vector at a time across the whole batch (a strided pass over the map per vector). There, training-mode statistics
come from per-image sums instead (:class:`_BatchSumsNorm`): each image's contiguous block is summed first, then the
images; the sums are shifted by one value of each channel so that the variance, E[d^2] - E[d]^2, does not cancel
when a channel's mean is far from zero. A compiled A1 training step took 0.89 (bf16) and 0.84 (fp32) of the time
(BENCHMARKS.md, "A1 training: batch statistics inside torch.compile").
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from hcgnet.layers.compiling import compiling_not_exporting

#: Channels that one AVX-512 register holds in float32: a channels_last map with fewer takes the wide view.
VECTOR_LANES = 16


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` in every respect (parameters, buffers, state dict keys, eval, export, TorchScript),
    except that CPU training of a channels_last float32 or bfloat16 map with fewer than :data:`VECTOR_LANES`
    channels computes over a wider view of the same memory (see the module docstring): same statistics, same
    gradients, running statistics updated as torch does, several times faster. Inside ``torch.compile`` on a CPU,
    training-mode statistics come from per-image sums that Inductor reduces quickly (the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._standard_forward(x)
        return batch_norm_2d(x, self)

    def _standard_forward(self, x: Tensor) -> Tensor:
        """``nn.BatchNorm2d.forward`` (TorchScript cannot call ``super()``): the same momentum and statistics rules."""
        self._check_input_dim(x)
        factor = self._count_batch()
        return F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight, self.bias, self.uses_batch_statistics(), factor, self.eps)

    def uses_batch_statistics(self) -> bool:
        """Whether the forward pass normalises with the batch's statistics, by torch's rule: in training, or
        always without running statistics (``track_running_stats=False``)."""
        return self.training or (self.running_mean is None and self.running_var is None)

    def _count_batch(self) -> float:
        """Counts a training batch in ``num_batches_tracked`` as torch does, and returns the running statistics'
        update factor: ``momentum``, or 1 / batches counted with ``momentum=None`` (a cumulative average)."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        return factor


@torch.jit.unused
def batch_norm_2d(x: Tensor, norm: BatchNorm2d) -> Tensor:
    """``norm(x)``: over the wide view where it applies (:func:`takes_wide_view`), from per-image sums inside
    ``torch.compile`` on a CPU (:func:`takes_batch_sums`), else torch's own path.

    A leaf of FX graphs (``torch.fx.wrap`` below): the choice reads the device, layout, dtype and mode of the
    real tensor at run time, which a symbolic trace cannot branch on.
    """
    if takes_wide_view(x, norm):
        function = _WideViewBatchNorm
    elif takes_batch_sums(x, norm):
        function = _BatchSumsNorm
    else:
        return norm._standard_forward(x)
    norm._check_input_dim(x)
    y, mean, var = function.apply(x, norm.weight, norm.bias, norm.eps)
    factor = norm._count_batch()
    if norm.training and norm.track_running_stats and norm.running_mean is not None and norm.running_var is not None:
        with torch.no_grad():
            count = _batch_count(x)
            # Unbiased, as torch updates its running variance; the normalisation itself uses the biased one.
            norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), factor)
            norm.running_var.lerp_((var * (count / max(count - 1, 1))).to(norm.running_var.dtype), factor)
    return y


torch.fx.wrap("batch_norm_2d")


def takes_wide_view(x: Tensor, norm: BatchNorm2d) -> bool:
    """Whether ``norm(x)`` normalises with batch statistics over the wide view: CPU, training (or no running
    statistics), a 4-d channels_last float32/bfloat16 map with fewer than :data:`VECTOR_LANES` channels, float32
    parameters, positions a multiple of the view's factor, and not inside ``torch.compile`` (Inductor writes its
    own kernels)."""
    if torch.compiler.is_compiling() or x.device.type != "cpu" or x.dim() != 4 or not norm.uses_batch_statistics():
        return False
    channels = x.shape[1]
    if channels >= VECTOR_LANES or x.dtype not in (torch.float32, torch.bfloat16) or x.numel() == 0:
        return False
    if norm.weight is not None and norm.weight.dtype != torch.float32:
        return False
    if channels == 1 or not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        return False
    return (x.numel() // channels) % _factor(channels) == 0


def takes_batch_sums(x: Tensor, norm: BatchNorm2d) -> bool:
    """Whether ``norm(x)`` normalises with batch statistics from per-image sums (:class:`_BatchSumsNorm`): inside
    ``torch.compile`` (not an export, which keeps torch's operator), on a CPU, training (or no running statistics),
    a non-empty 4-d floating-point map."""
    if not compiling_not_exporting():
        return False
    if x.device.type != "cpu" or x.dim() != 4 or x.numel() == 0 or not x.is_floating_point():
        return False
    return norm.uses_batch_statistics()


def _batch_count(x: Tensor) -> int:
    """Values per channel in a batch of (N, C, H, W) maps: N*H*W."""
    return x.numel() // x.shape[1]


def _affine(like: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """A norm's weight and bias in ``like``'s dtype; ones and zeros for a norm without affine parameters."""
    gamma = torch.ones_like(like) if weight is None else weight.to(like.dtype)
    beta = torch.zeros_like(like) if bias is None else bias.to(like.dtype)
    return gamma, beta


def _factor(channels: int) -> int:
    """r: positions per row of the wide view, the fewest that fill whole vectors."""
    return VECTOR_LANES // math.gcd(channels, VECTOR_LANES)


def _rows(x: Tensor, r: int) -> Tensor:
    """A channels_last (N, C, H, W) map as its (N*H*W / r, r*C) matrix: a view, no copy."""
    return x.permute(0, 2, 3, 1).reshape(-1, r * x.shape[1])


def _positions_map(rows: Tensor, like: Tensor) -> Tensor:
    """The inverse of :func:`_rows`: an (N, C, H, W) channels_last map over the rows' memory."""
    n, c, h, w = like.shape
    return rows.view(n, h, w, c).permute(0, 3, 1, 2)


class _WideViewBatchNorm(torch.autograd.Function):
    """Training-mode batch normalisation of a channels_last map over its wide view. Returns the normalised map
    and the batch mean and (biased) variance per channel, float32, for the running statistics."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float):
        channels = x.shape[1]
        r = _factor(channels)
        rows = _rows(x, r)
        # Statistics of the r*C columns, combined over the r positions. A float32 weight makes the kernel return
        # float32 statistics of a bfloat16 map too (without one they come back rounded to bfloat16).
        ones = torch.ones(r * channels, device=x.device)
        _, column_mean, column_invstd = torch.ops.aten.native_batch_norm(rows, ones, None, None, None, True, 0.0, 0.0)
        column_mean = column_mean.view(r, channels)
        column_var = column_invstd.pow(-2).view(r, channels)
        mean = column_mean.mean(0)
        var = (column_var + (column_mean - mean).square()).mean(0)
        weight, bias = _affine(mean, weight, bias)
        # Normalising with given statistics is BatchNorm's eval-mode kernel, over the same view.
        # Written through a view into a map of its own: ReLU(inplace=True) may then modify it.
        out = torch.empty_like(x, memory_format=torch.channels_last)
        unused = mean.new_empty(0)
        torch.ops.aten.native_batch_norm.out(
            rows, *(t.repeat(r) for t in (weight, bias, mean, var)), False, 0.0, eps,
            out=_rows(out, r), save_mean=unused, save_invstd=unused.clone())
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor, _grad_mean, _grad_var):
        x, weight, mean, var = ctx.saved_tensors
        channels = x.shape[1]
        r = _factor(channels)
        rows = _rows(x, r)
        grad_rows = _rows(grad.contiguous(memory_format=torch.channels_last), r)
        count = _batch_count(x)
        wide_mean, wide_var = mean.repeat(r), var.repeat(r)  # the C channels' statistics, per column of the view
        # The eval-mode backward gives weight * invstd * grad and, per column, sum(grad * x_hat) and sum(grad).
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_rows, rows, weight.repeat(r), wide_mean, wide_var, None, None, False, ctx.eps, [True, True, True])
        grad_weight = grad_weight.float().view(r, channels).sum(0)
        grad_bias = grad_bias.float().view(r, channels).sum(0)
        # Training mode also subtracts scale * (sum(grad) + x_hat * sum(grad * x_hat)) / count: an affine function
        # of x_hat per channel, which is the eval-mode forward kernel again (float32 inside, rounded once).
        scale = weight * (var + ctx.eps).rsqrt()
        correction = torch.ops.aten.native_batch_norm(
            rows, (-scale * grad_weight / count).repeat(r), (-scale * grad_bias / count).repeat(r), wide_mean, wide_var,
            False, 0.0, ctx.eps)[0]
        grad_x += correction
        needs_weight, needs_bias = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        return (_positions_map(grad_x, x), grad_weight if needs_weight else None, grad_bias if needs_bias else None,
                None)


def _channel_sums(t: Tensor) -> Tensor:
    """Per-channel sums of an (N, C, H, W) map: each image first (a contiguous block in either layout, so Inductor
    reduces it in one sweep), then over the images."""
    return t.sum((2, 3)).sum(0)


def _per_channel(t: Tensor) -> Tensor:
    return t.view(1, -1, 1, 1)


class _BatchSumsNorm(torch.autograd.Function):
    """Training-mode batch normalisation from per-image sums, for graphs Inductor compiles (module docstring).
    Computes in the wider of float32 and the map's dtype; returns the normalised map in the map's dtype and the
    batch mean and (biased) variance per channel, for the running statistics."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float):
        dtype = torch.promote_types(x.dtype, torch.float32)
        values = x.to(dtype)
        count = _batch_count(x)
        # Shifted by each channel's first value: the variance is the same, and it no longer cancels.
        shift = values[:1, :, :1, :1]
        shifted = values - shift
        shifted_mean = _channel_sums(shifted) / count
        var = (_channel_sums(shifted.square()) / count - shifted_mean.square()).clamp_min(0)
        mean = shifted_mean + shift.flatten()
        invstd = (var + eps).rsqrt()
        gamma, beta = _affine(mean, weight, bias)
        scale = gamma * invstd
        y = ((values - _per_channel(mean)) * _per_channel(scale) + _per_channel(beta)).to(x.dtype)
        ctx.save_for_backward(x, gamma, mean, invstd)
        ctx.weight_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor, _grad_mean, _grad_var):
        x, gamma, mean, invstd = ctx.saved_tensors
        dtype = gamma.dtype
        count = _batch_count(x)
        grad = grad.to(dtype)
        x_hat = (x.to(dtype) - _per_channel(mean)) * _per_channel(invstd)
        grad_bias = _channel_sums(grad)
        grad_weight = _channel_sums(grad * x_hat)
        grad_x = _per_channel(gamma * invstd) * (
            grad - _per_channel(grad_bias / count) - x_hat * _per_channel(grad_weight / count))
        weight_dtype, bias_dtype = ctx.weight_dtypes
        return (grad_x.to(x.dtype),
                grad_weight.to(weight_dtype) if weight_dtype is not None and ctx.needs_input_grad[1] else None,
                grad_bias.to(bias_dtype) if bias_dtype is not None and ctx.needs_input_grad[2] else None,
                None)
