"""The Broden dataset (Bau et al., CVPR 2017) as a torch Dataset: images with per-category concept labels.

Layout of a Broden directory (``broden1_224`` from the NetDissect project, or one made the same way)::

    index.csv      image, split, ih, iw, sh, sw, then one column per category (color, object, part,
                   material, scene, texture). A cell is empty, or ';'-separated mask PNG names (pixel
                   categories), or ';'-separated label numbers (whole-image categories: scene, texture).
    category.csv   name, first, last, count, frequency -- one row per category
    label.csv      number, name, category, frequency, coverage, syns; ``category`` lists the categories a
                   label occurs in with their counts, e.g. ``object(1523);part(12)``
    c_<cat>.csv    per-category code tables (code, number, name, ...); read only to check they exist
    images/        the images and mask PNGs that index.csv names, relative to images/

A mask PNG holds a label number per pixel in its red and green channels: ``label = R + 256 * G``
(0 = no label). Masks are at the segmentation resolution ``sh x sw`` (112 x 112 in broden1_224 whose
images are 224 x 224).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from hcgnet.errors import HCGNetError

CATEGORIES = ("color", "object", "part", "material", "scene", "texture")
WHOLE_IMAGE = ("scene", "texture")
WHERE = "download broden1_224 from the NetDissect project (CSAILVision/NetDissect-Lite, script/dlbroden.sh) and pass --broden DIR"
_CATEGORY_FIELD = re.compile(r"^\s*([^(:]+?)\s*(?:\((\d+)\)|:\s*(\d+))?\s*$")


class BrodenError(HCGNetError):
    """A missing or malformed Broden directory."""


def decode_mask(rgb: np.ndarray) -> np.ndarray:
    """Label numbers of a Broden mask image (H, W, 3+) uint8: ``R + 256 * G`` as int64."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 2:
        raise BrodenError(f"a Broden mask must be an RGB image, got an array of shape {rgb.shape}")
    return rgb[:, :, 0].astype(np.int64) + 256 * rgb[:, :, 1].astype(np.int64)


def encode_mask(labels: np.ndarray) -> np.ndarray:
    """The inverse of :func:`decode_mask`: an (H, W, 3) uint8 image for label numbers below 65536."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= 65536:
        raise ValueError("Broden label numbers must be in [0, 65535]")
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    out[:, :, 0] = labels % 256
    out[:, :, 1] = labels // 256
    return out


def _read_csv(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        raise BrodenError(f"{path.parent} is not a Broden directory: no {path.name}; {WHERE}")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _parse_categories(text: str, line: str) -> Dict[str, int]:
    """``object(1523);part(12)`` (Broden) or ``object:1523;part:12`` -> {category: count}."""
    out: Dict[str, int] = {}
    for item in filter(None, (t.strip() for t in (text or "").split(";"))):
        m = _CATEGORY_FIELD.match(item)
        if not m:
            raise BrodenError(f"label.csv {line}: cannot read category {item!r}; {WHERE}")
        out[m.group(1)] = int(m.group(2) or m.group(3) or 1)
    return out


def check_broden(root: str | Path) -> Path:
    """``root`` as a Path if it has a Broden directory's files, else a one-line :class:`BrodenError`."""
    root = Path(root)
    if root.is_file():
        raise BrodenError(f"--broden {root} is a file; pass the folder that holds index.csv and images/")
    if not root.is_dir():
        raise BrodenError(f"no Broden directory at {root}; {WHERE}")
    if not (root / "index.csv").is_file() and (root.parent / "index.csv").is_file():
        raise BrodenError(f"{root} is not a Broden directory but its parent is: pass --broden {root.parent}")
    for name in ("index.csv", "category.csv", "label.csv"):
        if not (root / name).is_file():
            raise BrodenError(f"{root} is not a Broden directory: no {name}; {WHERE}")
    if not (root / "images").is_dir():
        raise BrodenError(f"{root} is not a Broden directory: no images/ folder; {WHERE}")
    return root


@dataclass
class BrodenRecord:
    """One row of index.csv: an image and its annotations per category."""

    image: str
    size: Tuple[int, int]                      # (ih, iw)
    seg_size: Tuple[int, int]                  # (sh, sw)
    masks: Dict[str, List[str]] = field(default_factory=dict)    # pixel categories: mask PNG names
    labels: Dict[str, List[int]] = field(default_factory=dict)   # whole-image categories: label numbers


class Broden(Dataset):
    """A Broden directory as a Dataset of ``(image, segmentation)``.

    ``image`` is a (C, H, W) float tensor: the image resized (no crop, so pixels stay aligned with the masks)
    to ``size`` and normalised with ``mean``/``std``. ``segmentation`` is a dict ``{"index": i,
    "masks": {category: [int64 (sh, sw) label arrays]}, "labels": {category: [label numbers]}}``;
    :func:`collate` batches them (images stacked, segmentations in a list).

    Attributes: ``labels`` (label number -> name), ``label_category`` (label number -> its primary category,
    the one it occurs in most), ``categories`` (those present in index.csv, in Broden's order), ``records``.
    ``limit`` keeps the first N images; ``categories`` restricts to some.
    """

    def __init__(
        self,
        root: str | Path,
        size: Tuple[int, int] = (224, 224),
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        limit: Optional[int] = None,
        categories: Optional[Sequence[str]] = None,
    ) -> None:
        self.root = check_broden(root)
        self.set_preprocessing(size, mean, std)

        cat_rows = _read_csv(self.root / "category.csv")
        known = [r.get("name", "").strip() for r in cat_rows]
        if not known or "" in known:
            raise BrodenError(f"{self.root}/category.csv has no 'name' column or an empty name; {WHERE}")
        for cat in known:
            if not (self.root / f"c_{cat}.csv").is_file():
                raise BrodenError(f"{self.root} is not a Broden directory: no c_{cat}.csv; {WHERE}")

        self.labels: Dict[int, str] = {}
        self.label_category: Dict[int, str] = {}
        for i, row in enumerate(_read_csv(self.root / "label.csv"), start=2):
            try:
                number = int(row["number"])
                name = row["name"]
            except (KeyError, TypeError, ValueError):
                raise BrodenError(f"{self.root}/label.csv line {i}: needs number and name columns; {WHERE}") from None
            cats = _parse_categories(row.get("category", ""), f"line {i}")
            if number == 0:
                continue  # Broden's row 0 is '-', no label
            self.labels[number] = name
            if cats:
                self.label_category[number] = max(cats.items(), key=lambda kv: kv[1])[0]

        with open(self.root / "index.csv", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in ("image", "ih", "iw", "sh", "sw") if c not in header]
            if missing:
                raise BrodenError(f"{self.root}/index.csv lacks column(s) {', '.join(missing)}; {WHERE}")
            present = [c for c in CATEGORIES if c in header and c in known] + [
                c for c in header if c in known and c not in CATEGORIES]
            wanted = list(categories) if categories is not None else present
            unknown = [c for c in wanted if c not in present]
            if unknown:
                raise BrodenError(f"category {', '.join(unknown)} is not in {self.root}/index.csv "
                                  f"(it has {', '.join(present)})")
            self.categories = wanted
            self.records: List[BrodenRecord] = []
            for i, row in enumerate(reader, start=2):
                if limit is not None and len(self.records) >= limit:
                    break
                try:
                    rec = BrodenRecord(row["image"], (int(row["ih"]), int(row["iw"])), (int(row["sh"]), int(row["sw"])))
                    for cat in wanted:
                        items = [t for t in (row.get(cat) or "").split(";") if t.strip()]
                        if cat in WHOLE_IMAGE:
                            rec.labels[cat] = [int(t) for t in items]
                        else:
                            rec.masks[cat] = [t.strip() for t in items]
                except (TypeError, ValueError):
                    raise BrodenError(f"{self.root}/index.csv line {i}: malformed row; {WHERE}") from None
                self.records.append(rec)
        if not self.records:
            raise BrodenError(f"{self.root}/index.csv lists no images; {WHERE}")

    def set_preprocessing(self, size: Tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> None:
        """The image side(s) and normalisation the model expects (e.g. from ``data_config_of``)."""
        self.size = (int(size[0]), int(size[1]))
        self.mean = torch.tensor([float(m) for m in mean]).view(-1, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(-1, 1, 1)
        self.in_chans = len(self.mean)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, i: int) -> Path:
        return self.root / "images" / self.records[i].image

    def load_rgb(self, i: int) -> Image.Image:
        """The i-th image as a PIL RGB image at its stored size."""
        path = self.image_path(i)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise BrodenError(f"cannot read Broden image {path}: {e}") from None

    def load_mask(self, i: int, name: str) -> np.ndarray:
        """Label numbers (sh, sw) of mask PNG ``name`` of image i (resized nearest if stored at another size)."""
        path = self.root / "images" / name
        sh, sw = self.records[i].seg_size
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (sw, sh):
                    im = im.resize((sw, sh), Image.NEAREST)
                return decode_mask(np.asarray(im))
        except (OSError, ValueError) as e:
            raise BrodenError(f"cannot read Broden mask {path}: {e}") from None

    def transform(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("L" if self.in_chans == 1 else "RGB").resize((self.size[1], self.size[0]), Image.BILINEAR)
        x = torch.from_numpy(np.array(image, dtype=np.float32) / 255.0)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        return (x - self.mean) / self.std

    def __getitem__(self, i: int):
        rec = self.records[i]
        seg = {
            "index": i,
            "masks": {cat: [self.load_mask(i, n) for n in names] for cat, names in rec.masks.items()},
            "labels": {cat: list(nums) for cat, nums in rec.labels.items()},
        }
        return self.transform(self.load_rgb(i)), seg


def collate(batch):
    """Images stacked into one tensor; segmentations kept as a list of dicts."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]
