"""The Broden dataset (Bau et al., CVPR 2017) as a torch Dataset: images with per-category concept labels,
read as NetDissect-Lite's ``loader/data_loader.py`` reads it.

Layout of a Broden directory (``broden1_224`` from the NetDissect project, or one made the same way)::

    index.csv      image, split, ih, iw, sh, sw, then one column per category (color, object, part,
                   material, scene, texture; a column with labels that category.csv does not list is
                   refused). A cell is empty or ';'-separated items; an item of digits is a label number
                   that covers the whole image (scene, texture), any other item is the name of a mask PNG
                   (pixel labels). The content decides, not the category's name.
    category.csv   name, first, last, count, frequency -- one row per category, in Broden's order
    label.csv      number, name, category, frequency, coverage, syns; row 0 is '-', no label
    c_<cat>.csv    code, number, name, frequency, coverage: the labels of category <cat> (``number``) and
                   their pixel coverage in it; a label's primary category is the selected one where this
                   coverage is largest (ties: the later category of category.csv, as Lite's ``max`` does)
    images/        the images and mask PNGs that index.csv names, relative to images/

A mask PNG holds a label number per pixel in its red and green channels: ``label = R + 256 * G``
(0 = no label). Masks belong at the segmentation resolution ``sh x sw`` (112 x 112 in broden1_224 whose
images are 224 x 224); one stored at another size is resized nearest-neighbour (never interpolating label
numbers). Images with no data in any selected category are left out, as Lite does.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from hcgnet.errors import HCGNetError

CATEGORIES = ("color", "object", "part", "material", "scene", "texture")
#: index.csv's columns that are no category; every other column is one (category.csv must list it).
INDEX_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
WHERE = ("download broden1_224 from the NetDissect project (CSAILVision/NetDissect-Lite, script/dlbroden.sh) and pass "
         "--broden DIR; to try the command without it, python -m hcgnet.analysis.broden NEW_FOLDER writes a small "
         "synthetic set in Broden's layout")


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
    masks: Dict[str, List[str]] = field(default_factory=dict)    # per category: mask PNG names
    labels: Dict[str, List[int]] = field(default_factory=dict)   # per category: whole-image label numbers


class Broden(Dataset):
    """A Broden directory as a Dataset of ``(image, segmentation)``.

    ``image`` is a (C, H, W) float tensor: the image resized (no crop, so pixels stay aligned with the masks)
    to ``size`` and normalised with ``mean``/``std``. ``segmentation`` is a dict ``{"index": i,
    "size": (sh, sw), "masks": {category: [int64 (sh, sw) label arrays]}, "labels": {category: [whole-image
    label numbers]}}``; :func:`collate` batches them (images stacked, segmentations in a list).

    Attributes: ``labels`` (label number -> name), ``label_category`` (label number -> its primary category,
    from the c_<cat>.csv coverages), ``categories`` (the selected ones present in index.csv, in category.csv's
    order), ``records`` (images with data in a selected category), ``dropped`` (how many had none).
    ``limit`` keeps the first N kept images; ``categories`` restricts to some.
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

        self.labels: Dict[int, str] = {}
        for i, row in enumerate(_read_csv(self.root / "label.csv"), start=2):
            try:
                number = int(row["number"])
                name = row["name"]
            except (KeyError, TypeError, ValueError):
                raise BrodenError(f"{self.root}/label.csv line {i}: needs number and name columns; {WHERE}") from None
            if number != 0:  # Broden's row 0 is '-', no label
                self.labels[number] = name

        with open(self.root / "index.csv", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in ("image", "ih", "iw", "sh", "sw") if c not in header]
            if missing:
                raise BrodenError(f"{self.root}/index.csv lacks column(s) {', '.join(missing)}; {WHERE}")
            present = [c for c in known if c in header]          # category.csv's order, as Lite keeps it
            wanted = [c for c in present if c in categories] if categories is not None else present
            unknown = [c for c in (categories or ()) if c not in present]
            if unknown:
                raise BrodenError(f"category {', '.join(unknown)} is not in {self.root}/index.csv "
                                  f"(it has {', '.join(present)})")
            self.categories = wanted
            # a column category.csv does not list (a typo there: colour for color) would be left out without a word
            unlisted = [c for c in header if c not in INDEX_COLUMNS and c not in known]
            self.label_category = self._primary_categories(wanted)
            self.records: List[BrodenRecord] = []
            self.dropped = 0
            self.listed = 0   # rows of index.csv, all of them (with a limit too: "the first N of ...")
            for i, row in enumerate(reader, start=2):
                if limit is not None and len(self.records) >= limit:
                    self.listed += 1 + sum(1 for _ in reader)
                    break
                self.listed += 1
                for c in unlisted:
                    if (row.get(c) or "").strip():
                        raise BrodenError(self._unlisted(c, known, header))
                try:
                    rec = BrodenRecord(row["image"], (int(row["ih"]), int(row["iw"])), (int(row["sh"]), int(row["sw"])))
                    for cat in wanted:
                        items = [t.strip() for t in (row.get(cat) or "").split(";") if t.strip()]
                        rec.labels[cat] = [int(t) for t in items if t.isdigit()]
                        rec.masks[cat] = [t for t in items if not t.isdigit()]
                except (TypeError, ValueError):
                    raise BrodenError(f"{self.root}/index.csv line {i}: malformed row; {WHERE}") from None
                if any(rec.masks.values()) or any(l for ls in rec.labels.values() for l in ls):
                    self.records.append(rec)
                else:
                    self.dropped += 1    # no data in the selected categories: Lite leaves it out
        if not self.records:
            raise BrodenError(f"{self.root}/index.csv lists no images with data in {', '.join(wanted)}; {WHERE}")

    def _unlisted(self, column: str, known: Sequence[str], header: Sequence[str]) -> str:
        import difflib

        typo = difflib.get_close_matches(column, [c for c in known if c not in header], n=1, cutoff=0.6)
        fix = f"correct {typo[0]!r} to {column!r} there" if typo else f"add {column!r} to it"
        return (f"{self.root}/index.csv has labels in column {column!r}, which category.csv does not list (it lists "
                f"{', '.join(known)}), so that category would be left out; {fix}")

    def _primary_categories(self, categories: Sequence[str]) -> Dict[int, str]:
        """label number -> its primary category: the one of ``categories`` whose c_<cat>.csv gives it the largest
        coverage (ties: the later one, as Lite's ``max`` over (coverage, index) picks). Labels that no selected
        c_<cat>.csv lists are no concept."""
        best: Dict[int, Tuple[float, int]] = {}
        for ic, cat in enumerate(categories):
            path = self.root / f"c_{cat}.csv"
            if not path.is_file():
                raise BrodenError(f"{self.root} is not a Broden directory: no c_{cat}.csv; {WHERE}")
            for i, row in enumerate(_read_csv(path), start=2):
                try:
                    code, number, coverage = int(row["code"]), int(row["number"]), float(row["coverage"])
                except (KeyError, TypeError, ValueError):
                    raise BrodenError(f"{path} line {i}: needs code, number and coverage columns; {WHERE}") from None
                if code == 0 or number == 0:
                    continue  # code 0 is the category's '-'
                best[number] = max(best.get(number, (-1.0, -1)), (coverage, ic))
        if not best and categories:
            raise BrodenError(f"{self.root}: no c_<category>.csv of {', '.join(categories)} lists a label (rows of code, "
                              "number, name, frequency, coverage decide each label's primary category); " + WHERE)
        return {n: categories[ic] for n, (_, ic) in sorted(best.items())}

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
            "size": rec.seg_size,
            "masks": {cat: [self.load_mask(i, n) for n in names] for cat, names in rec.masks.items()},
            "labels": {cat: list(nums) for cat, nums in rec.labels.items()},
        }
        return self.transform(self.load_rgb(i)), seg


def collate(batch):
    """Images stacked into one tensor; segmentations kept as a list of dicts."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


# A small synthetic set in the Broden layout, to try ``hcgnet dissect`` without Broden (about 1 GB) -----------

SYNTHETIC_SIDE, SYNTHETIC_SEG = 64, 32
SYNTHETIC_COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SYNTHETIC_OBJECTS = ("disc", "square", "bar")
SYNTHETIC_SCENES = ("dark room", "bright room")
SYNTHETIC_TEXTURES = ("striped", "dotted")
SYNTHETIC_CATEGORIES = ("color", "object", "scene", "texture")


def _synthetic_numbering() -> Dict[int, Tuple[str, str]]:
    """label number -> (name, category); 0 is "no label", as in Broden."""
    names = ([(c, "color") for c in SYNTHETIC_COLORS] + [(o, "object") for o in SYNTHETIC_OBJECTS]
             + [(s, "scene") for s in SYNTHETIC_SCENES] + [(t, "texture") for t in SYNTHETIC_TEXTURES])
    return {i + 1: item for i, item in enumerate(names)}


def _synthetic_image(rng: np.random.Generator, number: Dict[Tuple[str, str], int]):
    from PIL import ImageDraw

    side = SYNTHETIC_SIDE
    scene, texture = int(rng.integers(2)), int(rng.integers(2))
    img = np.full((side, side, 3), 60 if scene == 0 else 170, np.float64)
    yy, xx = np.mgrid[:side, :side]
    img[(yy // 4) % 2 == 0 if texture == 0 else ((yy % 8 < 3) & (xx % 8 < 3))] += 35
    canvas = Image.fromarray(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))
    color_layer, object_layer = Image.new("L", (side, side), 0), Image.new("L", (side, side), 0)
    draw, dc, do = ImageDraw.Draw(canvas), ImageDraw.Draw(color_layer), ImageDraw.Draw(object_layer)
    for _ in range(int(rng.integers(1, 4))):
        shape, colour = SYNTHETIC_OBJECTS[int(rng.integers(3))], list(SYNTHETIC_COLORS)[int(rng.integers(4))]
        s = int(rng.integers(12, 26))
        x, y = int(rng.integers(0, side - s)), int(rng.integers(0, side - s))
        box = (x, y, x + s, y + s) if shape != "bar" else (x, y + s // 3, x + s, y + 2 * s // 3)
        how = "ellipse" if shape == "disc" else "rectangle"
        getattr(draw, how)(box, fill=SYNTHETIC_COLORS[colour])
        getattr(dc, how)(box, fill=number[(colour, "color")])
        getattr(do, how)(box, fill=number[(shape, "object")])
    half = lambda layer: np.asarray(layer.resize((SYNTHETIC_SEG, SYNTHETIC_SEG), Image.NEAREST), np.int64)
    return (canvas, half(color_layer), half(object_layer), number[(SYNTHETIC_SCENES[scene], "scene")],
            number[(SYNTHETIC_TEXTURES[texture], "texture")])


def _write_rows(path: Path, header: Sequence[str], rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_synthetic(root: str | Path, images: int = 240, seed: int = 0, force: bool = False) -> Path:
    """Write a small synthetic set in the Broden layout into the new folder ``root``, to try ``hcgnet dissect``.

    Each 64 x 64 image has a background that is one of two textures (whole-image labels ``striped`` and
    ``dotted``) at one of two brightnesses (scene labels ``dark room`` / ``bright room``), and one to three
    shapes (objects ``disc``, ``square``, ``bar``), each in one of four colours (colors ``red``, ``green``,
    ``blue``, ``yellow``). Masks are at 32 x 32, Broden's half resolution. The concepts are simple on purpose:
    the set says whether the pipeline finds colour and shape detectors, not what a network learned about the
    real world. A folder that exists and holds anything is refused (:class:`BrodenError`) unless ``force``
    (then the set's files are written over those of the same names)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise BrodenError(f"{root} is a file; give a new folder for the synthetic Broden set")
    if root.is_dir() and any(root.iterdir()) and not force:
        raise BrodenError(f"{root} already holds files; give a new or empty folder, or pass --force to write the "
                          "synthetic set over them")
    if images < 1:
        raise BrodenError(f"--images must be 1 or more, got {images}")
    (root / "images").mkdir(parents=True, exist_ok=True)
    labels = _synthetic_numbering()
    number = {v: k for k, v in labels.items()}
    rng = np.random.default_rng(seed)
    rows, counts, cover = [], {}, {}
    for i in range(images):
        image, color, obj, scene, texture = _synthetic_image(rng, number)
        image.save(root / "images" / f"{i:04d}.jpg", quality=92)
        Image.fromarray(encode_mask(color)).save(root / "images" / f"{i:04d}_color.png")
        Image.fromarray(encode_mask(obj)).save(root / "images" / f"{i:04d}_object.png")
        for n in {*np.unique(color), *np.unique(obj), scene, texture} - {0}:
            counts[int(n)] = counts.get(int(n), 0) + 1
            # coverage in whole images, as Broden's tables give it (whole-image labels cover their image)
            share = 1.0 if n in (scene, texture) else float(((color == n) | (obj == n)).mean())
            cover[int(n)] = cover.get(int(n), 0.0) + share
        rows.append([f"{i:04d}.jpg", "train", SYNTHETIC_SIDE, SYNTHETIC_SIDE, SYNTHETIC_SEG, SYNTHETIC_SEG,
                     f"{i:04d}_color.png", f"{i:04d}_object.png", scene, texture])
    _write_rows(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", *SYNTHETIC_CATEGORIES], rows)
    _write_rows(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
                [[0, "-", "-", 0, 0, ""]] + [[n, name, f"{cat}({counts.get(n, 0)})", counts.get(n, 0),
                                              f"{cover.get(n, 0.0):.4f}", ""] for n, (name, cat) in labels.items()])
    per_category = {cat: [n for n, (_, c) in labels.items() if c == cat] for cat in SYNTHETIC_CATEGORIES}
    _write_rows(root / "category.csv", ["name", "first", "last", "count", "frequency"],
                [[cat, min(ns), max(ns), len(ns), images] for cat, ns in per_category.items()])
    for cat, ns in per_category.items():  # the category's labels, coded from 1
        _write_rows(root / f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"],
                    [[0, 0, "-", 0, 0]] + [[code, n, labels[n][0], counts.get(n, 0), f"{cover.get(n, 0.0):.4f}"]
                                           for code, n in enumerate(ns, start=1)])
    return root


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m hcgnet.analysis.broden") -> int:
    """``python -m hcgnet.analysis.broden NEW_FOLDER``: :func:`write_synthetic` from the command line; a
    mistake is one line on stderr and exit code 2."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog=prog, description="Write a small synthetic data set in the Broden layout "
                                     "(coloured shapes on textured backgrounds) to try hcgnet dissect without Broden.")
    parser.add_argument("folder", metavar="NEW_FOLDER", help="where to write it (a new or empty folder)")
    parser.add_argument("--images", type=int, default=240, help="how many images (default 240, a few seconds)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawings (default 0)")
    parser.add_argument("--force", action="store_true", help="write into a folder that already holds files")
    args = parser.parse_args(argv)
    try:
        root = write_synthetic(args.folder, args.images, args.seed, args.force)
    except BrodenError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.images} images in the Broden layout to {root}; try: hcgnet dissect --checkpoint CKPT "
          f"--broden {root} --output DIR")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
