"""The SMG module: Squeeze cell, Multi-scale excitation cell and Gates, written once.

Hybrid blocks and transitions are the same module with different settings (paper, "Macro-architecture"):

=============  ======  =====  ==========  =========  ================================
where          stride  g      alpha       r_u = r_f  output channels C
=============  ======  =====  ==========  =========  ================================
hybrid block   1       4      4           2          growth rate k
transition     2       1      1.5         4          floor(0.5 * input channels)
=============  ======  =====  ==========  =========  ================================
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from hcgnet.layers.conv import PreActConv
from hcgnet.layers.gates import ActFactory, ForgetGate, UpdateGate


class SqueezeCell(nn.Module):
    """Cell 1: a 1x1 conv to ``squeeze_channels``, then a 3x3 group conv (``groups``, ``stride``) down to
    ``out_channels``. Both are pre-activation convolutions."""

    def __init__(
        self, in_channels: int, out_channels: int, squeeze_channels: int, groups: int = 4, stride: int = 1
    ) -> None:
        super().__init__()
        self.conv1x1 = PreActConv(in_channels, squeeze_channels, 1)
        self.conv3x3 = PreActConv(squeeze_channels, out_channels, 3, stride=stride, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3x3(self.conv1x1(x))


class MultiScaleExcitationCell(nn.Module):
    """Cell 2: two depthwise branches over the squeezed map, a 3x3 and a 3x3 with dilation 2.

    The dilated branch has the 5x5 receptive field the paper calls "5x5" at the cost of a 3x3.
    Returns both branches; the spatial size is unchanged.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv3x3 = PreActConv(channels, channels, 3, groups=channels)
        self.conv3x3_dilated = PreActConv(channels, channels, 3, groups=channels, dilation=2)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.conv3x3(x), self.conv3x3_dilated(x)


class SMGModule(nn.Module):
    """``out = forget_gate(X') + update_gate(X_3x3, X_dilated)`` where ``X'`` is the squeezed input.

    The squeezed map is the reused feature that the forget gate decays channel-wise (the local residual
    connection); the update gate's global context vector, built from the two new multi-scale branches,
    is added at every position.

    Args:
        in_channels: input channels (in a hybrid block, everything concatenated so far).
        out_channels: C, the channels the module produces (the growth rate k in a hybrid block).
        squeeze_channels: width after the 1x1 conv; ``floor(alpha * out_channels)`` if not given.
        alpha: width multiplier of the squeeze cell.
        groups: groups of the squeeze cell's 3x3 conv; ``out_channels`` must be divisible by it.
        stride: stride of the squeeze cell's 3x3 conv (2 in transitions).
        update_reduction, forget_reduction: the gates' reduction ratios r_u and r_f.
        gate_act: activation of the gates' hidden layer (the paper's tanh by default).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        squeeze_channels: Optional[int] = None,
        alpha: float = 4.0,
        groups: int = 4,
        stride: int = 1,
        update_reduction: int = 2,
        forget_reduction: int = 2,
        gate_act: ActFactory = nn.Tanh,
    ) -> None:
        super().__init__()
        if out_channels % groups:
            raise ValueError(f"SMG output channels ({out_channels}) must be divisible by groups ({groups})")
        if squeeze_channels is None:
            squeeze_channels = math.floor(alpha * out_channels)
        self.squeeze = SqueezeCell(in_channels, out_channels, squeeze_channels, groups, stride)
        self.excite = MultiScaleExcitationCell(out_channels)
        self.forget_gate = ForgetGate(out_channels, forget_reduction, gate_act)
        self.update_gate = UpdateGate(out_channels, update_reduction, gate_act)

    def forward(self, x: Tensor) -> Tensor:
        squeezed = self.squeeze(x)
        return self.gate(squeezed, *self.excite(squeezed))

    def gate(self, squeezed: Tensor, x_3x3: Tensor, x_dilated: Tensor) -> Tensor:
        """The two gates: the squeezed map X' decayed by the forget gate, plus the update gate's
        context vector fused from the two excitation branches. One fused pass over the map,
        ``v + X' * f``, instead of a multiply and then an add."""
        v = self.update_gate(x_3x3, x_dilated)
        return torch.addcmul(v.to(squeezed.dtype), squeezed, self.forget_gate.weights(squeezed))
