"""Resuming a run: what may differ from the settings it was started with, and ``--resume`` given only
``--output`` (the run's own ``config.yaml`` supplies the rest).

A finished run can be extended: ``--resume --epochs N`` with N larger than before trains on to epoch N. The
learning-rate schedule is then the one of an N-epoch run (a cosine over N epochs unless ``cycle_epochs``
fixes the cycles), evaluated from the epoch reached: the learning rate rises from the old schedule's end to
where the longer cosine stands at that epoch, and decays from there to ``min_lr`` at epoch N.
"""
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from hcgnet.errors import HCGNetError
from hcgnet.training.config import FIELDS, RUN_FLAGS, TrainConfig, check_warmup, make_config, recorded_data

# Settings a resumed run may change: how and where it runs, not what it computes ("epochs" only upwards, below).
RESUME_MAY_CHANGE = (*RUN_FLAGS, "workers", "log_every", "checkpoint_every", "compile", "data_dir", "recipe",
                     "max_test_images")


def check_resumable(out: Path, saved: Dict[str, Any], config: TrainConfig, world_size: int) -> None:
    """Refuse to resume ``saved`` (a ``last.pt``) with settings that would compute something else."""
    # An option newer than the run was the default then (the behaviour before it existed).
    before = {**{k: f.default for k, f in FIELDS.items()}, **saved["config"], "world_size": saved.get("world_size", 1)}
    before["data"] = recorded_data(before["data"])  # a run from before folders were recorded absolute
    now = {**config.to_dict(), "world_size": world_size}
    for key in now:
        # A run may be extended or shortened, but not to before where it stands.
        if key in RESUME_MAY_CHANGE or (key == "epochs" and now[key] >= saved["epoch"] + bool(saved["step_in_epoch"])):
            continue
        if before.get(key) != now[key]:
            hint = (_where(saved) if key == "epochs" else "resume with the same settings, or start a new run")
            raise HCGNetError(f"cannot resume {out}: it was trained with {key}={before.get(key)!r}, not {now[key]!r}; "
                              f"{hint}")
    if isinstance(config, TrainConfig):  # the classifier's cosine (a detection run's schedule is its own)
        check_warmup(config)


def _where(saved: Dict[str, Any]) -> str:
    """How far a saved run got, for the refusal to shorten it to before that."""
    epochs, step = saved["epoch"], saved["step_in_epoch"]
    if not step:
        return f"it has already trained {epochs} epochs"
    return (f"it has already trained {epochs} epochs and {step} steps of epoch {epochs + 1}: pass --epochs "
            f"{epochs + 1} or more")


def schedule_changed(saved: Dict[str, Any], config: TrainConfig) -> bool:
    """An extended run (more epochs) keeps none of the old schedule's state: it is recomputed for the new length."""
    return saved["config"].get("epochs") != config.epochs


def resume_config(output: str, overrides: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """The settings of the run in ``output`` (its ``config.yaml``), with ``overrides`` (None values ignored)
    on top: ``hcgnet train --output DIR --resume [--epochs N]``."""
    saved = Path(output) / "config.yaml"
    if not saved.is_file():
        what = "it holds no config.yaml" if Path(output).is_dir() else "no such folder"
        raise HCGNetError(f"nothing to resume: there is no run in {output} ({what}); check --output, or start a run "
                          "there with --data ...")
    values = {k: v for k, v in (overrides or {}).items() if v is not None}
    return make_config(config_file=str(saved), overrides={**values, "output": str(output), "resume": True})
