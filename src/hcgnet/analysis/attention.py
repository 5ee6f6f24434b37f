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

    from hcgnet.analysis.attention import gate_maps
    from hcgnet.analysis.attention_plots import attention_grid, weights_plot
    result = gate_maps(model, images)                  # images: (B, C, H, W), normalised as for the model
    attention_grid(images, result["maps"], "attention.png", mean=config.mean, std=config.std)
    weights_plot(result["weights"], "weights.png")
"""
import difflib
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from hcgnet.errors import HCGNetError
from hcgnet.evaluation import autocast
from hcgnet.files import check_output_folder, distinct_names, reported_write, write_json
from hcgnet.layers.gates import ForgetGate, UpdateGate
from hcgnet.layers.smg import SMGModule
from hcgnet.provenance import provenance

#: The three spatial maps of an SMG module, in column order, and their titles.
MAP_KINDS = ("update_3x3", "update_dilated", "forget")
MAP_TITLES = {"update_3x3": "update gate, 3x3", "update_dilated": "update gate, dilated", "forget": "forget gate"}


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


def _hint(name: str, valid: Sequence[str]) -> str:
    """What a wrong module name is near: the SMG module it lies in, those inside it, or close spellings."""
    around = [n for n in valid if name.startswith(n + ".")]
    inside = [n for n in valid if n.startswith(name + ".")]
    close = difflib.get_close_matches(name, valid, n=2, cutoff=0.85)
    if around:
        return f" (it lies inside {around[-1]})"
    if inside:
        return f" (it holds {_compact(inside)})"
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _compact(names: Sequence[str]) -> str:
    """Module names in model order, a run of siblings numbered 0..n written once: ``stages.0.block.layers.0-7``."""
    runs: list = []    # [prefix, first, last] or [name, None, None]
    for name in names:
        prefix, _, last = name.rpartition(".")
        if last.isdigit() and runs and runs[-1][0] == prefix and runs[-1][2] == int(last) - 1:
            runs[-1][2] = int(last)
        else:
            runs.append([prefix, int(last), int(last)] if last.isdigit() else [name, None, None])
    return ", ".join(p if a is None else f"{p}.{a}" + (f"-{b}" if b != a else "") for p, a, b in runs)


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
            raise HCGNetError(f"{what}{_hint(name, valid)}; SMG modules of this model: {_compact(valid)}")
        picked[name] = found[name]
    for name, smg in picked.items():
        lacks = [gate for gate, kind in (("forget_gate", ForgetGate), ("update_gate", UpdateGate))
                 if not isinstance(getattr(smg, gate), kind)]
        if lacks:  # switched off (hcgnet's design switches): there is no attention to show
            raise HCGNetError(f"SMG module {name} has no {' and no '.join(g.replace('_', ' ') for g in lacks)} "
                              f"(built with {', '.join(f'{g}=False' for g in lacks)}); gate maps need both gates")
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


# ------------------------------------------------------------------------------------------------ placement


def module_stride(map_size: Sequence[int], image_size: Sequence[int]) -> tuple:
    """(rows, columns) stride of a map of ``map_size`` over an image of ``image_size``: the size ratio rounded to
    a power of two (HCGNet halves with stride-2 convs of padding 1, so an odd side gives ceil(H / 2))."""
    return tuple(2 ** max(0, round(math.log2(big / small))) for small, big in zip(map_size, image_size))


def upsample_map(attention: Tensor, image_size: Sequence[int]) -> Tensor:
    """A (h, w) map at the image's size (H, W), each cell placed where it looks: a stride-``s`` cell ``i`` is
    centred on pixel ``s i`` (HCGNet's downsampling, 3x3 convs and max-pools of stride 2 and padding 1, centres
    output ``i`` on input ``2 i``), and pixels in between are interpolated bilinearly; past the last cell the
    edge value holds. (``F.interpolate`` with ``align_corners=False`` would put cell ``i`` at ``s i + (s - 1) / 2``:
    15.5 px off at stride 32.)"""
    h, w = attention.shape
    m = attention.detach().float()
    out = m
    for dim, (cells, pixels, stride) in enumerate(zip((h, w), image_size, module_stride((h, w), image_size))):
        where = torch.arange(pixels, dtype=torch.float64) / stride  # pixel j in cell units
        low = where.floor().clamp(max=cells - 1).long()
        high = (low + 1).clamp(max=cells - 1)
        frac = (where - low).clamp(0, 1).float()
        a, b = out.index_select(dim, low), out.index_select(dim, high)
        shape = [1, 1]
        shape[dim] = pixels
        out = a + (b - a) * frac.view(shape)
    return out


# ------------------------------------------------------------------------------------------------ summaries


def peak(attention: Tensor) -> tuple:
    """(row, column, probability) of the largest value of a (h, w) map."""
    h, w = attention.shape
    index = int(attention.flatten().argmax())
    return index // w, index % w, float(attention.flatten()[index])


def summary(result: Dict[str, object], names: Sequence[str],
            class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """A JSON-ready summary of :func:`gate_maps`'s result for images ``names``: per image the model's prediction
    (class index, its name from ``class_names`` when given, softmax probability); per module its map size,
    per image and map the peak (row, column at the module's resolution), its probability and how many times
    the uniform ``1 / (h w)`` that is (what the picture's corner says), the share of the 3x3 branch (mean
    ``u_a`` over channels) and the mean forget weight."""
    probabilities = result["logits"].float().softmax(dim=1)
    predictions = []
    for i in range(len(names)):
        index = int(probabilities[i].argmax())
        predictions.append({"class": index, **({"name": class_names[index]} if class_names else {}),
                            "probability": round(float(probabilities[i, index]), 6)})
    out: Dict[str, object] = {"images": list(names), "predictions": predictions, "modules": {}}
    for module, kinds in result["maps"].items():
        w = result["weights"][module]
        first = kinds[MAP_KINDS[0]]
        per_image = []
        for i, name in enumerate(names):
            entry = {"image": name}
            for kind in MAP_KINDS:
                r, c, p = peak(kinds[kind][i])
                entry[kind] = {"peak_row": r, "peak_col": c, "peak_probability": round(p, 6),
                               "peak_vs_uniform": round(p * kinds[kind][i].numel(), 3)}
            entry["mean_u_3x3"] = round(float(w["update"][i, 0].mean()), 6)
            entry["mean_forget"] = round(float(w["forget"][i].mean()), 6)
            per_image.append(entry)
        out["modules"][module] = {"map_size": list(first.shape[1:]), "channels": int(w["forget"].shape[1]),
                                  "per_image": per_image}
    return out


def summary_table(info: Dict[str, object]) -> str:
    """:func:`summary` as text: each image's prediction, then a row per module and image: each map's peak as
    (row,col) and how many times uniform it is (as the picture's corner), the mean 3x3 share ``u_a`` and the
    mean forget weight ``f``."""
    labels = dict(zip(info["images"], distinct_names(info["images"])))
    lines = [f"{'image':<24} predicted"]
    for image, p in zip(info["images"], info["predictions"]):
        name = p.get("name", f"class {p['class']}")
        lines.append(f"{labels[image][-24:]:<24} {name} ({100 * p['probability']:.1f}%)")
    lines += ["", f"{'module':<26} {'map':>7} {'image':<24} " + " ".join(f"{k + ' peak':>20}" for k in MAP_KINDS)
              + f" {'u 3x3':>6} {'f':>6}"]
    for module, entry in info["modules"].items():
        size = "x".join(map(str, entry["map_size"]))
        for row in entry["per_image"]:
            peaks = " ".join(f"{'(%d,%d) %.1fx' % (p['peak_row'], p['peak_col'], p['peak_vs_uniform']):>20}"
                             for p in (row[k] for k in MAP_KINDS))
            lines.append(f"{module:<26} {size:>7} {labels[row['image']][-24:]:<24} {peaks} "
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


#: The files ``hcgnet attention`` writes into its ``--output`` folder.
RESULTS = ("attention.png", "weights.png", "maps.npz", "summary.json")


def _concat(parts: List[Dict[str, object]]) -> Dict[str, object]:
    """:func:`gate_maps` results of consecutive batches as one (images along dimension 0)."""
    first = parts[0]
    return {
        "maps": {m: {k: torch.cat([p["maps"][m][k] for p in parts]) for k in kinds} for m, kinds in first["maps"].items()},
        "weights": {m: {k: torch.cat([p["weights"][m][k] for p in parts]) for k in w}
                    for m, w in first["weights"].items()},
        "logits": torch.cat([p["logits"] for p in parts]),
    }


def in_turn_by_folder(files: Sequence[str]) -> List[str]:
    """``files`` reordered to take one from each folder in turn (folders in order of first appearance, each
    folder's files in their order): the first N then cover every folder, e.g. every class of an image folder."""
    by_folder: Dict[str, List[str]] = {}
    for f in files:
        by_folder.setdefault(os.path.dirname(f), []).append(f)
    queues = list(by_folder.values())
    return [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]


def attention_study(
    checkpoint: str, images: Sequence[str], output: Union[str, Path], model_name: Optional[str] = None,
    modules: Optional[Sequence[str]] = None, max_images: int = 16, device: Optional[str] = None,
    log=None, amp: str = "none", batch_size: int = 8, progress: Optional[bool] = None, force: bool = False,
) -> Dict[str, object]:
    """``hcgnet attention``: the gate maps of ``modules`` of the model in ``checkpoint`` for the image files,
    folders or glob patterns ``images`` (``max_images`` readable ones at most; when there are more, taken in turn
    from each folder: :func:`in_turn_by_folder`), written to the folder ``output`` as ``attention.png``
    (:func:`attention_grid`), ``weights.png`` (:func:`weights_plot`), ``maps.npz`` (:func:`save_npz`) and
    ``summary.json`` (:func:`summary`). Unreadable images are skipped
    with a warning through ``log``. The images are read and run ``batch_size`` at a time, under autocast with
    ``amp`` "bf16" (or "fp16" on a GPU); ``progress``: a bar over the images (default: on a terminal; a line
    every 30 s elsewhere). Results of an earlier run in ``output`` are refused unless ``force``. Returns
    ``{"files": {...: path}, "summary": ..., "result": gate_maps'}``."""
    from hcgnet.analysis.options import amp_dtype, checkpoint_file
    from hcgnet.data import DataError, build_eval_transform
    from hcgnet.evaluation import device_of
    from hcgnet.inference import collect_images, data_config_of, guess_note, load_model, note_on_stderr

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
    if len(files) > max_images:   # a folder of class folders: every class in the grid, not just the first
        files = in_turn_by_folder(files)
    folder = check_output_folder(output, "the pictures, maps and summary", RESULTS, force,  # before any work
                                 reads=[item for item in images if os.path.isdir(item)])
    for p in problems:
        log(f"hcgnet: warning: {p['error']}; skipped")
    model, meta = load_model(checkpoint_file(checkpoint), model_name)
    model.to(dev)
    picked = resolve_modules(model, modules)  # a wrong name fails before any image is read
    config = data_config_of(model, meta)
    note = None if meta.get("data_config") else guess_note(checkpoint, config, meta)
    if note:
        log(note)
    x, readable, result, looked_at = _maps_of_files(
        model, files, build_eval_transform(config), list(picked), dtype, max_images, batch_size, progress, log)
    if looked_at < len(files):
        folders = len({os.path.dirname(f) for f in files})
        order = f"taken in turn from each of {folders} folders" if folders > 1 else "the first in name order"
        log(f"note: showing {len(readable)} of {len(files)} images, {order} (--max-images {max_images})")
    about = {"checkpoint": str(checkpoint), "model": meta.get("model_name") or model_name, "amp": amp,
             "provenance": provenance([checkpoint], dev)}
    named = meta.get("class_names") or meta.get("data_config")   # else the names are only indices
    written, info = _write_study(folder, x, result, readable, config.mean, config.std, about,
                                 config.class_names if named else None)
    return {"files": written, "summary": info, "result": result}


def _maps_of_files(model: nn.Module, files: Sequence[str], transform, modules: List[str], dtype, max_images: int,
                   batch_size: int, progress: Optional[bool], log) -> Tuple[Tensor, List[str], Dict, int]:
    """The gate maps of the first ``max_images`` readable ``files``, read and run ``batch_size`` at a time (past
    unreadable ones, each named through ``log``): the images, their paths, :func:`gate_maps`' result for all of
    them, and how many files were looked at."""
    from hcgnet.analysis.options import progress as progress_bar
    from hcgnet.data import DataError
    from hcgnet.inference import read_images

    batch: List[Tensor] = []
    readable: List[str] = []
    failures: List[dict] = []
    parts: List[Dict[str, object]] = []
    next_file = 0
    with progress_bar(min(max_images, len(files)), "attention", "image", progress, log) as bar:
        while len(batch) < max_images and next_file < len(files):
            chunk = files[next_file:next_file + min(batch_size, max_images - len(batch))]
            more, ok = read_images(chunk, transform, failures, log)
            next_file += len(chunk)
            if more:
                parts.append(gate_maps(model, torch.stack(more), modules, dtype))
                batch += more
                readable += ok
            bar.update(len(chunk))  # files looked at, readable or not: the bar ends full
    if not batch:
        raise DataError(f"none of the {len(files)} images could be read (see the warnings above)")
    return torch.stack(batch), readable, _concat(parts), next_file


def _write_study(folder: Path, x: Tensor, result: Dict, readable: Sequence[str], mean, std,
                 about: Dict, class_names: Optional[Sequence[str]]) -> Tuple[Dict, Dict]:
    """:data:`RESULTS` into ``folder``: the pictures, the maps and the summary (``about``: what was studied and
    how, first); their paths and the summary."""
    from hcgnet.analysis.attention_plots import attention_grid, weights_plot

    with reported_write(folder):
        folder.mkdir(parents=True, exist_ok=True)
    written = {name: folder / name for name in RESULTS}
    attention_grid(x, result["maps"], written["attention.png"], mean, std, readable)
    weights_plot(result["weights"], written["weights.png"])
    save_npz(result, readable, written["maps.npz"])
    info = {**about, **summary(result, readable, class_names)}
    with reported_write(written["summary.json"]):
        write_json(written["summary.json"], info)
    return written, info
