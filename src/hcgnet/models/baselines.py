"""The paper's CIFAR neighbours, registered with timm so that ``--model`` takes them like any HCGNet name.

* ``densenet_bc_100_k12`` (and ``densenet_bc_250_k24``, ``densenet_bc_190_k40``): DenseNet-BC for CIFAR (Huang
  et al. 2017): one 3x3 convolution of 2k channels (no norm, activation or pooling before the first dense
  block), three dense blocks of (depth - 4) / 6 bottleneck layers (BN-ReLU-1x1 conv of 4k, BN-ReLU-3x3 conv of
  k), transitions compressing by 0.5 with a 2x2 average pool, then BN-ReLU, global average pool, linear.
* ``resnet20_cifar`` ... ``resnet110_cifar``: the CIFAR ResNets of He et al. 2016 (section 4.2): a 3x3
  convolution of 16 channels, three stages of n basic blocks with 16, 32, 64 channels, option-A shortcuts
  (parameter-free: stride-2 subsampling and zero channels), global average pool, linear; depth 6n + 2.

timm's and torchvision's DenseNets and ResNets have the ImageNet stem (7x7 stride-2 convolution and max pool),
which shrinks a 32 px image to 8 px before the first block.
"""
from collections import OrderedDict
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn
# torchvision exports neither its dense block nor its transition; importing the underscore classes is the
# accepted way to reuse them (torchvision's own densenet is built from exactly these).
from torchvision.models.densenet import _DenseBlock, _Transition
from torchvision.models.resnet import BasicBlock

from hcgnet.errors import ModelSpecError
from hcgnet.models.registry import check_out_indices, placed, stem_cfg

__all__ = ["CifarResNet", "DenseNetBC", "list_baselines"]


def _check_in_chans(in_chans: int) -> None:
    if int(in_chans) < 1:
        raise ModelSpecError(f"in_chans must be at least 1, got {in_chans}")


def _init(model: nn.Module) -> None:
    """The initialisation of both papers' code (DenseNet's follows fb.resnet.torch): convolutions normal with
    std sqrt(2 / (k * k * output channels)) (He et al.'s, over fan-out), norms 1 and 0, the classifier's bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class _Head(nn.Module):
    """Global average pool, dropout (``drop_rate``, timm's meaning), linear: the same for both networks."""

    def __init__(self, num_features: int, num_classes: int, drop_rate: float):
        super().__init__()
        self.num_features = num_features
        self.drop_rate = float(drop_rate)
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        x = F.dropout(x, self.drop_rate, self.training) if self.drop_rate > 0 else x
        return x if pre_logits else self.fc(x)


class _CifarClassifier(nn.Module):
    """What both baselines share with timm models: ``stem`` -> ``stages`` -> ``final`` -> ``head``, with
    ``forward_features``/``forward_head``, ``get_classifier``/``reset_classifier`` and ``feature_info``."""

    num_classes: int
    in_chans: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _feature_info(self, channels: Sequence[int]) -> None:
        self.feature_info = [dict(num_chs=c, reduction=2 ** i, module=f"stages.{i}") for i, c in enumerate(channels)]


class DenseNetBC(_CifarClassifier):
    """DenseNet-BC for 32 px images (torchvision's ``_DenseBlock`` and ``_Transition``, a CIFAR stem).

    Args:
        depth: 3 * 2 * layers_per_block + 4 (100, 190, 250 in the DenseNet paper).
        growth_rate: k; the stem has 2k channels and each bottleneck 4k.
        compression: the transitions' channel factor (0.5 for "C"); the count is floored.
        drop_rate: dropout before the classifier (timm's meaning of ``drop_rate``; the trainer's ``--drop-rate``).
        block_drop_rate: dropout after each dense layer (torchvision's ``drop_rate``; the DenseNet paper's 0.2
            without data augmentation).
        memory_efficient: torchvision's flag: recompute the concatenations in the backward pass (checkpointing)
            instead of keeping them, for much less memory at some speed.
    """

    def __init__(self, depth: int = 100, growth_rate: int = 12, num_classes: int = 10, in_chans: int = 3,
                 compression: float = 0.5, bn_size: int = 4, drop_rate: float = 0.0, block_drop_rate: float = 0.0,
                 memory_efficient: bool = False):
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ModelSpecError(f"DenseNet-BC depth must be 6n + 4 with n >= 1 (e.g. 100), got {depth}")
        if not 0 < compression <= 1:
            raise ModelSpecError(f"compression must be in (0, 1], got {compression}")
        _check_in_chans(in_chans)
        layers = (depth - 4) // 6  # each bottleneck layer holds two convolutions
        self.num_classes, self.in_chans, self.growth_rate = num_classes, in_chans, growth_rate
        # What rebuilds this network (its checkpoints' metadata ``switches``), as HCGNet's switches.
        self.switches = dict(depth=depth, growth_rate=growth_rate, compression=compression, bn_size=bn_size)
        channels = 2 * growth_rate
        self.stem = nn.Sequential(OrderedDict(conv0=nn.Conv2d(in_chans, channels, 3, padding=1, bias=False)))
        stages, widths = [], []
        for i in range(3):
            parts = OrderedDict()
            if i:
                out = int(channels * compression)
                parts["transition"] = _Transition(channels, out)
                channels = out
            parts["denseblock"] = _DenseBlock(layers, channels, bn_size, growth_rate, block_drop_rate,
                                              memory_efficient)
            channels += layers * growth_rate
            stages.append(nn.Sequential(parts))
            widths.append(channels)
        self.stages = nn.Sequential(*stages)
        self.final = nn.Sequential(OrderedDict(norm=nn.BatchNorm2d(channels), act=nn.ReLU(inplace=True)))
        self.num_features = channels
        self.head = _Head(channels, num_classes, drop_rate)
        self._feature_info(widths)
        _init(self)


class ShortcutA(nn.Module):
    """He et al.'s option A: identity on the kept pixels (stride-2 subsampling) and zeros for the new channels;
    no parameters."""

    def __init__(self, out_chs: int, stride: int):
        super().__init__()
        self.out_chs, self.stride = out_chs, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_chs - x.shape[1]))


class CifarResNet(_CifarClassifier):
    """The CIFAR ResNet of He et al. 2016, depth 6n + 2 (torchvision's ``BasicBlock``, option-A shortcuts).

    Args:
        depth: 20, 32, 44, 56, 110 in the ResNet paper.
        widths: the three stages' channels (16, 32, 64 in the paper).
        drop_rate: dropout before the classifier (timm's meaning; the paper has none).
    """

    def __init__(self, depth: int = 56, num_classes: int = 10, in_chans: int = 3,
                 widths: Tuple[int, int, int] = (16, 32, 64), drop_rate: float = 0.0):
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ModelSpecError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (e.g. 56), got {depth}")
        _check_in_chans(in_chans)
        blocks = (depth - 2) // 6
        self.num_classes, self.in_chans = num_classes, in_chans
        self.switches = dict(depth=depth, widths=[int(w) for w in widths])  # what rebuilds it, as DenseNetBC's
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False), bn=nn.BatchNorm2d(widths[0]),
            act=nn.ReLU(inplace=True)))
        stages, channels = [], widths[0]
        for i, width in enumerate(widths):
            stride = 2 if i else 1
            layers = []
            for j in range(blocks):
                change = j == 0 and (stride != 1 or channels != width)
                layers.append(BasicBlock(channels, width, stride if j == 0 else 1,
                                         ShortcutA(width, stride) if change else None))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.final = nn.Identity()  # each basic block ends in its ReLU
        self.num_features = channels
        self.head = _Head(channels, num_classes, drop_rate)
        self._feature_info(widths)
        _init(self)


# ------------------------------------------------------------------------------------------------ registration

DENSENET_BC = {"densenet_bc_100_k12": (100, 12), "densenet_bc_250_k24": (250, 24), "densenet_bc_190_k40": (190, 40)}
CIFAR_RESNETS = {f"resnet{d}_cifar": d for d in (20, 32, 44, 56, 110)}
#: Each baseline in its paper's words, the parameters its paper gives (CIFAR-10), and the multiply-adds the HCGNet
#: paper's Table 2 gives (its "FLOPs"; only DenseNet-BC-190 is there).
PAPER = {
    "densenet_bc_100_k12": ("DenseNet-BC (L=100, k=12)", "0.8M", None),
    "densenet_bc_250_k24": ("DenseNet-BC (L=250, k=24)", "15.3M", None),
    "densenet_bc_190_k40": ("DenseNet-BC (L=190, k=40)", "25.6M", "9.4G"),
    **{f"resnet{d}_cifar": (f"ResNet-{d} (CIFAR)", p, None) for d, p in
       ((20, "0.27M"), (32, "0.46M"), (44, "0.66M"), (56, "0.85M"), (110, "1.7M"))},
}


def list_baselines():
    """The baselines hcgnet adds to timm's names."""
    return [*DENSENET_BC, *CIFAR_RESNETS]


def _cfg(name: str, paper: str, paper_ids: str, first_conv: str) -> dict:
    # No weights anywhere: the CIFAR preprocessing (32 px, CIFAR-10 statistics) is what resolve_data_config reads.
    return dict(url="", num_classes=10, **stem_cfg("cifar"), pool_size=(8, 8), first_conv=first_conv,
                classifier="head.fc", architecture=name, paper_name=paper, paper_ids=paper_ids)


default_cfgs = generate_default_cfgs({
    **{name: _cfg(name, "Densely Connected Convolutional Networks", "arXiv:1608.06993", "stem.conv0")
       for name in DENSENET_BC},
    **{name: _cfg(name, "Deep Residual Learning for Image Recognition", "arXiv:1512.03385", "stem.conv")
       for name in CIFAR_RESNETS},
})


def _build(cls, name: str, pretrained: bool, **kwargs) -> nn.Module:
    if kwargs.get("out_indices") is not None:
        kwargs["out_indices"] = check_out_indices(kwargs["out_indices"], 3)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    model = placed(lambda: build_model_with_cfg(cls, name, pretrained, feature_cfg=dict(
        flatten_sequential=True, out_indices=(0, 1, 2)), **kwargs), device, dtype)
    if isinstance(model, _CifarClassifier):  # the input it takes, e.g. 1 channel for Fashion-MNIST, as HCGNet's
        cfg = dict(model.pretrained_cfg)
        cfg["input_size"] = (model.in_chans, *cfg["input_size"][1:])
        model.pretrained_cfg = model.default_cfg = cfg
    return model


def _densenet_bc(name: str, pretrained: bool, **kwargs) -> DenseNetBC:
    depth, k = DENSENET_BC[name]
    return _build(DenseNetBC, name, pretrained, **{"depth": depth, "growth_rate": k, **kwargs})


def _cifar_resnet(name: str, pretrained: bool, **kwargs) -> CifarResNet:
    return _build(CifarResNet, name, pretrained, **{"depth": CIFAR_RESNETS[name], **kwargs})


@register_model
def densenet_bc_100_k12(pretrained: bool = False, **kwargs) -> DenseNetBC:
    """DenseNet-BC (L=100, k=12), CIFAR: 0.8M parameters."""
    return _densenet_bc("densenet_bc_100_k12", pretrained, **kwargs)


@register_model
def densenet_bc_250_k24(pretrained: bool = False, **kwargs) -> DenseNetBC:
    """DenseNet-BC (L=250, k=24), CIFAR: 15.3M parameters."""
    return _densenet_bc("densenet_bc_250_k24", pretrained, **kwargs)


@register_model
def densenet_bc_190_k40(pretrained: bool = False, **kwargs) -> DenseNetBC:
    """DenseNet-BC (L=190, k=40), CIFAR: 25.6M parameters."""
    return _densenet_bc("densenet_bc_190_k40", pretrained, **kwargs)


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20, CIFAR (He et al. 2016): 0.27M parameters."""
    return _cifar_resnet("resnet20_cifar", pretrained, **kwargs)


@register_model
def resnet32_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32, CIFAR: 0.46M parameters."""
    return _cifar_resnet("resnet32_cifar", pretrained, **kwargs)


@register_model
def resnet44_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-44, CIFAR: 0.66M parameters."""
    return _cifar_resnet("resnet44_cifar", pretrained, **kwargs)


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56, CIFAR: 0.85M parameters."""
    return _cifar_resnet("resnet56_cifar", pretrained, **kwargs)


@register_model
def resnet110_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110, CIFAR: 1.7M parameters."""
    return _cifar_resnet("resnet110_cifar", pretrained, **kwargs)
