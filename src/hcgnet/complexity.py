"""Parameter and multiply-add counts."""
from typing import Dict, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hcgnet.layers.attention_pool import AttentionPool


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-adds of one eval forward pass at ``input_size`` (C, H, W), batch 1.

    Counted by PyTorch's ``FlopCounterMode`` (convolutions and matrix products; it reports 2 FLOPs per
    multiply-add). A model on the ``meta`` device is counted without any arithmetic, which makes the
    largest variants instant. Attention pooling (:class:`~hcgnet.layers.AttentionPool`) counts as what it is, a
    1x1 convolution scoring every position and a sum weighted over them (2 x C x H x W), whichever form
    computed it: as elementwise products (NCHW maps) the counter would not see it, as matrix products
    (channels_last) it would.
    """
    param = next(model.parameters())
    x = torch.zeros((1, *input_size), device=param.device, dtype=param.dtype)
    seen_before: Dict[int, int] = {}   # FLOPs counted when each pool started
    correction = 0   # FLOPs: each pool's 2 x C x H x W multiply-adds in place of what the counter saw of it

    def before(module, args):
        seen_before[id(module)] = counter.get_total_flops()

    def after(module, args, output):
        nonlocal correction
        _, c, h, w = args[0].shape
        correction += 2 * (2 * c * h * w) - (counter.get_total_flops() - seen_before.pop(id(module)))

    pools = [m for m in model.modules() if isinstance(m, AttentionPool)]
    hooks = [m.register_forward_pre_hook(before) for m in pools] + [m.register_forward_hook(after) for m in pools]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return (counter.get_total_flops() + correction) // 2
