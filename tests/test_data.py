"""hcgnet.data: datasets in their real on-disk formats (tiny CIFAR files, generated ImageFolder trees, the real
Fashion-MNIST from the Debian package), splits, transforms and one-line errors."""
import dataclasses
import gzip
import json
import os
import pickle
import struct
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from conftest import make_image_folder
from hcgnet.data import (
    DATASETS, DataBundle, DataConfig, DataError, build_data, build_eval_dataset, build_eval_transform,
    build_train_transform, error_message, load_image, spec_folder, split_indices,
)
from hcgnet.data import datasets as D
from hcgnet.data import fashion_mnist as FM
from hcgnet.data.transforms import (
    CIFAR10_MEAN, CIFAR10_STD, FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGENET_MEAN, NORMALISATION,
)

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ------------------------------------------------------------------------------------------------ fixtures


class _Py2Pickler(pickle._Pickler):
    """Writes ``str`` as Python 2 byte strings (BINSTRING), as in the official CIFAR pickles (made with
    Python 2), which is why torchvision reads them with ``encoding='latin1'``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        data = obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_str


def _py2_pickle(obj, path):
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _images(n, seed, const_first=None):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    if const_first is not None:
        data[0] = const_first
    return data


def make_cifar10(root, per_batch=4, n_test=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = iter(range(10**6))
    for i in range(1, 6):
        _py2_pickle({"batch_label": f"training batch {i} of 5", "data": _images(per_batch, i),
                     "labels": [next(labels) % 10 for _ in range(per_batch)],
                     "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)]}, folder / f"data_batch_{i}")
    _py2_pickle({"batch_label": "testing batch 1 of 1", "data": _images(n_test, 99, const_first=128),
                 "labels": [j % 10 for j in range(n_test)], "filenames": [f"t{j}.png" for j in range(n_test)]},
                folder / "test_batch")
    _py2_pickle({"label_names": CIFAR10_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072},
                folder / "batches.meta")
    return folder


def make_cifar100(root, n_train=10, n_test=5):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine = [f"fine{i:02d}" for i in range(100)]
    for name, n in (("train", n_train), ("test", n_test)):
        _py2_pickle({"filenames": [f"{name}{j}.png" for j in range(n)], "batch_label": name,
                     "fine_labels": [(7 * j) % 100 for j in range(n)], "coarse_labels": [j % 20 for j in range(n)],
                     "data": _images(n, len(name))}, folder / name)
    _py2_pickle({"fine_label_names": fine, "coarse_label_names": [f"coarse{i}" for i in range(20)]}, folder / "meta")
    return fine


def _png(path, seed, size=(40, 36)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)


def make_folder(root, classes=("cat", "dog", "fox"), per_class=6, seed=0):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            _png(root / name / f"{j}.png", seed + 100 * c + j)
    return root


def _indices_cover(parts, n):
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat)) == n, "parts overlap or miss indices"
    assert set(flat) == set(range(n))


# ------------------------------------------------------------------------------------------------ splits


def test_split_is_deterministic_disjoint_and_covers():
    train, val = split_indices(100, 0.1, seed=3)
    assert (len(train), len(val)) == (90, 10)
    _indices_cover([train, val], 100)
    assert split_indices(100, 0.1, seed=3) == [train, val]
    assert split_indices(100, 0.1, seed=4)[1] != val
    train, val, test = split_indices(50, 7, seed=0, with_test=True, test_size=7)
    assert (len(train), len(val), len(test)) == (36, 7, 7)
    _indices_cover([train, val, test], 50)
    # the validation part does not depend on the test size (a run's val set is rebuilt from val_size alone)
    train2, val2, test2 = split_indices(50, 7, seed=0, with_test=True, test_size=3)
    assert val2 == val and (len(train2), len(test2)) == (40, 3) and set(test2) < set(test)
    assert split_indices(10, 0) == [list(range(10)), []]
    assert len(split_indices(10, 0.01)[1]) == 1  # a non-zero fraction holds out at least one image


def test_split_error_gives_the_numbers():
    with pytest.raises(DataError) as e:
        split_indices(1400, 5000.0)  # a count through TrainConfig's float field, as in the issue
    assert str(e.value) == ("val_size=5000 leaves no training images: 1,400 images, 5,000 held out for validation; "
                            "give a smaller --val-size (a count, or a fraction such as 0.1), which overrides a recipe's")


@pytest.mark.parametrize("bad", [-1, 1.5, 10, "0.1", True])
def test_split_rejects_bad_val_size(bad):
    with pytest.raises(DataError, match="val_size"):
        split_indices(10, bad)


# ------------------------------------------------------------------------------------------------ CIFAR


def test_cifar10_real_format(tmp_path):
    make_cifar10(tmp_path)
    data = build_data("cifar10", data_dir=str(tmp_path), val_size=4, seed=1, download=False)
    assert isinstance(data, DataBundle)
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, 6)
    _indices_cover([data.train.indices, data.val.indices], 20)
    assert data.num_classes == 10 and data.config.class_names == CIFAR10_NAMES
    assert data.config.input_size == (3, 32, 32) and data.config.resize is None
    for ds in (data.train, data.val, data.test):
        x, y = ds[0]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        assert isinstance(y, int) and 0 <= y < 10
    # labels come from the files: the training set labels are 0..19 % 10 in file order
    assert [data.val[i][1] for i in range(4)] == [i % 10 for i in data.val.indices]
    # the eval transform normalises a constant 128 image to (128/255 - mean) / std per channel
    x, y = data.test[0]
    expected = (128 / 255 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)
    assert y == 0
    assert torch.allclose(x, expected[:, None, None].expand(3, 32, 32), atol=1e-5)
    # val is deterministic (eval transform); train and val are views of the same images, train augmented
    assert torch.equal(data.val[0][0], data.val[0][0])
    assert any(isinstance(t, T.RandomCrop) and t.padding == 4 for t in data.train.dataset.transform.transforms)
    assert not any(isinstance(t, T.RandomCrop) for t in data.val.dataset.transform.transforms)
    assert data.train.dataset.data is data.val.dataset.data
    raw = data.val.dataset.data[data.val.indices[0]]
    assert torch.allclose(data.val[0][0], T.Normalize(CIFAR10_MEAN, CIFAR10_STD)(T.ToTensor()(raw)))
    # same seed, same split; other seed, other split
    again = build_data("cifar10", data_dir=str(tmp_path), val_size=4, seed=1, download=False)
    other = build_data("cifar10", data_dir=str(tmp_path), val_size=4, seed=2, download=False)
    assert again.val.indices == data.val.indices and other.val.indices != data.val.indices
    empty_val = build_data("cifar10", data_dir=str(tmp_path), val_size=0, download=False)
    assert (len(empty_val.train), len(empty_val.val)) == (20, 0)


def test_cifar100_real_format(tmp_path):
    fine = make_cifar100(tmp_path)
    data = build_data("cifar100", data_dir=str(tmp_path), val_size=0.2, download=False)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 2, 5)
    assert data.num_classes == 100 and data.config.class_names == fine
    assert data.test[3][1] == 21 and data.test[3][0].shape == (3, 32, 32)


def test_cifar100_has_its_own_statistics(tmp_path):
    # the published HCGNet training normalises CIFAR-100 with CIFAR-100's statistics (values from the literature)
    cifar100_mean, cifar100_std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    cifar10_mean, cifar10_std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    make_cifar100(tmp_path)
    config = build_data("cifar100", data_dir=str(tmp_path), val_size=0, download=False).config
    assert config.mean == pytest.approx(cifar100_mean) and config.std == pytest.approx(cifar100_std)
    assert config.mean != pytest.approx(cifar10_mean) and config.std != pytest.approx(cifar10_std)
    assert NORMALISATION["cifar100"] == (config.mean, config.std)
    make_cifar10(tmp_path)
    cifar10 = build_data("cifar10", data_dir=str(tmp_path), val_size=0, download=False).config
    assert cifar10.mean == pytest.approx(cifar10_mean) and cifar10.std == pytest.approx(cifar10_std)
    # the eval dataset of a CIFAR-100 model: its first test image normalised with those statistics
    test = build_eval_dataset("cifar100", config, data_dir=str(tmp_path), split="all")
    x, _ = test[0]
    raw = torch.tensor(test.data[0], dtype=torch.float32).permute(2, 0, 1) / 255
    expected = (raw - torch.tensor(cifar100_mean)[:, None, None]) / torch.tensor(cifar100_std)[:, None, None]
    assert torch.allclose(x, expected, atol=1e-5)


def test_cifar_tarball_is_extracted(tmp_path):
    src = tmp_path / "src"
    make_cifar10(src)
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    data = build_data("cifar10", data_dir=str(root), download=False)
    assert len(data.test) == 6 and (root / "cifar-10-batches-py" / "test_batch").is_file()


def test_missing_cifar_says_where_to_put_it(tmp_path):
    where = tmp_path / "nothing here"
    with pytest.raises(DataError) as e:
        build_data("cifar10", data_dir=str(where), download=False)
    msg = str(e.value)
    assert "put cifar-10-python.tar.gz" in msg and str(where) in msg and "\n" not in msg


def test_missing_cifar_download_fails_fast(tmp_path, monkeypatch):
    # A real download attempt through torchvision, to a host that cannot resolve (RFC 2606), so the test is
    # offline-safe and never fetches 170 MB where there is a network.
    monkeypatch.setattr(D.CIFAR100Files, "url", "http://cifar.invalid/cifar-100-python.tar.gz")
    start = time.monotonic()
    with pytest.raises(DataError) as e:
        build_data("cifar100", data_dir=str(tmp_path), download=True)
    assert time.monotonic() - start < 20
    msg = str(e.value)
    assert "could not be downloaded" in msg and "put cifar-100-python.tar.gz" in msg and str(tmp_path) in msg
    assert "\n" not in msg


def test_hcgnet_download_fetches_only_what_is_missing_and_says_where_it_is(tmp_path, monkeypatch, capsys):
    """``hcgnet download``, the command every missing-dataset message names: files already there are used as
    they are (no download); a failed download is one line, exit 2."""
    from conftest import cli

    attempts = []

    def offline(self):   # as torchvision's download: the folder made first, then the network fails
        attempts.append(self.root)
        os.makedirs(self.root, exist_ok=True)
        raise OSError("offline")

    monkeypatch.setattr(D.CIFAR10Files, "download", offline)
    make_cifar10(tmp_path / "here", per_batch=4, n_test=6)
    code, out, err = cli(capsys, "download", "cifar10", "--data-dir", tmp_path / "here")
    assert code == 0 and attempts == [], err
    assert out == f"cifar10 is in {tmp_path / 'here'}: 20 training and 6 test images\n"
    code, out, err = cli(capsys, "download", "cifar10", "--data-dir", tmp_path / "empty")
    assert code == 2 and attempts == [str(tmp_path / "empty")] and out == ""
    assert not (tmp_path / "empty").exists()   # the folder the download would have made is not left behind
    line = err.splitlines()[-1]
    assert line.startswith("hcgnet: error: CIFAR-10 not found in") and "could not be downloaded (offline)" in line
    with pytest.raises(DataError, match="a folder of your own images: there is nothing to download"):
        D.download_dataset(f"imagefolder:{tmp_path}")


def test_corrupt_cifar_is_a_data_error(tmp_path):
    folder = make_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])
    with pytest.raises(DataError, match=f"cannot read CIFAR-10 in {folder}, its data_batch_3: "):
        build_data("cifar10", data_dir=str(tmp_path), download=False)


def test_cifar_not_whole_or_asked_for_by_its_own_folder_says_what_to_do(tmp_path):
    folder = make_cifar10(tmp_path)
    with pytest.raises(DataError) as e:   # the extracted folder given as --data-dir: its parent was meant
        build_data("cifar10", data_dir=str(folder), download=False)
    assert str(e.value) == (f"--data-dir {folder} is the extracted cifar-10-batches-py/ itself; give the folder that "
                            f"holds it: --data-dir {tmp_path}")
    (folder / "test_batch").unlink()
    with pytest.raises(DataError) as e:
        build_data("cifar10", data_dir=str(tmp_path), download=False)
    assert str(e.value) == (f"CIFAR-10 in {folder} lacks test_batch: extract the whole cifar-10-python.tar.gz there "
                            "again")


# ------------------------------------------------------------------------------------------------ specs


@pytest.mark.parametrize("spec", ["mnist", "cifar-10", "imagefolder:", ""])
def test_unknown_spec(spec):
    with pytest.raises(DataError) as e:
        build_data(spec, download=False)
    assert "\n" not in str(e.value)
    if spec != "imagefolder:":
        assert all(name in str(e.value) for name in DATASETS) and "imagefolder:PATH" in str(e.value)


def test_a_folder_without_the_imagefolder_prefix_is_told_to_add_it(tmp_path):
    folder = make_image_folder(tmp_path / "photos", classes=2, per_class=2)
    with pytest.raises(DataError) as e:
        build_data(str(folder), download=False)
    assert str(e.value) == (f"unknown dataset {str(folder)!r}; for the images in the folder {folder}, write "
                            f"imagefolder:{folder}")


def test_spec_folder_names_the_folder_an_imagefolder_spec_reads(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    assert spec_folder("imagefolder:~/shots") == "/home/someone/shots"
    assert spec_folder(" ImageFolder: rel/shots ") == "rel/shots"
    assert spec_folder("imagefolder:/a:b") == "/a:b"     # only the first colon separates
    assert spec_folder("CIFAR10") is None and spec_folder("fashion-mnist") is None
    for spec in ("mnist", "imagefolder:", "imagefolder"):
        with pytest.raises(DataError):
            spec_folder(spec)


# ------------------------------------------------------------------------------------------------ ImageFolder


def test_imagefolder_reads_every_extension_predict_does(tmp_path):
    """A training folder takes the images ``predict`` classifies: GIFs (their first frame) and upper-case
    extensions too (torchvision's own list leaves GIF out, so a folder of GIFs trained on nothing); other files
    are not images."""
    rng = np.random.default_rng(0)
    names = ["a.gif", "b.GIF", "c.JPG", "d.png", "e.pbm", "f.webp"]
    for cls in ("cat", "dog"):
        (tmp_path / "mixed" / cls).mkdir(parents=True)
        for name in names:
            pixels = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
            Image.fromarray(pixels).convert("1" if name.endswith(".pbm") else "RGB").save(tmp_path / "mixed" / cls / name)
        (tmp_path / "mixed" / cls / "notes.txt").write_text("not an image")
    data = build_data(f"imagefolder:{tmp_path / 'mixed'}", val_size=0, test_size=2, seed=0, image_size=8)
    assert len(data.train) + len(data.test) == 2 * len(names)
    samples = sorted(os.path.basename(p) for p, _ in data.train.dataset.samples)
    assert samples == sorted(names * 2)
    gif = next(i for i, (p, _) in enumerate(data.train.dataset.samples) if p.endswith("a.gif"))
    assert data.test.dataset[gif][0].shape == (3, 8, 8)   # a palette GIF comes out as RGB like the others


def test_imagefolder_without_train_holds_out_val_and_test(tmp_path):
    make_folder(tmp_path / "flat")
    data = build_data(f"imagefolder:{tmp_path / 'flat'}", val_size=3, test_size=3, seed=0, image_size=32)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 3, 3)
    assert data.train.dataset.samples == data.test.dataset.samples  # all three are views of one folder
    _indices_cover([data.train.indices, data.val.indices, data.test.indices], 18)
    assert data.config.class_names == ["cat", "dog", "fox"] and data.num_classes == 3
    # the images are small (see _png): whole images fitted to 32 px, no ImageNet-style resize and crop
    assert data.config.input_size == (3, 32, 32) and data.config.resize is None
    for ds in (data.train, data.val, data.test):
        x, y = ds[1]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y in (0, 1, 2)
    again = build_data(f"imagefolder:{tmp_path / 'flat'}", val_size=3, test_size=3, seed=0, image_size=32)
    assert (again.val.indices, again.test.indices) == (data.val.indices, data.test.indices)
    assert build_data(f"imagefolder:{tmp_path / 'flat'}").config.input_size == (3, 224, 224)  # default size


def test_imagefolder_train_val_layout(tmp_path):
    make_folder(tmp_path / "tree" / "train")
    make_folder(tmp_path / "tree" / "val", classes=("cat", "fox"), per_class=2, seed=50)  # a class may lack
    data = build_data(f"imagefolder:{tmp_path / 'tree'}", val_size=0.25, seed=0, image_size=32)
    assert (len(data.train), len(data.val), len(data.test)) == (13, 5, 4)
    assert [y for _, y in data.test.samples] == [0, 0, 2, 2]  # labelled with the training folder's classes
    assert all(str(tmp_path / "tree" / "val") in p for p, _ in data.test.samples)
    x, _ = data.test[0]
    assert x.shape == (3, 32, 32)


def test_imagefolder_test_with_unknown_class(tmp_path):
    make_folder(tmp_path / "tree" / "train", classes=("a", "b"), per_class=2)
    make_folder(tmp_path / "tree" / "val", classes=("a", "zebra"), per_class=1)
    with pytest.raises(DataError, match="zebra"):
        build_data(f"imagefolder:{tmp_path / 'tree'}", val_size=0)


def test_imagefolder_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        build_data(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty dataset"):
        build_data(f"imagefolder:{tmp_path / 'empty'}")
    (tmp_path / "noimages" / "cat").mkdir(parents=True)
    (tmp_path / "noimages" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="empty dataset"):
        build_data(f"imagefolder:{tmp_path / 'noimages'}")
    # one class folder without images among others: named, with what to do (torchvision's "Found no valid file
    # for the classes" listed its extensions instead)
    make_folder(tmp_path / "one_empty", classes=("a", "b"), per_class=4)
    for name in ("c_empty", "d_notes"):
        (tmp_path / "one_empty" / name).mkdir()
    (tmp_path / "one_empty" / "d_notes" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as e:
        build_data(f"imagefolder:{tmp_path / 'one_empty'}")
    assert str(e.value).startswith(f"{tmp_path / 'one_empty'}: the class folders c_empty/, d_notes/ hold no images (")
    assert str(e.value).endswith("): add images to them or remove them")


def _add_corrupt(folder):
    bad = folder / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return bad


def test_unreadable_image_named_or_skipped(tmp_path):
    root = make_folder(tmp_path / "imgs")
    bad = _add_corrupt(root)
    with pytest.raises(DataError) as e:  # found before training, by build_data itself
        build_data(f"imagefolder:{root}", val_size=0, image_size=32)
    msg = str(e.value)
    assert msg.startswith(f"1 of 19 images in {root} cannot be read: dog/broken.png (")
    assert msg.endswith("remove it or pass --skip-bad-images") and "\n" not in msg
    skipping = build_data(f"imagefolder:{root}", val_size=2, image_size=32, skip_bad_images=True)
    assert skipping.skipped == 1 and len(skipping.train) + len(skipping.val) + len(skipping.test) == 18
    assert all(p != str(bad) for p, _ in skipping.train.dataset.samples)


def test_error_message_from_dataloader_worker(tmp_path):
    make_folder(tmp_path / "tree" / "train", per_class=2)
    make_folder(tmp_path / "tree" / "val", per_class=1, seed=9)
    data = build_data(f"imagefolder:{tmp_path / 'tree'}", val_size=0, image_size=32)
    bad = tmp_path / "tree" / "val" / "dog" / "0.png"  # a file broken after the check (e.g. during training)
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError) as direct:
        load_image(bad)
    with pytest.raises(DataError) as e:
        for _ in DataLoader(data.test, batch_size=2, num_workers=1):
            pass
    assert "\n" in str(e.value) and "DataLoader worker" in str(e.value)  # PyTorch's multi-line re-raise
    assert error_message(e.value) == str(direct.value)
    assert error_message(direct.value) == str(direct.value)
    assert error_message(ValueError("plain")) == "plain"


def test_load_image_keeps_mode(tmp_path):
    Image.new("L", (5, 4), 7).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.mode == "L" and img.size == (5, 4)
    with pytest.raises(DataError, match="cannot read image .*nope.png"):
        load_image(tmp_path / "nope.png")


# ------------------------------------------------------------------------------------------------ transforms


def test_eval_transform_from_json_config():
    config = DataConfig("fashion-mnist", (1, 28, 28), FASHION_MNIST_MEAN, FASHION_MNIST_STD, None,
                        ["T-shirt/top", "Trouser"])
    back = json.loads(json.dumps(dataclasses.asdict(config)))
    assert back["input_size"] == [1, 28, 28]
    for rebuilt in (DataConfig(**back), DataConfig.from_dict(back)):
        assert rebuilt == config
    raw = DataConfig.__new__(DataConfig)  # even the lists as they come from JSON, no __post_init__
    raw.__dict__.update(back)
    for cfg in (DataConfig(**back), raw):
        tf = build_eval_transform(cfg)
        x = tf(Image.new("RGB", (28, 28), (200, 200, 200)))  # RGB into a one-channel network
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        assert torch.allclose(x, torch.full((1, 28, 28), (200 / 255 - 0.2860) / 0.3530), atol=1e-5)
        assert tf(Image.new("RGBA", (60, 45))).shape == (1, 28, 28)  # other sizes are resized and cropped


def test_eval_transform_any_mode_imagefolder_config():
    config = DataConfig("imagefolder", (3, 32, 32), IMAGENET_MEAN, (0.229, 0.224, 0.225), 36, ["a"])
    tf = build_eval_transform(config)
    for img in (Image.new("L", (50, 40), 9), Image.new("P", (40, 50)), Image.new("RGBA", (32, 32)),
                Image.new("I;16", (33, 70))):
        assert tf(img).shape == (3, 32, 32)
    x = tf(Image.new("L", (50, 40), 255))
    assert torch.allclose(x[1], torch.full((32, 32), (1 - 0.456) / 0.224), atol=1e-5)


def test_train_transforms():
    cifar = DataConfig("cifar10", (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, None, CIFAR10_NAMES)
    fashion = DataConfig("fashion-mnist", (1, 28, 28), FASHION_MNIST_MEAN, FASHION_MNIST_STD, None, ["a"])
    folder = DataConfig("imagefolder", (3, 32, 32), IMAGENET_MEAN, (0.229, 0.224, 0.225), 36, ["a"])
    crops = {c.name: [t for t in build_train_transform(c).transforms if "Crop" in type(t).__name__]
             for c in (cifar, fashion, folder)}
    assert crops["cifar10"][0].padding == 4 and crops["fashion-mnist"][0].padding == 2
    assert isinstance(crops["imagefolder"][0], T.RandomResizedCrop)
    torch.manual_seed(0)
    outs = [build_train_transform(cifar)(Image.fromarray(_images(1, 5).reshape(3, 32, 32).transpose(1, 2, 0)))
            for _ in range(4)]
    assert all(o.shape == (3, 32, 32) for o in outs) and not all(torch.equal(outs[0], o) for o in outs[1:])
    with pytest.raises(DataError, match="mean/std"):
        build_eval_transform(DataConfig("x", (3, 32, 32), (0.5,), (0.5,), None, []))


# ------------------------------------------------------------------------------------------------ Fashion-MNIST

FASHION_DEB = os.path.join(D.FASHION_MNIST_SYSTEM_DIR, "train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not os.path.isfile(FASHION_DEB), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    data = build_data("fashion-mnist", data_dir=str(tmp_path), seed=0)
    # automatic hold-out: 10% up to 50,000 images, 5,000 above
    assert (len(data.train) + len(data.val), len(data.val), len(data.test)) == (60000, 5000, 10000)
    assert data.notes[0].startswith("held out 5,000 of 60,000 training images (8.3%) for validation (automatic")
    assert data.num_classes == 10 and data.config.class_names[0] == "T-shirt/top"
    assert data.config.input_size == (1, 28, 28)
    x, y = data.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    # the first test image is an ankle boot (label 9), as in every copy of Fashion-MNIST
    assert data.test[0][1] == 9 and data.test[0][0].shape == (1, 28, 28)
    raw = tmp_path / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(D.FASHION_MNIST_FILES)  # no temp files left
    with gzip.open(FASHION_DEB, "rb") as f:
        assert f.read(16) == (raw / "train-images-idx3-ubyte").read_bytes()[:16]
    # a second build reuses the decompressed files
    monkeypatch.setattr(FM, "_gunzip", lambda *a: pytest.fail("decompressed again"))
    again = build_data("fashion-mnist", data_dir=str(tmp_path), seed=0)
    assert again.val.indices == data.val.indices


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(FM, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-debian-files"))
    with pytest.raises(DataError) as e:
        build_data("fashion-mnist", data_dir=str(tmp_path / "d"), download=False)
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and str(tmp_path / "d") in msg and "\n" not in msg


def test_fashion_mnist_image_size_is_native(tmp_path):
    with pytest.raises(DataError, match="28x28"):
        build_data("fashion-mnist", data_dir=str(tmp_path), image_size=32)


def test_augment_off_gives_the_training_set_the_eval_transform(tmp_path):
    make_folder(tmp_path / "flat")
    spec = f"imagefolder:{tmp_path / 'flat'}"
    plain = build_data(spec, val_size=3, seed=0, image_size=32, augment=False)
    i = plain.train.indices[0]
    torch.testing.assert_close(plain.train[0][0], plain.test.dataset[i][0])  # same image, eval transform
    torch.testing.assert_close(plain.train[0][0], plain.train[0][0])  # deterministic
    augmented = build_data(spec, val_size=3, seed=0, image_size=32)
    draws = [augmented.train[0][0] for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # random crops differ
