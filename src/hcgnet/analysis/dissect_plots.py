"""Pictures of a dissection (matplotlib): the unique detectors per category and layer (the NetDissect paper's
Figure 4 style), and image strips of where the top units fire. Kept apart from :mod:`hcgnet.analysis.dissect`
so that the computation runs without matplotlib."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from hcgnet.analysis.broden import CATEGORIES
from hcgnet.analysis.dissect import NO_CONCEPT, LayerResult, unit_maps, upsample


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
            up = upsample(m[None, None], rgb.shape[:2])[0, 0]
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
                label = f"{u['concept']} ({u['category']})" if u["concept"] not in ("", NO_CONCEPT) else NO_CONCEPT
                ax.set_ylabel(f"unit {u['unit']}\n{label}\nIoU {u['iou']:.3f}", fontsize=7)
    fig.suptitle(f"{result.layer}: where the top units fire (top-activating images, map > T_k)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [u["unit"] for u in order]
