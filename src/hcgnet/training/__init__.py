"""Training: configuration and recipes, the epoch engine, checkpoints, DDP, and ``fit``."""
from hcgnet.training.config import ConfigError, TrainConfig, list_recipes, load_recipe, make_config
from hcgnet.evaluation import evaluate
from hcgnet.training.engine import NonFiniteLossError, train_one_epoch
from hcgnet.training.resume import resume_config
from hcgnet.training.trainer import fit

__all__ = [
    "ConfigError", "NonFiniteLossError", "TrainConfig", "evaluate", "fit", "list_recipes", "load_recipe",
    "make_config", "resume_config", "train_one_epoch",
]
