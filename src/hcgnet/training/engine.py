"""One training epoch; evaluation is :func:`hcgnet.evaluation.evaluate`, everything else (set-up, checkpoints,
logs) is the trainer's."""
import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hcgnet.errors import HCGNetError
from hcgnet.distributed import Dist, all_reduce_sum, broadcast_flag
from hcgnet.evaluation import autocast, to_device


class NonFiniteLossError(HCGNetError):
    """The loss became NaN or infinite; training stopped before the weights were touched."""


@dataclass
class StepContext:
    """What a training step needs besides model and data."""

    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    dist: Dist
    amp_dtype: Optional[torch.dtype] = None
    scaler: Optional[torch.amp.GradScaler] = None
    mixup: Optional[Callable] = None
    ema: Optional[nn.Module] = None
    accum_steps: int = 1
    channels_last: bool = False


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def stop_unless_finite(value: float, dist: Dist, step: int, what: str = "the loss",
                       detail: Callable[[], str] = str) -> None:
    """Raise :class:`NonFiniteLossError` when ``value`` (or the loss of any other process) is not finite. Called
    before backward/the optimiser step, so a NaN never reaches the weights, and every process stops together.
    ``detail()`` adds to the message (only computed when it is raised)."""
    if broadcast_flag(not math.isfinite(value), dist):
        where = f"{value}" if not math.isfinite(value) else "non-finite in another process"
        raise NonFiniteLossError(f"{what} became {where} at step {step} of the epoch{detail()}")


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler]) -> None:
    """One optimiser step, through the grad scaler when there is one (fp16)."""
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def new_totals() -> Dict[str, float]:
    return {"loss": 0.0, "correct": 0, "seen": 0}


def train_one_epoch(
    model: nn.Module,
    loader,
    ctx: StepContext,
    set_lr: Callable[[int], float],
    first_step: int = 0,
    on_step: Optional[Callable[[int, float], None]] = None,
    progress=None,
    totals: Optional[Dict[str, float]] = None,
) -> Dict[str, float]:
    """Train over ``loader`` (which already skips the first ``first_step`` batches of a resumed epoch).

    ``set_lr(i)`` sets the learning rate for batch ``i`` of the epoch; ``on_step(i + 1, loss)`` runs after
    each optimiser step (checkpointing, logging). A batch is split into ``accum_steps`` interleaved
    micro-batches ``x[k::n]`` whose gradients add up, the same split DDP makes across processes.

    ``totals`` (this process's loss sum, correct count and images so far in the epoch; updated in place,
    so a checkpoint taken in ``on_step`` holds them) starts at zero unless a resumed epoch passes its own.
    Returns the epoch's loss and accuracy over all processes.
    """
    model.train()
    device = ctx.dist.device
    totals = totals if totals is not None else new_totals()
    for i, (x, y) in enumerate(loader, start=first_step):
        x, y = to_device(x, y, device, ctx.channels_last)
        set_lr(i)
        ctx.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        n = ctx.accum_steps
        for k in range(n):
            xk, yk = (x[k::n], y[k::n]) if n > 1 else (x, y)
            targets = yk
            if ctx.mixup is not None:
                xk, targets = ctx.mixup(xk, yk)
            sync = contextlib.nullcontext()
            if isinstance(model, DistributedDataParallel) and k < n - 1:
                sync = model.no_sync()
            with sync:
                with autocast(device, ctx.amp_dtype):
                    out = model(xk)
                    loss = ctx.loss_fn(out.float(), targets) / n
                (ctx.scaler.scale(loss) if ctx.scaler else loss).backward()
            step_loss += loss.detach()
            if ctx.mixup is None:
                totals["correct"] += int((out.argmax(1) == yk).sum())
        loss_value = float(step_loss)
        stop_unless_finite(loss_value, ctx.dist, i + 1)
        optimizer_step(ctx.optimizer, ctx.scaler)
        if ctx.ema is not None:
            ctx.ema.update(unwrap(model))
        totals["loss"] += loss_value * len(y)
        totals["seen"] += len(y)
        if on_step is not None:
            on_step(i + 1, loss_value)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{ctx.optimizer.param_groups[0]['lr']:.4f}")
    sums = all_reduce_sum(torch.tensor([totals["loss"], totals["correct"], totals["seen"]], dtype=torch.float64),
                          ctx.dist)
    seen = max(sums[2].item(), 1)
    return {"loss": sums[0].item() / seen, "acc": None if ctx.mixup else sums[1].item() / seen, "images": seen}
