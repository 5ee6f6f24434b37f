"""Learning-rate schedule: timm's ``CosineLRScheduler``, stepped with a fractional epoch every step.

SGDR (Loshchilov & Hutter) with T0 = ``cycle_epochs``, Tmul = ``cycle_mul`` over ``cycle_limit`` cycles is
``CosineLRScheduler(t_initial=T0, cycle_mul=Tmul, cycle_limit=n)``; ``restart_every`` starts the whole
schedule again (the paper's A2/A3: two runs of 630 epochs back to back).

``DropBlockSchedule`` raises DropBlock's drop probability within each of those cycles, as the published CIFAR
training does.
"""
import logging
import math
from typing import Any, Dict

from timm.layers import DropBlock2d
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.optim import Optimizer

from hcgnet.training.config import TrainConfig


# timm warns that a single cycle of one epoch "has no effect"; stepped with fractional epochs it does.
logging.getLogger("timm.scheduler.cosine_lr").setLevel(logging.ERROR)


def cycle_length(config: TrainConfig) -> float:
    """T0: the first cycle's length in epochs (one cycle over the whole run, after warm-up, if not given)."""
    return config.cycle_epochs or (config.restart_every or config.epochs) - config.warmup_epochs


class EpochSchedule:
    def __init__(self, optimizer: Optimizer, config: TrainConfig) -> None:
        self.optimizer = optimizer
        self.constant = config.sched == "constant"
        self.restart_every = config.restart_every
        cycle = cycle_length(config)
        self.scheduler = CosineLRScheduler(
            optimizer,
            t_initial=cycle,
            cycle_mul=config.cycle_mul,
            cycle_limit=config.cycle_limit,
            lr_min=config.min_lr,
            warmup_t=config.warmup_epochs,
            warmup_lr_init=config.lr * 0.01 if config.warmup_epochs else 0.0,
            warmup_prefix=config.warmup_epochs > 0,
            t_in_epochs=True,
        )

    def step(self, epoch: float) -> float:
        """Set the learning rate for (fractional) ``epoch`` and return it."""
        if not self.constant:
            t = epoch % self.restart_every if self.restart_every else epoch
            self.scheduler.step(t)
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> Dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def cycle_position(epoch: float, config: TrainConfig) -> float:
    """How far (0..1) ``epoch`` is into its SGDR cycle: T_cur / T_i over the cycles EpochSchedule uses
    (warm-up first, T0 = ``cycle_epochs``, each cycle ``cycle_mul`` times longer, the whole schedule again
    every ``restart_every`` epochs). 0 during warm-up; 1 once ``cycle_limit`` cycles are over."""
    t = epoch % config.restart_every if config.restart_every else epoch
    t -= config.warmup_epochs
    if t < 0:
        return 0.0
    t0, mul = cycle_length(config), config.cycle_mul
    if mul == 1:
        i = math.floor(t / t0)
        start, length = i * t0, t0
    else:  # cycle i starts at S_i = T0 (mul^i - 1) / (mul - 1)
        i = math.floor(math.log(1 + t / t0 * (mul - 1), mul))
        start, length = t0 * (mul ** i - 1) / (mul - 1), t0 * mul ** i
        if start > t:  # floating-point rounding at a cycle boundary
            i -= 1
            start, length = t0 * (mul ** i - 1) / (mul - 1), t0 * mul ** i
    if i >= config.cycle_limit:
        return 1.0
    return min(max((t - start) / length, 0.0), 1.0)


class DropBlockSchedule:
    """Sets ``drop_prob`` of every ``timm.layers.DropBlock2d`` in the model from the (fractional) epoch.

    Within each SGDR cycle the probability rises from 0 to ``config.drop_block`` as the published CIFAR training
    raises it: ``drop_block / 2 * (1 - cos(pi T_cur / T_i))``, the learning rate's cosine mirrored, so blocks are
    dropped most when the learning rate is lowest. The trainer calls ``step(epoch + i / steps_per_epoch)``
    beside the learning-rate step; with ``drop_block`` 0 or no DropBlock layers it does nothing.
    """

    def __init__(self, model: nn.Module, config: TrainConfig) -> None:
        self.config = config
        self.layers = [m for m in model.modules() if isinstance(m, DropBlock2d)]

    def probability(self, epoch: float) -> float:
        position = cycle_position(epoch, self.config)
        return 0.5 * self.config.drop_block * (1 - math.cos(math.pi * position))

    def step(self, epoch: float) -> float:
        """Set the drop probability for (fractional) ``epoch`` and return it."""
        p = self.probability(epoch) if self.config.drop_block else 0.0
        for layer in self.layers:
            layer.drop_prob = p
        return p
