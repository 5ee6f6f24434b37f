"""HCGNet as a detection backbone: the hybrid-block outputs after their BN-ReLU, into torchvision's FPN.

Taps (the published config's FPN inputs; the paper's Table 4 names only Mask R-CNN + FPN): every stage's
hybrid-block output at strides 4/8/16/32 (HCGNet-B: 160/368/952/1244 channels), each after a BN-ReLU. For the
last stage that is the network's own final ``norm``/``act``. For the others it is the BN-ReLU that already
opens the next transition (the pre-activation of its squeeze cell's 1x1 conv): that BatchNorm normalises
exactly this tensor, with statistics and weights learnt on ImageNet, so the taps cost no new parameter and
start from trained values.

Freezing follows torchvision's detection builders. A trained backbone (ImageNet weights) gets frozen BatchNorm
statistics (the gates' BatchNorm1d too) and trains its last ``trainable_stages`` stages; its BatchNorms' scale
and shift are frozen too (``bn_affine="frozen"``, torchvision's choice) or trained outside the frozen stages
(``"trainable"``, the published mmdetection config). An untrained backbone (random weights) trains every layer,
the stem included, with ordinary BatchNorms: frozen random statistics (mean 0, variance 1) normalise nothing.
"""
from collections import OrderedDict
from typing import Dict, List, Optional

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from hcgnet.errors import CheckpointError, HCGNetError, ModelSpecError
from hcgnet.layers import freeze_batch_norm
from hcgnet.models import HCGNet, create_model
from hcgnet.models.checkpoints import read_state_dict
from hcgnet.models.registry import is_timm_baseline
from hcgnet.models.variants import resolve

FPN_CHANNELS = 256
DEFAULT_TRAINABLE_STAGES = 3  # torchvision's trainable_backbone_layers=3; mmdetection's frozen_stages=1 for 4 stages
BN_AFFINE = ("frozen", "trainable")


class TrainableStagesError(HCGNetError):
    """``trainable_stages`` outside 0..number of stages."""


def stages_to_train(name: str, n_stages: int, trained: bool, trainable_stages: Optional[int] = None,
                    bn_affine: str = "frozen") -> Optional[int]:
    """How many stages of a trained backbone train (``trainable_stages``, by default 3 or every stage when it has
    fewer), or None for an untrained one: everything trains. One-line errors for values that cannot be used."""
    if bn_affine not in BN_AFFINE:
        raise ModelSpecError(f"bn_affine must be 'frozen' or 'trainable', got {bn_affine!r}")
    if not trained:
        if trainable_stages is not None:
            raise TrainableStagesError(
                "trainable_stages (--trainable-stages) freezes stages of a backbone trained on ImageNet; without "
                "weights_backbone (--weights-backbone) every layer trains, as in torchvision: drop it or give weights")
        return None
    if trainable_stages is None:
        return min(DEFAULT_TRAINABLE_STAGES, n_stages)
    if not isinstance(trainable_stages, int) or not 0 <= trainable_stages <= n_stages:
        raise TrainableStagesError(
            f"trainable_stages must be 0..{n_stages} for {name} (it has {n_stages} stages; the stem is always frozen), "
            f"got {trainable_stages!r}")
    return trainable_stages


class HCGNetFPN(nn.Module):
    """torchvision's ``BackboneWithFPN`` for HCGNet: ``body`` (the network, no classifier), ``fpn`` (256 channels
    and a max-pooled extra level ``"pool"``) and ``out_channels``. ``forward(images)`` returns the FPN's levels
    ``"0"``.. one per stage, then ``"pool"``."""

    def __init__(self, body: HCGNet) -> None:
        super().__init__()
        self.body = body
        self.in_channels_list = [int(info["num_chs"]) for info in body.feature_info]
        self.strides = [int(info["reduction"]) for info in body.feature_info]
        self.fpn = FeaturePyramidNetwork(self.in_channels_list, FPN_CHANNELS, extra_blocks=LastLevelMaxPool())
        self.out_channels = FPN_CHANNELS

    @property
    def featmap_names(self) -> List[str]:
        """The FPN levels the RoI heads pool from (every tap; not the extra ``"pool"`` level)."""
        return [str(i) for i in range(len(self.in_channels_list))]

    def taps(self, x: Tensor) -> Dict[str, Tensor]:
        """The hybrid-block outputs after their BN-ReLU, by stage index as a string."""
        outputs = self.body.forward_intermediates(x, norm=True, intermediates_only=True)
        last = len(outputs) - 1
        features = OrderedDict()
        for i, out in enumerate(outputs):
            if i < last:  # the next transition's own opening BN-ReLU, applied to this tensor (see the module doc)
                out = F.relu(self.body.stages[i + 1].transition.squeeze.conv1x1.norm(out))
            features[str(i)] = out
        return features

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        return self.fpn(self.taps(x))


def stage_count(name: str) -> int:
    """The number of stages of an HCGNet name or spec; one-line errors for anything else."""
    if is_timm_baseline(name):
        raise ModelSpecError(f"{name} is a timm model: a detection backbone is an HCGNet name or spec "
                             "(e.g. hcgnet_b, 'HCGNet-(1,1,1,1)-(k=8,8,8,8)') or resnet50")
    try:
        return len(resolve(name, "imagenet")[1].block_depths)
    except ModelSpecError as e:
        raise ModelSpecError(f"{e}; for detection also resnet50 (torchvision's baseline)") from None


def check_imagenet_stem(path: str) -> None:
    """Refuse, in one line, a checkpoint whose network has the CIFAR stem (one 3x3 conv, no BatchNorm: stride 1)
    before its shapes are compared with the ImageNet-stem model, where the first mismatch says little."""
    state_dict, _ = read_state_dict(path)
    if any(k.startswith("stem.") for k in state_dict) and "stem.norm0.weight" not in state_dict:
        raise CheckpointError(f"{path} has the CIFAR stem (stride 1); a detection backbone needs the ImageNet stem "
                              "for its strides 4..32 (train with --stem imagenet)")


def hcgnet_body(name: str, weights_backbone: Optional[str] = None) -> HCGNet:
    """The network without classifier, with the ImageNet stem (strides 4..32 need it), weights from any file
    ``hcgnet.create_model`` reads (hcgnet safetensors, a run's .pt, a published checkpoint) when given."""
    stage_count(name)
    if weights_backbone is not None:
        check_imagenet_stem(weights_backbone)
    try:
        body = create_model(name, stem="imagenet", checkpoint_path=weights_backbone,
                            num_classes=None if weights_backbone else 0)
    except CheckpointError as e:
        if "stem." in str(e):
            raise CheckpointError(f"{e}; a detection backbone needs the ImageNet stem (train with --stem imagenet)"
                                  ) from None
        raise
    body.reset_classifier(0)  # the ImageNet classifier is not part of a detector
    return body


def hcgnet_fpn_backbone(name: str = "hcgnet_b", weights_backbone: Optional[str] = None,
                        trainable_stages: Optional[int] = None, bn_affine: str = "frozen",
                        trained: Optional[bool] = None) -> HCGNetFPN:
    """An :class:`HCGNetFPN`, frozen as the module doc says. ``trained`` (default: whether ``weights_backbone`` is
    given) says the backbone's weights are trained ones; a trained backbone keeps its stem and first
    ``stages - trainable_stages`` stages frozen (torchvision's ``trainable_backbone_layers``: HCGNet-B with 3
    trains stages 1-3)."""
    n_stages = stage_count(name)
    trained = weights_backbone is not None if trained is None else trained
    trainable = stages_to_train(name, n_stages, trained, trainable_stages, bn_affine)  # before any weights are read
    body = hcgnet_body(name, weights_backbone)
    if trainable is not None:
        freeze_batch_norm(body, trainable_affine=bn_affine == "trainable")
        frozen = [body.stem, *body.stages[: n_stages - trainable]]
        if trainable == 0:
            frozen.append(body.norm)  # the last stage's own BN-ReLU goes with it
        for module in frozen:
            module.requires_grad_(False)
    return HCGNetFPN(body)
