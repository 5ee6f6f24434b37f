"""evaluate() against hand-computed scores, write_confusion's files, and ``hcgnet eval`` of a whole folder with a
checkpoint that carries no metadata (a plain .safetensors plus --model)."""
import csv
import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, safe_open
from torch import nn

import hcgnet
from hcgnet.cli import main
from hcgnet.data import DataConfig, build_eval_transform
from hcgnet.distributed import Dist
from hcgnet.evaluation import evaluate, per_class, write_confusion
from hcgnet.models.registry import CIFAR_MEAN, CIFAR_STD
from conftest import TRAINED_TOP1, make_image_folder

pytestmark = pytest.mark.usefixtures("single_thread")

SPEC = "HCGNet-(1,1,1)-(k=4,4,4)"


class FixedLogits(nn.Module):
    """Every image gets the logits 0, 1, ..., 9 (class 9 first, then 8, 7, 6, 5 in the top 5)."""

    def forward(self, x):
        return torch.arange(10.0).expand(len(x), 10)


def test_evaluate_top1_top5_loss_on_fixed_logits():
    targets = torch.tensor([9, 6, 5, 4, 0])   # ranked 1st, 4th, 5th, 6th and 10th by the logits
    batches = [(torch.zeros(2, 1), targets[:2]), (torch.zeros(3, 1), targets[2:])]
    m = evaluate(FixedLogits(), batches, Dist(device=torch.device("cpu")), num_classes=10)
    assert m["count"] == 5
    assert m["top1"] == pytest.approx(1 / 5)
    assert m["top5"] == pytest.approx(3 / 5)   # 9, 6 and 5 are in the top 5; 4 and 0 are not
    # cross-entropy = logsumexp(0..9) - logit of the target; logsumexp(0..9) = 9 + ln((1 - e^-10) / (1 - e^-1))
    # = 9.4586297; the mean target logit is (9 + 6 + 5 + 4 + 0) / 5 = 4.8
    assert m["loss"] == pytest.approx(4.6586297444, rel=1e-6)
    expected = [[0] * 10 for _ in range(10)]
    for true in (9, 6, 5, 4, 0):
        expected[true][9] = 1   # every image is predicted as class 9
    assert m["confusion"] == expected


def test_evaluate_without_num_classes_has_no_confusion():
    m = evaluate(FixedLogits(), [(torch.zeros(1, 1), torch.tensor([9]))], Dist(device=torch.device("cpu")))
    assert "confusion" not in m and m["top1"] == 1.0


def test_write_confusion_files(tmp_path):
    confusion = [[2, 1, 0], [0, 3, 1], [0, 0, 0]]   # rows: true a, b, c (no image of c)
    paths = write_confusion(tmp_path / "out", confusion, ["a", "b", "c"])
    assert sorted(p.name for p in paths) == ["confusion.csv", "confusion.png", "per_class.csv"]
    with open(tmp_path / "out" / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["class"], r["images"], r["correct"], r["accuracy"]) for r in rows] == [
        ("a", "3", "2", "0.666667"), ("b", "4", "3", "0.750000"), ("c", "0", "0", "")]
    with open(tmp_path / "out" / "confusion.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table == [["true \\ predicted", "a", "b", "c"], ["a", "2", "1", "0"], ["b", "0", "3", "1"],
                     ["c", "0", "0", "0"]]
    with Image.open(tmp_path / "out" / "confusion.png") as img:
        assert img.format == "PNG" and img.width > 100


def test_per_class_accuracy():
    rows = per_class([[1, 3], [0, 2]], ["x", "y"])
    assert [(r["images"], r["correct"], r["accuracy"]) for r in rows] == [(4, 1, 0.25), (2, 2, 1.0)]


# ------------------------------------------------------------------------------ a plain .safetensors + --model


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Random weights saved without any metadata, and a folder of 3 classes x 4 images."""
    base = tmp_path_factory.mktemp("plain")
    torch.manual_seed(0)
    model = hcgnet.create_model(SPEC, num_classes=3).eval()
    path = base / "weights.safetensors"
    hcgnet.save_safetensors(model, path)
    folder = make_image_folder(base / "folder", classes=3, per_class=4, size=(20, 20))
    return path, model, folder


def _expected_confusion(model, folder, classes):
    """Predictions recomputed here: the variant's CIFAR preprocessing (32 px, CIFAR statistics), labels from
    the sorted class folders."""
    config = DataConfig(name="cifar10", input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD, resize=None,
                        class_names=classes)
    transform = build_eval_transform(config)
    confusion = [[0] * len(classes) for _ in classes]
    with torch.no_grad():
        for label, name in enumerate(classes):
            for image in sorted((folder / name).iterdir()):
                pred = int(model(transform(Image.open(image))[None]).argmax())
                confusion[label][pred] += 1
    return confusion


def test_eval_plain_safetensors_scores_the_whole_folder(capsys, plain, tmp_path):
    path, model, folder = plain
    out_dir = tmp_path / "report"
    code = main(["eval", "--checkpoint", str(path), "--model", SPEC, "--data", f"imagefolder:{folder}",
                 "--workers", "0", "--output", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "(all, 12 images)" in out
    for name in ("class_0", "class_1", "class_2"):   # per-class lines
        assert any(line.strip().startswith(name) for line in out.splitlines())
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 2   # which split, and what is guessed: each said once
    assert any("carries no class names or preprocessing" in n and "folder's class names" in n for n in notes)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    expected = _expected_confusion(model, folder, ["class_0", "class_1", "class_2"])
    assert metrics["confusion"] == expected
    assert metrics["count"] == 12 and metrics["split"] == "all"
    assert metrics["top1"] == pytest.approx(sum(expected[i][i] for i in range(3)) / 12)
    assert {p.name for p in out_dir.iterdir()} == {"metrics.json", "per_class.csv", "confusion.csv", "confusion.png"}


def test_eval_plain_safetensors_refuses_another_class_count(capsys, plain, tmp_path):
    path, _, _ = plain
    four = make_image_folder(tmp_path / "four", classes=4, per_class=1)
    code = main(["eval", "--checkpoint", str(path), "--model", SPEC, "--data", f"imagefolder:{four}",
                 "--workers", "0"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("hcgnet: error: ")
    assert "3 classes" in err and "4 class folders" in err


def test_eval_names_the_unreadable_images_it_leaves_out(capsys, plain, trained, tmp_path):
    """An unreadable file in the folder: refused in one line; with --skip-bad-images, or when the checkpoint's
    training run skipped unreadable images, left out, and a note on stderr names it."""
    path, _, folder = plain
    broken = shutil.copytree(folder, tmp_path / "folder")
    (broken / "class_1" / "broken.png").write_bytes(b"not a png")
    argv = ["eval", "--checkpoint", str(path), "--model", SPEC, "--data", f"imagefolder:{broken}", "--workers", "0"]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and len(err.splitlines()) == 1 and "broken.png" in err and "--skip-bad-images" in err
    code = main(argv + ["--skip-bad-images"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "(all, 12 images)" in out
    assert "note: skipped 1 unreadable image (broken.png), as --skip-bad-images asks" in err.splitlines()

    # A run trained with --skip-bad-images: eval leaves out what it left out (the same test split: the run's
    # 400 test images and top-1), and says so.
    weights, images = trained
    copy = shutil.copytree(images, tmp_path / "images")
    (copy / "class_2" / "zz_broken.png").write_bytes(b"\x89PNG, cut short")
    with safe_open(weights, "pt") as f:
        meta = dict(f.metadata())
    skipping = tmp_path / "skipping.safetensors"
    hcgnet.save_safetensors(load_file(weights), skipping, {**meta, "data": f"imagefolder:{copy}",
                                                             "skip_bad_images": "true"})
    code = main(["eval", "--checkpoint", str(skipping), "--data", f"imagefolder:{copy}", "--workers", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "(test, 400 images)" in out and f"top-1 {100 * TRAINED_TOP1:.2f}%" in out
    assert ("note: skipped 1 unreadable image (zz_broken.png), as the checkpoint's training run did "
            "(--skip-bad-images)") in err.splitlines()


def test_eval_without_data_scores_the_data_the_checkpoint_was_trained_on(capsys, plain, trained, tmp_path):
    path, folder = trained
    code = main(["eval", "--checkpoint", str(path), "--workers", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[0] == (f"{path} on imagefolder:{folder} (test, 400 images): top-1 "
                                   f"{100 * TRAINED_TOP1:.2f}%, loss 0.2872")
    # what cannot be scored without --data: one line saying so
    weights, _, _ = plain   # saved without metadata
    moved = tmp_path / "moved.safetensors"
    with safe_open(path, "pt") as f:
        meta = dict(f.metadata())
    hcgnet.save_safetensors(load_file(path), moved, {**meta, "data": f"imagefolder:{tmp_path / 'gone'}"})
    for argv, needle in ((["--checkpoint", str(weights), "--model", SPEC], "does not record the data it was "
                                                                              "trained on; pass --data"),
                         (["--checkpoint", str(moved)], f"was trained on imagefolder:{tmp_path / 'gone'}, which is "
                                                        "not here")):
        code = main(["eval", *argv, "--workers", "0"])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and needle in err, err


def test_eval_split_all_needs_a_folder(capsys, plain):
    path, _, _ = plain
    code = main(["eval", "--checkpoint", str(path), "--model", SPEC, "--data", "cifar10", "--split", "all"])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.splitlines()) == 1 and "imagefolder" in err


def test_eval_not_on_a_terminal_logs_progress_lines(plain, monkeypatch):
    import hcgnet.inference as inference

    path, _, folder = plain
    monkeypatch.setattr(inference, "LOG_EVERY_S", 0.0)   # a line after every batch but the last
    lines = []
    m = inference.evaluate_checkpoint(str(path), f"imagefolder:{folder}", batch_size=4, workers=0, model_name=SPEC,
                                      log=lines.append)
    progress = [line for line in lines if not line.startswith("note:")]
    assert m["count"] == 12
    assert [line.split(",")[0] for line in progress] == ["evaluating all: 1/3 batches", "evaluating all: 2/3 batches"]


def test_eval_output_keeps_an_earlier_result_unless_forced_and_says_where_it_wrote(capsys, plain, tmp_path):
    path, _, folder = plain
    out_dir = tmp_path / "report"
    args = ["eval", "--checkpoint", str(path), "--model", SPEC, "--data", f"imagefolder:{folder}", "--workers", "0",
            "--output", str(out_dir)]
    assert main(args) == 0
    out, _ = capsys.readouterr()
    assert f"wrote {out_dir}/: metrics.json, per_class.csv, confusion.csv, confusion.png" in out
    assert "top-5" not in out  # 3 classes: top-5 is always 100%, not worth a number
    (out_dir / "metrics.json").write_text("earlier")
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and "already holds metrics.json" in err and "--force" in err
    assert (out_dir / "metrics.json").read_text() == "earlier"  # refused before anything was written
    assert main(args + ["--force", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["count"] == 12  # stdout stays one JSON document; where it wrote goes to stderr
    assert f"wrote {out_dir}/" in err and json.loads((out_dir / "metrics.json").read_text())["count"] == 12


def test_top5_is_shown_only_with_more_than_5_classes():
    from hcgnet.evaluation import show_top5

    assert [show_top5(n) for n in (2, 5, 6, 1000)] == [False, False, True, True]


def test_class_names_the_fonts_lack_draw_without_warnings(tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_confusion(tmp_path / "out", [[1, 0], [0, 1]], ["日本", "中文"])
    assert [str(w.message) for w in caught if "Glyph" in str(w.message)] == []
    assert (tmp_path / "out" / "confusion.png").is_file()


def test_eval_without_preprocessing_says_when_the_images_are_far_from_the_models_input(plain, tmp_path):
    from hcgnet.inference import evaluate_checkpoint

    path, _, folder = plain
    digits = make_image_folder(tmp_path / "digits", classes=3, per_class=2, size=(8, 8))
    lines = []
    m = evaluate_checkpoint(str(path), f"imagefolder:{digits}", workers=0, model_name=SPEC, log=lines.append)
    assert m["count"] == 6
    assert f"note: the images of {digits} are about 8 px (median shorter side), the model's input size is 32 px: " \
           "they are upscaled about 4x" in lines
    lines = []
    evaluate_checkpoint(str(path), f"imagefolder:{folder}", workers=0, model_name=SPEC, log=lines.append)
    assert not any("median shorter side" in line for line in lines)  # 20 px images for a 32 px input: near enough
