"""Scoring a model on a data loader, and the mixed-precision settings shared by training, evaluation and
benchmarks. Below both the trainer and inference: neither imports the other."""
import contextlib
import csv
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from hcgnet.distributed import Dist, all_reduce_sum
from hcgnet.errors import HCGNetError

#: The files ``eval --output DIR`` writes (an earlier eval's are replaced only with ``--force``).
EVAL_FILES = ("metrics.json", "per_class.csv", "confusion.csv", "confusion.png")

#: ``--amp`` names to autocast dtypes (None: no autocast), for training, evaluation and benchmarks.
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_of(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``device`` as a torch.device (None: cuda when there is one, else cpu); a name that is no device, or cuda
    on a machine without one, is refused."""
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError):
        raise HCGNetError(f"--device {device!r} is not a device; use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):  # mps, xpu...: untested here, and the trainer's set-up knows only these two
        raise HCGNetError(f"--device {device}: hcgnet runs on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HCGNetError(f"--device {device}: no CUDA GPU here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise HCGNetError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


def fast_path_flags(compile: bool = False, int8: Optional[str] = None, amp: str = "none",
                    channels_last: bool = False) -> List[str]:
    """Which of eval's and predict's other ways of running the model were asked for, as flags (``--amp bf16``):
    what a runtime that compiles the model itself (OpenVINO, an exported file) refuses."""
    return [flag for flag, given in (("--compile", compile), ("--int8", int8 is not None),
                                     (f"--amp {amp}", amp != "none"), ("--channels-last", channels_last)) if given]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def images_to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch of images on ``device``, in the model's memory format."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    return images_to(x, device, channels_last), y.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(
    model: Callable[[torch.Tensor], torch.Tensor], loader, dist: Dist, amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False, progress=None, num_classes: Optional[int] = None,
) -> Dict[str, Any]:
    """Top-1, top-5 and mean cross-entropy over the loader; with DDP every rank scores its own shard
    (no padding) and the sums are added, so each sample counts exactly once. With ``num_classes`` also
    ``"confusion"``: a list of ``num_classes`` rows (true class) of counts per predicted class. ``model`` may be any
    callable from images to logits (e.g. :class:`hcgnet.export.OpenVINOModel`); a module is put in eval mode."""
    if isinstance(model, nn.Module):
        model.eval()
    loss_sum, top1, top5, count = 0.0, 0.0, 0.0, 0.0
    confusion = torch.zeros(num_classes or 0, num_classes or 0, dtype=torch.float64)
    for x, y in loader:
        x, y = to_device(x, y, dist.device, channels_last)
        with autocast(dist.device, amp_dtype):
            out = model(x).float()
        loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
        k = min(5, out.shape[1])
        hits = out.topk(k, dim=1).indices == y[:, None]
        top1 += float(hits[:, 0].sum())
        top5 += float(hits.any(dim=1).sum())
        count += len(y)
        if num_classes:
            pairs = y.cpu() * num_classes + out.argmax(dim=1).cpu()
            confusion += torch.bincount(pairs, minlength=num_classes ** 2).view(num_classes, num_classes)
        if progress is not None:
            progress.update(1)
    sums = all_reduce_sum(torch.tensor([loss_sum, top1, top5, count], dtype=torch.float64), dist)
    n = max(sums[3].item(), 1)
    metrics: Dict[str, Any] = {"loss": sums[0].item() / n, "top1": sums[1].item() / n, "top5": sums[2].item() / n,
                               "count": int(sums[3])}
    if num_classes:
        metrics["confusion"] = all_reduce_sum(confusion, dist).long().tolist()
    return metrics


def show_top5(num_classes: int) -> bool:
    """Whether top-5 accuracy says anything: with 5 classes or fewer it is always 100%."""
    return num_classes > 5


@contextlib.contextmanager
def missing_glyphs_quiet():
    """Silence matplotlib's "Glyph ... missing from font" warnings while drawing (class names in scripts its
    fonts lack, such as CJK): the labels show as boxes, the log stays clean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
        yield


def per_class(confusion: Sequence[Sequence[int]], class_names: Sequence[str]) -> List[Dict[str, Any]]:
    """One row per class: its images, how many were classified as it, and that accuracy (None: no images)."""
    rows = []
    for i, (name, row) in enumerate(zip(class_names, confusion)):
        images = int(sum(row))
        rows.append({"class": name, "images": images, "correct": int(row[i]),
                     "accuracy": row[i] / images if images else None})
    return rows


def write_confusion(folder, confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                    title: str = "") -> List[Path]:
    """Write ``per_class.csv``, ``confusion.csv`` (rows: true class, columns: predicted) and ``confusion.png``
    (``title`` above it: what was scored) into ``folder`` (created if needed); return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [str(c) for c in class_names]
    with open(folder / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("class", "images", "correct", "accuracy"))
        writer.writeheader()
        for row in per_class(confusion, names):
            writer.writerow({**row, "accuracy": "" if row["accuracy"] is None else f"{row['accuracy']:.6f}"})
    with open(folder / "confusion.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *names])
        for name, row in zip(names, confusion):
            writer.writerow([name, *map(int, row)])
    _plot_confusion(folder / "confusion.png", confusion, names, title)
    return [folder / n for n in ("per_class.csv", "confusion.csv", "confusion.png")]


def _plot_confusion(path: Path, confusion: Sequence[Sequence[int]], names: Sequence[str], title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with missing_glyphs_quiet():
        _draw_confusion(plt, path, confusion, names, title)


def _draw_confusion(plt, path: Path, confusion: Sequence[Sequence[int]], names: Sequence[str], title: str) -> None:
    counts = torch.tensor(confusion, dtype=torch.float64)
    # Rows normalised: each true class's share of predictions, so small classes are as visible as large ones.
    shares = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(names)
    side = min(4 + 0.35 * n, 30)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    if n <= 40:  # beyond that the labels overlap; the CSV names them
        ax.set_xticks(range(n), names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
