"""COCO-format data for the detectors: the checks of read_coco (each bad input one line, exit code 2 through the
CLI), the samples in torchvision's format, and the aspect-ratio grouped batches."""
import json
import shutil

import pytest
import torch
from PIL import Image

from coco_toy import CATEGORIES, TOY_MODEL, make_coco
from hcgnet.cli import main
from hcgnet.detection.data import (CLIP_PIXELS, CocoDetectionSet, CocoFormatError, GroupedBatches, aspect_groups,
                                   read_coco)

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]  # pycocotools, NumPy 2


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("coco"), count=6)


def edited(toy, tmp_path, edit):
    """A copy of the toy annotation file changed by ``edit(data)`` (which may return a replacement)."""
    data = json.loads(toy[1].read_text())
    data = edit(data) or data
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return toy[0], path


def test_categories_become_contiguous_labels_and_back(toy):
    data = read_coco(*toy, masks=True)
    assert data.category_ids == [3, 7] and data.class_names == ["box", "ball"] and data.num_classes == 3
    sample_labels = {int(label) for _, t in CocoDetectionSet(data, data.image_ids, False, True) for label in t["labels"]}
    assert sample_labels == {1, 2}


def test_a_sample_is_in_torchvision_detection_format(toy):
    data = read_coco(*toy, masks=True)
    first = data.coco.imgToAnns[1]
    image, target = CocoDetectionSet(data, [1], train=False, masks=True)[0]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
    x, y, w, h = first[0]["bbox"]
    assert target["boxes"][0].tolist() == [x, y, x + w, y + h]          # x1, y1, x2, y2
    assert target["masks"].shape == (len(first), 64, 64) and target["masks"].dtype == torch.uint8
    assert target["masks"][0].sum() == data.coco.annToMask(first[0]).sum() > 0
    assert target["image_id"] == 1


def test_the_training_flip_moves_boxes_and_masks_with_the_image(toy):
    data = read_coco(*toy, masks=True)
    plain = CocoDetectionSet(data, [2], train=False, masks=True)[0]
    flips = CocoDetectionSet(data, [2], train=True, masks=True)
    torch.manual_seed(0)
    flipped = next(s for s in (flips[0] for _ in range(20)) if not torch.equal(s[0], plain[0]))
    assert torch.equal(flipped[0], plain[0].flip(-1)) and torch.equal(flipped[1]["masks"], plain[1]["masks"].flip(-1))
    x1, y1, x2, y2 = plain[1]["boxes"][0].tolist()
    assert flipped[1]["boxes"][0].tolist() == [96 - x2, y1, 96 - x1, y2]   # image 2 is 96 wide


def test_images_without_objects_and_crowds_are_left_out_of_training(toy, tmp_path):
    def edit(data):
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]
        for a in data["annotations"]:
            if a["image_id"] == 3:
                a["iscrowd"] = 1
    data = read_coco(*edited(toy, tmp_path, edit))
    assert data.image_ids == [1, 2, 3, 4, 5, 6] and data.trainable_ids() == [1, 4, 5, 6]


def test_crowd_boxes_are_left_out_of_an_images_training_targets(toy, tmp_path):
    original = [a for a in json.loads(toy[1].read_text())["annotations"] if a["image_id"] == 1]

    def edit(data):  # a crowd region beside image 1's own objects
        data["annotations"].append({"id": 999, "image_id": 1, "category_id": 7, "bbox": [5.0, 6.0, 7.0, 8.0],
                                    "segmentation": [[5, 6, 12, 6, 12, 14, 5, 14]], "iscrowd": 1, "area": 56.0})
    data = read_coco(*edited(toy, tmp_path, edit), masks=True)
    _, target = CocoDetectionSet(data, [1], train=True, masks=True)[0]
    hand = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in original)]
    flipped = [[64 - x2, y1, 64 - x1, y2] for x1, y1, x2, y2 in hand]          # the training flip, if drawn
    assert target["boxes"].tolist() in (hand, flipped) and len(target["masks"]) == len(hand)
    assert target["labels"].tolist() == [1 if a["category_id"] == 3 else 2 for a in original]


def test_boxes_slightly_outside_are_clipped(toy, tmp_path):
    assert CLIP_PIXELS == 2

    def edit(data):  # image 1 is 64 x 64: out by 1.5 px left and 1.5 px below, by 2 px right and 1 px above
        data["annotations"][0]["bbox"] = [-1.5, 2.0, 20.0, 63.5]
        data["annotations"].append({"id": 998, "image_id": 1, "category_id": 3, "bbox": [40.0, -1.0, 26.0, 20.0],
                                    "segmentation": [[40, 0, 64, 0, 64, 19, 40, 19]], "iscrowd": 0, "area": 456.0})
    images, path = edited(toy, tmp_path, edit)
    data = read_coco(images, path)
    assert data.coco.anns[1]["bbox"] == [0.0, 2.0, 18.5, 62.0]
    assert data.coco.anns[998]["bbox"] == [40.0, 0.0, 24.0, 19.0]              # the right and top edges too
    assert data.notes == [f"{path}: clipped 2 boxes sticking out of its image by at most 2 px"]


def test_grouped_batches_keep_aspect_groups_and_resume_where_they_stopped():
    groups = aspect_groups([1.0, 1.5, 0.67, 1.0, 1.5, 0.67, 1.0, 1.5, 1.0, 1.0, 1.5, 0.67])
    assert len(set(groups)) == 3
    sampler = GroupedBatches(groups, batch_size=2, seed=3)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert len(batches) == 6 and sorted(i for b in batches for i in b) == list(range(12))
    assert sum(groups[b[0]] == groups[b[1]] for b in batches) >= 5    # at most the leftovers mix
    sampler.set_epoch(1, skip_batches=4)
    assert list(sampler) == batches[4:] and len(sampler) == 2
    sampler.set_epoch(2)
    assert list(sampler) != batches                                  # a new order every epoch


# ------------------------------------------------------------------------------------------------ bad input


def _drop(key):
    return lambda data: data.pop(key) and None


BAD = {
    "not JSON": (lambda data: "images: [1, 2", "is not JSON"),
    "a JSON list": (lambda data: [data], "is not a COCO instances file: it holds a JSON list"),
    "no categories": (_drop("categories"), "is not a COCO instances file: no 'categories' list"),
    "empty annotations": (lambda data: data.update(annotations=[]), "has an empty annotation list"),
    "unknown category": (lambda data: data["annotations"][2].update(category_id=5),
                         "1 annotation (id 3) names a category_id that is not in its categories; fix or remove it"),
    "unknown image": (lambda data: data["annotations"][1].update(image_id=99),
                      "1 annotation (id 2) names an image_id that is not in its images; fix or remove it"),
    "degenerate box": (lambda data: data["annotations"][1].update(bbox=[3, 3, 0, 10]),
                       "1 annotation (id 2) has a degenerate box"),
    "box outside": (lambda data: data["annotations"][0].update(bbox=[50, 10, 17, 10]),   # 3 px past the right
                    "1 annotation has a box outside its image, the first annotation id 1: [x, y, w, h] = [50, 10, 17, 10] "
                    "in a 64x64 image"),
    "box outside above": (lambda data: data["annotations"][0].update(bbox=[10, -3, 10, 10]),
                          "the first annotation id 1: [x, y, w, h] = [10, -3, 10, 10]"),
    "unknown images": (lambda data: [data["annotations"][k].update(image_id=99) for k in (1, 3)] and None,
                       "2 annotations (ids 2, 4) name an image_id that is not in its images; fix or remove them"),
    "degenerate boxes": (lambda data: [data["annotations"][k].update(bbox=[3, 3, 5, -1]) for k in (0, 1)] and None,
                         "2 annotations (ids 1, 2) have a degenerate box"),
    "boxes outside": (lambda data: [data["annotations"][k].update(bbox=[10, -3, 10, 10]) for k in (0, 1)] and None,
                      "2 annotations have boxes outside their images, the first annotation id 1"),
    "missing images": (lambda data: data["images"].extend(
        {"id": 100 + k, "file_name": f"gone{k}.png", "width": 64, "height": 64} for k in range(5)),
        "5 of the 11 images listed in"),
    "image entry without size": (lambda data: data["images"][0].pop("width") and None,
                                 "image entry 0 has no 'width'"),
    "image of no size": (lambda data: data["images"][1].update(height="64"),
                         "1 image (id 2) has a width or height that is not a positive number"),
    "mask model without masks": (lambda data: data["annotations"][0].pop("segmentation") and None,
                                 "1 annotation (id 1) has no segmentation"),
    # pycocotools indexes by id: a repeated image would be trained and scored twice, a repeated annotation id
    # leaves COCOeval one object short
    "an image listed twice": (lambda data: data["images"].append(dict(data["images"][0])),
                              "the image id 1 is given to more than one entry of its 'images'; give every image its "
                              "own id"),
    "annotation ids repeated": (lambda data: [data["annotations"][k].update(id=1) for k in (1, 2)]
                                and data["annotations"][4].update(id=4) and None,
                                "the annotation ids 1, 4 are each given to more than one entry of its 'annotations'"),
    "category ids repeated": (lambda data: data["categories"].append({"id": 3, "name": "again"}),
                              "the category id 3 is given to more than one entry of its 'categories'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_coco_input_is_one_line_and_exit_code_2(toy, tmp_path, capsys, case):
    edit, expected = BAD[case]
    images, path = edited(toy, tmp_path, edit)
    out = tmp_path / "run"
    code = main(["detect", "train", "--images", str(images), "--annotations", str(path), "--output", str(out),
                 "--device", "cpu", "--model", TOY_MODEL])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hcgnet: error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not out.exists()                                          # a refused run leaves no folder behind


def test_missing_images_are_named(toy, tmp_path):
    images, path = edited(toy, tmp_path, BAD["missing images"][0])
    with pytest.raises(CocoFormatError, match=r"are missing from .*: gone0.png, gone1.png, gone2.png and 2 more; "
                                              "check --images"):
        read_coco(images, path)
    images, path = edited(toy, tmp_path, lambda data: data["images"].append(
        {"id": 100, "file_name": "gone.png", "width": 64, "height": 64}))
    with pytest.raises(CocoFormatError, match=r"1 of the 7 images listed in .* is missing from .*: gone.png;"):
        read_coco(images, path)


def test_images_of_another_size_than_their_entries_are_named_before_anything_runs(toy, tmp_path):
    images, path = edited(toy, tmp_path, lambda data: data["images"][0].update(width=70))
    with pytest.raises(CocoFormatError, match=r"^1 of the 6 images listed in .*instances.json is not the size "
                                              r"instances.json gives: 000.png is 64x64, listed 70x64 pixels; fix the "
                                              r"width and height in the annotation file"):
        read_coco(images, path)

    def wider(data):  # every entry wrong: three named, the count says how many in all
        for im in data["images"]:
            im["width"] += 1
    images, path = edited(toy, tmp_path, wider)
    with pytest.raises(CocoFormatError, match=r"^6 of the 6 images .* are not the size .*: 000.png is 64x64, listed "
                                              r"65x64, 001.png .*, 002.png .* and 3 more pixels"):
        read_coco(images, path)


def test_an_image_whose_header_cannot_be_read_is_named(toy, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(toy[0], folder)
    (folder / "001.png").write_bytes(b"not an image")
    with pytest.raises(CocoFormatError, match=r"^1 of the 6 images listed in .* cannot be read: 001.png \(.*\); "
                                              r"replace it or leave it out of"):
        read_coco(folder, toy[1])


def test_an_image_changed_after_the_check_is_still_named_when_drawn(toy, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(toy[0], folder)
    data = read_coco(folder, toy[1])
    Image.new("RGB", (70, 64)).save(folder / "000.png")
    with pytest.raises(CocoFormatError, match=r"000.png is 70x64 pixels but .* says 64x64"):
        CocoDetectionSet(data, [1], train=False, masks=False)[0]


def test_a_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(CocoFormatError, match="annotation file .*nothing.json does not exist"):
        read_coco(tmp_path, tmp_path / "nothing.json")


def test_an_image_file_given_as_the_image_folder_is_named_a_file(toy):
    images, path = toy
    one = next(images.iterdir())
    with pytest.raises(CocoFormatError, match=f"image folder {one} is a file, not a folder"):
        read_coco(one, path)


def test_toy_categories_have_a_gap():  # the label <-> id mapping is only tested if ids are not 1..K
    assert [c["id"] for c in CATEGORIES] != list(range(1, len(CATEGORIES) + 1))
