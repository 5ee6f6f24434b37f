"""``train(config)``: a detector trained on COCO-format data, the library side of ``hcgnet detect train``.

The default recipe is the paper's 1x schedule (12 epochs, x0.1 once 8/12 and 11/12 of the run's steps are
done, i.e. after epochs 8 and 11; a shorter run keeps its rate until then), SGD with momentum 0.9 and weight
decay 1e-4, learning rate 0.02 for a global batch of 16 (scaled linearly with the global batch), with
torchvision's reference choices where the paper says nothing: a linear warm-up over the first 1,000 steps from
0.001 of the rate, BatchNorm scale and shift frozen, no gradient clipping (``DetectConfig.preset("published")``:
the published mmdetection config's instead). The learning rate is a function of the global step alone, so a
resumed run needs no scheduler state.

The run reuses the classifier trainer's machinery: the output folder rules (:class:`RunFolder`:
``--resume``/``--overwrite``), Ctrl-C/SIGTERM handling (:class:`StopSignals`: ``last.pt`` and a resume
hint), atomic checkpoints with every RNG state, ``metrics.csv``/``steps.csv``/TensorBoard
(:class:`MetricsLog`), progress lines off a terminal, per-sample seeded augmentation (:class:`SeededSamples`)
and torchrun/DDP (:mod:`hcgnet.distributed`). A run interrupted after any step and resumed ends with the same
weights as one that was not.
"""
import shutil
from typing import Any, Callable, Dict, Optional

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from hcgnet import distributed
from hcgnet.detection.checkpoint import detector_metadata
from hcgnet.detection.models import build_detector, trained_stages
from hcgnet.detection.config import DetectConfig, check_config, learning_rate, resume_detect_config
from hcgnet.detection.data import CocoDetectionSet, GroupedBatches, aspect_groups, collate, read_coco
from hcgnet.detection.engine import LOSSES, DetectionStep, new_totals, train_one_epoch
from hcgnet.detection.evaluate import METRICS, evaluate_detector
from hcgnet.errors import HCGNetError, plural
from hcgnet.files import write_json
from hcgnet.models import save_safetensors
from hcgnet.provenance import provenance
from hcgnet.training.config import RUN_FLAGS
from hcgnet.training.folder import RunFolder
from hcgnet.training.interrupts import StopSignals
from hcgnet.training.logs import MetricsLog, ProgressLines
from hcgnet.training.run import (LOG_SECONDS, TrainingRun, amp_settings, one_step_warning, seed_everything,
                                 stdout_is_terminal)
from hcgnet.training.sampling import SeededSamples
from hcgnet.training.state import rng_state, save_atomic, set_rng_state

COLUMNS = ["epoch", "step", "lr", "train_loss", *LOSSES, "val_box_ap", "val_box_ap50", "val_mask_ap",
           "val_mask_ap50", "seconds", "images_per_s"]


def train(config: DetectConfig, log=print) -> Dict[str, Any]:
    """Train as ``config`` says; return the final metrics (also written to ``results.json``)."""
    check_config(config)
    return DetectRun.launch(config, log, config.device or "auto")


class DetectRun(TrainingRun):
    """One detection run; the methods in the order they run (the classifier's ``Run``, for detectors)."""

    COMMAND = "hcgnet detect train"

    def __init__(self, config: DetectConfig, d: distributed.Dist, log: Callable, stop: StopSignals) -> None:
        self.config, self.d, self.log, self.stop = config, d, log, stop
        self.folder = RunFolder(config)  # refusals only; nothing on disk changes before claim()
        amp_settings(config, d.device)  # fp16 without a GPU: refused before any data is read
        self.out = self.folder.work
        self.started = self.resumed = False
        self.metrics: Optional[MetricsLog] = None
        self.val_metrics: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------------------------------------ set-up

    def set_up(self, resume_state: Optional[Dict[str, Any]]) -> None:
        config, d = self.config, self.d
        self.check_model()
        seed_everything(config.seed)
        self.load_data()
        self.model = self.build_model(self.data.num_classes)  # the same initial weights on every process
        seed_everything(config.seed + 1_000_003 * d.rank)  # each process its own RPN/ROI sampling
        self.model.to(d.device)
        if not self.train_set:
            raise HCGNetError(f"{config.annotations} has no training image with an object to learn from: every "
                              "object is a crowd (iscrowd 1), which training leaves out as torchvision's references "
                              "do; annotate objects without iscrowd")
        if len(self.train_set) // d.world_size < self.local_batch:
            raise HCGNetError(f"{plural(len(self.train_set), 'training image')} with objects: too few for a batch "
                              f"of {config.batch_size}; lower --batch-size")
        self.build_optimiser()
        self.start_epoch, self.first_step, self.resumed_totals = 0, 0, new_totals()
        self.resumed = resume_state is not None
        if resume_state is not None:
            self.restore(resume_state)
        self.build_batches()
        self.note_left_out()
        if d.is_main:
            (self.out / "config.yaml").write_text(yaml.safe_dump(
                {k: v for k, v in config.to_dict().items() if k not in RUN_FLAGS}, sort_keys=False))
            first = self.start_epoch * self.steps_per_epoch + self.first_step
            self.metrics = MetricsLog(self.out, self.start_epoch, first, columns=COLUMNS)
        self.log(f"training {config.task} detector {config.model} on {config.annotations}: "
                 f"{len(self.train_set):,} training images with objects"
                 + (f", {len(self.val_data.image_ids):,} validation images" if self.val_data else "")
                 + f", {len(self.data.category_ids)} categories, {plural(d.world_size, 'process')} on "
                 f"{d.device}, global batch {config.batch_size}, lr {self.base_lr:g}{self.lr_scaling()}, "
                 f"{plural(self.steps_per_epoch, 'step')} per epoch")

    def lr_scaling(self) -> str:
        """The linear scaling rule in words, where it changed --lr: the header's lr is not the one given."""
        c = self.config
        if c.batch_size == c.lr_base_batch:
            return ""
        return f" (--lr {c.lr:g} scaled to batch {c.batch_size} of {c.lr_base_batch})"

    def note_left_out(self) -> None:
        """Batches are full (aspect-ratio groups; from-scratch BatchNorms need 2 images), so the images beyond
        the last full batch sit each epoch out: said as the classifier's trainer says it."""
        c, world = self.config, self.d.world_size
        images, per_epoch = len(self.train_set), self.sampler.per_epoch
        left = images - per_epoch * c.batch_size
        if not left or (c.max_steps_per_epoch or per_epoch) < per_epoch:  # epochs cut short on purpose
            return
        if per_epoch == 1:
            halved = images // world // 2 * world
            self.log(one_step_warning(c.batch_size, images, left, halved, world))
        else:
            self.log(f"each epoch takes {plural(per_epoch, 'batch')} of {c.batch_size} and leaves "
                     f"{plural(left, 'training image')} unused (drawn anew each epoch)")

    def load_data(self) -> None:
        config = self.config
        masks = config.task == "mask"
        self.data = read_coco(config.images, config.annotations, masks=masks)
        self.val_data = read_coco(config.val_images, config.val_annotations) if config.val_images else None
        for note in dict.fromkeys(self.data.notes + (self.val_data.notes if self.val_data else [])):  # once each
            self.log(note)
        if self.val_data is not None and self.val_data.category_ids != self.data.category_ids:
            raise HCGNetError(f"{config.val_annotations} has other categories than {config.annotations}; "
                              "validate on data with the same categories")
        ids = self.data.trainable_ids()
        skipped = len(self.data.image_ids) - len(ids)
        if skipped:
            self.log(f"left out {plural(skipped, 'training image')} without objects")
        self.train_set = CocoDetectionSet(self.data, ids, train=True, masks=masks)

    def check_model(self) -> None:
        """The batch, ``--model``, ``--trainable-stages`` and ``--detector-options`` refused before any annotation
        is read (COCO's: 118k image headers): the detector built on the meta device, no weights read or made."""
        config, d = self.config, self.d
        if config.batch_size % d.world_size:
            raise HCGNetError(f"--batch-size {config.batch_size} is the global batch and must divide evenly over "
                              f"{d.world_size} processes")
        self.local_batch = config.batch_size // d.world_size
        if self.local_batch < 2 and not config.weights_backbone and config.model.strip().lower() != "resnet50":
            raise HCGNetError("a backbone trained from scratch has ordinary BatchNorms, and HCGNet's gates cannot "
                              "normalise one image: give each process 2 images or more (--batch-size), or "
                              "--weights-backbone")
        with torch.device("meta"):
            self.build_model(2, weights=False)

    def build_model(self, num_classes: int, weights: bool = True) -> nn.Module:
        """The detector for ``num_classes`` (background included); ``weights=False``: the backbone's weights are
        not read (a trained backbone's freezing rules still apply)."""
        c = self.config
        try:
            return build_detector(c.model, c.task, num_classes=num_classes,
                                  weights_backbone=c.weights_backbone if weights else None,
                                  trained=bool(c.weights_backbone), trainable_stages=c.trainable_stages,
                                  bn_affine=c.bn_affine, min_size=c.image_size, max_size=c.max_size,
                                  **(c.detector_options or {}))
        except TypeError as e:  # an option torchvision's detector does not take
            raise HCGNetError(f"--detector-options: {e}") from None

    def build_optimiser(self) -> None:
        c = self.config
        self.base_lr = c.lr * c.batch_size / c.lr_base_batch
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # frozen stages stay as loaded
        self.optimizer = torch.optim.SGD(trainable, lr=self.base_lr, momentum=c.momentum, weight_decay=c.weight_decay)
        self.amp_dtype, self.scaler = amp_settings(c, self.d.device)

    def restore(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.first_step = state["epoch"], state["step_in_epoch"]
        self.val_metrics = state.get("val_metrics")
        mine = state["ranks"][self.d.rank] if isinstance(state["ranks"], list) else state["ranks"]
        set_rng_state(mine["rng"])
        self.resumed_totals = mine["totals"]
        self.log(f"resumed {self.folder.out} at epoch {self.start_epoch + 1}, step {self.first_step}")

    def build_batches(self) -> None:
        c, d = self.config, self.d
        self.train_model: nn.Module = self.model
        if d.enabled:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        self.samples = SeededSamples(self.train_set, c.seed)  # each image's flip fixed by (seed, epoch, index)
        groups = aspect_groups(self.train_set.aspect_ratios())
        self.sampler = GroupedBatches(groups, self.local_batch, d.world_size, d.rank, c.seed)
        self.steps_per_epoch = self.sampler.per_epoch
        if c.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, c.max_steps_per_epoch)
        self.total_steps = c.epochs * self.steps_per_epoch
        self.step = DetectionStep(self.optimizer, d, self.amp_dtype, self.scaler, c.clip_grad)

    # ------------------------------------------------------------------------------------------------ epochs

    def train(self) -> None:
        c = self.config
        self.progress = ProgressLines(self.log, self.total_steps, self.steps_per_epoch, c.epochs, c.batch_size,
                                      interval=LOG_SECONDS,
                                      enabled=self.d.is_main and not stdout_is_terminal())
        try:
            for self.epoch in range(self.start_epoch, c.epochs):
                train, seconds = self.train_epoch(self.epoch)
                self.end_epoch(self.epoch, train, seconds)
        except BaseException:
            self.leave_no_run_behind()
            raise

    def after_step(self, epoch: int, done: int, loss: float) -> None:
        self.started = True  # a step taken: from here on a failure keeps the run (to resume, or to look at)
        super().after_step(epoch, done, loss)

    def leave_no_run_behind(self) -> None:
        """A run that fails before its first step (an image of another size than its entry, an unreadable one)
        leaves nothing that would refuse the same command once the data is mended. ``abandon`` removes a folder
        the run created; here the files it wrote into one that was there already, with nothing to resume."""
        if self.started or self.resumed or self.folder.created or self.folder.replacing or not self.d.is_main:
            return
        if self.metrics is not None:
            self.metrics.close()
        for name in ("config.yaml", "metrics.csv", "steps.csv"):
            (self.out / name).unlink(missing_ok=True)
        shutil.rmtree(self.out / "tensorboard", ignore_errors=True)

    def set_lr(self, epoch: int, i: int) -> None:
        lr = learning_rate(epoch * self.steps_per_epoch + i, self.total_steps, self.base_lr, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_epoch(self, epoch: int):
        self.samples.epoch = epoch
        resumed = epoch == self.start_epoch
        skip = self.first_step if resumed else 0
        self.totals = self.resumed_totals if resumed else new_totals()
        self.sampler.set_epoch(epoch, skip)
        # Its own generator: an iterator otherwise draws its base seed from the global RNG, which a run resumed
        # mid-epoch restores at another point (the classifier's loader does the same).
        loader = DataLoader(self.samples, batch_sampler=self.sampler, collate_fn=collate,
                            num_workers=self.config.workers, pin_memory=self.d.device.type == "cuda",
                            generator=torch.Generator().manual_seed(self.config.seed),
                            worker_init_fn=distributed.leave_stop_signals_to_the_main_process)
        return self.run_epoch(epoch, loader, skip, train_one_epoch, self.step, lambda i: self.set_lr(epoch, i))

    def validate(self) -> Optional[Dict[str, Any]]:
        if self.val_data is None:
            return None
        distributed.broadcast_buffers(self.model, self.d)  # rank 0's normalisation statistics on every rank
        metrics = evaluate_detector(self.model, self.val_data, self.data.category_ids, self.config.task,
                                    self.d.device, self.amp_dtype, dist=self.d)
        if metrics is not None:
            metrics.pop("results")
        return metrics

    def end_epoch(self, epoch: int, train: Dict[str, Any], seconds: float) -> None:
        """Validation AP, the metrics row, ``last.pt``, the epoch's log line."""
        val = self.validate()
        self.val_metrics = val
        row = {"epoch": epoch + 1, "step": (epoch + 1) * self.steps_per_epoch,
               "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train["loss"],
               **{k: train[k] for k in LOSSES if self.config.task == "mask" or k != "loss_mask"},
               "seconds": seconds, "images_per_s": train["images"] / max(seconds, 1e-9)}
        for kind in ("box", "mask"):
            if val and kind in val:
                row[f"val_{kind}_ap"], row[f"val_{kind}_ap50"] = val[kind]["AP"], val[kind]["AP50"]
        self.save_last(epoch + 1, 0, new_totals(), before=lambda _: self.metrics.add_epoch(row))
        val_text = "".join(f", val {k} AP {100 * val[k]['AP']:.1f}" for k in ("box", "mask") if val and k in val)
        self.log(f"epoch {epoch + 1}/{self.config.epochs}: train loss {train['loss']:.4f}{val_text}, "
                 f"{row['images_per_s']:.1f} images/s, {seconds:.0f} s")
        signum = self.stop.requested(self.d)
        if signum:
            self.interrupted(signum, epoch + 1, 0)

    def save_last(self, epoch: int, step_in_epoch: int, totals: Dict[str, float], before=None) -> None:
        """As the classifier's: every rank's RNG state and totals; rank 0 runs ``before`` then writes last.pt."""
        ranks = distributed.gather_objects({"rng": rng_state(), "totals": dict(totals)}, self.d)
        if self.d.is_main:
            snapshot = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scaler": self.scaler.state_dict() if self.scaler else None, "epoch": epoch,
                        "step_in_epoch": step_in_epoch, "ranks": ranks, "world_size": self.d.world_size,
                        "config": self.config.to_dict(), "val_metrics": self.val_metrics, **self.metadata()}
            if before is not None:
                before(snapshot)
            save_atomic(snapshot, self.out / "last.pt")
        distributed.barrier(self.d)

    def metadata(self) -> Dict[str, str]:
        c = self.config
        return detector_metadata(c.model, c.task, self.data.class_names, self.data.category_ids, c.image_size,
                                 c.max_size, trained_stages(c.model, c.weights_backbone, c.trainable_stages),
                                 c.detector_options)

    # ------------------------------------------------------------------------------------------------ the end

    def finish(self) -> Dict[str, Any]:
        c, val = self.config, self.val_metrics
        result = {"model": c.model, "task": c.task, "annotations": c.annotations, "epochs": c.epochs,
                  "global_batch": c.batch_size, "world_size": self.d.world_size, "steps": self.total_steps,
                  "replicas_identical": distributed.parameters_match_rank0(self.model, self.d), "validation": val}
        if self.d.is_main:
            save_safetensors(self.model, self.out / "final.safetensors", self.metadata())
            write_json(self.out / "results.json", {**result, "provenance": provenance(device=self.d.device)})
            self.metrics.close()
            final = self.folder.out
            if val:
                from hcgnet.detection.evaluate import table

                self.log(f"validation ({val['images']} images):\n{table(val)}")
            self.log(f"weights: {final / 'final.safetensors'}   metrics: {final / 'metrics.csv'}")
        return result


__all__ = ["COLUMNS", "DetectConfig", "METRICS", "learning_rate", "resume_detect_config", "train"]
