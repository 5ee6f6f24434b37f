"""The forget gate and the update gate of HCGNet, usable as plug-ins in any CNN.

Both gates follow the same three stages: spatial attention, pooling (:class:`AttentionPool`) and
channel attention through a small fully connected bottleneck ``FC -> BN -> tanh``.

Example: a forget gate that decays the shortcut of a torchvision ResNet basic block::

    from torchvision.models.resnet import BasicBlock
    from hcgnet.layers import ForgetGate

    class GatedBasicBlock(BasicBlock):
        def __init__(self, inplanes, planes, *args, **kwargs):
            super().__init__(inplanes, planes, *args, **kwargs)
            self.forget_gate = ForgetGate(planes)

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + self.forget_gate(identity))

An update gate fuses any two same-shaped branches (say a 3x3 and a 5x5 conv of an Inception-style
block) into one global context vector that is added at every position::

    out = branch_a_input + UpdateGate(channels)(branch_a, branch_b)

The scoring convolutions of the attention pooling keep their bias only to match the published weights:
a softmax over positions ignores a constant shift, so that bias never receives a gradient.
"""
from typing import Callable, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from hcgnet.errors import HCGNetError, ModelSpecError, check_whole
from hcgnet.layers.attention_pool import AttentionPool, softmax_in_float32_or_wider
from hcgnet.layers.checks import check_maps

ActFactory = Callable[[], nn.Module]

#: The gates' hidden activations by name (``gate_act``): the paper's tanh, and the two it argues against.
GATE_ACTS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def hidden_units(inputs: int, reduction: int, channels: int) -> int:
    """A gate's hidden width ``inputs // reduction`` (its bottleneck over ``channels`` channels); a reduction
    that is not a whole number of 1 or more, or that leaves no hidden unit, is a one-line
    :class:`ModelSpecError`."""
    check_whole("a gate's reduction", reduction)
    if inputs // reduction < 1:
        raise ModelSpecError(f"reduction {reduction} leaves a gate over {channels} channels without hidden units; "
                             f"use a reduction of at most {inputs}")
    return inputs // reduction


def gate_activation(act: Union[str, ActFactory]) -> ActFactory:
    """A name of :data:`GATE_ACTS` (or any module factory, passed through) -> the factory; an unknown name is a
    one-line :class:`ModelSpecError`."""
    if not isinstance(act, str):
        return act
    if act not in GATE_ACTS:
        raise ModelSpecError(f"unknown gate_act {act!r}; use one of {', '.join(GATE_ACTS)}")
    return GATE_ACTS[act]


def gate_activation_name(act: Union[str, ActFactory]) -> str:
    """The :data:`GATE_ACTS` name of an activation given by name or factory (the class name if unlisted)."""
    if isinstance(act, str):
        return act
    return next((name for name, cls in GATE_ACTS.items() if act is cls), getattr(act, "__name__", repr(act)))


class BatchOfOneError(HCGNetError):
    """Raised when a gate is trained on a batch of one sample (its BatchNorm1d cannot normalise it)."""


BATCH_OF_ONE = (
    "HCGNet gates cannot train on a batch of one image (their BatchNorm1d needs at least 2 samples); use a "
    "batch size of 2 or more, or call model.eval() for inference"
)


@torch.jit.unused
def refuse_batch_of_one(z: Tensor, norm: nn.Module) -> Tensor:
    """``z`` itself, or :class:`BatchOfOneError` when ``norm`` is a BatchNorm in training mode and ``z`` holds
    one sample. A frozen norm (any module that is not a BatchNorm) normalises a single sample fine.

    A leaf of FX graphs (``torch.fx.wrap`` below): the check reads the batch size and the norm's mode at run
    time, in train and eval graphs alike. It returns ``z`` so that dead-code elimination keeps it.
    """
    if isinstance(norm, _BatchNorm) and norm.training and z.shape[0] == 1:
        raise BatchOfOneError(BATCH_OF_ONE)
    return z


torch.fx.wrap("refuse_batch_of_one")


class GateBottleneck(nn.Module):
    """``FC -> BN -> activation`` on a (B, C) descriptor: the shared hidden layer of both gates.

    The paper chooses tanh over ReLU here (pass ``act_layer`` to compare). BatchNorm1d over a batch of
    one has no variance, so training it with one sample is refused with a message instead of a
    BatchNorm traceback (:func:`refuse_batch_of_one`).
    """

    def __init__(self, in_features: int, hidden_features: int, act_layer: Union[str, ActFactory] = nn.Tanh) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, hidden_features)
        self.norm = nn.BatchNorm1d(hidden_features)
        self.act = gate_activation(act_layer)()

    def forward(self, z: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            # TorchScript can neither call the check nor read a global string: the simple rule, said again.
            if self.training and z.shape[0] == 1:
                raise BatchOfOneError("HCGNet gates cannot train on a batch of one image; use a batch size of 2 "
                                      "or more, or call model.eval() for inference")
        else:
            z = refuse_batch_of_one(z, self.norm)
        return self.act(self.norm(self.fc(z)))


class ForgetGate(nn.Module):
    """Decays a feature map channel by channel: returns ``x * f`` with ``f = sigmoid(...)`` in (0, 1).

    ``f = sigmoid(W2 tanh(BN(W1 z + b1)) + b2)`` where ``z`` is the attention-pooled ``x`` (eq. 11).
    ``channel_weights`` is an identity carrying ``f`` as (B, C), a place for forward hooks.
    """

    def __init__(self, channels: int, reduction: int = 2, act_layer: Union[str, ActFactory] = nn.Tanh) -> None:
        super().__init__()
        check_whole("ForgetGate's channels", channels)
        hidden = hidden_units(channels, reduction, channels)
        self.channels = channels
        self.context = AttentionPool(channels)
        self.bottleneck = GateBottleneck(channels, hidden, act_layer)
        self.expand = nn.Linear(hidden, channels)
        self.channel_weights = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weights(x)

    def weights(self, x: Tensor) -> Tensor:
        """``f`` as (B, C, 1, 1) in ``x``'s dtype, ready to broadcast (e.g. into a fused multiply-add)."""
        if not torch.jit.is_scripting():
            check_maps(x, self.channels, "ForgetGate")
        f = self.channel_weights(torch.sigmoid(self.expand(self.bottleneck(self.context(x)))))
        return f[:, :, None, None].to(x.dtype)


class UpdateGate(nn.Module):
    """Fuses two branches into one global context: returns ``v`` of shape (B, C, 1, 1).

    Each branch is attention-pooled to ``z_a``, ``z_b``; ``h = tanh(BN(W [z_a || z_b] + b))`` with
    ``2C // reduction`` hidden units (eq. 7); two heads give per-channel scores that a softmax across the
    two branches turns into proportions ``u_a + u_b = 1`` (eqs. 8-9); ``v = u_a z_a + u_b z_b`` (eq. 10).
    ``branch_weights`` is an identity carrying (u_a, u_b) stacked as (B, 2, C), for forward hooks.
    The result broadcasts over every position when added to a (B, C, H, W) map.
    """

    def __init__(self, channels: int, reduction: int = 2, act_layer: Union[str, ActFactory] = nn.Tanh) -> None:
        super().__init__()
        check_whole("UpdateGate's channels", channels)
        hidden = hidden_units(2 * channels, reduction, channels)
        self.channels = channels
        self.context_a = AttentionPool(channels)
        self.context_b = AttentionPool(channels)
        self.bottleneck = GateBottleneck(2 * channels, hidden, act_layer)
        self.expand_a = nn.Linear(hidden, channels)
        self.expand_b = nn.Linear(hidden, channels)
        self.branch_weights = nn.Identity()

    def forward(self, x_a: Tensor, x_b: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_maps(x_a, self.channels, "UpdateGate")
            check_maps(x_b, self.channels, "UpdateGate")
        z = torch.stack((self.context_a(x_a), self.context_b(x_b)), dim=1)  # (B, 2, C)
        h = self.bottleneck(z.flatten(1))
        scores = torch.stack((self.expand_a(h), self.expand_b(h)), dim=1)
        # The branch softmax (eq. 9) runs in float32 under autocast too, as AttentionPool's does.
        u = self.branch_weights(softmax_in_float32_or_wider(scores, dim=1).to(z.dtype))
        v = (u * z).sum(dim=1)
        return v[:, :, None, None]



class AverageContext(nn.Module):
    """What replaces the update gate when it is switched off: ``v = (GAP(x_a) + GAP(x_b)) / 2`` as (B, C, 1, 1).

    This is the update gate with its learned parts held at their neutral values: uniform spatial attention
    (the softmax of constant scores is global average pooling) and equal branch proportions u_a = u_b = 1/2.
    The module still adds a global context vector built from both branches at every position, so the control
    removes only what the gate learns (where to look, how to weigh the branches), not the information path.
    (Adding the two branch maps instead would give the module local multi-scale features the gated network
    never passes on, a different design rather than a control.) No parameters.
    """

    def forward(self, x_a: Tensor, x_b: Tensor) -> Tensor:
        return (x_a.mean((2, 3), keepdim=True) + x_b.mean((2, 3), keepdim=True)) * 0.5
