"""Where the gates look: the spatial attention maps and channel weights of HCGNet's SMG modules.

Each gate pools its input with softmax attention over all positions (:class:`hcgnet.layers.AttentionPool`):
those softmax weights, a (H, W) probability map per image, are where the gate looks. An SMG module has three:
the update gate's over the 3x3 branch (``update_3x3``) and over the dilated branch (``update_dilated``), and
the forget gate's over the squeezed map (``forget``). Its channel weights are the update gate's branch
proportions ``u_a`` (3x3) and ``u_b`` (dilated), ``u_a + u_b = 1`` per channel, and the forget gate's decay
``f`` in (0, 1) per channel.

Everything is read through forward hooks on the identities the layers expose for it
(``AttentionPool.attention``, ``UpdateGate.branch_weights``, ``ForgetGate.channel_weights``): the model's own
forward pass runs unchanged, there is no second implementation of it.

    from hcgnet.analysis.attention import gate_maps, attention_grid, weights_plot
    result = gate_maps(model, images)                  # images: (B, C, H, W), normalised as for the model
    attention_grid(images, result["maps"], "attention.png", mean=config.mean, std=config.std)
    weights_plot(result["weights"], "weights.png")
"""
import difflib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcgnet.errors import HCGNetError
from hcgnet.evaluation import autocast
from hcgnet.layers.smg import SMGModule

#: The three spatial maps of an SMG module, in column order, and their titles.
MAP_KINDS = ("update_3x3", "update_dilated", "forget")
MAP_TITLES = {"update_3x3": "update gate, 3x3", "update_dilated": "update gate, dilated", "forget": "forget gate"}
#: Size of one picture of the grid (inches): its title line included.
CELL_WIDTH, CELL_HEIGHT = 2.0, 2.3
DPI = 100


def smg_modules(model: nn.Module) -> Dict[str, SMGModule]:
    """Every SMG module of ``model`` (hybrid blocks' and transitions'), by module name, in forward order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SMGModule)}


def default_modules(model: nn.Module) -> List[str]:
    """A few representative SMG modules: the last one of each hybrid block (one per resolution)."""
    found = smg_modules(model)
    last: Dict[str, str] = {}
    for name in found:
        parent = name.rsplit(".", 1)[0]
        if parent.endswith("block.layers"):
            last[parent] = name
    return list(last.values()) or list(found)[-1:]


def _few(names: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def resolve_modules(model: nn.Module, modules: Optional[Sequence[str]] = None) -> Dict[str, SMGModule]:
    """The SMG modules named (all of them checked first, a one-line :class:`HCGNetError` for a wrong name),
    or :func:`default_modules` when ``modules`` is None or empty."""
    found = smg_modules(model)
    if not found:
        raise HCGNetError(f"{type(model).__name__} has no SMG modules (gate maps need an HCGNet)")
    names = list(modules) if modules else default_modules(model)
    valid = list(found)
    picked: Dict[str, SMGModule] = {}
    for name in names:
        if name not in found:
            other = dict(model.named_modules()).get(name)
            what = (f"{name!r} is a {type(other).__name__}, not an SMG module" if other is not None
                    else f"unknown module {name!r}")
            suggestion = ([n for n in valid if n.startswith(name + ".") or name.startswith(n + ".")]
                          or difflib.get_close_matches(name, valid, n=4, cutoff=0.6) or valid)
            raise HCGNetError(f"{what}; SMG modules of this model: {_few(suggestion)}")
        picked[name] = found[name]
    return picked


def gate_maps(model: nn.Module, images: Tensor, modules: Optional[Sequence[str]] = None,
              amp_dtype: Optional[torch.dtype] = None) -> Dict[str, object]:
    """The gates' attention maps and channel weights of the SMG modules ``modules`` for ``images``.

    Args:
        model: an HCGNet (or any model with :class:`~hcgnet.layers.SMGModule` inside). It runs in eval mode
            (its mode is restored afterwards), so a batch of one works.
        images: (B, C, H, W), normalised as the model expects.
        modules: SMG module names (``model.named_modules()``, e.g. ``"stages.1.block.layers.0"`` or
            ``"stages.1.transition"``); None: :func:`default_modules`.
        amp_dtype: e.g. torch.bfloat16: the forward pass under autocast (maps and weights come back float32).

    Returns a dict:
        ``maps``: ``{module: {kind: (B, h, w) float32 tensor}}`` for each kind in :data:`MAP_KINDS`: the
        softmax over positions each gate used, at the module's resolution (each map sums to 1);
        ``weights``: ``{module: {"update": (B, 2, C) (u_3x3, u_dilated), "forget": (B, C)}}``;
        ``logits``: the model's output, the same as without the hooks.
    All on the CPU, in float32.
    """
    picked = resolve_modules(model, modules)
    if images.dim() != 4:
        raise HCGNetError(f"images must be a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    maps: Dict[str, Dict[str, Tensor]] = {name: {} for name in picked}
    weights: Dict[str, Dict[str, Tensor]] = {name: {} for name in picked}

    def keep(store: Dict[str, Tensor], key: str, squeeze_channel: bool = False):
        def hook(_module, _inputs, output):
            out = output.detach().float().cpu()
            store[key] = out[:, 0] if squeeze_channel else out
        return hook

    handles = []
    for name, smg in picked.items():
        taps = ((smg.update_gate.context_a.attention, maps[name], "update_3x3", True),
                (smg.update_gate.context_b.attention, maps[name], "update_dilated", True),
                (smg.forget_gate.context.attention, maps[name], "forget", True),
                (smg.update_gate.branch_weights, weights[name], "update", False),
                (smg.forget_gate.channel_weights, weights[name], "forget", False))
        handles += [module.register_forward_hook(keep(store, key, squeeze)) for module, store, key, squeeze in taps]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad(), autocast(device, amp_dtype):
            logits = model(images.to(device)).detach().float().cpu()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [name for name in picked if len(maps[name]) < len(MAP_KINDS) or len(weights[name]) < 2]
    if missing:
        raise HCGNetError(f"SMG module {missing[0]} did not run in the forward pass; choose another")
    return {"maps": maps, "weights": weights, "logits": logits}


# ------------------------------------------------------------------------------------------------ pictures


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
    column, then one column per map (``maps`` as :func:`gate_maps` returns it), each map upsampled
    (bilinear) to the image's size and overlaid on the image in gray (colours from 0 to the map's peak;
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
    for i in range(b):
        picture = shown[i, :, :, 0] if gray else shown[i]
        ax = axes[i, 0]
        ax.imshow(picture, cmap="gray" if gray else None, vmin=0, vmax=1)
        ax.set_title(Path(names[i]).name[:24] if names else f"image {i}", fontsize=8)
        luminance = picture if gray else picture @ np.array([0.299, 0.587, 0.114])
        for j, (module, kind) in enumerate(columns, 1):
            m = maps[module][kind][i][None, None].float()
            up = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
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


# ------------------------------------------------------------------------------------------------ summaries


def peak(attention: Tensor) -> tuple:
    """(row, column, probability) of the largest value of a (h, w) map."""
    h, w = attention.shape
    index = int(attention.flatten().argmax())
    return index // w, index % w, float(attention.flatten()[index])


def summary(result: Dict[str, object], names: Sequence[str]) -> Dict[str, object]:
    """A JSON-ready summary of :func:`gate_maps`'s result for images ``names``: per module its map size,
    per image and map the peak (row, column at the module's resolution) and its probability, the share of
    the 3x3 branch (mean ``u_a`` over channels) and the mean forget weight."""
    out: Dict[str, object] = {"images": list(names), "modules": {}}
    for module, kinds in result["maps"].items():
        w = result["weights"][module]
        first = kinds[MAP_KINDS[0]]
        per_image = []
        for i, name in enumerate(names):
            entry = {"image": name}
            for kind in MAP_KINDS:
                r, c, p = peak(kinds[kind][i])
                entry[kind] = {"peak_row": r, "peak_col": c, "peak_probability": round(p, 6)}
            entry["mean_u_3x3"] = round(float(w["update"][i, 0].mean()), 6)
            entry["mean_forget"] = round(float(w["forget"][i].mean()), 6)
            per_image.append(entry)
        out["modules"][module] = {"map_size": list(first.shape[1:]), "channels": int(w["forget"].shape[1]),
                                  "per_image": per_image}
    return out


def summary_table(info: Dict[str, object]) -> str:
    """:func:`summary` as a text table: a row per module and image; each map's peak as (row,col) probability,
    the mean 3x3 share ``u_a`` and the mean forget weight ``f``."""
    lines = [f"{'module':<26} {'map':>7} {'image':<24} " + " ".join(f"{k + ' peak':>20}" for k in MAP_KINDS)
             + f" {'u 3x3':>6} {'f':>6}"]
    for module, entry in info["modules"].items():
        size = "x".join(map(str, entry["map_size"]))
        for row in entry["per_image"]:
            peaks = " ".join(f"{'(%d,%d) %.3f' % (p['peak_row'], p['peak_col'], p['peak_probability']):>20}"
                             for p in (row[k] for k in MAP_KINDS))
            lines.append(f"{module:<26} {size:>7} {Path(row['image']).name[:24]:<24} {peaks} "
                         f"{row['mean_u_3x3']:6.3f} {row['mean_forget']:6.3f}")
    return "\n".join(lines)


def save_npz(result: Dict[str, object], names: Sequence[str], path: Union[str, Path]) -> Path:
    """All maps and weights of :func:`gate_maps`'s result in one ``.npz`` (no pickles): ``MODULE/KIND``
    (B, h, w) for each map, ``MODULE/update_weights`` (B, 2, C), ``MODULE/forget_weights`` (B, C), and
    ``images`` (the names, in row order)."""
    from hcgnet.files import atomic_path, reported_write

    arrays = {"images": np.array([str(n) for n in names])}
    for module, kinds in result["maps"].items():
        for kind, m in kinds.items():
            arrays[f"{module}/{kind}"] = m.numpy()
        arrays[f"{module}/update_weights"] = result["weights"][module]["update"].numpy()
        arrays[f"{module}/forget_weights"] = result["weights"][module]["forget"].numpy()
    with reported_write(path), atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    return Path(path)


# ------------------------------------------------------------------------------------------------ the command


def check_output_folder(folder: Union[str, Path], create: bool = True) -> Path:
    """``folder`` as a folder hcgnet may write in, or a one-line :class:`HCGNetError` saying what to change.
    A missing folder whose parent exists is created (with ``create``) or only checked for (without)."""
    from hcgnet.files import can_write_in

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise HCGNetError(f"--output {folder} is a file; give a folder to write the pictures in")
    if not folder.exists():
        if not folder.parent.is_dir():
            raise HCGNetError(f"folder {folder.parent} does not exist; create it first")
        if not create:
            if not can_write_in(folder.parent):
                raise HCGNetError(f"--output: cannot create folder {folder} in {folder.parent} (read-only or no "
                                  "permission); choose another")
            return folder
        try:
            folder.mkdir()
        except OSError as e:
            raise HCGNetError(f"--output: cannot create folder {folder}: {e.strerror or e}") from None
    if not can_write_in(folder):
        raise HCGNetError(f"--output: cannot write in folder {folder} (read-only or no permission); choose another")
    return folder


def _concat(parts: List[Dict[str, object]]) -> Dict[str, object]:
    """:func:`gate_maps` results of consecutive batches as one (images along dimension 0)."""
    first = parts[0]
    return {
        "maps": {m: {k: torch.cat([p["maps"][m][k] for p in parts]) for k in kinds} for m, kinds in first["maps"].items()},
        "weights": {m: {k: torch.cat([p["weights"][m][k] for p in parts]) for k in w}
                    for m, w in first["weights"].items()},
        "logits": torch.cat([p["logits"] for p in parts]),
    }


def attention_study(
    checkpoint: str, images: Sequence[str], output: Union[str, Path], model_name: Optional[str] = None,
    modules: Optional[Sequence[str]] = None, max_images: int = 16, device: Optional[str] = None,
    log=None, amp: str = "none", batch_size: int = 8, progress: Optional[bool] = None,
) -> Dict[str, object]:
    """``hcgnet attention``: the gate maps of ``modules`` of the model in ``checkpoint`` for the image files,
    folders or glob patterns ``images`` (the first ``max_images`` readable ones), written to the folder
    ``output`` as ``attention.png`` (:func:`attention_grid`), ``weights.png`` (:func:`weights_plot`),
    ``maps.npz`` (:func:`save_npz`) and ``summary.json`` (:func:`summary`). Unreadable images are skipped
    with a warning through ``log``. The images are read and run ``batch_size`` at a time, under autocast with
    ``amp`` "bf16" (or "fp16" on a GPU); ``progress``: a bar over the images (default: on a terminal; a line
    every 30 s elsewhere). Returns ``{"files": {...: path}, "summary": ..., "result": gate_maps'}``."""
    import json

    from hcgnet.analysis.options import amp_dtype, checkpoint_file
    from hcgnet.evaluation import device_of
    from hcgnet.analysis.options import progress as progress_bar
    from hcgnet.data import DataError, build_eval_transform
    from hcgnet.files import atomic_path, reported_write
    from hcgnet.inference import (_read_images, collect_images, data_config_of, guess_note, load_model,
                                  note_on_stderr)

    log = log or note_on_stderr
    if max_images < 1:
        raise HCGNetError(f"--max-images must be 1 or more, got {max_images}")
    if batch_size < 1:
        raise HCGNetError(f"--batch-size must be 1 or more, got {batch_size}")
    dev = device_of(device)
    dtype = amp_dtype(amp, dev)
    files, problems = collect_images(images)
    if not files:
        raise DataError("no images to look at: " + "; ".join(p["error"] for p in problems[:3]))
    check_output_folder(output, create=False)  # before the model loads: a mistake costs seconds
    for p in problems:
        log(f"hcgnet: warning: {p['error']}; skipped")
    model, meta = load_model(checkpoint_file(checkpoint), model_name)
    model.to(dev)
    picked = resolve_modules(model, modules)  # a wrong name fails before any image is read
    config = data_config_of(model, meta)
    note = None if meta.get("data_config") else guess_note(checkpoint, model, meta)
    if note:
        log(note)
    transform = build_eval_transform(config)
    batch: List[Tensor] = []
    readable: List[str] = []
    failures: List[dict] = []
    parts: List[Dict[str, object]] = []
    next_file = 0
    with progress_bar(min(max_images, len(files)), "attention", "image", progress, log) as bar:
        while len(batch) < max_images and next_file < len(files):  # read on past unreadable ones
            chunk = files[next_file:next_file + min(batch_size, max_images - len(batch))]
            more, ok = _read_images(chunk, transform, failures, log)
            next_file += len(chunk)
            if more:
                parts.append(gate_maps(model, torch.stack(more), list(picked), dtype))
                batch += more
                readable += ok
            bar.update(len(chunk))  # files looked at, readable or not: the bar ends full
    if not batch:
        raise DataError(f"none of the {len(files)} images could be read (see the warnings above)")
    if next_file < len(files):
        log(f"note: showing the first {len(readable)} of {len(files)} images (--max-images {max_images})")
    x = torch.stack(batch)
    result = _concat(parts)
    folder = check_output_folder(output)
    written = {name: folder / name for name in ("attention.png", "weights.png", "maps.npz", "summary.json")}
    attention_grid(x, result["maps"], written["attention.png"], config.mean, config.std, readable)
    weights_plot(result["weights"], written["weights.png"])
    save_npz(result, readable, written["maps.npz"])
    info = summary(result, readable)
    with reported_write(written["summary.json"]), atomic_path(written["summary.json"]) as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2) + "\n")
    return {"files": written, "summary": info, "result": result}
