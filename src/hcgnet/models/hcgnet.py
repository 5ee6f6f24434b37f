"""HCGNet: Gated Convolutional Networks with Hybrid Connectivity (Yang et al., AAAI 2020).

Image to logits, in the order this file reads:

    stem          CIFAR: 3x3 conv, stride 1, 2 * k_1 channels
                  ImageNet: three 3x3 conv-BN-ReLU (32, 32, 64 channels, the first stride 2), 3x3 max-pool /2
    stages[i]     transition (stage i > 0): one SMG module, stride 2, halves the channels
                  drop_block (stage i > 0): DropBlock, block size 2, when ``drop_block_rate`` > 0
                  hybrid block: n_i SMG modules, each fed the concatenation of everything before it in
                  the block (global dense connectivity) and adding k_i channels; inside each module the
                  squeezed map reaches the output through the forget gate (local residual connectivity)
    head          BN-ReLU, global average pool, dropout, linear classifier

The SMG module itself lives in :mod:`hcgnet.layers.smg`.

The paper's design claims are switches of this one network (``connectivity``, ``forget_gate``, ``update_gate``,
``gate_act``, ``wide_branch``, and the squeeze cell's ``alpha`` and ``groups``): see :class:`HCGNet`.
"""
import functools
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import DropBlock2d, SelectAdaptivePool2d
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from hcgnet.errors import ModelSpecError, check_whole, is_number, is_whole
from hcgnet.complexity import count_params
from hcgnet.layers import SMGModule
from hcgnet.layers.compiling import compiling_not_exporting
from hcgnet.layers.gates import ActFactory, gate_activation, gate_activation_name
from hcgnet.layers.smg import WIDE_BRANCHES, check_choice
from hcgnet.layers.recompute import checkpoint_module
from hcgnet.models.checkpoints import accept_published_state_dicts
from hcgnet.models.variants import format_spec

STEMS = ("cifar", "imagenet")
#: Global connectivity of the blocks: the paper's hybrid (dense between modules, local residual inside each),
#: dense only (no local residual), residual only (modules add to a constant width instead of concatenating).
CONNECTIVITIES = ("hybrid", "dense", "residual")


class HybridBlock(nn.Module):
    """``depth`` SMG modules with dense connectivity: module i sees the block input and the outputs of
    modules 0..i-1 concatenated, and the block returns all of them concatenated
    (``in_channels + depth * growth_rate`` channels).

    ``compiled_buffer`` (default True): under ``torch.compile`` without gradients (``hcgnet eval --compile``,
    ``hcgnet predict --compile``) the block fills one buffer instead of concatenating (:meth:`forward_buffer`),
    the same numbers, when its maps hold at least :attr:`buffer_min_positions` positions (batch x height x
    width). The buffer saves copies that grow with the map; each write costs a call of its own, whatever the
    size: it paid on A1 at batch 256 and lost at batch 1 (BENCHMARKS.md, "Dense connectivity compiled"). False (:func:`set_compiled_buffer` for a whole network) compiles the
    concatenations as written (for comparison, ``benchmarks/dense_compiled.py``). Training, eager, exported,
    traced and scripted networks always run the concatenations (ONNX Runtime and the int8 quantizer's patterns
    expect them).
    """

    #: The smallest map (batch x height x width) a compiled block fills a buffer for: the smallest measured
    #: where the buffer paid; sizes between 3136 (lost) and this one are unmeasured.
    buffer_min_positions: int = 16384

    def __init__(
        self, in_channels: int, depth: int, growth_rate: int, memory_efficient: bool = False, **smg_kwargs
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SMGModule(in_channels + i * growth_rate, growth_rate, **smg_kwargs) for i in range(depth)
        )
        self.out_channels = in_channels + depth * growth_rate
        self.memory_efficient = memory_efficient
        self.compiled_buffer = True

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and self._fills_buffer(x):
            return self.forward_buffer(x)
        features = [x]
        for layer in self.layers:
            if self.memory_efficient and torch.is_grad_enabled() and not torch.jit.is_scripting():
                features.append(_recomputed(layer, features))
            else:
                features.append(layer(_concat(features)))
        return torch.cat(features, 1)

    @torch.jit.unused
    def _fills_buffer(self, x: Tensor) -> bool:
        """Whether :meth:`forward` takes :meth:`forward_buffer`: compiled, without gradients, maps large enough."""
        return (self.compiled_buffer and not torch.is_grad_enabled() and compiling_not_exporting()
                and x.shape[0] * x.shape[2] * x.shape[3] >= self.buffer_min_positions)

    @torch.jit.unused
    def forward_buffer(self, x: Tensor) -> Tensor:
        """``forward(x)`` without gradients, with no concatenation: one buffer of ``out_channels``, the block input
        written first; each module reads the features before it as the buffer's leading channels and writes its
        output after them (:func:`write_channels`). Inductor on a CPU writes every ``torch.cat`` to memory, so
        the concatenations copy each feature once per later module; here each is written once."""
        n, _, h, w = x.shape
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        buffer = torch.empty((n, self.out_channels, h, w), dtype=x.dtype, device=x.device, memory_format=layout)
        write_channels(buffer, x, 0)
        filled = x.shape[1]
        for layer in self.layers:
            out = layer(buffer[:, :filled])
            write_channels(buffer, out, filled)
            filled += out.shape[1]
        return buffer


def set_compiled_buffer(model: nn.Module, on: bool, min_positions: Optional[int] = None) -> nn.Module:
    """Set :attr:`HybridBlock.compiled_buffer` on every hybrid block of ``model``, and their
    :attr:`~HybridBlock.buffer_min_positions` when ``min_positions`` is given (0: a buffer whatever the map's
    size); returns ``model``."""
    for block in model.modules():
        if isinstance(block, HybridBlock):
            block.compiled_buffer = on
            if min_positions is not None:
                block.buffer_min_positions = min_positions
    return model


@torch.library.custom_op("hcgnet::write_channels", mutates_args=("buffer",))
def write_channels(buffer: Tensor, features: Tensor, start: int) -> None:
    """``buffer[:, start:start + C] = features`` in place. An op of its own because Inductor writes a plain slice
    assignment as a pass over the whole buffer (a functional ``slice_scatter``); this one it writes in place."""
    buffer[:, start:start + features.shape[1]].copy_(features)


@write_channels.register_fake
def _write_channels_fake(buffer: Tensor, features: Tensor, start: int) -> None:
    return None


class ResidualBlock(nn.Module):
    """``depth`` SMG modules of ``width`` channels that add their output to their input (``x + smg(x)``) instead
    of concatenating it: no concatenation and a constant width. A first module meeting another width
    (``in_channels != width``, e.g. after the ImageNet stem) maps it to ``width`` without the addition."""

    def __init__(self, in_channels: int, depth: int, width: int, memory_efficient: bool = False,
                 **smg_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SMGModule(in_channels if i == 0 else width, width, **smg_kwargs) for i in range(depth))
        self.out_channels = width
        self.memory_efficient = memory_efficient
        self.widen_first = in_channels != width

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            if self.memory_efficient and torch.is_grad_enabled() and not torch.jit.is_scripting():
                y = _recomputed(layer, [x])
            else:
                y = layer(x)
            x = y if i == 0 and self.widen_first else x + y
        return x


def _concat(features: List[Tensor]) -> Tensor:
    """The features side by side; a single one is used as it is (``torch.cat`` would copy it)."""
    return features[0] if len(features) == 1 else torch.cat(features, 1)


@torch.jit.unused
def _recomputed(layer: SMGModule, features: List[Tensor]) -> Tensor:
    """An SMG module over the concatenation of ``features``, storing only the k-channel maps it must (the
    memory-efficient path): the concatenation, the whole squeeze cell (BN-ReLU-1x1 conv to 4k channels,
    BN-ReLU-3x3 group conv) and the excitation cell's BN-ReLUs are recomputed in backward. Stored
    activations then grow linearly, not quadratically, with block depth. Without grad mode (e.g. an FX graph
    traced in training and run under no_grad) it is the plain module."""
    if not torch.is_grad_enabled():
        return layer(_concat(features))
    squeezed = checkpoint_module(layer.squeeze, lambda *parts: layer.squeeze(_concat(list(parts))), *features)
    excite = layer.excite
    branches = [checkpoint_module(conv, conv, squeezed) for conv in (excite.conv3x3, excite.wide)]
    return layer.gate(squeezed, *branches)


# A leaf of FX graphs: checkpointing runs real tensors twice, which a symbolic trace cannot follow. A network
# traced with memory_efficient on (and grad enabled) calls it, and recomputes, at run time.
torch.fx.wrap("_recomputed")


class Transition(SMGModule):
    """Down-sampling and connectivity truncation: one SMG module with stride 2, standard (g = 1) convs,
    r_u = r_f = 4, and ``floor(compression * in_channels)`` outputs.

    The squeeze width is ``in - (in - out) // 2``: the paper's floor(1.5 C) for every even C, and the
    published networks' arithmetic for odd C too, so checkpoints of any spec keep their shapes.
    """

    def __init__(
        self, in_channels: int, compression: float = 0.5, reduction: int = 4, gate_act: ActFactory = nn.Tanh,
        out_channels: Optional[int] = None, **switches,
    ) -> None:
        out_channels = int(compression * in_channels) if out_channels is None else out_channels
        super().__init__(
            in_channels,
            out_channels,
            squeeze_channels=in_channels - (in_channels - out_channels) // 2,
            groups=1,
            stride=2,
            update_reduction=reduction,
            forget_reduction=reduction,
            gate_act=gate_act,
            **switches,
        )
        self.out_channels = out_channels


class HCGStage(nn.Module):
    """A transition (identity in the first stage), DropBlock (identity unless given), then a hybrid block."""

    def __init__(self, transition: nn.Module, block: HybridBlock, drop_block: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.transition = transition
        # Outside the recomputed region: a random mask must not be drawn again in backward.
        self.drop_block = drop_block if drop_block is not None else nn.Identity()
        self.block = block
        # In the memory-efficient mode the transition is recomputed too: its input is a whole block's output
        # at the block's resolution, the largest map it would otherwise store twice (normalised, activated).
        self.recompute_transition = block.memory_efficient and isinstance(transition, SMGModule)

    def forward(self, x: Tensor) -> Tensor:
        if self.recompute_transition and torch.is_grad_enabled() and not torch.jit.is_scripting():
            x = _recomputed(self.transition, [x])
        else:
            x = self.transition(x)
        if torch.jit.is_scripting():
            return self.block(self.drop_block(x))
        return self.block(_drop_blocks(self.drop_block, x))


@torch.jit.unused
def _drop_blocks(drop_block: nn.Module, x: Tensor) -> Tensor:
    """``drop_block(x)`` as one leaf of FX graphs (``torch.fx.wrap`` below): DropBlock's mode, probability (which
    a schedule changes during training) and shapes are read at run time, where a symbolic trace would fix or
    fail on them."""
    return drop_block(x)


torch.fx.wrap("_drop_blocks")


def _stem(kind: str, in_chans: int, out_channels: int) -> Tuple[nn.Sequential, int]:
    """The stem and its stride. The CIFAR stem has no norm: the first SMG pre-activates its input."""
    if kind == "cifar":
        return nn.Sequential(OrderedDict(conv0=nn.Conv2d(in_chans, out_channels, 3, padding=1, bias=False))), 1
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    for i, (cin, cout) in enumerate(zip((in_chans, 32, 32), (32, 32, 64))):
        layers[f"conv{i}"] = nn.Conv2d(cin, cout, 3, stride=2 if i == 0 else 1, padding=1, bias=False)
        layers[f"norm{i}"] = nn.BatchNorm2d(cout)
        layers[f"act{i}"] = nn.ReLU(inplace=True)
    layers["pool"] = nn.MaxPool2d(3, stride=2, padding=1)
    return nn.Sequential(layers), 4


def validate_architecture(
    block_depths: Sequence[int], growth_rates: Sequence[int], stem: str, groups: int, num_classes: int = 0,
    in_chans: int = 3, drop_block_rate: float = 0.0, connectivity: str = "hybrid", wide_branch: str = "dilated",
    gate_act: Union[str, ActFactory] = "tanh", residual_widths: Optional[Sequence[int]] = None,
    forget_gate: bool = True, update_gate: bool = True, drop_rate: float = 0.0, compression: float = 0.5,
    reduction: int = 2, transition_reduction: int = 4,
) -> None:
    """Raise :class:`ModelSpecError` (one line, says what to change) for a network that cannot be built. (The
    SMG modules check their own widths, alpha and the gates' reductions as they are built.)"""
    check_choice("connectivity", connectivity, CONNECTIVITIES)
    for name, value, paper in (("groups", groups, 4), ("reduction", reduction, 2),
                               ("transition_reduction", transition_reduction, 4)):
        check_whole(name, value, f" (the paper's {paper})")
    if not is_number(drop_rate) or not 0.0 <= drop_rate < 1.0:
        raise ModelSpecError(f"drop_rate must be in [0, 1) (the paper's ImageNet training uses 0.1), got {drop_rate!r}")
    if not is_number(compression) or not 0.0 < compression <= 1.0:
        raise ModelSpecError(f"compression must be in (0, 1] (the paper's 0.5), got {compression!r}")
    for name, value in (("forget_gate", forget_gate), ("update_gate", update_gate)):
        if not isinstance(value, bool):
            raise ModelSpecError(f"{name} must be true or false, got {value!r}")
    check_choice("wide_branch", wide_branch, WIDE_BRANCHES)
    gate_activation(gate_act)
    if residual_widths is not None:
        if connectivity != "residual":
            raise ModelSpecError("residual_widths is for connectivity='residual' only")
        if len(residual_widths) != len(block_depths) or any(int(w) < 1 or int(w) % groups for w in residual_widths):
            raise ModelSpecError(f"residual_widths needs one positive multiple of groups ({groups}) per block, "
                                 f"got {tuple(residual_widths)}")
    if not is_whole(num_classes, least=0):
        raise ModelSpecError(f"num_classes must be a whole number, 0 (no classifier) or more, got {num_classes!r}")
    if not is_whole(in_chans):
        raise ModelSpecError(f"in_chans must be a whole number, 1 or more (3 for RGB images, 1 for grayscale), "
                             f"got {in_chans!r}")
    if not is_number(drop_block_rate) or not 0.0 <= drop_block_rate < 1.0:
        raise ModelSpecError(f"drop_block_rate must be in [0, 1) (the published CIFAR training uses 0.1), "
                             f"got {drop_block_rate}")
    if len(block_depths) == 0 or len(block_depths) != len(growth_rates):
        raise ModelSpecError(
            f"need one growth rate per hybrid block, got {len(block_depths)} block depths and "
            f"{len(growth_rates)} growth rates"
        )
    if any(int(n) < 1 for n in block_depths):
        raise ModelSpecError(f"every hybrid block needs at least one SMG module, got depths {tuple(block_depths)}")
    for k in growth_rates:
        if int(k) < 1 or int(k) % groups:
            raise ModelSpecError(
                f"growth rate {k} is not a positive multiple of the squeeze cell's group count {groups}; "
                f"use e.g. {max(groups, (int(k) // groups) * groups)}"
            )
    if stem not in STEMS:
        raise ModelSpecError(f"unknown stem {stem!r}; use one of {', '.join(STEMS)}")


class HCGNet(nn.Module):
    """An HCGNet of any depth and width, in the paper's notation HCGNet-(n_1..n_m)-(k=k_1..k_m).

    Args:
        block_depths: SMG modules per hybrid block (n_i).
        growth_rates: growth rate of each hybrid block (k_i).
        stem: ``"cifar"`` or ``"imagenet"``.
        num_classes: classifier outputs; 0 for a network without classifier.
        in_chans: input image channels.
        drop_rate: dropout before the classifier (the paper uses 0.1 on ImageNet).
        global_pool: timm pooling type for the head (``"avg"``; ``""`` keeps the map).
        alpha, groups, reduction: squeeze width multiplier, group count and gate reduction ratio of the
            SMG modules in hybrid blocks (paper: 4, 4, 2).
        compression, transition_reduction: transition compression factor and gate reduction (0.5, 4).
        gate_act: the gates' hidden activation: ``"tanh"`` (the paper's), ``"relu"`` or ``"sigmoid"`` (or a module
            factory such as ``nn.ReLU``).
        connectivity: ``"hybrid"`` (the paper's), ``"dense"`` or ``"residual"``, in the hybrid blocks
            (transitions are the same SMG module in all three):

            * dense: dense connectivity without the local residual: each module's output is the update gate's
              context ``v`` alone, broadcast over the positions (no squeezed map, so no forget gate).
            * residual: :class:`ResidualBlock` s, modules that add at a constant width per block; the CIFAR stem
              and each transition produce that width. The widths are the growth rates times one factor,
              rounded to multiples of ``groups``, with the factor chosen so that the parameter count is the
              closest to the hybrid network's with the same settings (:func:`matched_residual_widths`; within
              5% for the paper's networks); ``residual_widths`` sets them instead.
        forget_gate: off: no forget gate; the squeezed map is added as it is (weight 1), a plain local residual.
        update_gate: off: the mean of the two branches' global average pools replaces the gate's context
            (:class:`~hcgnet.layers.gates.AverageContext`: the gate at its neutral values, no parameters).
        wide_branch: the excitation cell's wide branch, ``"dilated"`` (the paper's dilated 3x3) or ``"5x5"``.
        memory_efficient: recompute the concatenations, squeeze cells and excitation BN-ReLUs of every
            SMG module (hybrid blocks and transitions) in backward instead of storing them (torchvision
            DenseNet's option, taken further): same gradients and running statistics, less than half the
            stored activations. timm's ``set_grad_checkpointing(enable)`` switches it.
        drop_block_rate: DropBlock's drop probability (``timm.layers.DropBlock2d``, block size 2) after
            each transition, as the published CIFAR training does; 0 (default) adds no module. A schedule
            may change ``drop_prob`` of every ``DropBlock2d`` during training.

    Initialisation: convolutions Kaiming normal (fan-in), norms weight 1 / bias 0, linear biases 0. The
    published implementation leaves PyTorch's default initialisation in place (Kaiming uniform with
    a = sqrt(5)); the paper does not say. Loaded weights replace either.
    """

    def __init__(
        self,
        block_depths: Sequence[int],
        growth_rates: Sequence[int],
        stem: str = "imagenet",
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        alpha: float = 4.0,
        groups: int = 4,
        reduction: int = 2,
        compression: float = 0.5,
        transition_reduction: int = 4,
        gate_act: Union[str, ActFactory] = "tanh",
        memory_efficient: bool = False,
        drop_block_rate: float = 0.0,
        connectivity: str = "hybrid",
        forget_gate: bool = True,
        update_gate: bool = True,
        wide_branch: str = "dilated",
        residual_widths: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        validate_architecture(block_depths, growth_rates, stem, groups, num_classes, in_chans, drop_block_rate,
                              connectivity, wide_branch, gate_act, residual_widths, forget_gate, update_gate,
                              drop_rate, compression, reduction, transition_reduction)
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.in_chans = in_chans
        self.spec = format_spec(block_depths, growth_rates)  # the paper's name of this network, for its files
        self.stem_kind = stem   # "cifar" or "imagenet": a spec's name alone does not say which was built
        self.grad_checkpointing = memory_efficient
        if connectivity == "residual" and residual_widths is None:
            residual_widths = matched_residual_widths(
                tuple(block_depths), tuple(growth_rates), stem, num_classes, in_chans, alpha, groups, reduction,
                compression, transition_reduction, gate_activation_name(gate_act), forget_gate, update_gate,
                wide_branch)
        widths = tuple(int(w) for w in residual_widths) if residual_widths is not None else None
        # What rebuilds this network (a checkpoint's metadata records it): the design switches and settings.
        self.switches: Dict[str, object] = dict(
            connectivity=connectivity, forget_gate=bool(forget_gate), update_gate=bool(update_gate),
            gate_act=gate_activation_name(gate_act), wide_branch=wide_branch, alpha=alpha, groups=groups,
            reduction=reduction, compression=compression, transition_reduction=transition_reduction,
            **({"residual_widths": list(widths)} if widths is not None else {}),
        )
        switches = dict(gate_act=gate_act, wide_branch=wide_branch, forget_gate=forget_gate, update_gate=update_gate)

        first = widths[0] if widths is not None else 2 * growth_rates[0]
        self.stem, stride = _stem(stem, in_chans, first if stem == "cifar" else 64)
        channels = self.stem[0].out_channels if stem == "cifar" else 64
        stages: List[nn.Module] = []
        self.feature_info = []
        for i, (depth, growth) in enumerate(zip(block_depths, growth_rates)):
            transition: nn.Module = nn.Identity()
            drop_block: Optional[nn.Module] = None
            if i > 0:
                transition = Transition(channels, compression, transition_reduction,
                                        out_channels=widths[i] if widths is not None else None, **switches)
                channels = transition.out_channels
                stride *= 2
                if drop_block_rate > 0:
                    drop_block = DropBlock2d(drop_prob=drop_block_rate, block_size=2)
            smg_kwargs = dict(alpha=alpha, groups=groups, update_reduction=reduction, forget_reduction=reduction,
                              **switches)
            block: nn.Module
            if widths is not None:
                block = ResidualBlock(channels, depth, widths[i], memory_efficient=memory_efficient, **smg_kwargs)
            else:
                block = HybridBlock(channels, depth, growth, memory_efficient=memory_efficient,
                                    local_residual=connectivity == "hybrid", **smg_kwargs)
            channels = block.out_channels
            stages.append(HCGStage(transition, block, drop_block))
            self.feature_info.append(dict(num_chs=channels, reduction=stride, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = channels
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()
        # load_state_dict takes a published checkpoint as it is (timm's checkpoint_path= passes it so).
        accept_published_state_dicts(self)

    @torch.jit.ignore
    def switch_info(self) -> str:
        """The switches that differ from the paper's network, as ``name=value`` (``""`` for the paper's)."""
        defaults = dict(connectivity="hybrid", forget_gate=True, update_gate=True, gate_act="tanh",
                        wide_branch="dilated", alpha=4.0, groups=4, reduction=2, compression=0.5,
                        transition_reduction=4)
        return ", ".join(f"{k}={v}" for k, v in self.switches.items() if k not in defaults or defaults[k] != v)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    # timm conventions -------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's optimiser tools (layer decay, ``param_groups_layer_decay``): the
        stem, then one group per stage (``coarse``) or per transition and per SMG module; the head
        (``norm``, ``classifier``) comes last."""
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.transition", None),
                (r"^stages\.(\d+)\.block\.layers\.(\d+)", None),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's name for ``memory_efficient``: recompute every SMG module's inner maps in backward."""
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.block.memory_efficient = enable
            stage.recompute_transition = enable and isinstance(stage.transition, SMGModule)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Stage outputs (hybrid block outputs, before the next transition), timm's signature.

        ``indices``: the last n stages if an int, all if None, these ones if a list. ``norm`` applies the
        final BN-ReLU to the last stage's output when it is taken.
        """
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        intermediates: List[Tensor] = []
        x = self.stem(x)
        feat_idx = 0
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(self.act(self.norm(x)) if norm and feat_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.act(self.norm(x))
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the stages (and head) that the given intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        if prune_norm or prune_end:
            self.norm, self.act = nn.Identity(), nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    # forward -----------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.act(self.norm(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@functools.lru_cache(maxsize=None)
def matched_residual_widths(
    block_depths: Tuple[int, ...], growth_rates: Tuple[int, ...], stem: str, num_classes: int, in_chans: int,
    alpha: float, groups: int, reduction: int, compression: float, transition_reduction: int, gate_act: str,
    forget_gate: bool, update_gate: bool, wide_branch: str,
) -> Tuple[int, ...]:
    """The widths of a residual-connectivity network with (nearly) the parameters of the hybrid one.

    Width of block i: ``groups * max(1, round(s * k_i / groups))`` (the growth rates keep their ratios, and
    the squeeze cell's group conv its divisibility). The factor s is found by bisection (the count grows with
    s) over networks built on the ``meta`` device, and the widths whose count is the closest to the hybrid
    network's are returned.
    """
    common = dict(block_depths=block_depths, growth_rates=growth_rates, stem=stem, num_classes=num_classes,
                  in_chans=in_chans, alpha=alpha, groups=groups, reduction=reduction, compression=compression,
                  transition_reduction=transition_reduction, gate_act=gate_act, forget_gate=forget_gate,
                  update_gate=update_gate, wide_branch=wide_branch)

    def params(**kwargs) -> int:
        with torch.device("meta"):  # shapes only
            return count_params(HCGNet(**common, **kwargs))

    def widths(s: float) -> Tuple[int, ...]:
        return tuple(groups * max(1, round(s * k / groups)) for k in growth_rates)

    tried: Dict[Tuple[int, ...], int] = {}

    def residual_params(s: float) -> int:
        w = widths(s)
        if w not in tried:
            tried[w] = params(connectivity="residual", residual_widths=w)
        return tried[w]

    target = params()
    lo, hi = 0.0, 1.0
    while residual_params(hi) < target:
        lo, hi = hi, 2 * hi
    for _ in range(24):  # a network is built only for widths not counted yet: about ten builds in all
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if residual_params(mid) < target else (lo, mid)
    return min(tried, key=lambda w: abs(tried[w] - target))
