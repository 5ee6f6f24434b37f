"""Scoring a model on a data loader, and the mixed-precision settings shared by training, evaluation and
benchmarks. Below both the trainer and inference: neither imports the other."""
import contextlib
from typing import Dict, Optional

import torch
from torch import nn

from hcgnet.distributed import Dist, all_reduce_sum

#: ``--amp`` names to autocast dtypes (None: no autocast), for training, evaluation and benchmarks.
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, dist: Dist, amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
    progress=None,
) -> Dict[str, float]:
    """Top-1, top-5 and mean cross-entropy over the loader; with DDP every rank scores its own shard
    (no padding) and the sums are added, so each sample counts exactly once."""
    model.eval()
    loss_sum, top1, top5, count = 0.0, 0.0, 0.0, 0.0
    for x, y in loader:
        x, y = to_device(x, y, dist.device, channels_last)
        with autocast(dist.device, amp_dtype):
            out = model(x).float()
        loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
        k = min(5, out.shape[1])
        hits = out.topk(k, dim=1).indices == y[:, None]
        top1 += float(hits[:, 0].sum())
        top5 += float(hits.any(dim=1).sum())
        count += len(y)
        if progress is not None:
            progress.update(1)
    sums = all_reduce_sum(torch.tensor([loss_sum, top1, top5, count], dtype=torch.float64), dist)
    n = max(sums[3].item(), 1)
    return {"loss": sums[0].item() / n, "top1": sums[1].item() / n, "top5": sums[2].item() / n, "count": int(sums[3])}
