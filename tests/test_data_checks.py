"""hcgnet.data for a newcomer's own folder: the automatic hold-out and its notes, the test hold-out as its own
setting, one-class folders refused, every image decoded before training (truncated JPEGs included) with all bad
files named at once or skipped and listed, and build_eval_dataset (test / val / the whole folder)."""
import io
import os

import numpy as np
import pytest
from PIL import Image, ImageFile

from hcgnet.data import DataConfig, DataError, build_data, build_eval_dataset, split_indices
from hcgnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD

from conftest import make_image_folder


def _png_bytes(colour, size=(8, 8)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def quick_folder(root, counts):
    """``{class: n}`` sub-folders of n tiny PNGs (one encoded image per class, written n times: fast)."""
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        data = _png_bytes((40 * c, 100, 200 - 40 * c))
        for i in range(n):
            (root / name / f"{i:04d}.png").write_bytes(data)
    return root


def jpeg(path, size=(96, 64), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
    return path


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ------------------------------------------------------------------------------------------------ hold-out


def test_automatic_holdout_of_1400_images(tmp_path):
    spec = f"imagefolder:{quick_folder(tmp_path / 'flat', {'a': 700, 'b': 700})}"
    data = build_data(spec, image_size=8)
    # a folder without val/ or test/: 10% for validation and, separately, 10% as the test set
    assert (len(data.train), len(data.val), len(data.test)) == (1120, 140, 140)
    assert data.notes[0].startswith("held out 140 of 1,400 images (10%) for validation (automatic")
    assert data.notes[1].startswith("held out 140 of 1,400 images (10%) for the test set (automatic")
    assert set(data.val.indices).isdisjoint(data.test.indices)
    # the same images in a train/ + val/ layout: the test set is val/, only validation is held out of train/
    os.rename(tmp_path / "flat", tmp_path / "train")
    (tmp_path / "tree").mkdir()
    os.rename(tmp_path / "train", tmp_path / "tree" / "train")
    quick_folder(tmp_path / "tree" / "val", {"a": 3, "b": 2})
    tree = build_data(f"imagefolder:{tmp_path / 'tree'}", image_size=8)
    assert (len(tree.train), len(tree.val), len(tree.test)) == (1260, 140, 5)
    assert len(tree.notes) == 3 and "140 of 1,400 training images (10%)" in tree.notes[0]
    assert tree.notes[2].startswith("augmentation: CIFAR's")  # the last note: which augmentation runs
    assert tree.notes[1] == f"the test set is {tmp_path / 'tree' / 'val'}: 5 images"


def test_automatic_holdout_of_120_images(tmp_path):
    spec = f"imagefolder:{make_image_folder(tmp_path / 'imgs', classes=3, per_class=40, size=(8, 8))}"
    data = build_data(spec, image_size=8)
    assert (len(data.train), len(data.val), len(data.test)) == (96, 12, 12)
    assert "held out 12 of 120 images (10%) for validation" in data.notes[0]


def test_automatic_holdout_rule():
    # 10% rounded half up, at least 1 from 10 images on, at most 5,000 (CIFAR: the paper's 45k/5k)
    expected = {9: 0, 10: 1, 14: 1, 15: 2, 1400: 140, 49_990: 4999, 50_000: 5000, 60_000: 5000, 200_000: 5000}
    got = {n: len(split_indices(n, None)[1]) for n in expected}
    assert got == expected


def test_too_few_images_for_a_holdout_say_so(tmp_path):
    spec = f"imagefolder:{quick_folder(tmp_path / 'tiny', {'a': 5, 'b': 4})}"
    data = build_data(spec, image_size=8)
    assert (len(data.train), len(data.val), len(data.test)) == (9, 0, 0)
    assert data.notes[0].startswith("no images held out for validation: 9 images are too few")


def test_test_holdout_is_not_val_size(tmp_path):
    spec = f"imagefolder:{quick_folder(tmp_path / 'flat', {'a': 50, 'b': 50})}"
    data = build_data(spec, val_size=0.2, image_size=8)
    assert (len(data.train), len(data.val), len(data.test)) == (70, 20, 10)  # not 60 / 20 / 20
    assert "held out 10 of 100 images (10%) for the test set (automatic" in data.notes[1]
    assert "(val_size=0.2)" in data.notes[0]
    explicit = build_data(spec, val_size=0.2, test_size=30, seed=0, image_size=8)
    assert (len(explicit.train), len(explicit.val), len(explicit.test)) == (50, 20, 30)
    assert explicit.val.indices == data.val.indices  # the validation set does not depend on test_size
    assert "held out 30 of 100 images (30%) for the test set (test_size=30)" in explicit.notes[1]


def test_holdout_leaving_no_training_images(tmp_path):
    spec = f"imagefolder:{quick_folder(tmp_path / 'flat', {'a': 10, 'b': 10})}"
    with pytest.raises(DataError) as e:
        build_data(spec, val_size=18, image_size=8)
    assert str(e.value) == ("val_size=18 leaves no training images: 20 images, 18 held out for validation and "
                            "2 for the test set; give a smaller --val-size or --test-size (a count, or a fraction "
                            "such as 0.1), which overrides a recipe's")


def test_test_size_ignored_with_a_note_when_the_data_has_a_test_set(tmp_path):
    quick_folder(tmp_path / "tree" / "train", {"a": 10, "b": 10})
    quick_folder(tmp_path / "tree" / "test", {"a": 1, "b": 1})
    data = build_data(f"imagefolder:{tmp_path / 'tree'}", test_size=5, image_size=8)
    assert len(data.test) == 2
    assert data.notes[2].startswith("test_size=5 ignored:") and "own test set (2 images)" in data.notes[2]


# ------------------------------------------------------------------------------------------------ classes


def test_one_class_is_refused(tmp_path):
    root = quick_folder(tmp_path / "cats", {"cat": 12})
    with pytest.raises(DataError) as e:
        build_data(f"imagefolder:{root}", image_size=8)
    assert str(e.value) == f"{root} has 1 class (cat); a classifier needs at least 2 class sub-folders"
    quick_folder(tmp_path / "tree" / "train", {"cat": 12})
    with pytest.raises(DataError, match="has 1 class \\(cat\\)"):
        build_data(f"imagefolder:{tmp_path / 'tree'}", image_size=8)


# ------------------------------------------------------------------------------------------------ bad images


def test_truncated_jpeg_is_found_before_training(tmp_path, monkeypatch):
    root = quick_folder(tmp_path / "imgs", {"a": 6, "b": 6})
    bad = truncate(jpeg(root / "b" / "photo.jpg"))
    Image.open(bad).verify()  # the header check of the old pre-scan passes it
    # even when another library asked PIL to pad truncated images
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError) as e:
        build_data(f"imagefolder:{root}", image_size=8)
    assert str(e.value).startswith(f"1 of 13 images in {root} cannot be read: b/photo.jpg (image file is truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the setting is restored afterwards
    skipping = build_data(f"imagefolder:{root}", image_size=8, skip_bad_images=True)
    assert skipping.skipped_files == [str(bad)] and skipping.skipped == 1


def _five_bad(root):
    bad = [truncate(jpeg(root / "a" / "x_trunc.jpg")), root / "a" / "y_empty.png", root / "b" / "z_text.jpg",
           root / "b" / "w_garbage.png", truncate(jpeg(root / "b" / "v_cut.jpg", seed=3), keep=0.2)]
    bad[1].write_bytes(b"")
    bad[2].write_text("not an image")
    bad[3].write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return sorted(str(p) for p in bad)


def test_all_bad_images_reported_at_once(tmp_path):
    root = quick_folder(tmp_path / "imgs", {"a": 10, "b": 10})
    bad = _five_bad(root)
    log = tmp_path / "run" / "bad_images.txt"
    with pytest.raises(DataError) as e:
        build_data(f"imagefolder:{root}", image_size=8, bad_images_log=str(log))
    msg = str(e.value)
    assert msg.startswith(f"5 of 25 images in {root} cannot be read: a/x_trunc.jpg (")
    assert " and 2 more; the full list is in " + str(log) + "; remove them or pass --skip-bad-images" in msg
    assert "\n" not in msg
    assert sorted(line.split("\t")[0] for line in log.read_text().splitlines()) == bad
    assert os.listdir(log.parent) == ["bad_images.txt"]  # written atomically: no temporary file left


def test_skipped_images_listed_and_written(tmp_path):
    root = quick_folder(tmp_path / "imgs", {"a": 10, "b": 10})
    bad = _five_bad(root)
    log = tmp_path / "run" / "bad_images.txt"
    data = build_data(f"imagefolder:{root}", image_size=8, skip_bad_images=True, bad_images_log=log)
    assert data.skipped == 5 and sorted(data.skipped_files) == bad
    assert len(data.train) + len(data.val) + len(data.test) == 20
    kept = {p for p, _ in data.train.dataset.samples}
    assert kept.isdisjoint(bad) and len(kept) == 20
    assert sorted(line.split("\t")[0] for line in log.read_text().splitlines()) == bad
    skipped = next(n for n in data.notes if n.startswith("skipped"))
    assert skipped.startswith("skipped 5 unreadable images (") and skipped.endswith(f"in {log}")


def test_clean_folder_writes_no_log(tmp_path):
    root = quick_folder(tmp_path / "imgs", {"a": 10, "b": 10})
    data = build_data(f"imagefolder:{root}", image_size=8, bad_images_log=tmp_path / "bad.txt")
    assert data.skipped_files == [] and not (tmp_path / "bad.txt").exists()


# ------------------------------------------------------------------------------------------------ eval


def _config(classes, size=8):
    return DataConfig("imagefolder", (3, size, size), IMAGENET_MEAN, IMAGENET_STD, int(size / 0.875), classes)


def test_eval_all_scores_every_image(tmp_path):
    root = quick_folder(tmp_path / "test_photos", {"cat": 7, "dog": 11, "fox": 12})
    config = _config(["cat", "dog", "fox"])
    whole = build_eval_dataset(f"imagefolder:{root}", config, split="all")
    assert len(whole) == 30
    assert len(build_eval_dataset(f"imagefolder:{root}", config, split="test")) == 3  # the held-out part only
    x, y = whole[29]
    assert x.shape == (3, 8, 8) and y == 2
    # labelled with the model's classes: a folder lacking some is labelled by name, not by position
    only_fox = quick_folder(tmp_path / "foxes", {"fox": 4})
    foxes = build_eval_dataset(f"imagefolder:{only_fox}", config, split="all")
    assert [y for _, y in foxes.samples] == [2, 2, 2, 2]
    # a train/ + val/ layout: "all" is both
    quick_folder(tmp_path / "tree" / "train", {"cat": 5, "dog": 5})
    quick_folder(tmp_path / "tree" / "val", {"cat": 2, "fox": 1})
    assert len(build_eval_dataset(f"imagefolder:{tmp_path / 'tree'}", config, split="all")) == 13


def test_eval_class_the_model_does_not_know(tmp_path):
    root = quick_folder(tmp_path / "photos", {"cat": 2, "zebra": 2})
    with pytest.raises(DataError) as e:
        build_eval_dataset(f"imagefolder:{root}", _config(["cat", "dog"]), split="all")
    assert str(e.value) == (f"{root} has 2 class folders and 1 the model does not know: zebra (the folders of its "
                            "2 classes are cat, dog)")
    # a model that carries no class names ("0", "1", ...) labels the folder's sorted classes, as training does
    unnamed = build_eval_dataset(f"imagefolder:{root}", _config(["0", "1", "2"]), split="all")
    assert [y for _, y in unnamed.samples] == [0, 0, 1, 1]


def test_a_class_name_with_a_slash_is_its_folder_name_with_an_underscore(tmp_path):
    """Fashion-MNIST's "T-shirt/top" cannot name a folder: a folder of a user's own photos holds it as
    "T-shirt_top", labelled with the class's index; a folder named otherwise is refused, the error naming the
    folder name to use."""
    names = ["T-shirt/top", "Trouser", "Pullover"]
    root = quick_folder(tmp_path / "mine", {"T-shirt_top": 2, "Pullover": 3})
    whole = build_eval_dataset(f"imagefolder:{root}", _config(names), split="all")
    assert sorted(y for _, y in whole.samples) == [0, 0, 2, 2, 2]
    wrong = quick_folder(tmp_path / "wrong", {"T-shirt": 2, "Trouser": 1})
    with pytest.raises(DataError) as e:
        build_eval_dataset(f"imagefolder:{wrong}", _config(names), split="all")
    assert str(e.value) == (f"{wrong} has 2 class folders and 1 the model does not know: T-shirt (the folders of "
                            "its 3 classes are Pullover, T-shirt_top, Trouser; '/' in a class name is '_' in its "
                            "folder's: T-shirt_top)")


def test_eval_rebuilds_the_training_split(tmp_path):
    spec = f"imagefolder:{quick_folder(tmp_path / 'flat', {'a': 30, 'b': 25, 'c': 20})}"
    trained = build_data(spec, val_size=0.2, test_size=9, seed=7, image_size=8)
    for split, part in (("val", trained.val), ("test", trained.test)):
        ds = build_eval_dataset(spec, trained.config, split=split, val_size=0.2, test_size=9, seed=7)
        assert ds.indices == part.indices and [ds[i][1] for i in range(3)] == [part[i][1] for i in range(3)]
    other_seed = build_eval_dataset(spec, trained.config, split="test", val_size=0.2, test_size=9, seed=8)
    assert other_seed.indices != trained.test.indices
    with pytest.raises(DataError, match="unknown split 'train'"):
        build_eval_dataset(spec, trained.config, split="train")


def test_eval_rebuilds_the_split_after_skipping(tmp_path):
    root = quick_folder(tmp_path / "flat", {"a": 20, "b": 20})
    _five_bad(root)
    trained = build_data(f"imagefolder:{root}", seed=1, skip_bad_images=True, image_size=8)
    again = build_eval_dataset(f"imagefolder:{root}", trained.config, split="val", seed=1, skip_bad_images=True)
    assert again.indices == trained.val.indices
    assert [again.dataset.samples[i] for i in again.indices] == [trained.val.dataset.samples[i]
                                                                 for i in trained.val.indices]


def test_a_file_pil_cannot_identify_is_named_in_plain_words(tmp_path):
    from hcgnet.data import DataError
    from hcgnet.data.images import load_image

    (tmp_path / "notes.jpg").write_text("shopping list")
    with pytest.raises(DataError) as e:
        load_image(tmp_path / "notes.jpg", hint="")
    assert str(e.value) == f"cannot read image {tmp_path / 'notes.jpg'}: not an image file PIL can read (or its first " \
                           "bytes are damaged)"
