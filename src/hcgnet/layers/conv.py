"""Pre-activation convolution: BN -> ReLU -> Conv, the unit every HCGNet convolution is built from."""
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class PreActConv(nn.Module):
    """BatchNorm, ReLU, then a bias-free convolution with "same" padding.

    The normalisation sits in front so that a dense concatenation of raw outputs can feed it
    (DenseNet's composite function). ``groups == in_channels == out_channels`` gives a depthwise conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation,
            groups=groups,
            bias=False,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.act(self.norm(x)))

    @torch.jit.unused
    def forward_concat_checkpointed(self, features: List[Tensor]) -> Tensor:
        """``forward(torch.cat(features, 1))`` without keeping the concatenation, the normalised map or
        the ReLU output for backward: they are recomputed there (the memory-efficient dense path).

        The recomputation normalises with the batch statistics again but must not update the running
        statistics a second time, so only the first call of ``run`` touches them. (Assumes the norm keeps
        running statistics, as every HCGNet norm does.)
        """
        first_call = [True]

        norm = self.norm

        def run(*parts: Tensor) -> Tensor:
            update, first_call[0] = first_call[0] and norm.training, False
            momentum = norm.momentum
            if update and norm.num_batches_tracked is not None:
                norm.num_batches_tracked.add_(1)
                if momentum is None:  # cumulative moving average, as nn.BatchNorm2d does it
                    momentum = 1.0 / float(norm.num_batches_tracked)
            # The recomputation updates throw-away copies (the same graph, so checkpoint's checks agree).
            copies = norm.training and not update
            x = F.batch_norm(
                torch.cat(parts, 1),
                norm.running_mean.clone() if copies else norm.running_mean,
                norm.running_var.clone() if copies else norm.running_var,
                norm.weight, norm.bias, norm.training, momentum or 0.0, norm.eps,
            )
            return self.conv(F.relu(x))

        return checkpoint(run, *features, use_reentrant=False)
