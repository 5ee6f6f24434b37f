"""Fine-tuning: start a run from trained weights (``--initial-checkpoint``) and keep early stages fixed
(``--freeze-stages``).

The trainer calls :func:`prepare_model` right after ``create_model`` and builds its optimiser over the
parameters that still require gradients. Frozen modules stay in eval mode through a forward pre-hook, so their
BatchNorm statistics (and any dropout or DropBlock in them) stay as they were even though the trainer calls
``model.train()`` every epoch; nothing else in the trainer has to know.
"""
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from torch import Tensor, nn

from hcgnet.errors import CheckpointError, plural
from hcgnet.models.checkpoints import read_state_dict
from hcgnet.training.config import ConfigError, TrainConfig

Log = Callable[[str], None]
CLASSIFIER = ("classifier.weight", "classifier.bias")


def prepare_model(model: nn.Module, config: TrainConfig, log: Log = print) -> None:
    """Load ``config.initial_checkpoint`` into ``model`` (re-making the classifier when the class count differs)
    and freeze the stem and the first ``config.freeze_stages`` stages."""
    if config.initial_checkpoint:
        if config.resume:
            log(f"resuming: the weights come from the run's own checkpoint, not {config.initial_checkpoint}")
        else:
            load_initial_checkpoint(model, config.initial_checkpoint, log)
    if config.freeze_stages:
        names = freeze(model, config.freeze_stages)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        log(f"froze {', '.join(names)}: {frozen:,} parameters fixed, BatchNorm statistics kept")


def load_initial_checkpoint(model: nn.Module, path: str, log: Log = print) -> Dict[str, Tensor]:
    """Copy every tensor of the checkpoint at ``path`` into ``model``; return what was loaded.

    A classifier of another class count is left as the model made it (freshly initialised). Any other
    difference means the checkpoint holds another network: a :class:`CheckpointError` names the first
    key that does not fit.
    """
    state_dict, metadata = read_state_dict(path)
    fitted, remade_for = match_state_dict(model, state_dict, path, metadata)
    model.load_state_dict(fitted, strict=False)
    message = f"loaded {len(fitted)} tensors from {path}"
    if remade_for is not None:
        classes = model.state_dict()["classifier.weight"].shape[0]
        had = f"the checkpoint has {remade_for}" if remade_for else "the checkpoint has none"
        message += f"; classifier re-made for {plural(classes, 'class')} ({had})"
    log(message)
    return fitted


def match_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: str, metadata: Optional[Mapping[str, str]] = None
) -> Tuple[Dict[str, Tensor], Optional[int]]:
    """The checkpoint's tensors that go into ``model``, and the checkpoint's class count when its classifier
    does not fit (0: it has none; None when it fits). Refuses a checkpoint of another architecture or input
    channel count."""
    expected = model.state_dict()
    hint = _model_hint(metadata or {})
    fitted: Dict[str, Tensor] = {}
    remade_for = None
    for key, target in expected.items():
        value = state_dict.get(key)
        if value is None and key.endswith("num_batches_tracked"):
            continue  # PyTorch 0.4.0-era checkpoints have no batch counters; the model keeps its own
        if value is None and key in CLASSIFIER:  # weights saved without a classifier (num_classes=0)
            remade_for = 0
            continue
        if value is None:
            raise CheckpointError(f"{source} has no {key!r} ({plural(_missing(expected, state_dict), 'key')} of the "
                                  f"model missing): it holds another network{hint}")
        if value.dim() == 4 and target.dim() == 2 and value.shape[2:] == (1, 1):
            value = value.flatten(1)  # published gates store their FC layers as 1x1 convs
        if value.shape != target.shape:
            if key in CLASSIFIER:
                remade_for = int(value.shape[0])
                continue
            if key == _first_conv(expected) and value.dim() == 4 and value.shape[1] != target.shape[1]:
                raise CheckpointError(f"{source} takes images of {plural(value.shape[1], 'channel')} but the model "
                                      f"(the dataset) has {plural(target.shape[1], 'channel')}; fine-tune on "
                                      f"{value.shape[1]}-channel images")
            raise CheckpointError(f"{source}: {key!r} has shape {tuple(value.shape)} but the model's is "
                                  f"{tuple(target.shape)}: the checkpoint holds another network{hint}")
        fitted[key] = value
    extra = sorted(set(state_dict) - set(expected))
    if extra:
        raise CheckpointError(f"{source} has {extra[0]!r}, which the model lacks: it holds another network{hint}")
    return fitted, remade_for


def _missing(expected: Mapping[str, Tensor], state_dict: Mapping[str, Tensor]) -> int:
    return sum(k not in state_dict for k in expected)


def _first_conv(expected: Mapping[str, Tensor]) -> str:
    return next(k for k, v in expected.items() if v.dim() == 4)


def _model_hint(metadata: Mapping[str, str]) -> str:
    name = metadata.get("model_name")
    return f" ({name}, by its metadata): pass --model {name!r}" if name else "; pass the --model it was trained as"


# ------------------------------------------------------------------------------------------ freezing


def stage_names(model: nn.Module) -> List[str]:
    """The modules ``--freeze-stages N`` fixes, in order: the stem, then ``stages.0``, ``stages.1``, ..."""
    stages = getattr(model, "stages", None)
    if not hasattr(model, "stem") or not isinstance(stages, nn.Sequential):
        raise ConfigError(f"{type(model).__name__} has no stem and stages to freeze")
    return ["stem"] + [f"stages.{i}" for i in range(len(stages))]


def freeze(model: nn.Module, n: int) -> List[str]:
    """Freeze the stem and the first ``n`` stages: no gradients, and eval mode (BatchNorm statistics, dropout)
    at every forward pass even after ``model.train()``. Returns the names of the frozen modules."""
    names = stage_names(model)
    if not 0 <= n <= len(names) - 1:
        raise ConfigError(f"--freeze-stages {n}: the model has {plural(len(names) - 1, 'stage')}; "
                          f"freeze 0 to {len(names) - 1}")
    frozen = names[: n + 1] if n else []
    for name in frozen:
        module = model.get_submodule(name)
        for p in module.parameters():
            p.requires_grad_(False)
        module.eval()
        module.register_forward_pre_hook(_keep_eval)
    return frozen


def _keep_eval(module: nn.Module, inputs) -> None:
    if module.training:  # model.train() reached it: back to eval before it computes anything
        module.eval()
