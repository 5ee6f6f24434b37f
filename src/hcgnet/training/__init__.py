"""Training: configuration and recipes, the epoch engine, checkpoints, DDP, and ``fit``.

Only :mod:`hcgnet.training.config` (recipes and ``TrainConfig``: no torch) loads with the package; the rest on
first use, so that the command line lists recipes and parses ``train``'s flags without importing torch.
"""
import importlib
import importlib.util

from hcgnet.training.config import ConfigError, TrainConfig, list_recipes, load_recipe, make_config

_LATER = {"evaluate": "hcgnet.evaluation", "NonFiniteLossError": "hcgnet.training.engine",
          "train_one_epoch": "hcgnet.training.engine", "resume_config": "hcgnet.training.resume",
          "fit": "hcgnet.training.trainer"}

__all__ = [
    "ConfigError", "NonFiniteLossError", "TrainConfig", "evaluate", "fit", "list_recipes", "load_recipe",
    "make_config", "resume_config", "train_one_epoch",
]


def __getattr__(name: str):
    if name in _LATER:
        return getattr(importlib.import_module(_LATER[name]), name)
    if not name.startswith("_") and importlib.util.find_spec(f"hcgnet.training.{name}") is not None:
        return importlib.import_module(f"hcgnet.training.{name}")  # hcgnet.training.trainer etc., as before
    raise AttributeError(f"module 'hcgnet.training' has no attribute {name!r}")
