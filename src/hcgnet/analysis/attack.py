"""Accuracy under adversarial attack: the measure of the paper's Figure 5 and its robustness table, and two others.

Every attack works in pixel space: images in [0, 1], the model's normalisation ``(x - mean) / std`` applied
inside the attacked function (so ``eps`` is in pixel units, as the paper gives it), adversarial images
clipped to [0, 1]. The model is put in eval mode; only the input gets a gradient.

Three attacks:

* :func:`fgsm_any` -- the paper's measure (``hcgnet attack``'s default): foolbox 2's ``FGSM``
  (``GradientSignAttack``) as the published robustness script called it, with ``epsilons=[eps]``. The step of
  ``eps`` along the gradient's sign is tried first; an image it does not flip is retried at the 20 step sizes
  ``linspace(0, eps, 21)[1:]`` (foolbox's hard-coded retry), smallest first, and the first that flips it is
  kept. An image counts as wrong if *any* of those steps fools the model: "some eps' <= eps fools it", so its
  accuracy is never above :func:`fgsm`'s, and on a non-linear model it can be far below.
* :func:`fgsm` -- exactly one signed-gradient step of size ``eps`` (Goodfellow et al. 2015): the share of
  images still classified correctly after that one step. Not the paper's measure.
* :func:`pgd` -- L-inf projected gradient descent (Madry et al. 2018): ``steps`` signed steps of
  ``step_size``, each projected back onto the eps-ball around the image and onto [0, 1], optionally from a
  uniform random start in the ball. An image stays at the first iterate that fools the model, so more steps
  are never weaker than fewer (same start).

:func:`robustness` gives the accuracy of several models on the attacked images of a data set for each eps
(eps 0 is the clean accuracy); :func:`attack_checkpoints` does it for checkpoint files (``hcgnet attack``).
Accuracy is counted on the attacked images, and an image the model already gets wrong counts as wrong under
every attack (as in the published script), even where a step happens to right it.
"""
import csv
import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from hcgnet.analysis.options import amp_dtype, check_workers, checkpoint_file
from hcgnet.analysis.paper import ATTACKS, PGD_STEPS
from hcgnet.data import ChannelsMismatch, DataConfig, DataError, build_eval_dataset
from hcgnet.errors import CheckpointError, HCGNetError, channels_mismatch, check_whole, first_of
from hcgnet.evaluation import autocast, device_of
from hcgnet.files import write_json
from hcgnet.provenance import provenance

#: How many smaller step sizes foolbox 2's FGSM retries in (0, eps] when the step of eps does not fool the
#: model: hard-coded in its ``SingleStepGradientBaseAttack._run``. (The published script passed ``epsilons=[eps]``;
#: this 20 is foolbox's, not the script's.)
FGSM_ANY_STEPS = 20
Stats = Optional[Sequence[float]]


class Normalised(nn.Module):
    """``model((x - mean) / std)``: a model that takes [0, 1] pixels (what the attacks differentiate).

    ``amp_dtype`` (e.g. torch.bfloat16) runs only the model under autocast: the pixels, their normalisation
    and so the gradient with respect to the input stay float32 (a bf16 input would round the image itself, and
    eps 0.001 is below bf16's resolution near 1); the logits come back as float32."""

    def __init__(self, model: nn.Module, mean: Stats = None, std: Stats = None,
                 amp_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.model = model
        self.amp_dtype = amp_dtype
        c = len(mean) if mean is not None else (len(std) if std is not None else 1)
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0] * c).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0] * c).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean.to(x)) / self.std.to(x)
        if self.amp_dtype is None:
            return self.model(z)
        with autocast(z.device, self.amp_dtype):
            return self.model(z).float()


def _pixels_model(model: nn.Module, mean: Stats, std: Stats) -> nn.Module:
    model.eval()
    if isinstance(model, Normalised) or (mean is None and std is None):
        return model
    return Normalised(model, mean, std).to(next(model.parameters()).device)


def _check_eps(eps: float, what: str = "eps") -> float:
    eps = float(eps)
    if not 0.0 <= eps <= 1.0:  # also refuses NaN
        raise HCGNetError(f"{what} must be between 0 and 1 (pixel units, images in [0, 1]), got {eps:g}")
    return eps


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(cross-entropy summed over the batch)/dx: each image's own loss gradient (eval mode: images do not
    interact), without touching the parameters' ``.grad``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x).float()
        if getattr(model, "amp_dtype", None) != torch.float16:
            loss = nn.functional.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            return grad
        # fp16: the loss gradient of a confidently classified image (softmax - one-hot at the logits, 1e-8 or
        # less) underflows to 0 on its way back through an fp16 network, and sign(0) moves nothing: the attack
        # would silently spare exactly the images it should test. Each image's logit gradient, computed in
        # float32, is divided by its largest magnitude -- a positive number per image, so the sign of its input
        # gradient is unchanged (images do not interact in eval mode) -- before it goes back.
        with torch.no_grad():
            g = torch.softmax(logits, dim=1) - nn.functional.one_hot(y, logits.shape[1]).float()
            g = g / g.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        (grad,) = torch.autograd.grad(logits, x, grad_outputs=g)
    return grad


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, mean: Stats = None,
         std: Stats = None) -> torch.Tensor:
    """FGSM: ``clip(x + eps * sign(grad_x loss), 0, 1)``, one step of exactly ``eps``.

    ``x``: images in [0, 1], (B, C, H, W); ``y``: their labels; ``mean``/``std``: the model's normalisation,
    applied inside (None: the model takes [0, 1] pixels as they are). Returns the adversarial images."""
    eps = _check_eps(eps)
    net = _pixels_model(model, mean, std)
    if eps == 0:
        return x.detach().clone()
    return (x + eps * _input_gradient(net, x, y).sign()).clamp(0, 1).detach()


def fgsm_any(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, mean: Stats = None,
             std: Stats = None, tries: int = FGSM_ANY_STEPS) -> torch.Tensor:
    """foolbox 2.4's ``FGSM(model)(x, y, epsilons=[eps])``, the published robustness script's call, rule by rule:

    * an image the model already misclassifies is returned as it is (foolbox does not run the attack);
    * the gradient sign is taken once, at ``x``; the candidates are ``clip(x + step * sign, 0, 1)``;
    * the step of ``eps`` is tried first, and kept if it fools the model;
    * otherwise the steps ``linspace(0, eps, tries + 1)[1:]`` are tried in increasing order and the first one
      that fools the model is kept (``eps`` itself is the last of them);
    * when none does, foolbox returns NaN (the script counts the image as correct); here the step of ``eps``
      is returned, which the model still classifies correctly, so accuracy is counted the same.

    So an image is wrong under this attack if any eps' <= eps of those fools the model."""
    eps = _check_eps(eps)
    net = _pixels_model(model, mean, std)
    if eps == 0:
        return x.detach().clone()
    sign = _input_gradient(net, x, y).sign()
    adv = (x + eps * sign).clamp(0, 1)
    wrong = _predict(net, x) != y
    adv[wrong] = x[wrong]
    pending = ~wrong & (_predict(net, adv) == y)  # the step of eps did not fool these: retry smaller steps
    for step in torch.linspace(0, eps, tries + 1, dtype=torch.float64)[1:].tolist():
        if not pending.any():
            break
        idx = pending.nonzero().squeeze(1)
        candidate = (x[idx] + step * sign[idx]).clamp(0, 1)
        fooled = _predict(net, candidate) != y[idx]
        adv[idx[fooled]] = candidate[fooled]
        pending[idx[fooled]] = False
    return adv.detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = PGD_STEPS,
        step_size: Optional[float] = None, random_start: bool = False, generator: Optional[torch.Generator] = None,
        mean: Stats = None, std: Stats = None) -> torch.Tensor:
    """L-inf PGD: from ``x`` (or, with ``random_start``, a uniform point of the eps-ball, drawn with
    ``generator`` on the CPU so that a seed gives the same start on any device), ``steps`` times
    ``x' = clip(proj_eps(x' + step_size * sign(grad)), 0, 1)``. An image stays at the first iterate (the
    start included) that the model misclassifies, so accuracy never rises with more steps.
    ``step_size`` defaults to ``2.5 * eps / steps`` (Madry et al.)."""
    eps = _check_eps(eps)
    check_whole("--steps", steps, error=HCGNetError)
    if step_size is None:
        step_size = 2.5 * eps / steps
    if not step_size > 0 and eps > 0:
        raise HCGNetError(f"--step-size must be above 0, got {step_size:g}")
    net = _pixels_model(model, mean, std)
    if eps == 0:
        return x.detach().clone()
    x = x.detach()
    adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=torch.float32).to(x) * 2 - 1
        adv = (x + eps * noise).clamp(0, 1)
    active = _predict(net, adv) == y  # images still classified correctly: the only ones that move
    for _ in range(steps):
        if not active.any():
            break
        idx = active.nonzero().squeeze(1)
        step = adv[idx] + step_size * _input_gradient(net, adv[idx], y[idx]).sign()
        moved = torch.min(torch.max(step, x[idx] - eps), x[idx] + eps).clamp(0, 1)
        adv[idx] = moved
        active[idx] = _predict(net, moved) == y[idx]
    return adv.detach()


def run_attack(attack: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, mean: Stats = None,
               std: Stats = None, steps: int = PGD_STEPS, step_size: Optional[float] = None, random_start: bool = False,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One of :data:`ATTACKS` by name (``steps``, ``step_size``, ``random_start``, ``generator``: PGD's)."""
    if attack == "fgsm":
        return fgsm(model, x, y, eps, mean, std)
    if attack == "fgsm-any":
        return fgsm_any(model, x, y, eps, mean, std)
    if attack == "pgd":
        return pgd(model, x, y, eps, steps, step_size, random_start, generator, mean, std)
    raise HCGNetError(f"unknown attack {attack!r}; use one of {', '.join(ATTACKS)}")


def check_options(attack: str, eps_list: Sequence[float], steps: int = PGD_STEPS, step_size: Optional[float] = None,
                  limit: Optional[int] = None, batch_size: int = 64, workers: int = 0,
                  random_start: bool = False) -> List[float]:
    """The refusals, before any work: one line each. Returns the eps values as floats, in increasing order (the
    order of every table, file and plot); an eps given twice is refused (most often a typo for another value)."""
    if attack not in ATTACKS:
        raise HCGNetError(f"unknown attack {attack!r}; use one of {', '.join(ATTACKS)}")
    if attack != "pgd" and (random_start or step_size is not None):
        given = " and ".join(f for f, on in (("--random-start", random_start), ("--step-size", step_size is not None))
                             if on)
        raise HCGNetError(f"{given} {'are' if ' and ' in given else 'is'} PGD's (--attack pgd); {attack} takes one "
                          "step of eps from the image itself")
    if not len(eps_list):
        raise HCGNetError("--eps needs at least one value, e.g. 0,0.001,0.002,0.004")
    values = [_check_eps(e, "--eps values") for e in eps_list]
    twice = sorted({e for e in values if values.count(e) > 1})
    if twice:
        raise HCGNetError(f"--eps lists {', '.join(f'{e:g}' for e in twice)} more than once; give each eps once "
                          f"(was another value meant?), e.g. {','.join(f'{e:g}' for e in sorted(set(values)))}")
    values.sort()
    # refused whatever the attack: a value that cannot work is a mistake even where it goes unused
    check_whole("--steps", steps, error=HCGNetError)
    if step_size is not None and not step_size > 0:
        raise HCGNetError(f"--step-size must be above 0, got {step_size:g}")
    if limit is not None:
        check_whole("--limit", limit, error=HCGNetError)
    if batch_size < 1:
        raise HCGNetError(f"--batch-size must be 1 or more, got {batch_size}")
    check_workers(workers)
    return values


def _loader(data: Union[Dataset, DataLoader], limit: Optional[int], batch_size: int, workers: int = 0) -> DataLoader:
    if isinstance(data, DataLoader):
        if limit is not None:
            raise HCGNetError("limit works with a dataset, not a DataLoader; pass the dataset")
        return data
    if limit is not None and limit < len(data):
        data = Subset(data, range(limit))
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers)


def robustness(
    models: Mapping[str, Tuple[nn.Module, DataConfig]],
    data: Union[Dataset, DataLoader, Mapping[str, Union[Dataset, DataLoader]]],
    attack: str,
    eps_list: Sequence[float],
    steps: int = PGD_STEPS,
    step_size: Optional[float] = None,
    random_start: bool = False,
    seed: int = 0,
    batch_size: int = 64,
    limit: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    progress: Optional[Callable[[int], None]] = None,
    amp: str = "none",
    workers: int = 0,
) -> List[Dict[str, Any]]:
    """Accuracy of each model on the images of ``data`` attacked with ``attack`` at each eps.

    ``models``: name -> (model, its DataConfig: the mean/std applied inside the attacked function).
    ``data``: [0, 1] images with labels (a Dataset or DataLoader; or name -> one, for models that take
    different inputs). ``limit``: the first N images only. ``progress(n)``: called after each batch.
    ``step_size``: PGD's, None for ``2.5 * eps / steps``. ``seed``: PGD's random start (the same start for
    every model's images, batch by batch). ``amp``: "bf16" (or "fp16" on a GPU) runs the models' forward and
    backward passes under autocast; the images and their gradients stay float32. ``workers``: DataLoader
    processes reading ``data``.

    Returns one row per (eps, model), eps in increasing order: ``{"eps", "model", "attack", "correct",
    "images", "accuracy", "ci95_low", "ci95_high"}`` (the accuracy's 95% Wilson score interval, :func:`wilson`).
    """
    eps_values = check_options(attack, eps_list, steps, step_size, limit, batch_size, workers, random_start)
    dev = device_of(device)
    dtype = amp_dtype(amp, dev)
    counts = {(e, name): [0, 0] for e in range(len(eps_values)) for name in models}
    for name, (model, config) in models.items():
        source = data[name] if isinstance(data, Mapping) else data
        loader = _loader(source, limit, batch_size, workers)
        net = Normalised(model, config.mean, config.std, dtype).to(dev).eval()
        generator = torch.Generator().manual_seed(seed)
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            if x.shape[1] != len(config.mean):
                raise CheckpointError(channels_mismatch(name, len(config.mean), "the data", x.shape[1], "attack"))
            right = _predict(net, x) == y
            state = generator.get_state()
            for i, eps in enumerate(eps_values):
                generator.set_state(state)  # the same random start at every eps (scaled by it)
                adv = run_attack(attack, net, x, y, eps, steps=steps, step_size=step_size,
                                 random_start=random_start, generator=generator)
                # an image the model gets wrong counts as wrong, even where a step happens to right it (FGSM
                # moves every image, as torchattacks' does); foolbox's measure and PGD leave such images as they are
                counts[(i, name)][0] += int(((_predict(net, adv) == y) & right).sum())
                counts[(i, name)][1] += len(y)
            if progress is not None:
                progress(1)
    rows = []
    for i, eps in enumerate(eps_values):
        for name in models:
            correct, images = counts[(i, name)]
            low, high = wilson(correct, images)
            rows.append({"eps": eps, "model": name, "attack": attack, "correct": correct, "images": images,
                         "accuracy": correct / images if images else None, "ci95_low": low, "ci95_high": high})
    return rows


#: z of the two-sided 95% level: the standard normal's 0.975 quantile.
Z95 = 1.959963984540054
#: What ``ci95_low`` and ``ci95_high`` are, in the result's words.
INTERVAL = "95% Wilson score interval of each accuracy (binomial: correct of images)"


def wilson(correct: int, images: int, z: float = Z95) -> Tuple[Optional[float], Optional[float]]:
    """The Wilson score interval of the proportion ``correct / images`` (Wilson 1927), 95% by default:
    ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``. Unlike the normal approximation it stays in
    [0, 1] and is not empty at 0 or n correct. ``(None, None)`` without images."""
    if images <= 0:
        return None, None
    n, p = images, correct / images
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # clamped: at p = 0 or 1 rounding can put the bound a hair outside [0, 1]
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


# ------------------------------------------------------------------------------------------------ checkpoints


def pixel_config(config: DataConfig) -> DataConfig:
    """``config`` with mean 0 and std 1: its transform gives [0, 1] pixels, for the attacks to perturb."""
    c = config.input_size[0]
    return dataclasses.replace(config, mean=(0.0,) * c, std=(1.0,) * c, class_names=list(config.class_names))


def checkpoint_dataset(path: str, model: nn.Module, meta: Dict[str, str], data: str, data_dir: Optional[str] = None,
                       split: Optional[str] = None, skip_bad_images: Optional[bool] = None,
                       log: Callable[[str], None] = lambda line: None) -> Tuple[Dataset, DataConfig, str]:
    """The images ``hcgnet eval`` would score for this checkpoint (same split, same preprocessing), as [0, 1]
    pixels. ``skip_bad_images``: leave out unreadable images instead of refusing the folder (None: as the
    training run did), named in a note to ``log``. Returns ``(dataset, the checkpoint's DataConfig, split)``."""
    from hcgnet.data import spec_folder
    from hcgnet.inference import (SPLITS, bad_images_setting, choose_split, data_config_of, empty_split,
                                  folder_classes, run_data_dir, split_settings)

    if split is not None and split not in SPLITS:
        raise HCGNetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if split is None:
        split = choose_split(data, meta)[0]
    config = data_config_of(model, meta)
    folder = spec_folder(data)
    if folder is not None and not meta.get("class_names"):
        config.class_names = folder_classes(folder)
    if len(config.class_names) != model.num_classes:
        raise CheckpointError(f"{path} classifies {model.num_classes} classes but {data} has "
                              f"{len(config.class_names)}; attack it on the dataset it was trained for")
    if split == "all" and folder is None:
        raise HCGNetError("--split all attacks every image of a folder: use it with --data imagefolder:DIR")
    skip_bad_images, skipped_log = bad_images_setting(meta, skip_bad_images, log)
    try:
        dataset = build_eval_dataset(data, pixel_config(config), run_data_dir(data, data_dir, meta), split,
                                     skip_bad_images=skip_bad_images, log=skipped_log, **split_settings(meta))
    except ChannelsMismatch as e:
        raise CheckpointError(channels_mismatch(str(path), e.takes, data, e.gives, "attack")) from None
    except DataError as e:
        if "class" in str(e) and "model" in str(e):
            raise CheckpointError(f"{path}: {e}") from None
        raise
    if len(dataset) == 0:
        raise empty_split(data, split, "attack")
    channels = dataset[0][0].shape[0]
    if channels != config.input_size[0]:
        raise CheckpointError(channels_mismatch(str(path), config.input_size[0], data, channels, "attack"))
    return dataset, config, split


def model_labels(paths: Sequence[str], names: Sequence[Optional[str]]) -> List[str]:
    """Short column names for checkpoints: each one's model name (``names``, else the file's stem); where two
    or more share one, the shortest path suffix that tells them apart is added (``runA/best`` and
    ``runB/best`` for two ``best.safetensors``); the same file given twice gets ``#2``."""
    stems = [Path(p).with_suffix("") for p in paths]
    bases = [name or stem.name for name, stem in zip(names, stems)]
    labels = list(bases)
    for base in set(bases):
        group = [i for i, b in enumerate(bases) if b == base]
        if len(group) < 2:
            continue
        parts = [Path(os.path.abspath(stems[i])).parts for i in group]
        for k in range(1, max(len(p) for p in parts) + 1):
            suffixes = ["/".join(p[-k:]) for p in parts]
            if len(set(suffixes)) == len(suffixes):
                for i, suffix in zip(group, suffixes):
                    labels[i] = suffix if base == stems[i].name else f"{base} ({suffix})"
                break
    for i, label in enumerate(labels):  # a file given twice: no suffix tells the two apart
        n, base = 2, label
        while label in labels[:i]:
            label, n = f"{base} #{n}", n + 1
        labels[i] = label
    return labels


def attack_checkpoints(
    checkpoints: Sequence[str], data: Optional[str], attack: str, eps_list: Sequence[float], model_names: Sequence[Optional[str]] = (),
    data_dir: Optional[str] = None, split: Optional[str] = None, steps: int = PGD_STEPS, step_size: Optional[float] = None,
    random_start: bool = False, seed: int = 0, batch_size: int = 64, limit: Optional[int] = None,
    device: Optional[str] = None, progress: Optional[Callable[[int], None]] = None,
    on_total: Optional[Callable[[int], None]] = None, amp: str = "none", workers: int = 0,
    skip_bad_images: Optional[bool] = None, log: Callable[[str], None] = lambda line: None,
) -> Dict[str, Any]:
    """:func:`robustness` for checkpoint files, each on the images ``hcgnet eval`` would score for it.
    ``model_names``: one per checkpoint (None: the checkpoint says); the columns are named by
    :func:`model_labels`. ``on_total(batches)`` is called once the
    work is known, before it starts (for a progress bar). Returns ``{"attack", "data", "split", "splits" (model ->
    its split), "models", "checkpoints", "rows", ...}``. ``amp``, ``workers``: as :func:`robustness`; ``skip_bad_images``,
    ``log``: as :func:`checkpoint_dataset`."""
    from hcgnet.inference import load_model, recorded_data

    eps_values = check_options(attack, eps_list, steps, step_size, limit, batch_size, workers, random_start)
    amp_dtype(amp, device_of(device))  # refused before the checkpoints load
    if not checkpoints:
        raise HCGNetError("give at least one --checkpoint")
    if len(model_names) > len(checkpoints):
        raise HCGNetError(f"{len(model_names)} --model for {len(checkpoints)} --checkpoint; give at most one each")
    names = list(model_names) + [None] * (len(checkpoints) - len(model_names))
    models: Dict[str, Tuple[nn.Module, DataConfig]] = {}
    datasets: Dict[str, Dataset] = {}
    files: Dict[str, str] = {}
    splits: Dict[str, str] = {}
    for path in checkpoints:
        checkpoint_file(path)  # every file checked before the first one loads
    loaded = []
    for path, name in zip(checkpoints, names):
        model, meta = load_model(path, name)
        loaded.append((path, model, meta, name or meta.get("model_name")))
    if data is None:
        data = recorded_data([(path, meta) for path, _, meta, _ in loaded])
    for label, (path, model, meta, _) in zip(model_labels(checkpoints, [n for *_, n in loaded]), loaded):
        dataset, config, used = checkpoint_dataset(path, model, meta, data, data_dir, split, skip_bad_images, log)
        models[label], datasets[label], files[label], splits[label] = (model, config), dataset, str(path), used
    if on_total is not None:
        on_total(sum(len(_loader(d, limit, batch_size)) for d in datasets.values()))
    rows = robustness(models, datasets, attack, eps_values, steps, step_size, random_start, seed, batch_size,
                      limit, device, progress, amp, workers)
    return {"attack": attack, "data": data, "split": "/".join(sorted(set(splits.values()))), "splits": splits,
            "limit": limit, "images_available": {label: len(d) for label, d in datasets.items()},
            "eps": eps_values, "eps_scale": "pixels in [0, 1], before the model's normalisation", "amp": amp,
            "interval": INTERVAL,
            "steps": steps if attack == "pgd" else None,
            "step_size": (step_size if step_size is not None else "2.5*eps/steps") if attack == "pgd" else None,
            "random_start": random_start if attack == "pgd" else None, "seed": seed,
            "models": list(models), "checkpoints": files, "rows": rows,
            "provenance": provenance(files.values(), device_of(device))}


# ------------------------------------------------------------------------------------------------ outputs


#: The files ``hcgnet attack`` writes into its ``--output`` folder.
RESULTS = ("robustness.csv", "robustness.json", "robustness.png")


def attack_name(result: Dict[str, Any]) -> str:
    """What the result measured, in words (for the heading and the plot)."""
    return {"fgsm-any": "FGSM as foolbox 2 runs it (the paper's measure: wrong if any eps' <= eps fools)",
            "fgsm": "single-step FGSM (one step of eps; not the paper's measure)",
            "pgd": _pgd_name(result)}[result["attack"]]


def _pgd_name(result: Dict[str, Any]) -> str:
    size = result.get("step_size")
    size = "step 2.5 eps/steps" if size is None or isinstance(size, str) else f"step {size:g}"
    start = ", random start (seed {})".format(result.get("seed")) if result.get("random_start") else ""
    return f"PGD L-inf, {result.get('steps')} steps, {size}{start}"


def heading_counts(result: Dict[str, Any]) -> str:
    """Each model's split and image count (``"test, the first 100 of 10,000 images"``), once when all models
    share them: for the heading and the plot's title."""
    per_model = {}
    for model in result["models"]:
        images = next((r["images"] for r in result["rows"] if r["model"] == model), 0)
        available = result.get("images_available", {}).get(model, images)
        split = result.get("splits", {}).get(model, result["split"])
        per_model[model] = f"{split}, {first_of(images, available, 'image')}"
    shared = set(per_model.values())
    return shared.pop() if len(shared) == 1 else "; ".join(f"{m}: {w}" for m, w in per_model.items())


def heading(result: Dict[str, Any]) -> str:
    """The line above :func:`table`: the attack, the data, and each model's split and image count."""
    return (f"{attack_name(result)} on {result['data']} ({heading_counts(result)}): top-1 accuracy on the attacked "
            "images")


def _cell(row: Dict[str, Any]) -> str:
    if row["accuracy"] is None:
        return "-"
    if row.get("ci95_low") is None:  # a result written before the intervals
        return f"{100 * row['accuracy']:.2f}%"
    return f"{100 * row['accuracy']:.2f}% [{100 * row['ci95_low']:.1f}, {100 * row['ci95_high']:.1f}]"


def table(result: Dict[str, Any]) -> str:
    """Rows = eps (clean first when eps 0 is there), columns = models, accuracy in % with its 95% Wilson
    interval in brackets."""
    models = result["models"]
    by = {(r["eps"], r["model"]): r for r in result["rows"]}
    eps_values = sorted(dict.fromkeys(r["eps"] for r in result["rows"]))
    head = ["eps"] + models
    lines = [[("clean" if e == 0 else f"{e:g}")] + [_cell(by[(e, m)]) for m in models] for e in eps_values]
    widths = [max(len(row[i]) for row in [head] + lines) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
    note = "accuracy [95% Wilson score interval], in %"
    return "\n".join([fmt(head)] + [fmt(row) for row in lines] + [note])


def write_results(result: Dict[str, Any], folder: Union[str, Path]) -> List[Path]:
    """:data:`RESULTS` in ``folder``: ``robustness.csv`` (eps, model, split, attack, correct, images, accuracy,
    ci95_low, ci95_high),
    ``robustness.json`` (the settings and rows) and ``robustness.png`` (accuracy against eps, one line per
    model; :func:`hcgnet.analysis.attack_plots.plot`)."""
    from hcgnet.analysis.attack_plots import plot

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits = result.get("splits", {})
    with open(folder / "robustness.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("eps", "model", "split", "attack", "correct", "images", "accuracy",
                                               "ci95_low", "ci95_high"))
        writer.writeheader()
        for r in result["rows"]:
            writer.writerow({**r, "split": splits.get(r["model"], result.get("split", "")),
                             **{k: "" if r.get(k) is None else f"{r[k]:.6f}"
                                for k in ("accuracy", "ci95_low", "ci95_high")}})
    write_json(folder / "robustness.json", result)
    plot(result, folder / "robustness.png")
    return [folder / n for n in RESULTS]
