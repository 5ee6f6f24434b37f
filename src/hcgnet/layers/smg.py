"""The SMG module: Squeeze cell, Multi-scale excitation cell and Gates, written once.

Hybrid blocks and transitions are the same module with different settings (paper, "Macro-architecture"):

=============  ======  =====  ==========  =========  ================================
where          stride  g      alpha       r_u = r_f  output channels C
=============  ======  =====  ==========  =========  ================================
hybrid block   1       4      4           2          growth rate k
transition     2       1      1.5         4          floor(0.5 * input channels)
=============  ======  =====  ==========  =========  ================================

The paper's design claims are switches of this one module (``forget_gate``, ``update_gate``, ``gate_act``,
``wide_branch``, ``local_residual``); the defaults are the paper's network.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from hcgnet.errors import ModelSpecError, check_whole, is_number
from hcgnet.layers.checks import check_maps
from hcgnet.layers.conv import PreActConv
from hcgnet.layers.gates import ActFactory, AverageContext, ForgetGate, UpdateGate

#: The excitation cell's wide branch: the paper's dilated 3x3 ("5x5" receptive field), or a real 5x5 depthwise conv.
WIDE_BRANCHES = ("dilated", "5x5")


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """A one-line :class:`ModelSpecError` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ModelSpecError(f"unknown {name} {value!r}; use one of {', '.join(choices)}")


def squeeze_width(out_channels: int, groups: int, alpha: float, squeeze_channels: Optional[int] = None) -> int:
    """The squeeze cell's width (``squeeze_channels``, else ``floor(alpha * out_channels)``), checked: the
    3x3 group conv needs it and ``out_channels`` to be positive multiples of ``groups``; anything else is a
    one-line :class:`ModelSpecError`."""
    check_whole("groups", groups)
    if out_channels < 1 or out_channels % groups:
        raise ModelSpecError(f"SMG output channels ({out_channels}) must be a positive multiple of groups ({groups})")
    if squeeze_channels is not None:
        if squeeze_channels < 1 or squeeze_channels % groups:
            raise ModelSpecError(f"squeeze_channels ({squeeze_channels}) must be a positive multiple of groups "
                                 f"({groups})")
        return squeeze_channels
    if not is_number(alpha) or not alpha > 0:
        raise ModelSpecError(f"alpha must be a number above 0 (the paper's 4), got {alpha!r}")
    width = math.floor(alpha * out_channels)
    if width < 1 or width % groups:
        raise ModelSpecError(f"alpha {alpha} makes the squeeze cell floor({alpha} x {out_channels}) = {width} channels "
                             f"wide, not a positive multiple of groups ({groups}); choose another alpha")
    return width


class SqueezeCell(nn.Module):
    """Cell 1: a 1x1 conv to ``squeeze_channels``, then a 3x3 group conv (``groups``, ``stride``) down to
    ``out_channels``. Both are pre-activation convolutions."""

    def __init__(
        self, in_channels: int, out_channels: int, squeeze_channels: int, groups: int = 4, stride: int = 1
    ) -> None:
        super().__init__()
        check_whole("SqueezeCell's in_channels", in_channels)
        self.in_channels = in_channels
        self.conv1x1 = PreActConv(in_channels, squeeze_channels, 1)
        self.conv3x3 = PreActConv(squeeze_channels, out_channels, 3, stride=stride, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_maps(x, self.in_channels, "SqueezeCell")
        return self.conv3x3(self.conv1x1(x))


class MultiScaleExcitationCell(nn.Module):
    """Cell 2: two depthwise branches over the squeezed map, a 3x3 and a wide one.

    The wide branch is by default a 3x3 with dilation 2 (``conv3x3_dilated``): the 5x5 receptive field the
    paper calls "5x5" at the cost of a 3x3, as the paper chooses. ``wide_branch="5x5"`` makes it a real 5x5
    depthwise conv (``conv5x5``, padding 2), the kernel the dilation approximates.
    Returns both branches; the spatial size is unchanged.
    """

    def __init__(self, channels: int, wide_branch: str = "dilated") -> None:
        super().__init__()
        check_choice("wide_branch", wide_branch, WIDE_BRANCHES)
        check_whole("MultiScaleExcitationCell's channels", channels)
        self.channels = channels
        self.conv3x3 = PreActConv(channels, channels, 3, groups=channels)
        # The branch not built is None (TorchScript then compiles only the other, as for torchvision's downsample).
        dilated = wide_branch == "dilated"
        self.conv3x3_dilated = PreActConv(channels, channels, 3, groups=channels, dilation=2) if dilated else None
        self.conv5x5 = None if dilated else PreActConv(channels, channels, 5, groups=channels)

    __jit_unused_properties__ = ["wide"]

    @property
    def wide(self) -> PreActConv:
        """The wide branch, whichever it is."""
        return self.conv3x3_dilated if self.conv5x5 is None else self.conv5x5

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if not torch.jit.is_scripting():
            check_maps(x, self.channels, "MultiScaleExcitationCell")
        if self.conv5x5 is None:
            return self.conv3x3(x), self.conv3x3_dilated(x)
        return self.conv3x3(x), self.conv5x5(x)


class SMGModule(nn.Module):
    """``out = forget_gate(X') + update_gate(X_3x3, X_dilated)`` where ``X'`` is the squeezed input.

    The squeezed map is the reused feature that the forget gate decays channel-wise (the local residual
    connection); the update gate's global context vector, built from the two new multi-scale branches,
    is added at every position.

    Switches (each changes only what it names; the defaults are the paper's):

    * ``forget_gate=False``: no forget gate; ``out = X' + v``, a plain local residual (weight 1).
    * ``update_gate=False``: :class:`~hcgnet.layers.gates.AverageContext` makes ``v`` (the mean of the two
      branches' global average pools, no parameters) instead of the gate.
    * ``local_residual=False``: ``out = v`` broadcast over every position, without the squeezed map (and so
      without the forget gate that sits on it): the module of a dense-only network.
    * ``gate_act``, ``wide_branch``: the gates' hidden activation, the excitation cell's wide branch.

    Args:
        in_channels: input channels (in a hybrid block, everything concatenated so far).
        out_channels: C, the channels the module produces (the growth rate k in a hybrid block).
        squeeze_channels: width after the 1x1 conv; ``floor(alpha * out_channels)`` if not given.
        alpha: width multiplier of the squeeze cell.
        groups: groups of the squeeze cell's 3x3 conv; ``out_channels`` must be divisible by it.
        stride: stride of the squeeze cell's 3x3 conv (2 in transitions).
        update_reduction, forget_reduction: the gates' reduction ratios r_u and r_f.
        gate_act: activation of the gates' hidden layer: ``"tanh"`` (the paper's), ``"relu"``, ``"sigmoid"``,
            or a module factory.
        wide_branch: ``"dilated"`` (the paper's) or ``"5x5"``, see :class:`MultiScaleExcitationCell`.
        forget_gate, update_gate, local_residual: the switches above.
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
        gate_act: Union[str, ActFactory] = nn.Tanh,
        wide_branch: str = "dilated",
        forget_gate: bool = True,
        update_gate: bool = True,
        local_residual: bool = True,
    ) -> None:
        super().__init__()
        check_whole("SMGModule's in_channels", in_channels)
        check_whole("SMGModule's out_channels", out_channels)
        squeeze_channels = squeeze_width(out_channels, groups, alpha, squeeze_channels)
        self.in_channels = in_channels
        self.squeeze = SqueezeCell(in_channels, out_channels, squeeze_channels, groups, stride)
        self.excite = MultiScaleExcitationCell(out_channels, wide_branch)
        self.forget_gate: Optional[ForgetGate] = (
            ForgetGate(out_channels, forget_reduction, gate_act) if forget_gate and local_residual else None)
        self.update_gate: nn.Module = (
            UpdateGate(out_channels, update_reduction, gate_act) if update_gate else AverageContext())
        self.local_residual = local_residual

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_maps(x, self.in_channels, "SMGModule")
        squeezed = self.squeeze(x)
        return self.gate(squeezed, *self.excite(squeezed))

    def gate(self, squeezed: Tensor, x_3x3: Tensor, x_dilated: Tensor) -> Tensor:
        """The two gates: the squeezed map X' decayed by the forget gate, plus the update gate's
        context vector fused from the two excitation branches. One fused pass over the map,
        ``v + X' * f``, instead of a multiply and then an add."""
        v = self.update_gate(x_3x3, x_dilated).to(squeezed.dtype)
        if not self.local_residual:
            return v.expand_as(squeezed)
        if self.forget_gate is None:
            return squeezed + v
        return torch.addcmul(v, squeezed, self.forget_gate.weights(squeezed))
