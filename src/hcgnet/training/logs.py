"""What a person sees of a run: metrics.csv, TensorBoard events and curves.png in the output folder, and
progress lines for logs that are not a terminal."""
import csv
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

COLUMNS = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5",
           "seconds", "images_per_s"]
STEP_COLUMNS = ["step", "epoch", "lr", "train_loss"]


def _read_rows(path: Path, keep) -> List[Dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if keep(r)]


def _write_rows(path: Path, columns: List[str], rows: List[Dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLines:
    """A line every ``interval`` seconds (step, epoch, loss, lr, images/s, ETA): what a log file, CI or a
    cluster job sees instead of the terminal's progress bar."""

    def __init__(self, log, total_steps: int, steps_per_epoch: int, epochs: int, batch: int,
                 interval: float = 30.0, enabled: bool = True) -> None:
        self.log, self.total, self.per_epoch, self.epochs, self.batch = log, total_steps, steps_per_epoch, epochs, batch
        self.interval, self.enabled = interval, enabled
        self.start = self.last = time.monotonic()
        self.steps = 0  # taken by this process since it started (a resumed run times only its own steps)

    def step(self, global_step: int, loss: float, lr: float) -> None:
        self.steps += 1
        now = time.monotonic()
        if not self.enabled or now - self.last < self.interval:
            return
        self.last = now
        per_step = (now - self.start) / self.steps
        epoch, done = divmod(global_step - 1, self.per_epoch)
        where = f"epoch {epoch + 1}/{self.epochs}, step {done + 1}/{self.per_epoch}"
        self.log(f"step {global_step}/{self.total} ({where}): "
                 f"loss {loss:.4f}, lr {lr:.4g}, {self.batch / max(per_step, 1e-9):.1f} images/s, "
                 f"ETA {_duration(per_step * (self.total - global_step))}")


class MetricsLog:
    """Epoch rows in ``metrics.csv``, logged steps in ``steps.csv``, and TensorBoard scalars. On resume the
    files are cut back to the checkpoint, so rows written after it are not repeated."""

    def __init__(self, folder: Path, resume_epoch: int = 0, resume_step: int = 0, tensorboard: bool = True,
                 columns: List[str] = COLUMNS) -> None:
        self.csv_path, self.steps_path = folder / "metrics.csv", folder / "steps.csv"
        self.columns = columns  # the detection trainer logs its own (losses, AP)
        self.rows = _read_rows(self.csv_path, lambda r: int(r["epoch"]) <= resume_epoch) if resume_epoch else []
        self.steps = _read_rows(self.steps_path, lambda r: int(r["step"]) <= resume_step) if resume_step else []
        _write_rows(self.csv_path, columns, self.rows)
        _write_rows(self.steps_path, STEP_COLUMNS, self.steps)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # On resume, events logged after the checkpoint's step are dropped (every scalar is logged
            # against the global step, epoch summaries included).
            self.writer = SummaryWriter(str(folder / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def add_epoch(self, row: Dict[str, Optional[float]]) -> None:
        clean = {k: ("" if row.get(k) is None else row[k]) for k in self.columns}
        self.rows.append(clean)
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(clean)
        if self.writer is not None:
            for k in self.columns[2:]:
                if row.get(k) is not None:
                    self.writer.add_scalar(f"epoch/{k}", row[k], int(row["step"]))
            self.writer.flush()

    def add_step(self, step: int, epoch: float, loss: float, lr: float) -> None:
        row = {"step": step, "epoch": epoch, "lr": lr, "train_loss": loss}
        self.steps.append(row)
        with open(self.steps_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=STEP_COLUMNS).writerow(row)
        if self.writer is not None:
            self.writer.add_scalar("step/train_loss", loss, step)
            self.writer.add_scalar("step/lr", lr, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def curves(self, top5: bool = True) -> Dict[str, List[Tuple[str, List[float], List[float]]]]:
        """What ``curves.png`` draws: per panel (loss, accuracy, lr), ``(label, epochs, values)`` series with
        points. The learning rate comes from the logged steps and, for runs too short to log any (steps.csv gets
        a row every ``log_every`` steps), from the epoch rows. ``top5=False`` leaves out top-5 accuracy (with 5
        classes or fewer it is always 100%)."""

        def series(rows, key, x="epoch", scale=1.0):
            pts = [(float(r[x]), scale * float(r[key])) for r in rows if r.get(key) not in ("", None)]
            return [p[0] for p in pts], [p[1] for p in pts]

        panels: Dict[str, List[Tuple[str, List[float], List[float]]]] = {"loss": [], "accuracy": [], "lr": []}
        wanted = {
            "loss": [(self.steps, "train_loss", "train (logged steps)"),
                     (self.rows, "train_loss", "train (epoch mean)"), (self.rows, "val_loss", "validation")],
            "accuracy": [(self.rows, "train_acc", "train top-1"), (self.rows, "val_top1", "validation top-1")]
            + ([(self.rows, "val_top5", "validation top-5")] if top5 else []),
            "lr": [(self.steps, "lr", "logged steps"), (self.rows, "lr", "end of epoch")],
        }
        for panel, sources in wanted.items():
            for rows, key, label in sources:
                xs, ys = series(rows, key, scale=100.0 if panel == "accuracy" else 1.0)
                if xs:
                    panels[panel].append((label, xs, ys))
        return panels

    def plot(self, path: Path, title: str = "", top5: bool = True) -> Path:
        """Loss (logged steps and epochs), accuracy per epoch and the learning rate (:meth:`curves`), as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from hcgnet.evaluation import missing_glyphs_quiet

        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        labels = {"loss": ("loss", "loss"), "accuracy": ("accuracy (%)", "accuracy"),
                  "lr": ("learning rate", "learning rate")}
        with missing_glyphs_quiet():  # a title naming a folder in a script the fonts lack
            for ax, (panel, series) in zip(axes, self.curves(top5).items()):
                for label, xs, ys in series:
                    if label == "logged steps" or label.endswith("(logged steps)"):
                        ax.plot(xs, ys, lw=1, alpha=0.7, label=label)
                    else:
                        ax.plot(xs, ys, marker="o", label=label)
                ylabel, name = labels[panel]
                ax.set(xlabel="epoch", ylabel=ylabel, title=name)
                ax.grid(alpha=0.3)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend()
            if title:
                fig.suptitle(title)
            fig.tight_layout()
            fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
