"""A whole (tiny) training run and what it leaves behind, then ``hcgnet eval`` and ``hcgnet predict`` on it.

One HCGNet-(1,1,1)-(k=8,8,8) is trained once per module, 2 epochs on 3 classes x 12 noisy red / green / blue
20x20 PNGs at 16x16, holding out 25% (9 images) for validation and 25% (9) for the test set (the folder has no
train/, so both are split off it).
"""
import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli
import hcgnet
from hcgnet.cli import main
from hcgnet.data import DataConfig, build_eval_transform
from hcgnet.inference import load_model
from hcgnet.training.logs import COLUMNS

PUBLISHED = Path(__file__).resolve().parent / "fixtures" / "cifar_A1.official.pth.tar"

SPEC = "HCGNet-(1,1,1)-(k=8,8,8)"
CLASSES = ["red", "green", "blue"]   # channel c of class c is bright
PER_CLASS = 12
EPOCHS = 2
BATCH = 8
VAL_FRACTION = 0.25
HELD_OUT = round(VAL_FRACTION * len(CLASSES) * PER_CLASS)   # 9 validation and 9 test images
STEPS_PER_EPOCH = (len(CLASSES) * PER_CLASS - 2 * HELD_OUT) // BATCH
RUN_FILES = ["last.pt", "best.pt", "best.safetensors", "final.safetensors", "metrics.csv", "config.yaml",
             "results.json", "curves.png"]


def colour_image(path, channel, size=(20, 20), seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, size=(*size, 3))
    pixels[..., channel] += 190
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def make_folder(root, classes, per_class):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            colour_image(root / name / f"{i:02d}.png", c % 3, seed=100 * c + i)
    return root


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny forward passes: one intra-op thread avoids stalls on the two shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(tmp_path_factory, _one_thread):
    base = tmp_path_factory.mktemp("inference")
    folder = make_folder(base / "images", CLASSES, PER_CLASS)
    out = base / "run"
    code = main(["train", "--model", SPEC, "--data", f"imagefolder:{folder}", "--image-size", "16",
                 "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--val-size", str(VAL_FRACTION),
                 "--test-size", str(VAL_FRACTION),
                 "--workers", "0", "--output", str(out)])
    assert code == 0
    return {"folder": folder, "out": out, "base": base}


@pytest.fixture(scope="module")
def results(run):
    return json.loads((run["out"] / "results.json").read_text())


@pytest.fixture(scope="module")
def rows(run):
    with open(run["out"] / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def cli_json(capsys, *argv):
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def one_line_error(code, out, err):
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hcgnet: error: ")
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------ the run folder


def test_run_folder_holds_every_output(run):
    out = run["out"]
    for name in RUN_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_config_yaml_records_the_run_without_run_flags(run):
    import yaml

    saved = yaml.safe_load((run["out"] / "config.yaml").read_text())
    assert saved["model"] == SPEC
    assert saved["data"] == f"imagefolder:{run['folder']}"
    assert (saved["epochs"], saved["batch_size"], saved["image_size"]) == (EPOCHS, BATCH, 16)
    assert saved["val_size"] == VAL_FRACTION
    assert not {"output", "resume", "overwrite"} & set(saved)


def test_results_json(results, rows):
    _, epochs = rows
    assert 0 <= results["test_top1"] <= 1
    assert results["test_top1"] <= results["test_top5"] == 1.0   # 3 classes: the top 5 holds every class
    assert results["test_images"] == HELD_OUT
    assert results["test_top1"] * HELD_OUT == pytest.approx(round(results["test_top1"] * HELD_OUT))
    assert results["epochs"] == EPOCHS
    assert results["weights"] == "best"
    val = [float(r["val_top1"]) for r in epochs]
    assert results["best_val_top1"] == pytest.approx(max(val))
    assert results["best_epoch"] == val.index(max(val)) + 1  # the first epoch that reached it


def test_metrics_csv_has_one_row_per_epoch(rows):
    header, epochs = rows
    assert header == COLUMNS
    assert [int(r["epoch"]) for r in epochs] == list(range(1, EPOCHS + 1))
    for e, r in enumerate(epochs):
        assert int(r["step"]) == (e + 1) * STEPS_PER_EPOCH
        # the learning rate of the epoch's last step: one cosine cycle over all epochs, stepped every batch
        t = e + (STEPS_PER_EPOCH - 1) / STEPS_PER_EPOCH
        assert float(r["lr"]) == pytest.approx(0.05 * (1 + math.cos(math.pi * t / EPOCHS)), abs=1e-9)
        assert math.isfinite(float(r["train_loss"])) and float(r["val_loss"]) >= 0
        assert 0 <= float(r["val_top1"]) <= 1 and float(r["val_top5"]) == 1.0
        assert float(r["val_top1"]) * HELD_OUT == pytest.approx(round(float(r["val_top1"]) * HELD_OUT))
        assert float(r["images_per_s"]) > 0


def test_curves_png_is_a_valid_png(run):
    with Image.open(run["out"] / "curves.png") as img:
        assert img.format == "PNG"
        img.load()
        assert img.width > 100 and img.height > 100


# ------------------------------------------------------------------------------------------ eval


@pytest.mark.parametrize("checkpoint", ["best.safetensors", "final.safetensors", "last.pt", "best.pt"])
def test_eval_json_on_the_validation_split(capsys, run, checkpoint):
    m = cli_json(capsys, "eval", "--checkpoint", str(run["out"] / checkpoint), "--data",
                 f"imagefolder:{run['folder']}", "--split", "val", "--workers", "0")
    assert {"top1", "top5", "loss", "count"} <= set(m)
    assert m["count"] == HELD_OUT       # the checkpoint's val_size and seed rebuild the validation split
    assert 0 <= m["top1"] <= m["top5"] == 1.0
    assert m["loss"] >= 0 and math.isfinite(m["loss"])


def test_eval_text_output(capsys, run):
    code, out, err = cli(capsys, "eval", "--checkpoint", str(run["out"] / "last.pt"), "--data",
                         f"imagefolder:{run['folder']}", "--split", "val", "--workers", "0")
    assert code == 0, err
    assert f"{HELD_OUT} images" in out and "top-1" in out and "top-5" not in out  # 2 classes: top-5 is always 100%


def test_eval_limit_scores_the_first_images_and_the_file_says_what_and_how(capsys, run, tmp_path):
    data, ckpt = f"imagefolder:{run['folder']}", run["out"] / "best.safetensors"
    whole = cli_json(capsys, "eval", "--checkpoint", str(ckpt), "--data", data, "--split", "val", "--workers", "0",
                     "--batch-size", "1")
    code, out, err = cli(capsys, "eval", "--checkpoint", str(ckpt), "--data", data, "--split", "val", "--workers",
                         "0", "--limit", "2", "--batch-size", "1", "--output", str(tmp_path / "ev"))
    assert code == 0, err
    assert f"(val, the first 2 of {HELD_OUT} images)" in out
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert (saved["count"], saved["images_available"], saved["limit"]) == (2, HELD_OUT, 2)
    assert saved["amp"] == "none" and saved["channels_last"] is False
    # a limit of the whole split or more scores the whole split
    all_of_them = cli_json(capsys, "eval", "--checkpoint", str(ckpt), "--data", data, "--split", "val", "--workers",
                           "0", "--limit", str(HELD_OUT + 5))
    assert (all_of_them["top1"], all_of_them["count"]) == (whole["top1"], HELD_OUT)
    recorded = saved["provenance"]
    assert recorded["checkpoints"] == [{"path": str(ckpt.resolve()),
                                        "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}]
    assert recorded["hcgnet"] == hcgnet.__version__ and recorded["torch"] == torch.__version__
    assert recorded["device"] == "cpu" and recorded["threads"] == torch.get_num_threads()
    assert recorded["date"].endswith("+00:00") and recorded["argv"]
    assert one_line_error(*cli(capsys, "eval", "--checkpoint", str(ckpt), "--data", data, "--limit", "0")) == \
        "hcgnet: error: --limit must be 1 or more, got 0"


def test_eval_reproduces_the_trainers_validation_scores(capsys, run, rows, results):
    _, epochs = rows
    data = f"imagefolder:{run['folder']}"
    last = cli_json(capsys, "eval", "--checkpoint", str(run["out"] / "last.pt"), "--data", data, "--split", "val",
                    "--workers", "0")
    assert last["top1"] == pytest.approx(float(epochs[-1]["val_top1"]))
    assert last["loss"] == pytest.approx(float(epochs[-1]["val_loss"]), rel=1e-4)
    best = cli_json(capsys, "eval", "--checkpoint", str(run["out"] / "best.safetensors"), "--data", data,
                    "--split", "val", "--workers", "0")
    best_row = epochs[results["best_epoch"] - 1]
    assert best["top1"] == pytest.approx(results["best_val_top1"])
    assert best["loss"] == pytest.approx(float(best_row["val_loss"]), rel=1e-4)


def test_eval_test_split_is_the_trainers_test_set(capsys, run, results):
    m = cli_json(capsys, "eval", "--checkpoint", str(run["out"] / "best.safetensors"), "--data",
                 f"imagefolder:{run['folder']}", "--workers", "0")
    assert m["split"] == "test"
    assert m["count"] == results["test_images"] == HELD_OUT


def test_eval_test_top1_equals_results_json(capsys, run, results):
    m = cli_json(capsys, "eval", "--checkpoint", str(run["out"] / "best.safetensors"), "--data",
                 f"imagefolder:{run['folder']}", "--workers", "0")
    assert m["count"] == results["test_images"]
    assert m["top1"] == pytest.approx(results["test_top1"])
    assert m["loss"] == pytest.approx(results["test_loss"], rel=1e-4)


@pytest.mark.parametrize("fast", [["--channels-last"], ["--amp", "bf16"], ["--amp", "bf16", "--channels-last"]])
def test_eval_fast_paths_score_like_fp32(capsys, run, fast):
    args = ["eval", "--checkpoint", str(run["out"] / "best.safetensors"), "--data", f"imagefolder:{run['folder']}",
            "--split", "val", "--workers", "0"]
    plain, quick = cli_json(capsys, *args), cli_json(capsys, *args, *fast)
    assert quick["count"] == plain["count"]
    if fast == ["--channels-last"]:  # the same arithmetic in another memory layout
        assert quick["top1"] == plain["top1"] and quick["loss"] == pytest.approx(plain["loss"], rel=1e-4)
    else:  # bf16 keeps about 3 significant digits: the mean loss moves by well under 2%
        assert quick["loss"] == pytest.approx(plain["loss"], rel=2e-2)
        assert abs(quick["top1"] - plain["top1"]) <= 1 / plain["count"] + 1e-9


def test_eval_says_when_it_scores_the_runs_split_in_other_arithmetic_than_the_run(capsys, run, tmp_path):
    """A run records the arithmetic it scored its val and test sets in; eval of those splits in another says so
    on stderr (a bf16 run's results.json against an fp32 eval differ in the last digits), and stays quiet in the
    run's own. A training checkpoint (``.pt``) says it through its config; a ``.safetensors`` from before the
    record, through its run folder's config.yaml; one without either, not at all."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    best = run["out"] / "best.safetensors"
    with safe_open(str(best), "pt") as f:
        meta = dict(f.metadata())
    assert (meta["amp"], meta["channels_last"]) == ("none", "false")   # the fixture's run: fp32, contiguous

    def note(checkpoint, *fast):
        code, _, err = cli(capsys, "eval", "--checkpoint", checkpoint, "--split", "val", "--workers", "0", *fast)
        assert code == 0, err
        lines = [line for line in err.splitlines() if "training run scored" in line]
        assert len(lines) <= 1, err
        return lines[0] if lines else None

    assert note(best) is None and note(best, "--channels-last") is None
    assert note(best, "--amp", "bf16") == ("note: the training run scored its val split in fp32, this evaluation "
                                           "is in --amp bf16: figures can differ from the run's in the last digits")
    assert note(run["out"] / "last.pt", "--amp", "bf16").startswith("note: the training run scored its val split "
                                                                     "in fp32, this evaluation is in --amp bf16")
    tensors = load_file(str(best))
    bf16_run = tmp_path / "bf16.safetensors"   # as a run with --amp bf16 --channels-last records itself
    save_file(tensors, str(bf16_run), metadata={**meta, "amp": "bf16", "channels_last": "true"})
    assert note(bf16_run) == ("note: the training run scored its val split in --amp bf16 --channels-last, this "
                              "evaluation is in fp32: figures can differ from the run's in the last digits")
    assert note(bf16_run, "--amp", "bf16") is not None           # bf16 in another layout: other roundings
    assert note(bf16_run, "--amp", "bf16", "--channels-last") is None
    assert note(bf16_run, "--split", "all", "--data", f"imagefolder:{run['folder']}") is None  # not the run's split
    unrecorded = {k: v for k, v in meta.items() if k not in ("amp", "channels_last")}
    older = run["out"] / "older.safetensors"   # before the record, in its run folder: config.yaml says fp32
    save_file(tensors, str(older), metadata=unrecorded)
    try:
        assert note(older, "--amp", "bf16") is not None
    finally:
        older.unlink()
    save_file(tensors, str(tmp_path / "older.safetensors"), metadata=unrecorded)   # nothing says: no note
    assert note(tmp_path / "older.safetensors", "--amp", "bf16") is None


def test_eval_of_an_empty_split_says_which_splits_there_are(capsys, run, tmp_path):
    """A run trained with --test-size 0 held no test images out: eval says so and names the other splits."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    best = str(run["out"] / "best.safetensors")
    with safe_open(best, "pt") as f:
        meta = dict(f.metadata())
    no_test = tmp_path / "no-test.safetensors"
    save_file(load_file(best), str(no_test), metadata={**meta, "test_size": "0"})
    line = one_line_error(*cli(capsys, "eval", "--checkpoint", no_test, "--workers", "0"))
    assert line == (f"hcgnet: error: the test split of imagefolder:{run['folder']} is empty (its training run held "
                    "none out): nothing to evaluate; pass --split val or --split all")
    assert cli_json(capsys, "eval", "--checkpoint", no_test, "--split", "val", "--workers", "0")["count"] > 0
    line = one_line_error(*cli(capsys, "attack", "--checkpoint", no_test, "--workers", "0", "--output",
                               tmp_path / "attack"))
    assert line.endswith("is empty (its training run held none out): nothing to attack; pass --split val or "
                         "--split all")
    assert not (tmp_path / "attack").exists()


def test_eval_on_the_device_asked_for(capsys, run):
    args = ["eval", "--checkpoint", str(run["out"] / "best.safetensors"), "--data", f"imagefolder:{run['folder']}",
            "--split", "val", "--workers", "0"]
    on_cpu, default = cli_json(capsys, *args, "--device", "cpu"), cli_json(capsys, *args)
    if torch.cuda.is_available():  # the default is the GPU there: another device's rounding
        assert on_cpu["count"] == default["count"] and on_cpu["loss"] == pytest.approx(default["loss"], rel=1e-3)
    else:   # the same but for when (the provenance's date) and how the command was called
        assert on_cpu.pop("provenance")["device"] == default.pop("provenance")["device"] == "cpu"
        assert on_cpu == default
    line = one_line_error(*cli(capsys, *args, "--device", "gpu0"))
    assert "--device 'gpu0' is not a device; use cpu or cuda" in line
    if not torch.cuda.is_available():
        assert "no CUDA GPU here; use --device cpu" in one_line_error(*cli(capsys, *args, "--device", "cuda"))


@pytest.mark.parametrize("command, data", [("eval", None), ("eval", "given"), ("attack", None)])
def test_an_output_inside_the_image_folder_read_is_refused(capsys, run, command, data):
    """eval's confusion.png (attack's robustness.png) inside the image folder it scored would be read as a class
    folder of images next time; refused before any work, whether the folder is given or the run's recorded one."""
    folder = run["folder"]
    output = folder / "reports"
    argv = ["--data", f"imagefolder:{folder}"] if data else []
    code, out, err = cli(capsys, command, "--checkpoint", run["out"] / "best.safetensors", "--output", output,
                         "--workers", "0", *argv)
    assert code == 2 and err == (f"hcgnet: error: --output {output} is inside {folder}, which this command reads "
                                 "images from: what it writes would be read as images next time; choose an --output "
                                 "outside it\n")
    assert not output.exists() and out == ""


@pytest.mark.parametrize("what", ["file", "missing"])
def test_eval_of_an_imagefolder_that_is_no_folder_says_which(capsys, run, what):
    path = run["base"] / ("notes.txt" if what == "file" else "nowhere")
    if what == "file":
        path.write_text("mine")
    code, out, err = cli(capsys, "eval", "--checkpoint", run["out"] / "best.safetensors", "--data",
                         f"imagefolder:{path}", "--workers", "0")
    said = "not a folder" if what == "file" else "no such folder"
    assert code == 2 and err.startswith(f"hcgnet: error: {said}: {path} (imagefolder:PATH needs a folder"), err


def test_eval_refuses_an_unknown_amp(run):
    from hcgnet.errors import HCGNetError
    from hcgnet.inference import evaluate_checkpoint

    with pytest.raises(HCGNetError, match="unknown --amp 'fp8'"):
        evaluate_checkpoint(str(run["out"] / "best.safetensors"), f"imagefolder:{run['folder']}", amp="fp8")


def test_eval_on_a_dataset_with_another_class_count(capsys, run):
    other = make_folder(run["base"] / "four", CLASSES + ["grey"], 3)
    line = one_line_error(*cli(capsys, "eval", "--checkpoint", str(run["out"] / "best.safetensors"), "--data",
                               f"imagefolder:{other}", "--workers", "0"))
    assert "classes" in line and "3" in line and "4" in line


def test_eval_on_a_dataset_with_other_class_names(capsys, run):
    other = make_folder(run["base"] / "renamed", ["cyan", "magenta", "yellow"], 3)
    line = one_line_error(*cli(capsys, "eval", "--checkpoint", str(run["out"] / "best.safetensors"), "--data",
                               f"imagefolder:{other}", "--workers", "0"))
    assert ", ".join(sorted(CLASSES)) in line and "cyan, magenta, yellow" in line


def test_eval_of_another_folder_scores_all_of_it(capsys, run):
    holdout = make_folder(run["base"] / "holdout", CLASSES, 10)
    for checkpoint in ("best.safetensors", "last.pt"):  # the run's data from config.yaml / the checkpoint
        code, out, err = cli(capsys, "eval", "--checkpoint", str(run["out"] / checkpoint), "--data",
                             f"imagefolder:{holdout}", "--workers", "0")
        assert code == 0, err
        assert "(all, 30 images)" in out
        assert "not the data the checkpoint was trained on" in err
        for name in CLASSES:
            assert any(line.split()[0] == name and "/10)" in line for line in out.splitlines()[1:])
    m = cli_json(capsys, "eval", "--checkpoint", str(run["out"] / "best.safetensors"), "--data",
                 f"imagefolder:{holdout}", "--workers", "0")
    assert m["split"] == "all" and m["count"] == 30
    assert m["class_names"] == sorted(CLASSES)
    assert [sum(row) for row in m["confusion"]] == [10, 10, 10]


def test_eval_of_a_folder_with_some_of_the_classes(capsys, run):
    some = make_folder(run["base"] / "some", ["blue", "red"], 2)
    m = cli_json(capsys, "eval", "--checkpoint", str(run["out"] / "last.pt"), "--data", f"imagefolder:{some}",
                 "--workers", "0")
    assert m["count"] == 4 and m["class_names"] == sorted(CLASSES)   # labelled with the checkpoint's classes
    assert [sum(row) for row in m["confusion"]] == [2, 0, 2]          # blue, green, red


def test_eval_of_the_training_folder_still_scores_its_test_split(capsys, run):
    code, out, err = cli(capsys, "eval", "--checkpoint", str(run["out"] / "best.safetensors"), "--data",
                         f"imagefolder:{run['folder']}/", "--workers", "0")   # the same folder, spelt differently
    assert code == 0 and err == ""
    assert f"(test, {HELD_OUT} images)" in out


def test_inference_export_and_bench_do_not_import_the_trainer():
    import subprocess
    import sys

    code = ("import sys, hcgnet.inference, hcgnet.bench, hcgnet.export, hcgnet.evaluation; "
            "print(sorted(m for m in sys.modules if m.startswith('hcgnet.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------ predict


@pytest.fixture(scope="module")
def new_images(run):
    folder = run["base"] / "new"
    folder.mkdir()
    return [colour_image(folder / f"{name}.png", c, size=(24, 30), seed=999 + c) for c, name in enumerate(CLASSES)]


def test_predict_json_topk(capsys, run, new_images):
    got = cli_json(capsys, "predict", "--checkpoint", str(run["out"] / "best.safetensors"),
                   *map(str, new_images))
    assert [r["image"] for r in got] == [str(p) for p in new_images]
    names = sorted(CLASSES)   # the training folder's class names, in ImageFolder (sorted) order
    for r in got:
        top = r["top"]
        assert len(top) == min(5, len(CLASSES))
        assert sorted(t["class"] for t in top) == names
        assert all(t["class"] == names[t["index"]] for t in top)
        p = [t["probability"] for t in top]
        assert p == sorted(p, reverse=True)
        assert all(0 <= v <= 1 for v in p)
        assert sum(p) == pytest.approx(1.0, abs=1e-5)   # k equals the class count: all the mass


def test_predict_fewer_than_all_classes(capsys, run, new_images):
    got = cli_json(capsys, "predict", "--checkpoint", str(run["out"] / "best.safetensors"), "--topk", "2",
                   str(new_images[0]))
    p = [t["probability"] for t in got[0]["top"]]
    assert len(p) == 2 and p[0] >= p[1]
    assert sum(p) <= 1 + 1e-6


@pytest.mark.parametrize("checkpoint", ["best.safetensors", "last.pt"])
def test_predict_is_softmax_of_the_model_on_the_eval_transform(capsys, run, new_images, checkpoint):
    path = str(run["out"] / checkpoint)
    got = cli_json(capsys, "predict", "--checkpoint", path, *map(str, new_images))
    model, meta = load_model(path)
    config = DataConfig.from_dict(json.loads(meta["data_config"]))
    assert config.input_size == (3, 16, 16)   # the trained size, not the ImageNet default
    transform = build_eval_transform(config)
    with torch.no_grad():
        x = torch.stack([transform(Image.open(p).convert("RGB")) for p in new_images])
        probs = torch.softmax(model.eval()(x), dim=1)
    for r, row in zip(got, probs):
        want = {config.class_names[i]: float(row[i]) for i in range(len(row))}
        assert {t["class"]: t["probability"] for t in r["top"]} == pytest.approx(want, abs=1e-5)


def test_predict_missing_image_is_named_and_the_others_go_on(capsys, run, new_images, tmp_path):
    missing = tmp_path / "nope.png"
    code, out, err = cli(capsys, "predict", "--checkpoint", str(run["out"] / "best.safetensors"),
                         str(new_images[0]), str(missing), "--json")
    assert code == 0
    assert err.splitlines() == [f"hcgnet: warning: no such file or folder: {missing}; skipped"]
    got = json.loads(out)
    assert [r["image"] for r in got] == [str(new_images[0]), str(missing)]
    assert len(got[0]["top"]) == 3 and "error" in got[1] and "top" not in got[1]


def test_predict_only_missing_images_is_one_line(capsys, run, tmp_path):
    missing = tmp_path / "nope.png"
    line = one_line_error(*cli(capsys, "predict", "--checkpoint", str(run["out"] / "best.safetensors"),
                               str(missing)))
    assert str(missing) in line


def test_predict_corrupt_image(capsys, run, new_images, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    code, out, err = cli(capsys, "predict", "--checkpoint", str(run["out"] / "best.safetensors"), str(bad),
                         str(new_images[1]))
    assert code == 0 and "Traceback" not in err
    warning, = err.splitlines()
    assert warning.startswith("hcgnet: warning: cannot read image ") and str(bad) in warning
    assert f"{bad}\n  skipped: cannot read image {bad}" in out and str(new_images[1]) in out
    code, out, err = cli(capsys, "predict", "--checkpoint", str(run["out"] / "best.safetensors"), str(bad))
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("hcgnet: error: none of the 1 inputs")


def test_predict_published_checkpoint_needs_model(capsys, tmp_path):
    img = colour_image(tmp_path / "x.png", 0, size=(32, 32))
    line = one_line_error(*cli(capsys, "predict", "--checkpoint", str(PUBLISHED), str(img)))
    assert "--model" in line


def test_a_model_the_checkpoint_does_not_hold_is_told_the_one_it_does(capsys, run, new_images):
    """--model overriding what the file's metadata says it holds: the refusal names that model."""
    for command in (["predict", str(new_images[0])], ["eval", "--workers", "0"]):
        line = one_line_error(*cli(capsys, *command[:1], "--checkpoint", run["out"] / "best.safetensors",
                                   "--model", "hcgnet_a1", *command[1:]))
        assert line.endswith(f"best.safetensors holds {SPEC} (by its metadata), not hcgnet_a1 "
                             f"(HCGNet-(8,8,8)-(k=12,24,36)); leave --model out or pass --model '{SPEC}'"), line


def test_predict_published_checkpoint_with_model(capsys, tmp_path):
    img = colour_image(tmp_path / "x.png", 2, size=(32, 32))
    got = cli_json(capsys, "predict", "--checkpoint", str(PUBLISHED), "--model", "hcgnet_a1", str(img))
    top = got[0]["top"]
    assert len(top) == 5
    assert all(t["class"] == str(t["index"]) for t in top)     # no class names known: the indices
    assert {t["class"] for t in top} <= {str(i) for i in range(10)} and len({t["class"] for t in top}) == 5
    p = [t["probability"] for t in top]
    assert p == sorted(p, reverse=True) and all(math.isfinite(v) and v >= 0 for v in p)
    assert sum(p) <= 1 + 1e-6


def test_eval_all_of_a_train_and_val_folder_with_a_checkpoint_without_class_names(capsys, tmp_path):
    """A plain .safetensors (no class names: the folder's sorted classes label it) on a train/ + val/ layout: the
    classes are train/'s sub-folders, not "train" and "val"; every image of both is scored."""
    import hcgnet

    make_folder(tmp_path / "tree" / "train", ["blue", "red"], 3)
    make_folder(tmp_path / "tree" / "val", ["blue", "red"], 2)
    path = tmp_path / "plain.safetensors"
    hcgnet.save_safetensors(hcgnet.create_model(SPEC, num_classes=2), path)
    code, out, err = cli(capsys, "eval", "--checkpoint", path, "--model", SPEC, "--data",
                         f"imagefolder:{tmp_path / 'tree'}", "--split", "all", "--workers", "0")
    assert code == 0, err
    assert "(all, 10 images)" in out
    assert [line.split()[0] for line in out.splitlines()[1:3]] == ["blue", "red"]
    assert all(line.rstrip().endswith("/5)") for line in out.splitlines()[1:3])   # 3 in train/, 2 in val/


def test_eval_and_attack_find_the_data_where_the_run_did(capsys, tmp_path, monkeypatch):
    """A run trained with ``--data-dir`` (a relative one) records the folder, absolute, so ``eval`` and ``attack``
    without ``--data-dir``, from another working folder, read the run's CIFAR-10 test images: the run's own test
    top-1. A recorded folder that is not here falls back to the default ($HCGNET_DATA); a checkpoint written before
    the folder was recorded takes it from its run's config.yaml; ``--data-dir`` is used as given."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from test_data import make_cifar10

    monkeypatch.setenv("HCGNET_DATA", str(tmp_path / "empty"))
    make_cifar10(tmp_path / "datasets", per_batch=8, n_test=12)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "train", "--model", SPEC, "--data", "cifar10", "--data-dir", "datasets", "--epochs", "1",
                       "--batch-size", "8", "--workers", "0", "--output", "run")
    assert code == 0, err
    expected = json.loads((tmp_path / "run" / "results.json").read_text())["test_top1"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    checkpoint = str(tmp_path / "run" / "best.safetensors")

    def top1(*argv):
        code, out, err = cli(capsys, "eval", "--checkpoint", checkpoint, "--workers", "0", "--json", *argv)
        assert code == 0, err
        assert json.loads(out)["count"] == 12
        return json.loads(out)["top1"]

    assert top1() == pytest.approx(expected)
    code, out, err = cli(capsys, "attack", "--checkpoint", checkpoint, "--workers", "0", "--limit", "4", "--output",
                         str(tmp_path / "attack"))
    assert code == 0, err
    (tmp_path / "datasets").rename(tmp_path / "moved")   # the recorded folder is gone: the default, then --data-dir
    code, out, err = cli(capsys, "eval", "--checkpoint", checkpoint, "--workers", "0")
    assert code == 2 and f"CIFAR-10 not found in {tmp_path / 'empty'}" in err, err
    assert top1("--data-dir", str(tmp_path / "moved")) == pytest.approx(expected)
    (tmp_path / "moved").rename(tmp_path / "datasets")
    tensors = load_file(checkpoint)
    with safe_open(checkpoint, "pt") as f:
        meta = dict(f.metadata())
    assert meta.pop("data_dir") == str(tmp_path / "datasets")
    save_file(tensors, checkpoint, metadata=meta)   # as a run before data_dir was recorded: config.yaml says it,
    monkeypatch.chdir(tmp_path)                      # relative to where the run started
    assert top1() == pytest.approx(expected)


def test_a_run_on_a_relative_image_folder_is_evaluated_from_any_working_folder(capsys, tmp_path, monkeypatch):
    """A run started with ``--data imagefolder:shots`` records the folder's absolute path, so ``eval`` without
    ``--data`` from another working folder scores the run's own test split (its results.json figures), and so does
    ``--data`` with the folder's absolute path: it is the data the run trained on, not another folder to score
    whole."""
    from conftest import make_image_folder

    make_image_folder(tmp_path / "shots", classes=3, per_class=12)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "train", "--model", SPEC, "--data", "imagefolder:shots", "--image-size", "16",
                       "--epochs", "1", "--batch-size", "8", "--workers", "0", "--val-size", "0.25",
                       "--test-size", "0.25", "--output", "run")
    assert code == 0, err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for extra in ([], ["--data", f"imagefolder:{tmp_path / 'shots'}"]):
        code, out, err = cli(capsys, "eval", "--checkpoint", tmp_path / "run" / "best.safetensors", "--workers", "0",
                             "--json", *extra)
        assert code == 0, err
        scored = json.loads(out)
        assert scored["data"] == f"imagefolder:{tmp_path / 'shots'}" and scored["split"] == "test"
        assert scored["count"] == results["test_images"] and scored["top1"] == pytest.approx(results["test_top1"])
    # the folder gone: one line naming it; a checkpoint from before, recording the path as given, says how it reads
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    checkpoint = tmp_path / "run" / "best.safetensors"
    (tmp_path / "shots").rename(tmp_path / "moved")
    code, out, err = cli(capsys, "eval", "--checkpoint", checkpoint)
    assert code == 2 and err == (f"hcgnet: error: {checkpoint} was trained on imagefolder:{tmp_path / 'shots'}, "
                                 "which is not here; pass --data\n"), err
    with safe_open(str(checkpoint), "pt") as f:
        meta = {**f.metadata(), "data": "imagefolder:shots"}
    save_file(load_file(checkpoint), checkpoint, metadata=meta)
    code, out, err = cli(capsys, "eval", "--checkpoint", checkpoint)
    assert code == 2 and err == (f"hcgnet: error: {checkpoint} was trained on imagefolder:shots, which is not here (a "
                                 "relative path is relative to where the training run started); pass --data\n"), err


def test_checkpoints_recording_one_folder_two_ways_are_trained_on_the_same_data(tmp_path, monkeypatch):
    """An older checkpoint records an image folder as given (relative to where its run started), a newer one by
    its absolute path: from the run's working folder they name the same data, and the record that is here is
    used; from elsewhere the relative one names another folder, and ``--data`` is asked for."""
    from hcgnet.errors import CheckpointError
    from hcgnet.inference import recorded_data

    (tmp_path / "shots").mkdir()
    monkeypatch.chdir(tmp_path)
    older, newer = ("a.safetensors", {"data": "imagefolder:shots"}), ("b.safetensors",
                                                                       {"data": f"imagefolder:{tmp_path / 'shots'}"})
    assert recorded_data([older, newer]) in ("imagefolder:shots", f"imagefolder:{tmp_path / 'shots'}")
    assert recorded_data([older, ("c.safetensors", {"data": "imagefolder:./shots/"})]) in ("imagefolder:./shots/",
                                                                                        "imagefolder:shots")
    with pytest.raises(CheckpointError, match="trained on different data"):
        recorded_data([newer, ("d.safetensors", {"data": "cifar10"})])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert recorded_data([newer]) == f"imagefolder:{tmp_path / 'shots'}"
    with pytest.raises(CheckpointError, match="trained on different data"):
        recorded_data([older, newer])
