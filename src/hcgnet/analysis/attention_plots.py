"""The pictures of the attention study: the gates' maps over the images (:func:`attention_grid`) and their channel
weights (:func:`weights_plot`). Only drawing here (matplotlib, imported when a picture is made); what is drawn is
computed in :mod:`hcgnet.analysis.attention`."""
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from hcgnet.analysis.attention import MAP_KINDS, MAP_TITLES, upsample_map
from hcgnet.files import distinct_names

#: Size of one picture of the grid (inches): its title line included.
CELL_WIDTH, CELL_HEIGHT = 2.0, 2.3
DPI = 100


def _display(images: Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> np.ndarray:
    """(B, H, W, C) in [0, 1] for imshow: un-normalised with ``mean``/``std``, else stretched per image."""
    x = images.detach().float().cpu()
    if mean is not None and std is not None:
        c = x.shape[1]
        x = x * torch.tensor(std, dtype=x.dtype).view(1, c, 1, 1) + torch.tensor(mean, dtype=x.dtype).view(1, c, 1, 1)
    else:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-12)
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _short(module: str) -> str:
    return module.replace("stages.", "s").replace(".block.layers.", ".L").replace(".transition", ".T")


def grid_shape(images: Tensor, maps: Dict[str, Dict[str, Tensor]]) -> tuple:
    """(rows, columns) of :func:`attention_grid`: one row per image; the image, then one column per map."""
    return images.shape[0], 1 + sum(len(kinds) for kinds in maps.values())


def attention_grid(
    images: Tensor, maps: Dict[str, Dict[str, Tensor]], path: Union[str, Path],
    mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
    names: Optional[Sequence[str]] = None,
) -> Path:
    """A PNG grid of the attention maps over the images: one row per image, the image itself in the first
    column, then one column per map (``maps`` as :func:`gate_maps` returns it), each map upsampled to the
    image's size with each cell over the pixel it is centred on (:func:`~hcgnet.analysis.attention.upsample_map`) and overlaid on the image in gray (colours from 0 to the map's peak;
    the corner says how many times the uniform 1 / (h w) the peak is). Titles name the module (``s1.L7`` =
    ``stages.1.block.layers.7``, ``s1.T`` = ``stages.1.transition``) and the map. ``mean``/``std`` undo the
    normalisation for display (without them each image is stretched to [0, 1]); ``names`` label the rows.
    Every picture is :data:`CELL_WIDTH` x :data:`CELL_HEIGHT` inches at :data:`DPI`, so the PNG's size is
    proportional to the grid's. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = _display(images, mean, std)
    b, h, w = shown.shape[:3]
    rows, cols = grid_shape(images, maps)
    columns = [(module, kind) for module, kinds in maps.items() for kind in MAP_KINDS if kind in kinds]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * CELL_WIDTH, rows * CELL_HEIGHT), dpi=DPI, squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.3 / (rows * CELL_HEIGHT) - 0.02,
                        wspace=0.05, hspace=0.25)
    gray = shown.shape[-1] == 1
    labels = distinct_names(names) if names else [f"image {i}" for i in range(b)]
    for i in range(b):
        picture = shown[i, :, :, 0] if gray else shown[i]
        ax = axes[i, 0]
        ax.imshow(picture, cmap="gray" if gray else None, vmin=0, vmax=1)
        ax.set_title(labels[i][-24:], fontsize=8)
        luminance = picture if gray else picture @ np.array([0.299, 0.587, 0.114])
        for j, (module, kind) in enumerate(columns, 1):
            up = upsample_map(maps[module][kind][i], (h, w)).numpy()
            ax = axes[i, j]
            ax.imshow(luminance, cmap="gray", vmin=0, vmax=1)  # in gray, so the colours are the map's
            ax.imshow(up, cmap="jet", alpha=0.5, vmin=0, vmax=max(float(up.max()), 1e-12))
            ax.set_title(f"{_short(module)} {MAP_TITLES[kind]}", fontsize=7)
            ratio = float(maps[module][kind][i].max()) * maps[module][kind][i].numel()
            ax.text(0.02, 0.02, f"peak {ratio:.1f}x uniform", transform=ax.transAxes, fontsize=6,
                    bbox=dict(facecolor="white", alpha=0.7, pad=1, lw=0))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)
    return Path(path)


def weights_plot(weights: Dict[str, Dict[str, Tensor]], path: Union[str, Path]) -> Path:
    """A PNG of the gates' channel weights (``weights`` as :func:`gate_maps` returns it), one row per module:
    left, the update gate's proportions per channel, 3x3 (``u_a``) stacked under dilated (``u_b``, the rest
    to 1); right, the forget gate's ``f`` per channel. Bars are the mean over the images, the black ticks
    their range when there are several. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(weights)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 2.6 * rows), dpi=DPI, squeeze=False)
    for r, (module, w) in enumerate(weights.items()):
        u = w["update"].float()          # (B, 2, C)
        f = w["forget"].float()          # (B, C)
        channels = np.arange(u.shape[-1])
        ua = u[:, 0].mean(0).numpy()
        ax = axes[r, 0]
        ax.bar(channels, ua, width=0.9, color="tab:blue", label="3x3 (u_a)")
        ax.bar(channels, 1 - ua, width=0.9, bottom=ua, color="tab:orange", label="dilated (u_b)")
        ax.axhline(0.5, color="k", lw=0.6, ls="--")
        if u.shape[0] > 1:
            ax.vlines(channels, u[:, 0].amin(0).numpy(), u[:, 0].amax(0).numpy(), color="k", lw=0.8)
        ax.set_ylim(0, 1)
        ax.set_xlim(-0.5, len(channels) - 0.5)
        ax.set_ylabel(_short(module), fontsize=9)
        ax.set_title(f"{module}: update gate, share of each branch per channel", fontsize=9)
        if r == 0:
            ax.legend(fontsize=7, loc="upper right")
        ax = axes[r, 1]
        fc = np.arange(f.shape[-1])
        ax.bar(fc, f.mean(0).numpy(), width=0.9, color="tab:green")
        if f.shape[0] > 1:
            ax.vlines(fc, f.amin(0).numpy(), f.amax(0).numpy(), color="k", lw=0.8)
        ax.set_ylim(0, 1)
        ax.set_xlim(-0.5, len(fc) - 0.5)
        ax.set_title(f"{module}: forget gate f per channel", fontsize=9)
    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[-1]:
        ax.set_xlabel("channel", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return Path(path)


def _save(fig, path: Union[str, Path]) -> None:
    import matplotlib.pyplot as plt

    from hcgnet.files import atomic_path, reported_write

    try:
        with reported_write(path), atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
