"""The output folder of a run: what may be written where, and how ``--overwrite`` keeps the old run safe.

* A folder holding a run is refused unless ``--resume`` or ``--overwrite``; an output inside the image
  folder being trained on is refused (the run's own files would become training images).
* ``--overwrite`` builds the new run in a sibling folder ``.NAME.overwrite`` and moves its files into
  ``NAME`` only when it has finished. A run that fails or is interrupted (bad image, NaN loss, Ctrl-C,
  SIGTERM, full disk, any exception) removes that sibling and leaves the old run untouched.
* Temporary files that a killed process left behind (``.FILE.tmp.*`` from :func:`hcgnet.files.atomic_path`,
  and the ``.NAME.overwrite`` folder of a killed ``--overwrite`` run) are removed when a run starts or resumes.
"""
import shutil
from pathlib import Path

from hcgnet import distributed
from hcgnet.errors import HCGNetError
from hcgnet.files import check_folder_name
from hcgnet.training.config import TrainConfig

RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "steps.csv", "config.yaml", "results.json", "best.safetensors",
             "final.safetensors", "curves.png", "bad_images.txt")
BAD_IMAGES = RUN_FILES[-1]
RUN_FOLDERS = ("tensorboard",)


class OutputFolderError(HCGNetError):
    pass


def _image_folder_of(config: TrainConfig):
    data = getattr(config, "data", None)  # the detection trainer's config has none
    if data and data.startswith("imagefolder:"):
        return Path(data.split(":", 1)[1]).expanduser()
    return None


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the ``.NAME.tmp.*`` files that ``atomic_path`` leaves when its process is killed mid-write."""
    stale = [p for p in folder.glob(".*.tmp.*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


class RunFolder:
    """Where a run writes (``work``) and where it ends up (``out``); they differ only for ``--overwrite``."""

    def __init__(self, config: TrainConfig) -> None:
        """Check the folder; changes nothing on disk. ``config``: anything with ``output``, ``resume`` and
        ``overwrite`` (the classifier's TrainConfig, the detector's DetectConfig)."""
        out = Path(config.output)
        if out.exists() and not out.is_dir():
            raise OutputFolderError(f"output {out} is a file, not a folder")
        check_folder_name(out, "the run (checkpoints, logs, curves)")
        images = _image_folder_of(config)
        if images is not None and images.is_dir() and out.resolve().is_relative_to(images.resolve()):
            raise OutputFolderError(f"output {out} is inside the image folder {images}: the run's own files would be "
                                    "read as training images; choose an --output outside it")
        # A list of unreadable images alone is what a run that stopped before training leaves: not a run.
        existing = [f for f in RUN_FILES if f != BAD_IMAGES and (out / f).exists()]
        resumable = (out / "last.pt").exists() or (out / "config.yaml").exists()
        if existing and not resumable and not (config.resume or config.overwrite):   # e.g. the user's own CSV
            raise OutputFolderError(
                f"{out} holds {', '.join(existing)}, which a run writes, but no run to resume (no last.pt or "
                "config.yaml); choose another --output, or pass --overwrite (overwrite=True) to replace them"
            )
        if existing and not (config.resume or config.overwrite):
            raise OutputFolderError(
                f"{out} already holds a run ({existing[0]}); pass --resume (resume=True from Python) to continue it or "
                "--overwrite (overwrite=True) to replace it"
            )
        self.out = out
        self.replacing = bool(config.overwrite and existing)
        self.replacement = out.parent / f".{out.name}.overwrite"
        self.work = self.replacement if self.replacing else out
        self.created = False
        self.made_parents: list = []   # the folders above it that claim() creates, nearest first

    def claim(self, d: distributed.Dist) -> None:
        """Create the folder the run writes into (rank 0) and clear what killed runs left behind."""
        if d.is_main:
            self.created = not self.out.exists()
            self.made_parents = [folder for folder in self.out.parents if not folder.exists()]
            shutil.rmtree(self.replacement, ignore_errors=True)  # what a killed --overwrite run left
            try:
                if self.replacing:
                    self.work.mkdir(parents=True)
                else:
                    self.out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutputFolderError(f"cannot create output folder {self.work}: {e.strerror}") from None
            if self.out.exists():
                remove_stale_temporaries(self.out)
        distributed.barrier(d)

    @property
    def bad_images_kept(self) -> Path:
        """Where the list of unreadable images stays when the run fails: the user needs it to mend the data."""
        return self.out.parent / f"{self.out.name}.{BAD_IMAGES}" if self.replacing else self.out / BAD_IMAGES

    def abandon(self, d: distributed.Dist, started: bool) -> None:
        """After a failure: drop an unfinished replacement (the old run stays), and a folder this run created
        but never trained in, with the parents it created. The list of unreadable images stays where the data
        stopped the run (the user needs it to mend the data); a replacement that had begun training (it skipped
        them, as asked) leaves nothing beside the old run."""
        if not d.is_main:
            return
        bad = self.work / BAD_IMAGES
        if self.replacing:
            if bad.exists() and not started:
                bad.replace(self.bad_images_kept)
            shutil.rmtree(self.work, ignore_errors=True)
        elif self.created and not started:
            for child in self.out.iterdir():
                if child.name != BAD_IMAGES:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            if not bad.exists():
                self.out.rmdir()
                for folder in self.made_parents:   # --output a/b/run: a/ and a/b/ too, if nothing else is there
                    try:
                        folder.rmdir()
                    except OSError:
                        break

    def commit(self, d: distributed.Dist) -> None:
        """A finished ``--overwrite`` run replaces the old one, file by file."""
        distributed.barrier(d)
        if not (d.is_main and self.replacing):
            return
        for name in RUN_FILES + RUN_FOLDERS:
            target = self.out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        for new in self.work.iterdir():
            new.replace(self.out / new.name)
        self.work.rmdir()

    def kept(self) -> str:
        """What a failed run leaves, in words, for its error message."""
        if self.replacing:
            return f"{self.out} still holds the old run (the new one was discarded)"
        last = self.out / "last.pt"
        return f"the last good checkpoint is {last}" if last.exists() else "no checkpoint had been written yet"
