"""Learning-rate schedule: timm's ``CosineLRScheduler``, stepped with a fractional epoch every step.

SGDR (Loshchilov & Hutter) with T0 = ``cycle_epochs``, Tmul = ``cycle_mul`` over ``cycle_limit`` cycles is
``CosineLRScheduler(t_initial=T0, cycle_mul=Tmul, cycle_limit=n)``; ``restart_every`` starts the whole
schedule again (the paper's A2/A3: two runs of 630 epochs back to back).
"""
import logging
from typing import Any, Dict

from timm.scheduler import CosineLRScheduler
from torch.optim import Optimizer

from hcgnet.training.config import TrainConfig


# timm warns that a single cycle of one epoch "has no effect"; stepped with fractional epochs it does.
logging.getLogger("timm.scheduler.cosine_lr").setLevel(logging.ERROR)


class EpochSchedule:
    def __init__(self, optimizer: Optimizer, config: TrainConfig) -> None:
        self.optimizer = optimizer
        self.constant = config.sched == "constant"
        self.restart_every = config.restart_every
        cycle = config.cycle_epochs or (config.restart_every or config.epochs) - config.warmup_epochs
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
