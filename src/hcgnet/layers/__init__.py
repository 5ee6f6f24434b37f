"""Reusable HCGNet building blocks; each works on its own inside any CNN."""
from hcgnet.layers.attention_pool import AttentionPool
from hcgnet.layers.batch_norm import BatchNorm2d
from hcgnet.layers.conv import DilatedDepthwiseConv2d, GroupConv2d, PreActConv
from hcgnet.layers.gates import AverageContext, BatchOfOneError, ForgetGate, GateBottleneck, UpdateGate
from hcgnet.layers.norm import FrozenBatchNorm, freeze_batch_norm
from hcgnet.layers.smg import MultiScaleExcitationCell, SMGModule, SqueezeCell

__all__ = [
    "AttentionPool",
    "AverageContext",
    "BatchNorm2d",
    "BatchOfOneError",
    "DilatedDepthwiseConv2d",
    "ForgetGate",
    "FrozenBatchNorm",
    "GateBottleneck",
    "GroupConv2d",
    "MultiScaleExcitationCell",
    "PreActConv",
    "SMGModule",
    "SqueezeCell",
    "UpdateGate",
    "freeze_batch_norm",
]
