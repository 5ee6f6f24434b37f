"""The part of an epoch both trainers share (the classifier's ``Run`` and the detector's ``DetectRun``): the
step loop over a resumable loader with its progress bar, and what happens after every optimiser step —
metrics, progress lines, periodic ``last.pt``, and the stop on Ctrl-C/SIGTERM."""
import itertools
import time
from typing import Any, Callable, Dict, Iterable, Tuple

from tqdm import tqdm

from hcgnet.training.interrupts import TrainingInterrupted


class EpochLoop:
    """Mixed into a run that has ``config`` (``epochs``, ``log_every``, ``checkpoint_every``), ``d``, ``stop``,
    ``folder``, ``metrics``, ``progress``, ``optimizer``, ``train_model``, ``steps_per_epoch``, ``totals`` and
    ``save_last(epoch, step_in_epoch, totals)``. ``COMMAND`` is what the resume hint tells the user to run."""

    COMMAND = "hcgnet train"

    def run_epoch(self, epoch: int, loader: Iterable, skip: int, train_one_epoch: Callable, step_context: Any,
                  before_step: Callable[[int], None]) -> Tuple[Dict[str, Any], float]:
        """Steps ``skip``.. of ``epoch`` over ``loader`` (already positioned after ``skip`` batches) with
        ``train_one_epoch``; returns its totals and the seconds it took."""
        batches = itertools.islice(loader, self.steps_per_epoch - skip)  # fetches no batch beyond the last
        # The bar goes to a terminal only (disable=None): logs and pipes get the progress lines instead.
        bar = tqdm(total=self.steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{self.config.epochs}",
                   disable=True if not self.d.is_main else None, leave=False, dynamic_ncols=True, mininterval=1.0)
        start = time.time()
        with bar:
            train = train_one_epoch(self.train_model, batches, step_context, before_step, first_step=skip,
                                    on_step=lambda done, loss: self.after_step(epoch, done, loss), progress=bar,
                                    totals=self.totals)
        return train, time.time() - start

    def after_step(self, epoch: int, done: int, loss: float) -> None:
        """After optimiser step ``done`` of ``epoch``: log, checkpoint, stop on a signal."""
        config, step = self.config, epoch * self.steps_per_epoch + done
        lr = self.optimizer.param_groups[0]["lr"]
        if self.metrics is not None and done % config.log_every == 0:
            self.metrics.add_step(step, step / self.steps_per_epoch, loss, lr)
        self.progress.step(step, loss, lr)
        signum = self.stop.requested(self.d)
        if signum or (config.checkpoint_every and step % config.checkpoint_every == 0 and done < self.steps_per_epoch):
            self.save_last(epoch, done, self.totals)
        if signum:
            self.interrupted(signum, epoch, done)

    def interrupted(self, signum: int, epoch: int, done: int) -> None:
        where = f"interrupted at epoch {epoch + 1} step {done}"
        if self.folder.replacing:
            raise TrainingInterrupted(f"{where}; {self.folder.kept()}", signum)
        raise TrainingInterrupted(f"{where}; resume with: {self.COMMAND} --output {self.folder.out} --resume", signum)
