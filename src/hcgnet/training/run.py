"""What both trainers share (the classifier's ``Run`` and the detector's ``DetectRun``): a run's life (set up,
train, finish; on any failure the output folder keeps what it must and the message says what is left), reading
the state to resume from, the step loop over a resumable loader with its progress bar, and what happens after
every optimiser step — metrics, progress lines, periodic ``last.pt``, and the stop on Ctrl-C/SIGTERM; and the
small helpers both use (seeding, the autocast dtype and grad scaler, whether stdout is a terminal)."""
import itertools
import json
import os
import random
import sys
import time
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from hcgnet import distributed
from hcgnet.data import DataError
from hcgnet.errors import HCGNetError, plural
from hcgnet.evaluation import AMP_DTYPES
from hcgnet.training.engine import NonFiniteLossError
from hcgnet.training.folder import BAD_IMAGES
from hcgnet.training.interrupts import StopSignals, TrainingInterrupted
from hcgnet.training.resume import check_resumable
from hcgnet.training.state import CheckpointWriteError, load_training_state

LOG_SECONDS = 30.0  # a progress line this often when stdout is not a terminal


def seed_everything(seed: int) -> None:
    """Seed PyTorch's, NumPy's and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def amp_settings(config, device: torch.device) -> Tuple[Optional[torch.dtype], Optional[torch.amp.GradScaler]]:
    """The autocast dtype of ``config.amp`` and, for fp16, a grad scaler; fp16 without a GPU is refused."""
    if config.amp == "fp16":
        if device.type != "cuda":
            raise HCGNetError("--amp fp16 needs a GPU; on the CPU use --amp bf16")
        return torch.float16, torch.amp.GradScaler("cuda")
    return AMP_DTYPES[config.amp], None


def one_step_warning(batch: int, images: int, left_out: int, halved: int, world_size: int) -> str:
    """The warning for a batch over half the training set (both trainers): each epoch takes 1 step and leaves
    ``left_out`` images unused; ``halved``, the batch that takes 2, is suggested where each process gets 2 or more."""
    return (f"warning: batch size {batch} is more than half the training set ({plural(images, 'image')}): each "
            f"epoch takes 1 step and leaves {plural(left_out, 'image')} unused"
            + (f"; --batch-size {halved} takes 2 steps per epoch" if halved >= 2 * world_size else ""))


def stdout_is_terminal() -> bool:
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


class TrainingRun:
    """The base of a run that has ``config`` (``resume``, ``epochs``, ``log_every``, ``checkpoint_every``), ``d``,
    ``log``, ``stop``, ``folder``, ``out``, ``started``, ``metrics``, ``progress``, ``optimizer``, ``train_model``,
    ``steps_per_epoch``, ``totals``, and the methods ``set_up(resume_state)``, ``train()``, ``finish()`` and
    ``save_last(epoch, step_in_epoch, totals)``. ``COMMAND`` is what the resume hint tells the user to run."""

    COMMAND = "hcgnet train"

    @classmethod
    def launch(cls, config, log: Callable = print, device: str = "auto") -> Dict[str, Any]:
        """Run ``config`` in this process (joining torchrun's process group when there is one), with Ctrl-C and
        SIGTERM handled, and only rank 0 logging; return the run's results."""
        d = distributed.setup(device)
        try:
            with StopSignals() as stop:
                return cls(config, d, log if d.is_main else (lambda *a, **k: None), stop).execute()
        finally:
            distributed.cleanup()

    def execute(self) -> Dict[str, Any]:
        resume_state = self.read_resume_state()
        self.folder.claim(self.d)   # clears what killed runs left, a finished run's folder too
        finished = self.finished_results(resume_state)
        if finished is not None:
            return finished
        try:
            self.set_up(resume_state)
            self.train()
            result = self.finish()
        except BaseException as e:
            self.folder.abandon(self.d, self.started)
            explained = self.explain(e)
            if explained is e:
                raise
            raise explained from None
        finally:
            if self.metrics is not None:
                self.metrics.close()
        self.folder.commit(self.d)
        return result

    def explain(self, e: BaseException) -> BaseException:
        """The one-line message of a failure, saying what is left on disk."""
        if isinstance(e, CheckpointWriteError):
            then = ("free space and resume with --resume" if not self.folder.replacing
                    else f"{self.folder.kept()}; free space and run again")
            return HCGNetError(f"{e.reason} writing {self.folder.out / e.path.name}; {then}")
        if isinstance(e, DataError) and self.folder.replacing:  # the list of bad images moved out of the discarded run
            return DataError(str(e).replace(str(self.out / BAD_IMAGES), str(self.folder.bad_images_kept)))
        if isinstance(e, NonFiniteLossError):
            # --amp none is advice only where mixed precision is on
            amp = "" if getattr(self.config, "amp", "none") == "none" else " or use --amp none"
            return NonFiniteLossError(f"{e} (epoch {getattr(self, 'epoch', 0) + 1}); training stopped and "
                                      f"{self.folder.kept()}; lower --lr{amp}")
        return e

    def finished_results(self, state: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """``--resume`` of a run that trained all its epochs and wrote its results: said, and nothing touched (it
        would otherwise score its test set again and rewrite the same files); its results. None otherwise (a run
        stopped while it scored its test set has no results yet: resuming scores it)."""
        if state is None or state["step_in_epoch"] or state["epoch"] < self.config.epochs:
            return None
        out = self.folder.out
        if not ((out / "final.safetensors").is_file() and (out / "results.json").is_file()):
            return None
        result = json.loads((out / "results.json").read_text())
        if result.get("epochs") != state["epoch"]:  # the results of the run before it was extended
            return None
        self.log(f"{out} already finished its {plural(state['epoch'], 'epoch')}; nothing to resume (to train longer, "
                 f"pass --resume --epochs with more than {state['epoch']})")
        return result

    def read_resume_state(self) -> Optional[Dict[str, Any]]:
        config, last = self.config, self.folder.out / "last.pt"
        if not config.resume:
            return None
        if not last.exists():  # multi-node runs need --output on a shared file system
            self.log(f"nothing to resume in {self.folder.out}: starting from scratch")
            return None
        state = load_training_state(last)
        check_resumable(self.folder.out, state, config, self.d.world_size)
        return state

    # ------------------------------------------------------------------------------------------------ the steps

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
        # every log_every-th step of an epoch and its last, so a run shorter than log_every steps has rows too
        if self.metrics is not None and (done % config.log_every == 0 or done == self.steps_per_epoch):
            self.metrics.add_step(step, step / self.steps_per_epoch, loss, lr)
        self.progress.step(step, loss, lr)
        signum = self.stop.requested(self.d)
        if signum or (config.checkpoint_every and step % config.checkpoint_every == 0 and done < self.steps_per_epoch):
            self.save_last(epoch, done, self.totals)
        if signum:
            self.interrupted(signum, epoch, done)

    def interrupted(self, signum: int, epoch: int, done: int) -> None:
        where = f"interrupted at epoch {epoch + 1} step {done}"
        said = f"{where}; {self.folder.kept()}" if self.folder.replacing else f"{where}; resume with: {self.resume_command()}"
        raise TrainingInterrupted(said, signum, quiet=not self.d.is_main)  # said once, by rank 0

    def resume_command(self) -> str:
        """The command that resumes this run: under torchrun, with as many processes (a resume checks them)."""
        command = f"{self.COMMAND} --output {self.folder.out} --resume"
        if self.d.world_size == 1:
            return command
        if int(os.environ.get("LOCAL_WORLD_SIZE", self.d.world_size)) == self.d.world_size:  # one machine
            return f"torchrun --nproc-per-node {self.d.world_size} -m {command}"
        return f"{command}, launched by torchrun as before ({self.d.world_size} processes)"
