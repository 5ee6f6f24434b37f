"""Training: configuration and recipes, the epoch engine, checkpoints, DDP, and ``fit``.

Only :mod:`hcgnet.training.config` (recipes and ``TrainConfig``: no torch) loads with the package; the rest on
first use, so that the command line lists recipes and parses ``train``'s flags without importing torch.
"""
from hcgnet.lazy import lazy_dir, lazy_exports
from hcgnet.training.config import ConfigError, TrainConfig, list_recipes, load_recipe, make_config

_LATER = {"evaluate": "hcgnet.evaluation", "NonFiniteLossError": "hcgnet.training.engine",
          "train_one_epoch": "hcgnet.training.engine", "resume_config": "hcgnet.training.resume",
          "fit": "hcgnet.training.trainer"}

__all__ = [
    "ConfigError", "NonFiniteLossError", "TrainConfig", "evaluate", "fit", "list_recipes", "load_recipe",
    "make_config", "resume_config", "train_one_epoch",
]

__getattr__ = lazy_exports(__name__, _LATER)
__dir__ = lazy_dir(__name__, _LATER)
