"""``fit(config)``: a whole training run, the library side of ``hcgnet train``.

A :class:`Run` goes through four parts, each a method: set-up (output folder, data, model, optimiser and
schedule, resume), one epoch at a time, validation with the checkpoints (``last.pt`` every epoch and every
``checkpoint_every`` steps, ``best.pt`` on validation top-1), and at the end one score on the test set and the
exported weights (``best.safetensors``, ``final.safetensors``). Only rank 0 writes files and prints.

``batch_size`` is the global batch: each of the torchrun processes takes ``batch_size / world size`` images
per step, and ``lr_base_batch`` scales the learning rate by the global batch.
"""
import dataclasses
import json
import os
from typing import Any, Callable, Dict, Optional

import torch
import yaml
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from hcgnet import distributed
from hcgnet.data import DataConfig, absolute_spec, build_data
from hcgnet.errors import HCGNetError, plural
from hcgnet.evaluation import evaluate, show_top5
from hcgnet.files import write_json
from hcgnet.models import create_model, save_safetensors
from hcgnet.provenance import provenance
from hcgnet.models.registry import is_timm_baseline, parse_model_kwargs
from hcgnet.models.variants import cifar_stem_note, resolve
from hcgnet.training.config import RUN_FLAGS, TrainConfig
from hcgnet.training.engine import StepContext, new_totals, train_one_epoch
from hcgnet.training.folder import BAD_IMAGES, RunFolder
from hcgnet.training.interrupts import StopSignals
from hcgnet.training.logs import MetricsLog, ProgressLines
from hcgnet.training.run import (LOG_SECONDS, TrainingRun, amp_settings, one_step_warning, seed_everything,
                                 stdout_is_terminal)
from hcgnet.training.resume import schedule_changed
from hcgnet.training.finetune import prepare_model
from hcgnet.training.sampling import ResumableSampler, SeededSamples, ShardSampler
from hcgnet.training.schedule import DropBlockSchedule, EpochSchedule
from hcgnet.training.state import load_training_state, rng_state, save_atomic, set_rng_state

# Shared with the detection trainer, now in run.py; the old private names stay for one release.
_seed_everything, _amp, _stdout_is_terminal = seed_everything, amp_settings, stdout_is_terminal


def global_batch_for(config: TrainConfig, train_images: int, world_size: int, log) -> int:
    """The global batch to use: ``config.batch_size``, or the largest batch that fits the training set
    (each process's micro-batches of at least 2 images, even with mixup) with a warning."""
    if config.batch_size % world_size:
        raise HCGNetError(f"batch size {config.batch_size} is the global batch and must divide evenly over "
                          f"{world_size} processes; use a multiple of {world_size}")
    per_process = train_images // world_size  # DistributedSampler(drop_last) gives each process this many
    unit = config.accum_steps * (2 if config.mixup > 0 else 1)  # a micro-batch size must stay even for mixup
    local = config.batch_size // world_size
    if local <= per_process:
        left_out = per_process % local * world_size
        if 2 * local > per_process and left_out:  # one step per epoch: the other images sit every epoch out
            halved = per_process // 2 // unit * unit * world_size
            log(one_step_warning(config.batch_size, train_images, left_out, halved, world_size))
        return config.batch_size
    micro = per_process // unit * unit // config.accum_steps
    if micro < 2:
        raise HCGNetError(f"the training set has {plural(train_images, 'image')}, too few for a batch of "
                          f"{2 * config.accum_steps * world_size} ({world_size} process(es), {config.accum_steps} "
                          "micro-batch(es) of 2 images each); add images or lower --accum-steps")
    batch = micro * config.accum_steps * world_size
    log(f"warning: batch size {config.batch_size} is larger than the training set ({plural(train_images, 'image')}); "
        f"using batch size {batch} (pass --batch-size {batch} to choose it yourself)")
    return batch


def _build_data(config: TrainConfig, bad_images_log, resume_state: Optional[Dict[str, Any]] = None):
    """The run's data, preprocessed for its model (the model is checked first: before any data is read); a
    resumed run keeps the preprocessing it started with, even where today's defaults would choose another."""
    cfg = model_defaults(config)
    started = resume_state.get("data_config") if resume_state else None
    return build_data(config.data, data_dir=config.data_dir, val_size=config.val_size, test_size=config.test_size,
                      seed=config.seed, skip_bad_images=config.skip_bad_images, image_size=config.image_size,
                      download=config.download,
                      augment=config.augment, bad_images_log=bad_images_log, model_cfg=cfg, hflip=config.hflip,
                      preprocessing=DataConfig.from_dict(json.loads(started)) if started else None)


def model_defaults(config: TrainConfig) -> Dict[str, Any]:
    """The ``pretrained_cfg`` (input size, crop, statistics) of the model ``config`` trains, from a copy built on
    the meta device: no weights are made, and an unknown model or switch is refused before any data is read."""
    kwargs = {"stem": config.stem} if config.stem else {}
    with torch.device("meta"):
        return dict(create_model(config.model, **kwargs, **parse_model_kwargs(config.model_kwargs)).pretrained_cfg)


def _metadata(config: TrainConfig, data, model: nn.Module) -> Dict[str, str]:
    """What ``hcgnet eval``/``predict`` need from a run: preprocessing, classes, and how the data was split
    (``seed``, ``val_size``, ``test_size`` as JSON: a number or null for automatic), where the data was
    (``data_dir``, absolute, when ``--data-dir`` was given), and the arithmetic the run scored its val and test
    sets in (``amp``, ``channels_last``)."""
    return {
        "model_name": config.model,
        "num_classes": str(model.num_classes),
        "in_chans": str(data.config.input_size[0]),
        "class_names": json.dumps(list(data.config.class_names)),
        "data_config": json.dumps(dataclasses.asdict(data.config)),
        "val_size": json.dumps(config.val_size),
        "test_size": json.dumps(config.test_size),
        "seed": str(config.seed),
        "data": absolute_spec(config.data),   # found again from any working folder
        **({"data_dir": os.path.abspath(os.path.expanduser(config.data_dir))} if config.data_dir else {}),
        "skip_bad_images": json.dumps(config.skip_bad_images),  # eval rebuilds the split without the same files
        "amp": config.amp,                                       # what the run scored val and test in
        "channels_last": json.dumps(config.channels_last),
        **_built_with(model, config),
    }


def _built_with(model: nn.Module, config: TrainConfig) -> Dict[str, str]:
    """Metadata ``switches``: the arguments that make the same network again (HCGNet's design switches, or a
    baseline's ``--model-kwargs`` such as DenseNet-BC's ``depth``), read back by ``create_model``."""
    built = getattr(model, "switches", None)
    if built is None:
        built = parse_model_kwargs(config.model_kwargs)
    return {"switches": json.dumps(built)} if built else {}


def fit(config: TrainConfig, log=print) -> Dict[str, Any]:
    """Train as ``config`` says; return the final metrics (also written to ``results.json``)."""
    return Run.launch(config, log, config.device or "auto")


class Run(TrainingRun):
    """One training run; the methods in the order they run."""

    def __init__(self, config: TrainConfig, d: distributed.Dist, log: Callable, stop: StopSignals) -> None:
        self.config, self.d, self.log, self.stop = config, d, log, stop
        self.folder = RunFolder(config)  # refusals only; nothing on disk changes before claim()
        _amp(config, d.device)  # fp16 without a GPU: refused before the data is read (and a bad-image list written)
        self.out = self.folder.work
        self.started = False  # training has begun: a failure from here on keeps the resumable checkpoints
        self.metrics: Optional[MetricsLog] = None

    # ------------------------------------------------------------------------------------------------ set-up

    def set_up(self, resume_state: Optional[Dict[str, Any]]) -> None:
        config, d = self.config, self.d
        _seed_everything(config.seed)
        self.data = self.load_data(resume_state)
        self.model = self.build_model()
        # Same initial weights everywhere (seeded above); from here each process draws its own dropout masks
        # and mixup pairs.
        _seed_everything(config.seed + 1_000_003 * d.rank)
        self.model.to(d.device)
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.batch = global_batch_for(config, len(self.data.train), d.world_size, self.log)
        self.local_batch = self.batch // d.world_size
        self.build_optimiser(resume_state)
        self.build_loss()
        self.start_epoch, self.first_step, self.best = 0, 0, {"top1": -1.0, "epoch": None}
        self.resumed_totals = new_totals()
        if resume_state is not None:
            self.restore(resume_state)
        self.build_loaders()
        if d.is_main:
            (self.out / "config.yaml").write_text(yaml.safe_dump(
                {k: v for k, v in config.to_dict().items() if k not in RUN_FLAGS}, sort_keys=False))
            first = self.start_epoch * self.steps_per_epoch + self.first_step
            self.metrics = MetricsLog(self.out, self.start_epoch, first)
        self.log(f"training {config.model} on {config.data}: {len(self.data.train):,} train / {len(self.data.val):,} "
                 f"validation / {len(self.data.test):,} test images, {plural(self.data.num_classes, 'class')}, "
                 f"{plural(d.world_size, 'process')} on {d.device}, global batch {self.batch}, "
                 f"{plural(self.steps_per_epoch, 'step')} per epoch")

    def load_data(self, resume_state: Optional[Dict[str, Any]] = None):
        # Rank 0 first: a download or a tarball's extraction writes into --data-dir, which the others then read.
        data = distributed.rank0_first(
            self.d, lambda: _build_data(self.config, self.out / BAD_IMAGES, resume_state), "loading the data")
        for note in data.notes:  # held-out sizes, skipped images, the input size, the augmentation
            self.log(note)
        return data

    def build_model(self) -> nn.Module:
        config = self.config
        kwargs: Dict[str, Any] = {"in_chans": self.data.config.input_size[0]}
        if config.drop_rate is not None:
            kwargs["drop_rate"] = config.drop_rate
        if config.stem:
            kwargs["stem"] = config.stem
        if config.drop_block > 0:
            kwargs["drop_block_rate"] = config.drop_block
        kwargs.update(parse_model_kwargs(config.model_kwargs))
        model = create_model(config.model, num_classes=self.data.num_classes, **kwargs)
        prepare_model(model, config, self.log)
        warning = None if is_timm_baseline(config.model) else cifar_stem_note(
            config.model, resolve(config.model, config.stem)[1].stem, max(self.data.config.input_size[1:]))
        if warning:
            self.log(f"warning: {warning}")
        return model

    def build_optimiser(self, resume_state) -> None:
        config = self.config
        lr = config.lr * (self.batch / config.lr_base_batch if config.lr_base_batch else 1.0)
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # frozen stages stay as loaded
        self.optimizer = torch.optim.SGD(trainable, lr=lr, momentum=config.momentum, nesterov=config.nesterov,
                                         weight_decay=config.weight_decay)
        self.schedule = EpochSchedule(self.optimizer, TrainConfig(**{**config.to_dict(), "lr": lr}))
        self.drop_block = (DropBlockSchedule(self.model, config)
                           if config.drop_block > 0 and DropBlockSchedule is not None else None)
        self.amp_dtype, self.scaler = _amp(config, self.d.device)
        self.ema = ModelEmaV3(self.model, decay=config.ema_decay) if config.ema else None

    def build_loss(self) -> None:
        config = self.config
        self.mixup = None
        if config.mixup > 0:
            self.mixup = Mixup(mixup_alpha=config.mixup, label_smoothing=config.label_smoothing,
                               num_classes=self.data.num_classes)
            self.loss_fn: nn.Module = SoftTargetCrossEntropy()
        else:
            self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def restore(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if not schedule_changed(state, self.config):
            self.schedule.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.start_epoch, self.first_step, self.best = state["epoch"], state["step_in_epoch"], state["best"]
        mine = state["ranks"][self.d.rank] if isinstance(state["ranks"], list) else state["ranks"]
        set_rng_state(mine["rng"])
        self.resumed_totals = mine["totals"]
        extended = f" (now {self.config.epochs} epochs)" if schedule_changed(state, self.config) else ""
        if self.start_epoch >= self.config.epochs:   # nothing left to train: say so, not "at epoch N + 1"
            self.log(f"resumed {self.folder.out}: it has trained all {plural(self.config.epochs, 'epoch')}, so only "
                     f"the test set is scored again (pass --epochs {self.config.epochs + 1} or more to train longer)")
            return
        self.log(f"resumed {self.folder.out} at epoch {self.start_epoch + 1}, step {self.first_step}{extended}")

    def build_loaders(self) -> None:
        config, d = self.config, self.d
        self.train_model: nn.Module = self.model
        if d.enabled:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        if config.compile:
            self.log("compiling the model with torch.compile (the first steps take longer)")
            self.train_model = torch.compile(self.train_model)
        self.train_set = SeededSamples(self.data.train, config.seed)
        self.sampler = ResumableSampler(self.train_set, self.local_batch, d.world_size, d.rank, config.seed)
        self.steps_per_epoch = len(self.sampler.inner) // self.local_batch
        if config.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, config.max_steps_per_epoch)
        self.ctx = StepContext(self.optimizer, self.loss_fn, d, self.amp_dtype, self.scaler, self.mixup, self.ema,
                               config.accum_steps, config.channels_last)

    def loader(self, dataset, sampler, drop_last: bool = False) -> DataLoader:
        # Its own generator: creating a loader must not draw from the global RNG that dropout and mixup
        # use, or a run resumed mid-epoch would draw at another point of that stream.
        return DataLoader(dataset, batch_size=self.local_batch, sampler=sampler, num_workers=self.config.workers,
                          pin_memory=self.d.device.type == "cuda", drop_last=drop_last, persistent_workers=False,
                          generator=torch.Generator().manual_seed(self.config.seed),
                          worker_init_fn=distributed.leave_stop_signals_to_the_main_process)

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self, dataset) -> Dict[str, Any]:
        sampler = ShardSampler(len(dataset), self.d.world_size, self.d.rank)
        return evaluate(self.eval_model(), self.loader(dataset, sampler), self.d, self.amp_dtype,
                        self.config.channels_last)

    # ------------------------------------------------------------------------------------------------ epochs

    def train(self) -> None:
        self.started = True
        total = self.config.epochs * self.steps_per_epoch
        self.progress = ProgressLines(self.log, total, self.steps_per_epoch, self.config.epochs, self.batch,
                                      interval=LOG_SECONDS, enabled=self.d.is_main and not _stdout_is_terminal())
        self.epoch = self.start_epoch
        for self.epoch in range(self.start_epoch, self.config.epochs):
            train, seconds = self.train_epoch(self.epoch)
            self.end_epoch(self.epoch, train, seconds)

    def set_step(self, epoch: int, i: int) -> None:
        """Learning rate (and DropBlock probability) for batch ``i`` of ``epoch``."""
        t = epoch + i / self.steps_per_epoch
        self.schedule.step(t)
        if self.drop_block is not None:
            self.drop_block.step(t)

    def train_epoch(self, epoch: int):
        self.train_set.epoch = epoch
        resumed = epoch == self.start_epoch
        skip = self.first_step if resumed else 0
        self.totals = self.resumed_totals if resumed else new_totals()
        self.sampler.set_epoch(epoch, skip)
        loader = self.loader(self.train_set, self.sampler, drop_last=True)
        return self.run_epoch(epoch, loader, skip, train_one_epoch, self.ctx, lambda i: self.set_step(epoch, i))

    def end_epoch(self, epoch: int, train: Dict[str, Any], seconds: float) -> None:
        """Validation, ``best.pt`` when it improved, the metrics row, ``last.pt``, the epoch's log line."""
        distributed.broadcast_buffers(self.eval_model(), self.d)  # score rank 0's BN statistics on every rank
        val = self.evaluate(self.data.val) if len(self.data.val) else None
        improved = val is None or val["top1"] > self.best["top1"]
        if improved:
            self.best = {"top1": val["top1"] if val else None, "epoch": epoch + 1}
        row = {
            "epoch": epoch + 1, "step": (epoch + 1) * self.steps_per_epoch,
            "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train["loss"], "train_acc": train["acc"],
            "val_loss": val and val["loss"], "val_top1": val and val["top1"], "val_top5": val and val["top5"],
            "seconds": seconds, "images_per_s": train["images"] / max(seconds, 1e-9),
        }

        def record(snapshot: Dict[str, Any]) -> None:
            if improved:
                save_atomic(snapshot, self.out / "best.pt")
            self.metrics.add_epoch(row)

        self.save_last(epoch + 1, 0, new_totals(), before=record)
        val_text = f", val loss {val['loss']:.4f}, val top-1 {100 * val['top1']:.2f}%" if val else ""
        self.log(f"epoch {epoch + 1}/{self.config.epochs}: train loss {train['loss']:.4f}{val_text}, "
                 f"{row['images_per_s']:.1f} images/s, {seconds:.0f} s")
        signum = self.stop.requested(self.d)  # a signal during validation: last.pt is already current
        if signum:
            self.interrupted(signum, epoch + 1, 0)

    def save_last(self, epoch: int, step_in_epoch: int, totals: Dict[str, float], before=None) -> None:
        """Every rank contributes its RNG state (dropout, mixup draws) and its running epoch totals; rank 0
        runs ``before(state)`` (best checkpoint, metrics row), then writes ``last.pt`` last of all, so a
        kill in between is resumed from the previous ``last.pt`` and redoes those writes."""
        ranks = distributed.gather_objects({"rng": rng_state(), "totals": dict(totals)}, self.d)
        if self.d.is_main:
            snapshot = self.snapshot(epoch, step_in_epoch, ranks)
            if before is not None:
                before(snapshot)
            save_atomic(snapshot, self.out / "last.pt")
        distributed.barrier(self.d)  # nobody reads best.pt/last.pt before rank 0 has written them

    def snapshot(self, epoch: int, step_in_epoch: int, ranks) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.state_dict() if self.ema else None, "epoch": epoch, "step_in_epoch": step_in_epoch,
            "best": self.best, "ranks": ranks, "world_size": self.d.world_size, "config": self.config.to_dict(),
            **_metadata(self.config, self.data, self.model),
        }

    # ------------------------------------------------------------------------------------------------ the end

    def test_set(self):
        test, limit = self.data.test, self.config.max_test_images
        if limit is not None and limit < len(test):
            self.log(f"scoring the first {limit:,} of {len(test):,} test images (--max-test-images)")
            return Subset(test, range(limit))
        return test

    def finish(self) -> Dict[str, Any]:
        """The test set, scored once with the weights chosen on validation; the exported weights."""
        final_weights = {k: v.clone() for k, v in self.eval_model().state_dict().items()}
        chosen = self.load_chosen_weights()
        test = self.evaluate(self.test_set())
        best = self.best
        scored = test["count"] > 0   # no test images: no scores (null), not 0% and a loss of 0
        result = {"model": self.config.model, "data": self.config.data,
                  **{f"test_{k}": test[k] if scored else None for k in ("top1", "top5", "loss")},
                  "test_images": test["count"],
                  "test_images_available": len(self.data.test), "max_test_images": self.config.max_test_images,
                  "weights": chosen, "world_size": self.d.world_size,
                  "replicas_identical": distributed.parameters_match_rank0(self.model, self.d),
                  "best_val_top1": best["top1"] if best["epoch"] else None, "best_epoch": best["epoch"],
                  "epochs": self.config.epochs, "global_batch": self.batch}
        if self.d.is_main:
            self.write_results(result, final_weights)
        return result

    def load_chosen_weights(self) -> str:
        """The best validation epoch's weights when there is a validation set, else the final ones."""
        if not ((self.out / "best.pt").exists() and len(self.data.val)):
            return "final"
        best_state = load_training_state(self.out / "best.pt")
        if self.ema is not None:
            self.ema.load_state_dict(best_state["ema"])
        else:
            self.model.load_state_dict(best_state["model"])
        return "best"

    def write_results(self, result: Dict[str, Any], final_weights: Dict[str, torch.Tensor]) -> None:
        out, final = self.out, self.folder.out
        meta = _metadata(self.config, self.data, self.eval_model())
        save_safetensors(self.eval_model(), out / "best.safetensors", meta)
        save_safetensors(final_weights, out / "final.safetensors", meta)
        write_json(out / "results.json", {**result, "provenance": provenance(device=self.d.device)})
        self.metrics.close()
        top5 = show_top5(self.data.num_classes)
        self.metrics.plot(out / "curves.png", f"{self.config.model} on {self.config.data}", top5=top5)
        result["curves"] = str(final / "curves.png")
        if not result["test_images"]:
            self.log("no test images: the test set was not scored")
        else:
            top5_text = f"top-5 {100 * result['test_top5']:.2f}%, " if top5 else ""
            self.log(f"test ({result['test_images']} images, {result['weights']} weights): "
                     f"top-1 {100 * result['test_top1']:.2f}%, {top5_text}loss {result['test_loss']:.4f}")
        self.log(f"curves: {final / 'curves.png'}   weights: {final / 'best.safetensors'}   "
                 f"metrics: {final / 'metrics.csv'}")
