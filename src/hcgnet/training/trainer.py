"""``fit(config)``: a whole training run, the library side of ``hcgnet train``.

Set-up (process group, seeds, data, model, optimiser, schedule), resume, the epoch loop with validation,
checkpoints (``last.pt`` every epoch and every ``checkpoint_every`` steps, ``best.pt`` on validation top-1),
and at the end one score on the test set and the exported weights (``best.safetensors``,
``final.safetensors``). Only rank 0 writes files and prints.
"""
import dataclasses
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import yaml
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from hcgnet.data import build_data
from hcgnet.errors import HCGNetError
from hcgnet.models import create_model, save_safetensors
from hcgnet import distributed
from hcgnet.training.config import RUN_FLAGS, TrainConfig
from hcgnet.evaluation import AMP_DTYPES, evaluate
from hcgnet.training.engine import NonFiniteLossError, StepContext, new_totals, train_one_epoch
from hcgnet.training.logs import MetricsLog
from hcgnet.training.sampling import ResumableSampler, SeededSamples, ShardSampler
from hcgnet.training.schedule import EpochSchedule
from hcgnet.training.state import load_training_state, rng_state, save_atomic, set_rng_state

RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "steps.csv", "config.yaml", "results.json", "best.safetensors",
             "final.safetensors", "curves.png")
# Settings a resumed run may change: how it runs, not what it computes.
RESUME_MAY_CHANGE = ("output", "resume", "overwrite", "workers", "log_every", "checkpoint_every", "compile",
                     "data_dir", "recipe")


class OutputFolderError(HCGNetError):
    pass


def _check_output(config: TrainConfig) -> Path:
    """Refuse a folder that holds another run unless --resume/--overwrite; changes nothing on disk."""
    out = Path(config.output)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"output {out} is a file, not a folder")
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if existing and not (config.resume or config.overwrite):
        raise OutputFolderError(
            f"{out} already holds a run ({existing[0]}); pass --resume to continue it or --overwrite to replace it"
        )
    return out


def _claim_output(out: Path, config: TrainConfig, d: distributed.Dist) -> None:
    """Create the folder (and clear the old run for --overwrite): only once data and model are known to
    work, so a failing command loses nothing."""
    if d.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputFolderError(f"cannot create output folder {out}: {e.strerror}") from None
        if config.overwrite:
            for f in RUN_FILES:
                (out / f).unlink(missing_ok=True)
            shutil.rmtree(out / "tensorboard", ignore_errors=True)
    distributed.barrier(d)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _amp(config: TrainConfig, device: torch.device):
    if config.amp == "fp16":
        if device.type != "cuda":
            raise HCGNetError("--amp fp16 needs a GPU; on the CPU use --amp bf16")
        return torch.float16, torch.amp.GradScaler("cuda")
    return AMP_DTYPES[config.amp], None


def _metadata(config: TrainConfig, data, model: nn.Module) -> Dict[str, str]:
    return {
        "model_name": config.model,
        "num_classes": str(model.num_classes),
        "in_chans": str(data.config.input_size[0]),
        "class_names": json.dumps(list(data.config.class_names)),
        "data_config": json.dumps(dataclasses.asdict(data.config)),
        "val_size": str(config.val_size),
        "seed": str(config.seed),
    }


def fit(config: TrainConfig, log=print) -> Dict[str, Any]:
    """Train as ``config`` says; return the final metrics (also written to ``results.json``)."""
    d = distributed.setup()
    try:
        return _fit(config, d, log if d.is_main else (lambda *a, **k: None))
    finally:
        distributed.cleanup()


def _fit(config: TrainConfig, d: distributed.Dist, log) -> Dict[str, Any]:
    out = _check_output(config)
    resume_state: Optional[Dict[str, Any]] = None
    if config.resume:
        if (out / "last.pt").exists():  # multi-node runs need --output on a shared file system
            resume_state = load_training_state(out / "last.pt")
            saved = {**resume_state["config"], "world_size": resume_state.get("world_size", 1)}
            current = {**config.to_dict(), "world_size": d.world_size}
            for key in current:
                if key not in RESUME_MAY_CHANGE and saved.get(key) != current[key]:
                    raise HCGNetError(
                        f"cannot resume {out}: it was trained with {key}={saved.get(key)!r}, not {current[key]!r}; "
                        "resume with the same settings, or start a new run"
                    )
        else:
            log(f"nothing to resume in {out}: starting from scratch")

    _seed_everything(config.seed)
    data = build_data(config.data, data_dir=config.data_dir, val_size=config.val_size, seed=config.seed,
                      skip_bad_images=config.skip_bad_images, image_size=config.image_size, augment=config.augment)
    if data.skipped:
        log(f"skipped {data.skipped} unreadable images")
    if len(data.train) < config.batch_size * d.world_size:
        raise HCGNetError(
            f"the training set has {len(data.train)} images, fewer than one batch of {config.batch_size * d.world_size}; "
            "use a smaller --batch-size"
        )
    model_kwargs = {"in_chans": data.config.input_size[0]}
    if config.drop_rate is not None:
        model_kwargs["drop_rate"] = config.drop_rate
    model = create_model(config.model, num_classes=data.num_classes, **model_kwargs)
    _claim_output(out, config, d)
    # Same initial weights everywhere (seeded above); from here each process draws its own dropout masks
    # and mixup pairs.
    _seed_everything(config.seed + 1_000_003 * d.rank)
    model.to(d.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)

    global_batch = config.batch_size * d.world_size
    lr = config.lr * (global_batch / config.lr_base_batch if config.lr_base_batch else 1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum, nesterov=config.nesterov,
                                weight_decay=config.weight_decay)
    schedule = EpochSchedule(optimizer, TrainConfig(**{**config.to_dict(), "lr": lr}))
    amp_dtype, scaler = _amp(config, d.device)
    ema = ModelEmaV3(model, decay=config.ema_decay) if config.ema else None
    mixup = None
    if config.mixup > 0:
        mixup = Mixup(mixup_alpha=config.mixup, label_smoothing=config.label_smoothing, num_classes=data.num_classes)
        loss_fn: nn.Module = SoftTargetCrossEntropy()
    else:
        loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    start_epoch, first_step, best = 0, 0, {"top1": -1.0, "epoch": None}
    resumed_totals = new_totals()
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        schedule.load_state_dict(resume_state["scheduler"])
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        if ema is not None and resume_state.get("ema"):
            ema.load_state_dict(resume_state["ema"])
        start_epoch, first_step = resume_state["epoch"], resume_state["step_in_epoch"]
        best = resume_state["best"]
        mine = resume_state["ranks"][d.rank] if isinstance(resume_state["ranks"], list) else resume_state["ranks"]
        set_rng_state(mine["rng"])
        resumed_totals = mine["totals"]
        log(f"resumed {out} at epoch {start_epoch + 1}, step {first_step}")

    train_model: nn.Module = model
    if d.enabled:
        train_model = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if config.compile:
        log("compiling the model with torch.compile (the first steps take longer)")
        train_model = torch.compile(train_model)

    train_set = SeededSamples(data.train, config.seed)
    sampler = ResumableSampler(train_set, config.batch_size, d.world_size, d.rank, config.seed)
    steps_per_epoch = len(sampler.inner) // config.batch_size
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    pin = d.device.type == "cuda"

    def loader_for(dataset, batch_size, sampler_, drop_last=False):
        # Its own generator: creating a loader must not draw from the global RNG that dropout and mixup
        # use, or a run resumed mid-epoch would draw at another point of that stream.
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler_, num_workers=config.workers,
                          pin_memory=pin, drop_last=drop_last, persistent_workers=False,
                          generator=torch.Generator().manual_seed(config.seed))

    def eval_loader(dataset):
        return loader_for(dataset, config.batch_size, ShardSampler(len(dataset), d.world_size, d.rank))

    if d.is_main:
        (out / "config.yaml").write_text(yaml.safe_dump(
            {k: v for k, v in config.to_dict().items() if k not in RUN_FLAGS}, sort_keys=False))
    metrics = MetricsLog(out, start_epoch, start_epoch * steps_per_epoch + first_step) if d.is_main else None
    log(f"training {config.model} on {config.data}: {len(data.train)} train / {len(data.val)} validation / "
        f"{len(data.test)} test images, {data.num_classes} classes, {d.world_size} process(es) on {d.device}, "
        f"global batch {global_batch}, {steps_per_epoch} steps per epoch")

    ctx = StepContext(optimizer, loss_fn, d, amp_dtype, scaler, mixup, ema, config.accum_steps, config.channels_last)
    eval_model = lambda: ema.module if ema is not None else model  # noqa: E731

    def save_last(epoch: int, step_in_epoch: int, totals: Dict[str, float], before=None) -> None:
        """Every rank contributes its RNG state (dropout, mixup draws) and its running epoch totals; rank 0
        runs ``before(state)`` (best checkpoint, metrics row), then writes ``last.pt`` last of all, so a
        kill in between is resumed from the previous ``last.pt`` and redoes those writes."""
        ranks = distributed.gather_objects({"rng": rng_state(), "totals": dict(totals)}, d)
        if d.is_main:
            snapshot = state(epoch, step_in_epoch, ranks)
            if before is not None:
                before(snapshot)
            save_atomic(snapshot, out / "last.pt")
        distributed.barrier(d)  # nobody reads best.pt/last.pt before rank 0 has written them

    def state(epoch: int, step_in_epoch: int, ranks) -> Dict[str, Any]:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler else None, "ema": ema.state_dict() if ema else None,
            "epoch": epoch, "step_in_epoch": step_in_epoch, "best": best, "ranks": ranks, "world_size": d.world_size,
            "config": config.to_dict(), **_metadata(config, data, model),
        }

    epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.epochs):
            train_set.epoch = epoch
            skip = first_step if epoch == start_epoch else 0
            totals = resumed_totals if epoch == start_epoch else new_totals()
            sampler.set_epoch(epoch, skip)
            batches = _take(loader_for(train_set, config.batch_size, sampler, drop_last=True), steps_per_epoch - skip)
            # The bar goes to a terminal only (disable=None): logs and pipes get the summary lines.
            bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=True if not d.is_main else None, leave=False, dynamic_ncols=True, mininterval=1.0)

            def on_step(done: int, loss: float, epoch=epoch) -> None:
                step = epoch * steps_per_epoch + done
                if metrics is not None and done % config.log_every == 0:
                    metrics.add_step(step, step / steps_per_epoch, loss, optimizer.param_groups[0]["lr"])
                if config.checkpoint_every and step % config.checkpoint_every == 0 and done < steps_per_epoch:
                    save_last(epoch, done, totals)

            start = time.time()
            with bar:
                train = train_one_epoch(
                    train_model, batches, ctx, lambda i, e=epoch: schedule.step(e + i / steps_per_epoch),
                    first_step=skip, on_step=on_step, progress=bar, totals=totals)
            seconds = time.time() - start
            distributed.broadcast_buffers(eval_model(), d)  # score rank 0's BN statistics on every rank
            val = evaluate(eval_model(), eval_loader(data.val), d, amp_dtype, config.channels_last) if len(data.val) else None
            improved = val is None or val["top1"] > best["top1"]
            if improved:
                best = {"top1": val["top1"] if val else None, "epoch": epoch + 1}

            def record(snapshot, epoch=epoch, improved=improved, val=val, train=train, seconds=seconds):
                if improved:
                    save_atomic(snapshot, out / "best.pt")
                metrics.add_epoch({
                    "epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": train["loss"], "train_acc": train["acc"],
                    "val_loss": val and val["loss"], "val_top1": val and val["top1"], "val_top5": val and val["top5"],
                    "seconds": seconds, "images_per_s": train["images"] / max(seconds, 1e-9),
                })

            save_last(epoch + 1, 0, new_totals(), before=record)
            if d.is_main:
                val_text = f", val loss {val['loss']:.4f}, val top-1 {100 * val['top1']:.2f}%" if val else ""
                log(f"epoch {epoch + 1}/{config.epochs}: train loss {train['loss']:.4f}{val_text}, "
                    f"{train['images'] / max(seconds, 1e-9):.1f} images/s, {seconds:.0f} s")
    except NonFiniteLossError as e:
        last = out / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint had been written yet"
        raise NonFiniteLossError(f"{e} (epoch {epoch + 1}); training stopped and {kept}; lower --lr or use --amp none") from None
    finally:
        if metrics is not None:
            metrics.close()

    # The test set, scored once, with the weights chosen on validation.
    chosen = "best" if (out / "best.pt").exists() and len(data.val) else "final"
    final_weights = {k: v.clone() for k, v in eval_model().state_dict().items()}
    if chosen == "best":
        best_state = load_training_state(out / "best.pt")
        if ema is not None:
            ema.load_state_dict(best_state["ema"])
        else:
            model.load_state_dict(best_state["model"])
    test = evaluate(eval_model(), eval_loader(data.test), d, amp_dtype, config.channels_last)
    replicas_identical = distributed.parameters_match_rank0(model, d)
    result = {"model": config.model, "data": config.data, "test_top1": test["top1"], "test_top5": test["top5"],
              "test_loss": test["loss"], "test_images": test["count"], "weights": chosen,
              "world_size": d.world_size, "replicas_identical": replicas_identical,
              "best_val_top1": best["top1"] if best["epoch"] else None, "best_epoch": best["epoch"],
              "epochs": config.epochs}
    if d.is_main:
        meta = _metadata(config, data, eval_model())
        save_safetensors(eval_model(), out / "best.safetensors", meta)
        save_safetensors(final_weights, out / "final.safetensors", meta)
        (out / "results.json").write_text(json.dumps(result, indent=2))
        plot = metrics.plot(out / "curves.png", f"{config.model} on {config.data}")
        result["curves"] = str(plot)
        if not test["count"]:
            log("no test images: the test set was not scored")
        else:
            log(f"test ({test['count']} images, {chosen} weights): top-1 {100 * test['top1']:.2f}%, "
                f"top-5 {100 * test['top5']:.2f}%, loss {test['loss']:.4f}")
        log(f"curves: {plot}   weights: {out / 'best.safetensors'}   metrics: {out / 'metrics.csv'}")
    return result


def _take(loader, n: int):
    """The first ``n`` batches of ``loader``."""
    for i, batch in enumerate(loader):
        if i >= n:
            break
        yield batch
