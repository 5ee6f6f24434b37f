"""COCO-format detection data: an ``instances.json`` (images, annotations, categories) and a folder of images.

:func:`read_coco` checks the file before anything is trained or scored, and refuses what cannot work in one
line (a :class:`CocoFormatError`, exit code 2): a file that is not JSON or not COCO, missing image files,
annotations naming unknown images or categories, images whose header gives another size than their entry,
degenerate boxes (width or height <= 0), boxes clearly outside their image, and an empty annotation list. Boxes that stick out by at most :data:`CLIP_PIXELS`
pixels (rounding in annotation tools) are clipped to the image instead.

COCO category ids (1..90 with gaps for COCO itself) become contiguous labels 1..K, 0 being torchvision's
background; ``category_ids[label - 1]`` maps a label back. Crowd annotations (``iscrowd: 1``) are left out of
training, as Detectron does (torchvision's detectors have no "ignore" region), and are kept for scoring,
where COCOeval ignores detections on them.

Images go through torchvision's ``transforms.v2`` (horizontal flip for training, then float in [0, 1]); the
detector resizes them itself (``min_size``/``max_size``). Batches are lists (torchvision's collate) drawn
from one aspect-ratio group at a time (:class:`GroupedBatches`), so padding to a common size wastes little.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from hcgnet.data.errors import DataError
from hcgnet.data.images import header_size, load_image, map_images
from hcgnet.errors import plural

#: A box may stick out of its image by this many pixels and is clipped; further out it is refused.
CLIP_PIXELS = 2.0
_NAMES_SHOWN = 3  # offending files or annotation ids named in a message; the count says how many in all


class CocoFormatError(DataError):
    """An annotation file or image folder that cannot be used as COCO-format detection data."""


def _few(items: Sequence[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:_NAMES_SHOWN])
    return shown + (f" and {len(items) - _NAMES_SHOWN} more" if len(items) > _NAMES_SHOWN else "")


def _counted(ids: Sequence[Any], singular: str, plural_: str, noun: str = "annotation") -> str:
    """``"1 annotation (id 3) has"``, ``"2 annotations (ids 3, 4) have"``: the count, the ids and the verb agreeing."""
    return (f"{plural(len(ids), noun)} ({'id' if len(ids) == 1 else 'ids'} {_few(ids)}) "
            f"{singular if len(ids) == 1 else plural_}")


def _them(items: Sequence[Any]) -> str:
    return "it" if len(items) == 1 else "them"


@dataclass
class CocoData:
    """A checked COCO-format dataset: pycocotools' index of it, and the label <-> category id mapping."""

    images_dir: Path
    annotations: Path
    coco: Any  # pycocotools.coco.COCO
    category_ids: List[int]  # label i + 1 is category category_ids[i]
    class_names: List[str]
    image_ids: List[int]
    notes: List[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Outputs of the detector's classifier: the categories plus the background."""
        return len(self.category_ids) + 1

    def label_of(self) -> Dict[int, int]:
        return {c: i + 1 for i, c in enumerate(self.category_ids)}

    def trainable_ids(self) -> List[int]:
        """Images with at least one object to learn from (torchvision's references skip the others)."""
        return [i for i in self.image_ids if any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns[i])]

    def path_of(self, image_id: int) -> Path:
        return self.images_dir / self.coco.imgs[image_id]["file_name"]


def _load_json(path: Path) -> Any:
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise CocoFormatError(f"annotation file {path} {what}; give a COCO instances JSON with --annotations")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{path} is not JSON ({e.msg} at line {e.lineno}); give a COCO instances file "
                              "(with images, annotations and categories)") from None
    except UnicodeDecodeError:
        raise CocoFormatError(f"{path} is not JSON (not UTF-8 text); give a COCO instances file") from None


def _require(entries: List[Any], keys: Sequence[str], what: str, path: Path) -> None:
    for n, entry in enumerate(entries):
        missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise CocoFormatError(f"{path}: {what} entry {n} has no {', '.join(repr(k) for k in missing)}; "
                                  f"COCO {what} entries need {', '.join(keys)}")


def _check_structure(data: Any, path: Path) -> None:
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path} is not a COCO instances file: it holds a JSON {type(data).__name__}, "
                              "not an object with images, annotations and categories")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise CocoFormatError(f"{path} is not a COCO instances file: no {' or '.join(repr(k) for k in missing)} "
                              "list (a COCO file has images, annotations and categories)")
    if not data["annotations"]:
        raise CocoFormatError(f"{path} has an empty annotation list: there are no objects to train on or score "
                              "against; annotate some images first")
    if not data["categories"]:
        raise CocoFormatError(f"{path} has no categories; list the object classes under 'categories'")
    _require(data["categories"], ("id", "name"), "category", path)
    _require(data["images"], ("id", "file_name", "width", "height"), "image", path)
    _require(data["annotations"], ("id", "image_id", "category_id", "bbox"), "annotation", path)
    unsized = [im["id"] for im in data["images"]
               if not all(isinstance(im[k], (int, float)) and im[k] > 0 for k in ("width", "height"))]
    if unsized:
        raise CocoFormatError(f"{path}: {_counted(unsized, 'has', 'have', 'image')} a width or height "
                              f"that is not a positive number of pixels; fix {_them(unsized)}")


def _check_unique_ids(data: Dict[str, Any], path: Path) -> None:
    """Every image, annotation and category its own id: pycocotools indexes each by id, so a repeated one is
    silently one entry (a repeated annotation id leaves COCOeval one object short; a repeated image is trained
    and scored twice)."""
    for key, noun in (("images", "image"), ("annotations", "annotation"), ("categories", "category")):
        seen, repeated = set(), []
        for entry in data[key]:
            if entry["id"] in seen and entry["id"] not in repeated:
                repeated.append(entry["id"])
            seen.add(entry["id"])
        if repeated:
            ids = f"the {noun} id {repeated[0]} is" if len(repeated) == 1 else f"the {noun} ids {_few(repeated)} are each"
            raise CocoFormatError(f"{path}: {ids} given to more than one entry of its {key!r}; give every {noun} "
                                  "its own id")


def _check_references(data: Dict[str, Any], path: Path) -> None:
    images = {im["id"] for im in data["images"]}
    categories = {c["id"] for c in data["categories"]}
    for key, known, where in (("a category_id", categories, "categories"), ("an image_id", images, "images")):
        bad = [a["id"] for a in data["annotations"] if a[key.split()[1]] not in known]
        if bad:
            raise CocoFormatError(f"{path}: {_counted(bad, 'names', 'name')} {key} that is not in its {where}; "
                                  f"fix or remove {_them(bad)}")


def _check_boxes(data: Dict[str, Any], path: Path) -> int:
    """Refuse degenerate and clearly-outside boxes (naming the annotation ids); clip the slightly-outside
    ones in place and return how many were clipped."""
    sizes = {im["id"]: (float(im["width"]), float(im["height"])) for im in data["images"]}
    malformed, degenerate, outside, clipped = [], [], [], 0
    for a in data["annotations"]:
        box = a["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            malformed.append(a["id"])
            continue
        x, y, w, h = box
        if w <= 0 or h <= 0:
            degenerate.append(a["id"])
            continue
        width, height = sizes[a["image_id"]]
        if x < -CLIP_PIXELS or y < -CLIP_PIXELS or x + w > width + CLIP_PIXELS or y + h > height + CLIP_PIXELS:
            outside.append((a["id"], box, width, height))
            continue
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            if x2 <= x1 or y2 <= y1:
                degenerate.append(a["id"])
                continue
            a["bbox"], clipped = [x1, y1, x2 - x1, y2 - y1], clipped + 1
    if malformed:
        raise CocoFormatError(f"{path}: {_counted(malformed, 'has', 'have')} a bbox "
                              f"that is not [x, y, width, height]; fix {_them(malformed)}")
    if degenerate:
        raise CocoFormatError(f"{path}: {_counted(degenerate, 'has', 'have')} a "
                              f"degenerate box (width or height <= 0 inside the image); remove or fix {_them(degenerate)}")
    if outside:
        ann, box, width, height = outside[0]
        raise CocoFormatError(
            f"{path}: {plural(len(outside), 'annotation')} {'has a box' if len(outside) == 1 else 'have boxes'} "
            f"outside {'its image' if len(outside) == 1 else 'their images'}, the first annotation id "
            f"{ann}: [x, y, w, h] = {box} in a {width:g}x{height:g} image (more than {CLIP_PIXELS:g} px out); "
            "fix the boxes or the image sizes")
    return clipped


def _check_masks(data: Dict[str, Any], path: Path) -> None:
    bare = [a["id"] for a in data["annotations"] if not a.get("iscrowd", 0) and not a.get("segmentation")]
    if bare:
        raise CocoFormatError(f"{path}: {_counted(bare, 'has', 'have')} no segmentation, "
                              "which a mask model needs; train a box model (--task box) or add the masks")


def _check_files(data: Dict[str, Any], images_dir: Path, path: Path) -> None:
    if not images_dir.is_dir():
        what = "is a file, not a folder" if images_dir.exists() else "does not exist"
        raise CocoFormatError(f"image folder {images_dir} {what}; give the folder of {path}'s images with --images")
    missing = [im["file_name"] for im in data["images"] if not (images_dir / im["file_name"]).is_file()]
    if missing:
        raise CocoFormatError(f"{len(missing):,} of the {plural(len(data['images']), 'image')} listed in {path} "
                              f"{'is' if len(missing) == 1 else 'are'} "
                              f"missing from {images_dir}: {_few(missing)}; check --images")


def _check_sizes(data: Dict[str, Any], images_dir: Path, path: Path) -> None:
    """Each image's header against its entry's width and height: the boxes were drawn on an image of that size,
    and a mismatch found only when the image is first drawn (a validation image, at the first epoch's end)
    would stop a run hours in. Headers only: about 40 us an image, so COCO's 118k train images take seconds."""
    images = data["images"]
    found = map_images(header_size, [str(images_dir / im["file_name"]) for im in images],
                       f"checking image sizes in {images_dir}")
    unreadable = [f"{im['file_name']} ({why})" for im, why in zip(images, found) if isinstance(why, str)]
    if unreadable:
        raise CocoFormatError(f"{len(unreadable):,} of the {plural(len(images), 'image')} listed in {path} "
                              f"cannot be read: {_few(unreadable)}; replace {_them(unreadable)} or leave "
                              f"{_them(unreadable)} out of {path}")
    wrong = [f"{im['file_name']} is {size[0]}x{size[1]}, listed {im['width']:g}x{im['height']:g}"
             for im, size in zip(images, found) if tuple(size) != (im["width"], im["height"])]
    if wrong:
        raise CocoFormatError(f"{len(wrong):,} of the {plural(len(images), 'image')} listed in {path} "
                              f"{'is' if len(wrong) == 1 else 'are'} not the size {path.name} gives: {_few(wrong)} "
                              "pixels; fix the width and height in the annotation file (its boxes are drawn "
                              "on an image of that size)")


def _complete(data: Dict[str, Any]) -> None:
    """Fields COCOeval reads that hand-made files often leave out: ``iscrowd`` (0) and ``area`` (the box's)."""
    for a in data["annotations"]:
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))


def coco_index(data: Dict[str, Any]):
    """pycocotools' ``COCO`` over an already-loaded dict, without its progress prints."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def read_coco(images: str | Path, annotations: str | Path, masks: bool = False) -> CocoData:
    """Read and check a COCO-format dataset; ``masks``: every object must have a segmentation."""
    images_dir, path = Path(images).expanduser(), Path(annotations).expanduser()
    data = _load_json(path)
    _check_structure(data, path)
    _check_unique_ids(data, path)
    _check_references(data, path)
    clipped = _check_boxes(data, path)
    if masks:
        _check_masks(data, path)
    _check_files(data, images_dir, path)
    _check_sizes(data, images_dir, path)
    _complete(data)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    notes = [f"{path}: clipped {plural(clipped, 'box')} sticking out of its image by at most {CLIP_PIXELS:g} px"
             ] if clipped else []
    return CocoData(images_dir, path, coco_index(data), [c["id"] for c in categories],
                    [str(c["name"]) for c in categories], sorted(im["id"] for im in data["images"]), notes)


# ------------------------------------------------------------------------------------------------ samples


def detection_transform(train: bool) -> v2.Compose:
    """torchvision's v2 detection transforms; flips move boxes and masks with the image."""
    steps = [v2.ToImage()] + ([v2.RandomHorizontalFlip(0.5)] if train else [])
    return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()])


class CocoDetectionSet(Dataset):
    """``(image, target)`` pairs in torchvision's detection format: a float image in [0, 1] and a dict of
    ``boxes`` (x1, y1, x2, y2 in pixels), ``labels`` (1..K), ``image_id`` and, with ``masks``, ``masks``
    (one 0/1 map per object, from polygons or RLE)."""

    def __init__(self, data: CocoData, image_ids: Sequence[int], train: bool, masks: bool) -> None:
        self.data, self.image_ids, self.masks = data, list(image_ids), masks
        self.transform = detection_transform(train)
        self.labels = data.label_of()

    def __len__(self) -> int:
        return len(self.image_ids)

    def aspect_ratios(self) -> List[float]:
        imgs = self.data.coco.imgs
        return [imgs[i]["width"] / imgs[i]["height"] for i in self.image_ids]

    def __getitem__(self, index: int):
        image_id = self.image_ids[index]
        info, path = self.data.coco.imgs[image_id], self.data.path_of(image_id)
        image = load_image(path, hint="").convert("RGB")
        if image.size != (info["width"], info["height"]):
            raise CocoFormatError(f"{path} is {image.size[0]}x{image.size[1]} pixels but {self.data.annotations} "
                                  f"says {info['width']}x{info['height']}; fix the annotation file")
        objects = [a for a in self.data.coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        xywh = torch.tensor([a["bbox"] for a in objects], dtype=torch.float32).reshape(-1, 4)
        target: Dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1),
                                              format="XYXY", canvas_size=(image.height, image.width)),
            "labels": torch.tensor([self.labels[a["category_id"]] for a in objects], dtype=torch.int64),
            "image_id": image_id,
        }
        if self.masks:
            maps = [self.data.coco.annToMask(a) for a in objects]
            stacked = np.stack(maps) if maps else np.zeros((0, image.height, image.width), np.uint8)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(stacked))
        return self.transform(image, target)


def collate(batch):
    """torchvision's detection collate: a tuple of images and a tuple of targets (sizes differ)."""
    return tuple(zip(*batch))


# ------------------------------------------------------------------------------------------------ batches


def aspect_groups(ratios: Sequence[float], k: int = 3) -> List[int]:
    """Width/height ratios binned on ``2 ** linspace(-1, 1, 2k + 1)``, as torchvision's references do."""
    bins = 2 ** np.linspace(-1, 1, 2 * k + 1)
    return [int(g) for g in np.digitize(np.asarray(ratios, dtype=np.float64), bins)]


class GroupedBatches(Sampler[List[int]]):
    """Batches whose images share an aspect-ratio group (the idea of torchvision's ``GroupedBatchSampler``).

    The order is the ``DistributedSampler`` permutation for ``(seed, epoch)`` (one shard per rank); a batch
    is emitted when its group has ``batch_size`` images, and what is left over at the end fills mixed
    batches. An epoch therefore has exactly ``len(shard) // batch_size`` batches, and a resumed run skips
    the first ``skip_batches`` of the same list.
    """

    def __init__(self, groups: Sequence[int], batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0) -> None:
        self.groups, self.batch_size = list(groups), batch_size
        self.inner = DistributedSampler(self.groups, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                                        drop_last=True)
        self.per_epoch, self.skip = len(self.inner) // batch_size, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip_batches

    def batches(self) -> List[List[int]]:
        waiting: Dict[int, List[int]] = defaultdict(list)
        batches = []
        for i in self.inner:
            group = waiting[self.groups[i]]
            group.append(i)
            if len(group) == self.batch_size:
                batches.append(group[:])
                group.clear()
        rest = [i for group in waiting.values() for i in group]
        batches += [rest[j:j + self.batch_size] for j in range(0, len(rest) - self.batch_size + 1, self.batch_size)]
        return batches[:self.per_epoch]

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches()[self.skip:])

    def __len__(self) -> int:
        return self.per_epoch - self.skip


def original_size(data: CocoData, image_id: int) -> Tuple[int, int]:
    info = data.coco.imgs[image_id]
    return int(info["height"]), int(info["width"])
