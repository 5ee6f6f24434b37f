"""Parameter and multiply-add counts."""
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-adds of one eval forward pass at ``input_size`` (C, H, W), batch 1.

    Counted by PyTorch's ``FlopCounterMode`` (convolutions and matrix products; it reports 2 FLOPs per
    multiply-add). A model on the ``meta`` device is counted without any arithmetic, which makes the
    largest variants instant.
    """
    param = next(model.parameters())
    x = torch.zeros((1, *input_size), device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
