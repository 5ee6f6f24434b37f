"""One detection training epoch: the detector computes its own losses (RPN objectness and box regression,
box classifier and regression, masks); the step adds them, checks they are finite, clips the gradients' norm
when asked (the published config: 35), and steps SGD (through the grad scaler for fp16). Set-up, checkpoints and logs are the trainer's."""
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import nn

from hcgnet.distributed import Dist, all_reduce_sum
from hcgnet.evaluation import autocast
from hcgnet.training.engine import optimizer_step, stop_unless_finite

#: torchvision's loss names, in the order metrics.csv lists them (mask models add loss_mask).
LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


@dataclass
class DetectionStep:
    optimizer: torch.optim.Optimizer
    dist: Dist
    amp_dtype: Optional[torch.dtype] = None
    scaler: Optional[torch.amp.GradScaler] = None
    clip_grad: Optional[float] = None  # max global L2 norm of the gradients (mmdetection's grad_clip max_norm)


def clip_gradients(step: DetectionStep) -> None:
    """Scale the gradients of all trained parameters down to a global L2 norm of ``step.clip_grad`` at most
    (``torch.nn.utils.clip_grad_norm_``, mmdetection's ``grad_clip``); an fp16 run unscales them first."""
    if step.clip_grad is None:
        return
    if step.scaler is not None:
        step.scaler.unscale_(step.optimizer)
    params = [p for group in step.optimizer.param_groups for p in group["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, step.clip_grad)


def new_totals() -> Dict[str, float]:
    return {"loss": 0.0, "steps": 0, "images": 0, **{k: 0.0 for k in LOSSES}}


def _to(targets, device: torch.device):
    return [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]


def train_one_epoch(model: nn.Module, batches, step: DetectionStep, set_lr: Callable[[int], None],
                    first_step: int = 0, on_step: Optional[Callable[[int, float], None]] = None, progress=None,
                    totals: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """Train over ``batches`` (already without the first ``first_step`` of a resumed epoch); ``set_lr(i)``
    before batch ``i``, ``on_step(i + 1, loss)`` after each optimiser step. ``totals`` (this process's
    sums so far, updated in place for the checkpoints) -> the epoch's mean losses over all processes."""
    model.train()
    device = step.dist.device
    totals = totals if totals is not None else new_totals()
    for i, (images, targets) in enumerate(batches, start=first_step):
        images, targets = [im.to(device, non_blocking=True) for im in images], _to(targets, device)
        set_lr(i)
        step.optimizer.zero_grad(set_to_none=True)
        with autocast(device, step.amp_dtype):
            losses = model(images, targets)
        loss = sum(v.float() for v in losses.values())
        value = float(loss.detach())
        stop_unless_finite(value, step.dist, i + 1, "the detection loss",  # each part named in the message
                           lambda: " (" + ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in losses.items()) + ")")
        (step.scaler.scale(loss) if step.scaler else loss).backward()
        clip_gradients(step)
        optimizer_step(step.optimizer, step.scaler)
        totals["loss"] += value
        for k, v in losses.items():
            totals[k] = totals.get(k, 0.0) + float(v.detach())
        totals["steps"] += 1
        totals["images"] += len(images)
        if on_step is not None:
            on_step(i + 1, value)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{value:.3f}", lr=f"{step.optimizer.param_groups[0]['lr']:.4f}")
    keys = ["loss", *LOSSES, "steps", "images"]
    sums = all_reduce_sum(torch.tensor([float(totals.get(k, 0.0)) for k in keys], dtype=torch.float64), step.dist)
    means = dict(zip(keys, sums.tolist()))
    steps = max(means["steps"], 1.0)
    return {**{k: means[k] / steps for k in ["loss", *LOSSES]}, "images": means["images"]}
