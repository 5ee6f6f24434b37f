"""Network dissection (Bau et al., CVPR 2017) of any model's spatial maps, counted as their NetDissect-Lite
code counts (``feature_operation.py``), which the published HCGNet dissection ran.

For each unit (channel) of a layer: its threshold T_k is the top ``quantile`` (0.5%) of its activations over
the dataset (pass 1, a bounded-memory histogram, :class:`TopQuantile`); pass 2 (:class:`Tally`) upsamples each
activation map bilinearly to the segmentation's resolution, thresholds it at T_k, and sums intersections and
areas over the dataset with Lite's rule for the unit's area (see :class:`Tally`). A unit whose best concept
has IoU >= ``iou_threshold`` (0.04) is a detector of that concept; a layer's unique detectors of a category
are the distinct concepts detected. Pictures are in :mod:`hcgnet.analysis.dissect_plots`.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from hcgnet.analysis.broden import CATEGORIES, collate
from hcgnet.errors import HCGNetError


class DissectError(HCGNetError):
    """A layer that cannot be dissected (unknown, not a spatial map, 1 x 1)."""


class TopQuantile:
    """Per-unit upper quantile of a stream of activations in bounded memory: a fixed-size histogram per unit.

    Each unit has ``bins`` equal-width bins starting at ``lo`` (the minimum of the first batch it sees);
    values below ``lo`` only count (they lie far below an upper quantile). When a value reaches the top, the
    range doubles: neighbouring bins merge, so every count stays exact and only the bin width grows.
    Memory: ``units x bins`` counts, whatever the number of images.

    Error bound (deterministic): the estimate lies in the same bin as the exact order statistic
    ``x_(k)``, k = floor((1 - q) (N - 1)) of the N values seen (numpy's ``quantile(..., 1 - q, method="lower")``),
    so ``|estimate - x_(k)| <= bin_width`` per unit, and ``bin_width <= 2 (max - lo) / bins``.
    :meth:`error_bound` returns that width. (When the quantile falls below ``lo`` -- more than 1 - q of the
    values below the first batch's minimum -- the estimate is ``lo`` and :meth:`error_bound` is infinite.)
    """

    def __init__(self, units: int, bins: int = 4096, device: torch.device | str = "cpu") -> None:
        if bins < 2 or bins % 2:
            raise ValueError("bins must be an even number >= 2")
        self.units, self.bins = units, bins
        self.counts = torch.zeros(units, bins, dtype=torch.int64, device=device)
        self.below = torch.zeros(units, dtype=torch.int64, device=device)
        self.lo = torch.zeros(units, dtype=torch.float64, device=device)
        self.width = torch.zeros(units, dtype=torch.float64, device=device)
        self.n = 0
        self.max = torch.full((units,), -math.inf, dtype=torch.float64, device=device)

    def update(self, values: Tensor) -> None:
        """Add values shaped (units, n) (any n; each unit gets the same number)."""
        v = values.detach().to(torch.float64)
        if v.shape[1] == 0:
            return
        vmax = v.max(dim=1).values
        if self.n == 0:
            vmin = v.min(dim=1).values
            self.lo = vmin
            span = (vmax - vmin).clamp_min(0)
            # first range: the batch's span with 1% headroom; a constant unit gets a tiny positive width
            self.width = torch.where(span > 0, span * 1.01 / self.bins,
                                     vmin.abs().clamp_min(1.0) * 1e-6 / self.bins)
        self.max = torch.maximum(self.max, vmax)
        # double the range of units whose maximum reached the top, merging bin pairs (counts stay exact)
        while True:
            grow = vmax >= self.lo + self.width * self.bins
            if not bool(grow.any()):
                break
            merged = self.counts[grow].view(-1, self.bins // 2, 2).sum(-1)
            self.counts[grow] = torch.cat([merged, torch.zeros_like(merged)], dim=1)
            self.width = torch.where(grow, self.width * 2, self.width)
        step = max(1, (1 << 23) // self.units)            # bounded temporaries: ~8M values at a time
        offset = torch.arange(self.units, device=v.device)[:, None] * self.bins
        for start in range(0, v.shape[1], step):
            idx = torch.floor((v[:, start:start + step] - self.lo[:, None]) / self.width[:, None])
            below = idx < 0
            self.below += below.sum(dim=1)
            flat = (idx.clamp(0, self.bins - 1).long() + offset)[~below]
            self.counts.view(-1).index_add_(0, flat, torch.ones_like(flat))
        self.n += v.shape[1]

    def quantile(self, q: float) -> Tensor:
        """The per-unit value with a fraction ``q`` of the values above it (float64, (units,))."""
        if self.n == 0:
            raise ValueError("no values seen")
        k = math.floor((1.0 - q) * (self.n - 1))          # 0-based rank of the order statistic
        cum = torch.cumsum(self.counts, dim=1) + self.below[:, None]
        b = torch.searchsorted(cum, torch.full((self.units, 1), k, dtype=cum.dtype, device=cum.device),
                               right=True).squeeze(1).clamp(max=self.bins - 1)
        before = cum.gather(1, b[:, None]).squeeze(1) - self.counts.gather(1, b[:, None]).squeeze(1)
        inside = self.counts.gather(1, b[:, None]).squeeze(1).clamp_min(1)
        frac = ((k - before).to(torch.float64) + 0.5) / inside.to(torch.float64)
        est = self.lo + self.width * (b.to(torch.float64) + frac.clamp(0, 1))
        return torch.where(self.below > k, self.lo, est)

    def error_bound(self, q: float) -> Tensor:
        """Per-unit bound on |quantile(q) - exact order statistic|: the bin width (inf if below ``lo``)."""
        k = math.floor((1.0 - q) * (self.n - 1))
        return torch.where(self.below > k, torch.full_like(self.width, math.inf), self.width)


@dataclass
class LayerResult:
    """Dissection of one layer. ``units``: one dict per unit (unit, concept, category, iou, threshold,
    detector); ``iou``: (units, labels) numpy array over ``label_numbers``; ``top_images``: per unit the dataset
    indices of the images where it fires most (by maximum activation), best first."""

    layer: str
    shape: Tuple[int, int, int]                   # (units, h, w) of the map
    units: List[dict]
    label_numbers: List[int]
    iou: np.ndarray
    thresholds: np.ndarray
    threshold_error: np.ndarray
    top_images: np.ndarray
    categories: List[str] = field(default_factory=list)

    @property
    def detectors(self) -> List[dict]:
        return [u for u in self.units if u["detector"]]

    def unique_detectors(self) -> Dict[str, int]:
        """Distinct concepts detected, per category (every dataset category, 0 if none)."""
        out = {c: set() for c in self.categories}
        for u in self.detectors:
            out.setdefault(u["category"], set()).add(u["concept"])
        return {c: len(s) for c, s in out.items()}

    def summary(self) -> dict:
        return dict(layer=self.layer, units=self.shape[0], height=self.shape[1], width=self.shape[2],
                    detectors=len(self.detectors), unique_detectors=sum(self.unique_detectors().values()),
                    **{f"unique_{c}": n for c, n in self.unique_detectors().items()})


def default_layers(model: nn.Module) -> List[str]:
    """HCGNet: every hybrid block's output (``stages.N.block``), the last one after the final BN-ReLU
    (``act``). Other models: timm's ``feature_info`` modules when they have them."""
    names = dict(model.named_modules())
    stages = getattr(model, "stages", None)
    if stages is not None and all(f"stages.{i}.block" in names for i in range(len(stages))) and "act" in names:
        return [f"stages.{i}.block" for i in range(len(stages) - 1)] + ["act"]
    info = getattr(model, "feature_info", None)
    mods = []
    if info is not None:
        try:
            mods = [f["module"] for f in (info.get_dicts() if hasattr(info, "get_dicts") else info)]
        except (TypeError, KeyError):
            mods = []
    mods = [m for m in mods if m in names]
    if not mods:
        raise DissectError(f"no default layers for {type(model).__name__}; pass --layer NAME (a module name)")
    return mods


def _resolve(model: nn.Module, layers: Optional[Sequence[str]]) -> List[str]:
    names = dict(model.named_modules())
    layers = list(layers) if layers else default_layers(model)
    for name in layers:
        if name not in names or name == "":
            close = difflib.get_close_matches(name, [n for n in names if n], n=3, cutoff=0.6)
            try:
                usual = default_layers(model)
            except DissectError:
                usual = []
            hint = "; ".join(filter(None, (f"close names: {', '.join(close)}" if close else "",
                                           f"the default layers are {', '.join(usual)}" if usual else "")))
            raise DissectError(f"no module named {name!r} in the model; {hint or 'pass a name of model.named_modules()'}"
                               " (any module whose output is a (B, C, H, W) map works)")
    return layers


class _Capture:
    """Forward hooks that keep the outputs of some modules (detached copies)."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        self.out: Dict[str, Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in layers]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.out[name] = output.detach().float().clone() if isinstance(output, Tensor) else output
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _check_shape(name: str, t, size_hint: str = "") -> None:
    if not isinstance(t, Tensor) or t.ndim != 4:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise DissectError(f"layer {name!r} gives {shape}, not a spatial map (B, C, H, W); dissection needs "
                           "one -- pick a convolutional layer with --layer")
    if t.shape[2] * t.shape[3] == 1:
        raise DissectError(f"layer {name!r} gives a 1 x 1 map ({tuple(t.shape)}): a pooled vector has no "
                           f"location to compare with masks; pick an earlier layer with --layer{size_hint}")


def _batches(dataset: Dataset, batch_size: int, workers: int):
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)


def upsample(maps: Tensor, size: Tuple[int, int]) -> Tensor:
    """Maps (B, units, h, w) resized to the segmentation's ``size`` as Lite's ``imresize(mode='F')`` does
    (PIL's bilinear: half-pixel centres, and a widened, antialiasing filter when a map is larger)."""
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


class Tally:
    """NetDissect-Lite's tally (``feature_operation.py``) of one layer, given its units' thresholds T_k.

    Per image (segmentation ``sh x sw``): a unit fires where its map, upsampled with :func:`upsample`, is
    strictly above T_k. A label's region is every pixel where any mask of a selected category holds it, or the
    whole image for a whole-image label. Summed over images: ``inter[k, l]`` = fired pixels in l's region,
    ``label_area[l]`` = l's region, and ``unit_area[k, c]`` = the unit's fired pixels on images where they
    cover a pixel of a label whose primary category is c, or where the image has a whole-image label of
    primary category c (Lite's rule). IoU of unit k and label l = inter / (unit_area[k, primary(l)] +
    label_area[l] - inter), which lies in [0, 1]. Labels without a primary category are no concepts.
    ``fired[k]``: all the unit's fired pixels (0: it never rose above T_k on these images).
    """

    def __init__(self, thresholds: Tensor, label_category: Dict[int, str], categories: Sequence[str],
                 n_labels: Optional[int] = None) -> None:
        self.thresholds = thresholds.float()
        device = self.thresholds.device
        self.categories = list(categories)
        ci = {c: i for i, c in enumerate(self.categories)}
        self.concepts = sorted(l for l, c in label_category.items() if c in ci and l > 0)
        self.n_labels = n_labels or (max(self.concepts, default=0) + 1)
        self.primary = torch.full((self.n_labels,), -1, dtype=torch.long, device=device)
        for l in self.concepts:
            if l < self.n_labels:
                self.primary[l] = ci[label_category[l]]
        units = len(self.thresholds)
        self.inter = torch.zeros(units, self.n_labels, dtype=torch.float64, device=device)
        self.unit_area = torch.zeros(units, len(self.categories), dtype=torch.float64, device=device)
        self.label_area = torch.zeros(self.n_labels, dtype=torch.float64, device=device)
        self.fired = torch.zeros(units, dtype=torch.float64, device=device)

    def _regions(self, seg: dict) -> Tuple[Tensor, Tensor]:
        """The image's labels (L,) and their regions as a (sh * sw, L) float 0/1 matrix: a pixel is in a
        label's region once, however many masks hold the label there (a label listed in two categories)."""
        sh, sw = seg["size"]
        device = self.thresholds.device
        chans = [torch.as_tensor(m).to(device).reshape(-1) for ms in seg["masks"].values() for m in ms]
        chans += [torch.full((sh * sw,), int(l), dtype=torch.long, device=device)
                  for ls in seg["labels"].values() for l in ls]
        if not chans:
            return torch.empty(0, dtype=torch.long, device=device), torch.empty(sh * sw, 0, device=device)
        c = torch.stack(chans).long()
        labels = torch.unique(c[(c > 0) & (c < self.n_labels)])
        return labels, (c[:, :, None] == labels).any(0).float()

    def add(self, maps: Tensor, segs: Sequence[dict]) -> None:
        """Tally a batch: ``maps`` (B, units, h, w); ``segs`` one dict per image with ``size`` (sh, sw),
        ``masks`` {category: [(sh, sw) label arrays]} and ``labels`` {category: [whole-image label numbers]}."""
        thr = self.thresholds[:, None, None]
        for j, seg in enumerate(segs):
            labels, regions = self._regions(seg)
            if not len(labels):
                continue
            fire = (upsample(maps[j:j + 1].float(), seg["size"])[0] > thr).reshape(len(thr), -1).float()
            self.fired += fire.sum(1).double()
            hits = fire @ regions              # (units, L) fired pixels per label; whole numbers, exact in float32
            self.inter[:, labels] += hits.double()
            self.label_area[labels] += regions.sum(0).double()
            primary = self.primary[labels]
            of_category = (primary[:, None] == torch.arange(len(self.categories), device=primary.device)).float()
            touched = (hits @ of_category) > 0                                  # (units, categories)
            self.unit_area += fire.sum(1, keepdim=True).double() * touched

    def iou(self) -> Tuple[List[int], List[str], np.ndarray]:
        """(concept label numbers, their primary categories, IoU (units, concepts) as float64)."""
        cols = torch.tensor([l for l in self.concepts if l < self.n_labels], dtype=torch.long,
                            device=self.inter.device)
        inter = self.inter[:, cols]
        union = self.unit_area[:, self.primary[cols]] + self.label_area[cols][None, :] - inter
        iou = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))
        return cols.tolist(), [self.categories[int(i)] for i in self.primary[cols]], iou.cpu().numpy()


@dataclass
class _Passes:
    """The forward passes both rounds of dissection make over the dataset, and the maps they capture."""
    model: nn.Module
    capture: _Capture
    dataset: Dataset
    batch_size: int
    workers: int
    device: torch.device
    dtype: Optional[torch.dtype]
    wrap: Callable

    def batches(self, desc: str):
        """Each batch's image count and segmentations, with ``capture.out`` holding its maps."""
        from hcgnet.evaluation import autocast

        with torch.no_grad():
            for images, segs in self.wrap(_batches(self.dataset, self.batch_size, self.workers), desc=desc):
                with autocast(self.device, self.dtype):
                    self.model(images.to(self.device))
                yield images.shape[0], segs


@dataclass
class _Peaks:
    """Pass 1's findings for one layer: its units' quantile estimator and the images where each fires most."""
    shape: Tuple[int, int, int]
    quantiles: TopQuantile
    top_val: Tensor
    top_idx: Tensor

    def add(self, maps: Tensor, idx: Tensor, top_k: int) -> None:
        units = maps.shape[1]
        self.quantiles.update(maps.transpose(0, 1).reshape(units, -1))
        peak = maps.flatten(2).amax(2).transpose(0, 1)              # (units, batch)
        vals = torch.cat([self.top_val, peak], 1)
        ids = torch.cat([self.top_idx, idx.expand(units, -1)], 1)
        self.top_val, order = vals.topk(min(top_k, vals.shape[1]), dim=1)
        self.top_idx = ids.gather(1, order)


def _threshold_pass(passes: _Passes, layers: List[str], narrow: bool, bins: int, top_k: int,
                    size_hint: str) -> Tuple[List[str], Dict[str, _Peaks]]:
    """Pass 1 over the data: every unit's activations into its :class:`TopQuantile`, and its top images. With
    ``narrow`` (default layers) only the layers whose maps are still spatial at this image size are kept (a model
    trained at 32 px pools its last maps to 1 x 1); returns the layers kept and their findings."""
    peaks: Dict[str, _Peaks] = {}
    seen = 0
    for count, segs in passes.batches("dissect 1/2 thresholds"):
        out = passes.capture.out
        if not peaks and narrow:
            spatial = [n for n in layers if out[n].ndim == 4 and out[n].shape[2:].numel() > 1]
            if not spatial:
                _check_shape(layers[-1], out[layers[-1]], size_hint)
            layers = spatial
        idx = torch.tensor([s["index"] for s in segs], device=passes.device)
        for name in layers:
            maps = out[name]
            if name not in peaks:
                _check_shape(name, maps, size_hint)
                units = maps.shape[1]
                peaks[name] = _Peaks(tuple(maps.shape[1:]), TopQuantile(units, bins, passes.device),
                                     torch.empty(units, 0, device=passes.device),
                                     torch.empty(units, 0, dtype=torch.long, device=passes.device))
            peaks[name].add(maps, idx, top_k)
        seen += count
    if seen == 0:
        raise DissectError("the Broden dataset has no images")
    return layers, peaks


def _tally_pass(passes: _Passes, layers: Sequence[str], thresholds: Dict[str, Tensor]) -> Dict[str, Tally]:
    """Pass 2 over the data: NetDissect-Lite's tally of intersections and areas, per layer."""
    dataset = passes.dataset
    categories = list(getattr(dataset, "categories", CATEGORIES))
    label_category = dict(getattr(dataset, "label_category", {}) or {})
    n_labels = max([*label_category, *(getattr(dataset, "labels", {}) or {})], default=0) + 1
    tallies = {n: Tally(thresholds[n], label_category, categories, n_labels) for n in layers}
    for _, segs in passes.batches("dissect 2/2 IoU"):
        for name in layers:
            tallies[name].add(passes.capture.out[name], segs)
    return tallies


#: The concept and category of a unit that overlaps no concept where it fires (or never fires: ``fired_pixels``
#: 0), as Broden writes "no label".
NO_CONCEPT = "-"


def _layer_result(name: str, peaks: _Peaks, threshold: Tensor, tally: Tally, quantile: float,
                  iou_threshold: float, names: Dict[int, str]) -> LayerResult:
    """Each unit's best concept (IoU), and whether it is a detector of it."""
    label_numbers, cats_of, iou = tally.iou()
    units = []
    for u in range(iou.shape[0]):
        best = int(iou[u].argmax()) if iou.shape[1] and iou[u].max() > 0 else -1
        score = float(iou[u, best]) if best >= 0 else 0.0
        units.append(dict(
            unit=u, concept=names.get(label_numbers[best], str(label_numbers[best])) if best >= 0 else NO_CONCEPT,
            category=cats_of[best] if best >= 0 else NO_CONCEPT, iou=score,
            threshold=float(threshold[u]), detector=score >= iou_threshold, fired_pixels=int(tally.fired[u])))
    return LayerResult(
        layer=name, shape=peaks.shape, units=units, label_numbers=label_numbers, iou=iou,
        thresholds=threshold.cpu().numpy(), threshold_error=peaks.quantiles.error_bound(quantile).cpu().numpy(),
        top_images=peaks.top_idx.cpu().numpy(), categories=list(tally.categories))


def dissect(
    model: nn.Module,
    dataset: Dataset,
    layers: Optional[Sequence[str]] = None,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    batch_size: int = 32,
    workers: int = 0,
    device: Optional[torch.device | str] = None,
    bins: int = 4096,
    top_k_images: int = 4,
    progress: Optional[Callable] = None,
    amp: str = "none",
) -> List[LayerResult]:
    """Network dissection of ``layers`` (module names; default :func:`default_layers`, keeping those whose maps
    are more than 1 x 1 at the dataset's image size) of ``model`` on a :class:`~hcgnet.analysis.broden.Broden`
    ``dataset`` (its size/mean/std are the model's preprocessing; its ``limit`` the number of images). Two
    passes over the data: thresholds (:class:`TopQuantile`, ``bins`` per unit), then :class:`Tally`.
    ``progress`` wraps an iterable (e.g. ``functools.partial(tqdm, ...)``); it gets ``desc``. ``amp``: "bf16"
    (or "fp16" on a GPU) runs the forward passes under autocast (maps are kept in float32).
    Returns one :class:`LayerResult` per layer, in order."""
    from hcgnet.analysis.options import amp_dtype, check_workers

    if not 0 < quantile < 1:
        raise DissectError(f"quantile must be in (0, 1), got {quantile}")
    if not 0 < iou_threshold <= 1:
        raise DissectError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if batch_size < 1:
        raise DissectError(f"--batch-size must be 1 or more, got {batch_size}")
    check_workers(workers)
    device = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    dtype = amp_dtype(amp, device)                  # fp16 on a CPU: refused, as hcgnet eval does
    model = model.to(device).eval()
    resolved = _resolve(model, layers)
    size = getattr(dataset, "size", None)
    size_hint = f" or a larger --size than {size[0]}" if size else ""
    capture = _Capture(model, resolved)
    passes = _Passes(model, capture, dataset, batch_size, workers, device, dtype, progress or (lambda it, **kw: it))
    try:
        kept, peaks = _threshold_pass(passes, resolved, not layers, bins, top_k_images, size_hint)
        thresholds = {n: peaks[n].quantiles.quantile(quantile).float() for n in kept}
        tallies = _tally_pass(passes, kept, thresholds)
    finally:
        capture.close()
    names = getattr(dataset, "labels", {}) or {}
    return [_layer_result(n, peaks[n], thresholds[n], tallies[n], quantile, iou_threshold, names) for n in kept]


#: Values above a unit's threshold below which :func:`thin_threshold_note` speaks up. A judgement, not a rule of
#: NetDissect's: full Broden (63,305 images) leaves thousands at its smallest maps.
FEW_ABOVE_THRESHOLD = 100


def thin_threshold_note(results: Sequence[LayerResult], images: int, quantile: float,
                        least: int = FEW_ABOVE_THRESHOLD) -> Optional[str]:
    """What to tell a user whose dataset is too small for the threshold: each unit's T_k is the top ``quantile``
    of its ``images x h x w`` activations, so at the smallest map only ``quantile x images x h x w`` values lie
    above it; under ``least`` the labels say little (None otherwise)."""
    if not results:
        return None
    smallest = min(results, key=lambda r: r.shape[1] * r.shape[2])
    above = quantile * images * smallest.shape[1] * smallest.shape[2]
    if above >= least:
        return None
    return (f"note: {images:,} images leave {above:.3g} activations per unit above the top-{100 * quantile:g}% "
            f"threshold at {smallest.layer} ({smallest.shape[1]}x{smallest.shape[2]}); under {least} the units' "
            f"labels say little: dissect more images (Broden has 63,305) or a larger --size")


def unit_maps(model: nn.Module, dataset: Dataset, layer: str, indices: Sequence[int],
              device: Optional[torch.device | str] = None, batch_size: int = 32) -> Tensor:
    """The layer's maps (len(indices), units, h, w) on some dataset images (for pictures)."""
    device = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    capture = _Capture(model, [layer])
    maps = []
    try:
        with torch.no_grad():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                model(torch.stack([dataset[i][0] for i in chunk]).to(device))
                maps.append(capture.out[layer].cpu())
        return torch.cat(maps)
    finally:
        capture.close()


# outputs: CSV per layer, summary CSV/JSON (the pictures: dissect_plots) ----------------------------------

METHOD = ("NetDissect-Lite tally: a unit fires where its map, upsampled bilinearly (antialiased when larger) to the "
          "segmentation, is above its threshold; its area counts toward a category on images where the fired "
          "pixels cover a label whose primary category (largest c_<cat>.csv coverage) it is")


def _file_name(layer: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in layer) or "layer"


def strip_name(layer: str) -> str:
    """The file name of a layer's image strips (:func:`hcgnet.analysis.dissect_plots.plot_unit_strips`)."""
    return f"units_{_file_name(layer)}.png"


def output_names(layers: Sequence[str], strips: bool = True) -> List[str]:
    """Every file a dissection of ``layers`` writes in its output folder (to refuse replacing an earlier one)."""
    return ([f"{_file_name(l)}.csv" for l in layers] + ["summary.csv", "summary.json", "unique_detectors.png"]
            + ([strip_name(l) for l in layers] if strips else []))


#: The columns of a layer's table, ``<layer>.csv``: how an earlier dissection's table is told from another CSV
#: file (by its first six, those of tables written before ``fired_pixels``).
LAYER_FIELDS = ["unit", "concept", "category", "iou", "threshold", "detector", "fired_pixels"]


def _is_layer_table(path) -> bool:
    try:
        with open(path, newline="") as f:
            header = f.readline().strip().split(",")
    except (OSError, UnicodeDecodeError):
        return False
    return header[:6] == LAYER_FIELDS[:6]


def earlier_files(out) -> List[str]:
    """The layer tables and unit strips of earlier dissections in folder ``out``, only where it holds a
    dissection's ``summary.json`` (from the command line: only under ``--force``, which that file needs): every
    CSV file with a layer table's header, and ``units_<layer>.png`` of those layers and of the layers the
    summary names. Nothing of another naming or content."""
    import json
    from pathlib import Path

    out = Path(out)
    try:
        doc = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(doc, dict) or not str(doc.get("method", "")).startswith("NetDissect-Lite"):
        return []
    named = {_file_name(l) for l in (doc.get("config") or {}).get("layers") or [] if isinstance(l, str)}
    tables = {p.stem for p in out.glob("*.csv") if p.name != "summary.csv" and _is_layer_table(p)}
    names = [f"{s}.csv" for s in sorted(tables)] + [f"units_{s}.png" for s in sorted(named | tables)]
    return [n for n in names if (out / n).is_file()]


def summary_rows(results: Sequence[LayerResult]) -> List[dict]:
    """One row per layer: units, map size, detectors, unique detectors in all and per category."""
    return [r.summary() for r in results]


def write_results(results: Sequence[LayerResult], out, config: Optional[dict] = None,
                  provenance: Optional[dict] = None, remove_earlier: bool = True,
                  log: Optional[Callable[[str], None]] = None) -> List[str]:
    """``<layer>.csv`` per layer (:data:`LAYER_FIELDS`), ``summary.csv`` and ``summary.json`` (:data:`METHOD`,
    the summary rows, ``config``, every detector and ``provenance``, e.g. :func:`hcgnet.provenance.provenance`)
    in folder ``out``. Returns file names.

    ``remove_earlier``: where the summary.json written over is an earlier dissection's, its layer tables and
    unit strips (:func:`earlier_files`) are removed first, lest the folder mix two models; those this
    dissection does not write again are named through ``log`` (default: a note on stderr). The strips of this
    dissection's layers go too: its own are drawn afterwards (``--top-units``), or none are."""
    import csv
    from pathlib import Path

    from hcgnet.files import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if remove_earlier:
        stale = earlier_files(out)
        rewritten = set(output_names([r.layer for r in results]))
        for name in stale:
            (out / name).unlink()
        gone = [n for n in stale if n not in rewritten]
        if gone:
            (log or _on_stderr)(f"note: removed {', '.join(gone)} of the earlier dissection in {out} (layers this one "
                                "does not dissect), so that the folder holds one dissection")
    written = []
    for r in results:
        name = f"{_file_name(r.layer)}.csv"
        with open(out / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LAYER_FIELDS)
            w.writeheader()
            for u in r.units:
                w.writerow({**u, "iou": f"{u['iou']:.6f}", "threshold": f"{u['threshold']:.6g}",
                            "detector": int(u["detector"])})
        written.append(name)
    rows = summary_rows(results)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval=0)
        w.writeheader()
        w.writerows(rows)
    bounds = {r.layer: float(np.max(r.threshold_error)) if len(r.threshold_error) else 0.0 for r in results}
    doc = dict(method=METHOD, config=config or {}, layers=rows, threshold_error_max=bounds,
               detectors={r.layer: [{k: u[k] for k in ("unit", "concept", "category", "iou")}
                                    for u in sorted(r.detectors, key=lambda u: -u["iou"])] for r in results},
               **({"provenance": provenance} if provenance is not None else {}))
    write_json(out / "summary.json", doc)
    return written + ["summary.csv", "summary.json"]


def _on_stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)
