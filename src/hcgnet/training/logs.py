"""What a person sees of a run: metrics.csv, TensorBoard events and curves.png in the output folder."""
import csv
from pathlib import Path
from typing import Dict, List, Optional

COLUMNS = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5",
           "seconds", "images_per_s"]


class MetricsLog:
    """Epoch rows in CSV (rewritten up to the resumed epoch on resume) and TensorBoard scalars."""

    def __init__(self, folder: Path, resume_epoch: int = 0, tensorboard: bool = True) -> None:
        self.csv_path = folder / "metrics.csv"
        self.rows: List[Dict[str, str]] = []
        if resume_epoch and self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= resume_epoch]
        self._write_all()
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder / "tensorboard"), purge_step=None)

    def _write_all(self) -> None:
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(self.rows)

    def add_epoch(self, row: Dict[str, Optional[float]]) -> None:
        clean = {k: ("" if row.get(k) is None else row[k]) for k in COLUMNS}
        self.rows.append(clean)
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow(clean)
        if self.writer is not None:
            for k in COLUMNS[2:]:
                if row.get(k) is not None:
                    self.writer.add_scalar(f"epoch/{k}", row[k], int(row["epoch"]))
            self.writer.flush()

    def add_step(self, step: int, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("step/train_loss", loss, step)
            self.writer.add_scalar("step/lr", lr, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def plot(self, path: Path, title: str = "") -> Path:
        """Loss and accuracy curves per epoch as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(key):
            pts = [(int(r["epoch"]), float(r[key])) for r in self.rows if r.get(key) not in ("", None)]
            return [p[0] for p in pts], [p[1] for p in pts]

        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        for key, label in (("train_loss", "train"), ("val_loss", "validation")):
            xs, ys = series(key)
            if xs:
                ax_loss.plot(xs, ys, marker="o", label=label)
        for key, label in (("train_acc", "train top-1"), ("val_top1", "validation top-1"),
                           ("val_top5", "validation top-5")):
            xs, ys = series(key)
            if xs:
                ax_acc.plot(xs, [100 * y for y in ys], marker="o", label=label)
        ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
        ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
