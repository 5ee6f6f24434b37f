"""``hcgnet predict`` on folders and globs in batches, its outputs, bad files, and ``hcgnet convert`` of one's
own checkpoint keeping what predict needs (class names, preprocessing)."""
import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli, picture
import hcgnet
from hcgnet.data import DataConfig
from hcgnet.models.checkpoints import read_metadata

pytestmark = pytest.mark.usefixtures("single_thread")

SPEC = "HCGNet-(1,1,1)-(k=4,4,4)"
CLASSES = ["cat", "dog", "eel"]
PUBLISHED = Path(__file__).resolve().parent / "fixtures" / "cifar_A1.official.pth.tar"


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A training checkpoint as ``hcgnet train`` writes one: weights plus what the run knew (not the CIFAR
    defaults: 16 px, its own statistics and class names)."""
    base = tmp_path_factory.mktemp("own")
    torch.manual_seed(0)
    model = hcgnet.create_model(SPEC, num_classes=3).eval()
    config = DataConfig(name="imagefolder", input_size=(3, 16, 16), mean=(0.6, 0.5, 0.4), std=(0.2, 0.25, 0.3),
                        resize=18, class_names=CLASSES)
    path = base / "best.pt"
    torch.save({"model": model.state_dict(), "model_name": SPEC, "num_classes": "3", "in_chans": "3",
                "class_names": json.dumps(CLASSES), "data_config": json.dumps(dataclasses.asdict(config)),
                "val_size": "0.25", "seed": "7", "epoch": 3,
                "config": {"model": SPEC, "data": "imagefolder:/data/pets", "test_size": 0.2, "seed": 7}}, path)
    return path


def predictions(capsys, checkpoint, *images, extra=()):
    code, out, err = cli(capsys, "predict", "--checkpoint", checkpoint, *images, "--json", *extra)
    assert code == 0, err
    return json.loads(out), err


def test_convert_own_checkpoint_keeps_metadata_and_predictions(capsys, own, tmp_path):
    converted = tmp_path / "pets.safetensors"
    code, out, err = cli(capsys, "convert", own, converted)   # no --model: the checkpoint says
    assert code == 0, err
    assert "kept its class names and data config" in out
    meta = read_metadata(converted)
    source = torch.load(own, weights_only=True)
    for key in ("model_name", "class_names", "data_config", "val_size", "seed", "in_chans", "num_classes"):
        assert meta[key] == str(source[key]), key
    assert meta["data"] == "imagefolder:/data/pets" and meta["test_size"] == "0.2"   # from the run's config
    images = [picture(tmp_path / f"{i}.png", i) for i in range(3)]
    before, err_before = predictions(capsys, own, *images)
    after, err_after = predictions(capsys, converted, *images)
    assert err_before == err_after == ""   # nothing guessed, nothing to say
    assert {t["class"] for r in after for t in r["top"]} == set(CLASSES)
    for a, b in zip(before, after):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-6)


def test_predict_published_checkpoint_says_what_it_guesses(capsys, tmp_path):
    image = picture(tmp_path / "x.png", 1, size=(32, 32))
    got, err = predictions(capsys, PUBLISHED, image, extra=("--model", "hcgnet_a1"))
    assert err.splitlines() == [f"note: {PUBLISHED} carries no class names or preprocessing; using the variant's "
                                "standard CIFAR preprocessing and class indices"]
    assert all(t["class"] == str(t["index"]) for t in got[0]["top"])


@pytest.fixture
def tree(tmp_path):
    """Five images in nested folders (one with an upper-case extension) and a file that is not an image."""
    root = tmp_path / "shots"
    paths = [picture(root / "a" / "1.png", 1), picture(root / "a" / "2.jpg", 2), picture(root / "b" / "c" / "3.png", 3),
             picture(root / "b" / "4.PNG", 4), picture(root / "5.bmp", 5)]
    (root / "notes.txt").write_text("not an image")
    return root, sorted(map(str, paths))


def test_predict_folder_collects_images_recursively_and_batches_change_nothing(capsys, own, tree):
    root, paths = tree
    whole, _ = predictions(capsys, own, root, extra=("--batch-size", "64"))
    assert [r["image"] for r in whole] == paths
    batched, _ = predictions(capsys, own, root, extra=("--batch-size", "2"))
    for one, many in zip(batched, whole):
        assert [t["probability"] for t in one["top"]] == pytest.approx([t["probability"] for t in many["top"]],
                                                                      abs=1e-6)
    single, _ = predictions(capsys, own, paths[2])
    assert [t["class"] for t in single[0]["top"]] == [t["class"] for t in whole[2]["top"]]
    assert [t["probability"] for t in single[0]["top"]] == pytest.approx([t["probability"] for t in whole[2]["top"]],
                                                                         abs=1e-6)


def test_predict_glob(capsys, own, tree):
    root, paths = tree
    got, _ = predictions(capsys, own, f"{root}/**/*.png")
    assert [r["image"] for r in got] == [p for p in paths if p.endswith(".png")]   # glob is case-sensitive


def test_predict_skips_a_bad_file_names_it_and_writes_csv(capsys, own, tree, tmp_path):
    root, paths = tree
    bad = root / "a" / "0_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    table = tmp_path / "predictions.csv"
    code, out, err = cli(capsys, "predict", "--checkpoint", own, root, "--topk", "2", "--csv", table)
    assert code == 0
    warning, = err.splitlines()
    assert warning.startswith(f"hcgnet: warning: cannot read image {bad}")
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    everything = sorted(paths + [str(bad)])   # in the folder's order, the bad file in its place
    assert [r["image"] for r in rows] == [p for p in everything for _ in range(1 if p == str(bad) else 2)]
    broken, = [r for r in rows if r["error"]]
    assert broken["image"] == str(bad) and broken["error"].startswith(f"cannot read image {bad}")
    assert broken["class"] == broken["probability"] == ""
    good = [r for r in rows if not r["error"]]
    assert [r["rank"] for r in good] == ["1", "2"] * 5 and {r["class"] for r in good} <= set(CLASSES)
    assert all(float(a["probability"]) >= float(b["probability"]) for a, b in zip(good[::2], good[1::2]))
    assert f"wrote {table}: 6 images, top 2" in out   # 5 read, 1 not


def test_predict_csv_says_how_many_ranks_it_wrote_with_fewer_classes_than_topk(capsys, own, tree, tmp_path):
    root, _ = tree
    table = tmp_path / "predictions.csv"
    code, out, err = cli(capsys, "predict", "--checkpoint", own, root, "--topk", "9", "--csv", table)
    assert code == 0, err
    assert f"top {len(CLASSES)}" in out and "top 9" not in out


def test_predict_json_into_a_closed_pipe_is_quiet(own, tree):
    root, _ = tree
    proc = subprocess.Popen([sys.executable, "-m", "hcgnet", "predict", "--checkpoint", str(own), str(root), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()   # like `| head` that has read enough: the reader is gone before predict writes
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 1


@pytest.mark.parametrize("fast", [["--channels-last"], ["--amp", "bf16"], ["--amp", "bf16", "--channels-last"],
                                  ["--device", "cpu"]])
def test_predict_fast_paths_give_fp32_probabilities(capsys, own, tree, fast):
    root, paths = tree
    plain, _ = predictions(capsys, own, root)
    quick, _ = predictions(capsys, own, root, extra=fast)
    assert [r["image"] for r in quick] == paths
    # the same arithmetic in another layout or on a named device; bf16 keeps about 3 significant digits (and on a
    # machine with a GPU the plain run is on the GPU, whose convolutions may use TF32)
    tolerance = 2e-2 if "bf16" in fast else 1e-3 if fast == ["--device", "cpu"] and torch.cuda.is_available() else 1e-6
    for a, b in zip(plain, quick):
        by_class = {t["class"]: t["probability"] for t in b["top"]}
        assert [by_class[t["class"]] for t in a["top"]] == pytest.approx([t["probability"] for t in a["top"]],
                                                                         abs=tolerance)


@pytest.mark.parametrize("amp,channels_last", [("none", False), ("bf16", False), ("none", True), ("bf16", True)])
def test_predict_runs_the_model_as_asked(own, tree, monkeypatch, amp, channels_last):
    import hcgnet.inference as inference

    root, _ = tree
    seen = []
    real_load = inference.load_model

    def recording_load(*args, **kwargs):
        model, meta = real_load(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: seen.append(
            (inputs[0].is_contiguous(memory_format=torch.channels_last), output.dtype, inputs[0].device.type,
             module.stem.conv0.weight.is_contiguous(memory_format=torch.channels_last))))
        return model, meta

    monkeypatch.setattr(inference, "load_model", recording_load)
    inference.predict(str(own), [str(root)], batch_size=8, log=lambda line: None, amp=amp,
                      channels_last=channels_last, device="cpu")
    assert seen == [(channels_last, torch.bfloat16 if amp == "bf16" else torch.float32, "cpu", channels_last)]


@pytest.mark.parametrize("extra,message", [
    (["--device", "gpu0"], "--device 'gpu0' is not a device; use cpu or cuda"),
    (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a GPU; on the CPU use --amp bf16"),
    (["--openvino", "fp32", "--amp", "bf16"], "--openvino and --amp bf16 do not go together"),
    (["--openvino", "fp32", "--channels-last"], "--openvino and --channels-last do not go together"),
    (["--int8", "--amp", "bf16"], "--int8 and --amp bf16 do not go together"),
    (["--int8", "--channels-last"], "--int8 and --channels-last do not go together"),
])
def test_predict_refuses_what_the_device_or_precision_cannot_do(capsys, own, tree, extra, message):
    root, _ = tree
    code, out, err = cli(capsys, "predict", "--checkpoint", own, root, *extra)
    assert code == 2 and out == ""
    assert err.startswith("hcgnet: error: ") and len(err.strip().splitlines()) == 1 and message in err, err


def test_predict_reading_threads_change_nothing_but_the_speed(capsys, own, tree):
    root, paths = tree
    bad = root / "a" / "0_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    runs = {}
    for workers in ("0", "1", "3"):
        got, err = predictions(capsys, own, root, extra=("--workers", workers, "--batch-size", "2"))
        runs[workers] = (got, err)
    one_thread = runs["0"]
    assert [r["image"] for r in one_thread[0]] == sorted(paths + [str(bad)])
    assert "0_broken.png" in one_thread[1]
    for workers, (got, err) in runs.items():
        assert got == one_thread[0] and err == one_thread[1], workers  # results, warnings and their order


@pytest.mark.parametrize("workers", [0, 2])
def test_predict_decodes_the_next_batch_while_the_model_runs_this_one(tree, monkeypatch, workers):
    import threading

    from hcgnet import inference

    root, paths = tree
    second_batch_read = threading.Event()
    real_decode = inference._decode

    def decode(path, transform):
        if path in paths[2:4]:
            second_batch_read.set()
        return real_decode(path, transform)

    monkeypatch.setattr(inference, "_decode", decode)
    batches = inference.read_ahead(paths, 2, lambda image: image.size, workers=workers)
    first_paths, first = next(batches)
    assert first_paths == paths[:2] and [error for _, error in first] == [None, None]
    # the caller holds batch 0 (the generator is suspended): with threads batch 1 is being read all the same
    assert second_batch_read.wait(timeout=60 if workers else 0.5) == bool(workers)
    rest = list(batches)
    assert [p for chunk, _ in rest for p in chunk] == paths[2:]


def test_predict_runs_batch_size_images_per_forward_pass(own, tree, monkeypatch):
    import hcgnet.inference as inference

    root, paths = tree
    sizes = []
    real_load = inference.load_model

    def recording_load(*args, **kwargs):
        model, meta = real_load(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: sizes.append(len(inputs[0])))
        return model, meta

    monkeypatch.setattr(inference, "load_model", recording_load)
    results = inference.predict(str(own), [str(root)], batch_size=2, log=lambda line: None)
    assert sizes == [2, 2, 1] and len(results) == len(paths) == 5
