"""Softmax attention pooling over all spatial positions (the gates' "spatial attention and pooling")."""
import torch
from torch import Tensor, nn


class AttentionPool(nn.Module):
    """Pools a (B, C, H, W) map to a (B, C) context vector with learned spatial weights.

    A 1x1 convolution scores each position, a softmax over all H*W positions normalises the scores
    (eq. 5 of the paper) and the map is averaged with those weights (eq. 6). Works for any H x W.

    The softmax runs in float32 even under autocast: with bf16 logits over thousands of positions it is
    the first place mixed precision goes wrong. ``attention`` is an identity that carries the
    (B, 1, H, W) attention map, so a forward hook on it can read the map (e.g. for visualisation).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.score = nn.Conv2d(channels, 1, kernel_size=1)
        self.attention = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        logits = self.score(x).reshape(b, 1, h * w)
        weights = torch.softmax(logits.float(), dim=-1).to(x.dtype)
        weights = self.attention(weights.reshape(b, 1, h, w)).reshape(b, h * w, 1)
        # One batched matrix product over positions: (B, C, HW) @ (B, HW, 1).
        return torch.bmm(x.reshape(b, c, h * w), weights).reshape(b, c)
