"""Network dissection (Bau et al., CVPR 2017; their NetDissect-Lite code) of any model's spatial maps.

For each unit (channel) of a layer: its threshold T_k is the top ``quantile`` (0.5%) of its activations over
the dataset (pass 1, a bounded-memory histogram, :class:`TopQuantile`); each activation map is upsampled
bilinearly to the segmentation's resolution and thresholded at T_k; intersection and union with every
concept's masks are summed over the whole dataset (pass 2; scene and texture labels cover the whole image),
and IoU = sum |M_k & L_c| / sum |M_k | L_c|, where the unit's area counts only on images annotated in the
concept's category (as NetDissect does). A unit whose best concept has IoU >= ``iou_threshold`` (0.04) is a
detector of that concept; a layer's unique detectors of a category are the distinct concepts detected.
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


def _check_shape(name: str, t) -> None:
    if not isinstance(t, Tensor) or t.ndim != 4:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise DissectError(f"layer {name!r} gives {shape}, not a spatial map (B, C, H, W); dissection needs "
                           "one -- pick a convolutional layer with --layer")
    if t.shape[2] * t.shape[3] == 1:
        raise DissectError(f"layer {name!r} gives a 1 x 1 map ({tuple(t.shape)}): a pooled vector has no "
                           "location to compare with masks; pick an earlier layer with --layer")


def _batches(dataset: Dataset, batch_size: int, workers: int):
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)


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
    """Network dissection of ``layers`` (module names; default :func:`default_layers`) of ``model`` on a
    :class:`~hcgnet.analysis.broden.Broden` ``dataset`` (its size/mean/std are the model's preprocessing; its
    ``limit`` the number of images). Two passes over the data: thresholds (:class:`TopQuantile`, ``bins``
    per unit), then IoU. ``progress`` wraps an iterable (e.g. ``functools.partial(tqdm, ...)``); it gets
    ``desc``. ``amp``: "bf16" (or "fp16" on a GPU) runs the forward passes under autocast (maps are kept in float32).
    Returns one :class:`LayerResult` per layer, in order."""
    from hcgnet.analysis.options import amp_dtype, check_workers
    from hcgnet.evaluation import autocast

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
    layers = _resolve(model, layers)
    wrap = progress or (lambda it, **kw: it)
    capture = _Capture(model, layers)
    try:
        # pass 1: thresholds and the images where each unit fires most
        est: Dict[str, TopQuantile] = {}
        top_val: Dict[str, Tensor] = {}
        top_idx: Dict[str, Tensor] = {}
        shapes: Dict[str, Tuple[int, int, int]] = {}
        seen = 0
        with torch.no_grad():
            for images, segs in wrap(_batches(dataset, batch_size, workers), desc="dissect 1/2 thresholds"):
                with autocast(device, dtype):
                    model(images.to(device))
                idx = torch.tensor([s["index"] for s in segs], device=device)
                for name in layers:
                    a = capture.out[name]
                    if name not in est:
                        _check_shape(name, a)
                        shapes[name] = tuple(a.shape[1:])
                        est[name] = TopQuantile(a.shape[1], bins, device)
                        top_val[name] = torch.empty(a.shape[1], 0, device=device)
                        top_idx[name] = torch.empty(a.shape[1], 0, dtype=torch.long, device=device)
                    est[name].update(a.transpose(0, 1).reshape(a.shape[1], -1))
                    peak = a.flatten(2).amax(2).transpose(0, 1)              # (units, batch)
                    vals = torch.cat([top_val[name], peak], 1)
                    ids = torch.cat([top_idx[name], idx.expand(a.shape[1], -1)], 1)
                    k = min(top_k_images, vals.shape[1])
                    top_val[name], order = vals.topk(k, dim=1)
                    top_idx[name] = ids.gather(1, order)
                seen += images.shape[0]
        if seen == 0:
            raise DissectError("the Broden dataset has no images")
        thresholds = {n: est[n].quantile(quantile).float() for n in layers}

        # pass 2: intersections and unions with every concept, summed over the dataset
        label_numbers = sorted(getattr(dataset, "labels", {}) or {})
        n_labels = (max(label_numbers) + 1) if label_numbers else 1
        categories = list(getattr(dataset, "categories", CATEGORIES))
        cat_index = {c: i for i, c in enumerate(categories)}
        label_cat = dict(getattr(dataset, "label_category", {}) or {})
        seen_cat: Dict[int, str] = {}
        need_seen = any(l not in label_cat for l in label_numbers)
        inter = {n: torch.zeros(shapes[n][0], n_labels, dtype=torch.float64, device=device) for n in layers}
        unit_area = {n: torch.zeros(shapes[n][0], len(categories), dtype=torch.float64, device=device) for n in layers}
        label_area = torch.zeros(n_labels, dtype=torch.float64, device=device)
        with torch.no_grad():
            for images, segs in wrap(_batches(dataset, batch_size, workers), desc="dissect 2/2 IoU"):
                with autocast(device, dtype):
                    model(images.to(device))
                for j, seg in enumerate(segs):
                    pixel = {c: [torch.where(t < n_labels, t, torch.zeros_like(t)) for t in
                                 (torch.from_numpy(m).to(device).reshape(-1) for m in ms)]
                             for c, ms in seg["masks"].items() if ms}
                    whole = {c: [l for l in ls if 0 < l < n_labels] for c, ls in seg["labels"].items() if ls}
                    sizes = [m.shape for ms in seg["masks"].values() for m in ms]
                    if not pixel and not whole:
                        continue
                    sh, sw = sizes[0] if sizes else dataset.records[seg["index"]].seg_size
                    npx = sh * sw
                    for c, ms in pixel.items():
                        for m in ms:
                            label_area.index_add_(0, m, torch.ones(npx, dtype=torch.float64, device=device))
                            if need_seen:  # label.csv gives no category for some labels
                                for l in torch.unique(m).tolist():
                                    if l:
                                        seen_cat.setdefault(l, c)
                    for c, ls in whole.items():
                        for l in ls:
                            label_area[l] += npx
                            seen_cat.setdefault(l, c)
                    for name in layers:
                        a = capture.out[name][j:j + 1]
                        up = F.interpolate(a, size=(sh, sw), mode="bilinear", align_corners=False)[0]
                        fire = (up > thresholds[name][:, None, None]).reshape(up.shape[0], -1).to(torch.float64)
                        area = fire.sum(1)                                        # (units,)
                        for c in set(pixel) | set(whole):
                            if c in cat_index:
                                unit_area[name][:, cat_index[c]] += area
                        for c, ms in pixel.items():
                            for m in ms:
                                inter[name].index_add_(1, m, fire)
                        for c, ls in whole.items():
                            for l in ls:
                                inter[name][:, l] += area
    finally:
        capture.close()

    # IoU per unit and concept; the label's category decides which unit area counts
    label_numbers = [l for l in label_numbers if l < n_labels] or [l for l in range(1, n_labels)]
    cats_of = [label_cat.get(l) or seen_cat.get(l) for l in label_numbers]
    cols = torch.tensor(label_numbers, dtype=torch.long, device=device)
    results = []
    for name in layers:
        i_ = inter[name][:, cols]
        cat_cols = torch.tensor([cat_index.get(c, -1) for c in cats_of], device=device)
        ua = torch.where(cat_cols[None, :] >= 0, unit_area[name][:, cat_cols.clamp_min(0)], torch.zeros_like(i_))
        union = ua + label_area[cols][None, :] - i_
        iou = torch.where(union > 0, i_ / union.clamp_min(1e-12), torch.zeros_like(i_)).cpu().numpy()
        iou[:, [k for k, c in enumerate(cats_of) if c is None]] = 0.0
        units = []
        for u in range(iou.shape[0]):
            best = int(iou[u].argmax()) if iou.shape[1] and iou[u].max() > 0 else -1
            score = float(iou[u, best]) if best >= 0 else 0.0
            units.append(dict(
                unit=u, concept=dataset.labels.get(label_numbers[best], str(label_numbers[best])) if best >= 0 else "",
                category=cats_of[best] if best >= 0 else "", iou=score,
                threshold=float(thresholds[name][u]), detector=score >= iou_threshold))
        results.append(LayerResult(
            layer=name, shape=shapes[name], units=units, label_numbers=label_numbers, iou=iou,
            thresholds=thresholds[name].cpu().numpy(), threshold_error=est[name].error_bound(quantile).cpu().numpy(),
            top_images=top_idx[name].cpu().numpy(), categories=[c for c in categories]))
    return results


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


# outputs: CSV per layer, summary CSV/JSON, Figure-4 bar chart, image strips of the top units -------------

def _file_name(layer: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in layer) or "layer"


def summary_rows(results: Sequence[LayerResult]) -> List[dict]:
    """One row per layer: units, map size, detectors, unique detectors in all and per category."""
    return [r.summary() for r in results]


def write_results(results: Sequence[LayerResult], out, config: Optional[dict] = None) -> List[str]:
    """``<layer>.csv`` per layer (unit, concept, category, iou, threshold, detector), ``summary.csv`` and
    ``summary.json`` (the summary rows, ``config`` and every detector) in folder ``out``. Returns file names."""
    import csv
    import json
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for r in results:
        name = f"{_file_name(r.layer)}.csv"
        with open(out / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["unit", "concept", "category", "iou", "threshold", "detector"])
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
    doc = dict(config=config or {}, layers=rows, threshold_error_max=bounds,
               detectors={r.layer: [{k: u[k] for k in ("unit", "concept", "category", "iou")}
                                    for u in sorted(r.detectors, key=lambda u: -u["iou"])] for r in results})
    (out / "summary.json").write_text(json.dumps(doc, indent=2) + "\n")
    return written + ["summary.csv", "summary.json"]


def plot_unique_detectors(results: Sequence[LayerResult], path, title: str = "") -> None:
    """Bar chart of unique detectors per category per layer (the NetDissect paper's Figure 4 style)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = [c for c in CATEGORIES if any(c in r.categories for r in results)]
    cats += [c for r in results for c in r.categories if c not in cats]
    counts = np.array([[r.unique_detectors().get(c, 0) for c in cats] for r in results], dtype=float)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(results) * max(1, len(cats)) / 3 + 2), 3.6))
    width = 0.8 / max(1, len(cats))
    x = np.arange(len(results))
    for j, c in enumerate(cats):
        ax.bar(x + (j - (len(cats) - 1) / 2) * width, counts[:, j], width, label=c)
    ax.set_xticks(x)
    ax.set_xticklabels([r.layer for r in results], rotation=20 if len(results) > 3 else 0, ha="right" if len(results) > 3 else "center")
    ax.set_ylabel("unique detectors")
    ax.set_title(title or "unique detectors per category")
    ax.yaxis.get_major_locator().set_params(integer=True)
    for j in range(len(cats)):
        for i, n in enumerate(counts[:, j]):
            if n:
                ax.text(x[i] + (j - (len(cats) - 1) / 2) * width, n, f"{int(n)}", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, max(1.0, counts.max(initial=0)) * 1.3)
    ax.legend(fontsize=8, ncol=min(len(cats), 6), loc="upper left", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_unit_strips(model: nn.Module, dataset, result: LayerResult, path, units: int = 8,
                     device: Optional[torch.device | str] = None) -> List[int]:
    """An image strip per top unit (detectors by IoU, else the units of highest IoU): its top-activating
    images with the map upsampled (bilinear) and thresholded at the unit's T_k outlined and tinted over them.
    Returns the units drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(result.units, key=lambda u: (not u["detector"], -u["iou"]))[:units]
    cols = result.top_images.shape[1]
    fig, axes = plt.subplots(len(order), cols, figsize=(1.8 * cols, 1.9 * len(order)), squeeze=False)
    needed = sorted({int(i) for u in order for i in result.top_images[u["unit"]]})
    all_maps = unit_maps(model, dataset, result.layer, needed, device)     # one forward pass for all units
    where = {i: k for k, i in enumerate(needed)}
    for row, u in enumerate(order):
        idx = [int(i) for i in result.top_images[u["unit"]]]
        maps = [all_maps[where[i], u["unit"]] for i in idx]
        for col, (i, m) in enumerate(zip(idx, maps)):
            rgb = np.asarray(dataset.load_rgb(i), dtype=np.float32) / 255.0
            up = F.interpolate(m[None, None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0, 0]
            fire = (up > float(u["threshold"])).numpy()
            shown = rgb * 0.35 + 0.65 * rgb * fire[..., None]
            shown[fire] = shown[fire] * 0.6 + np.array([1.0, 0.85, 0.0]) * 0.4
            ax = axes[row, col]
            ax.imshow(np.clip(shown, 0, 1))
            if fire.any() and not fire.all():
                ax.contour(fire.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                label = f"{u['concept']} ({u['category']})" if u["concept"] else "-"
                ax.set_ylabel(f"unit {u['unit']}\n{label}\nIoU {u['iou']:.3f}", fontsize=7)
    fig.suptitle(f"{result.layer}: where the top units fire (top-activating images, map > T_k)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [u["unit"] for u in order]
