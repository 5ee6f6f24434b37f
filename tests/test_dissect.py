"""Network dissection (hcgnet.analysis.dissect) on a tiny Broden-format set the tests write."""
import csv
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from hcgnet.analysis.broden import Broden, decode_mask, encode_mask
from hcgnet.analysis.dissect import DissectError, TopQuantile, dissect
from hcgnet.cli import main
from hcgnet.errors import HCGNetError

IMAGES, SIDE, SEG = 40, 32, 16            # 32 x 32 images, 16 x 16 segmentations (Broden's half resolution)
LABELS = {1: ("blue-c", "color"), 2: ("red_square", "object"), 3: ("indoor", "scene"), 300: ("far_label", "part")}
SQUARES = {3: (2, 4), 17: (8, 10)}        # image index -> square's top-left in segmentation pixels (5 x 5 each)


def write_broden(root, images=IMAGES, seed=0):
    """A Broden directory: grey noisy images with a blue stripe (color 'blue-c', every image) and, in two
    images, a red 5 x 5 (segmentation pixels) square (object 'red_square'); the odd images are brighter and
    have scene 'indoor' (a whole-image label). 50 square pixels of 40 * 256 = 0.49% of all pixels: the top 0.5% of a unit that sees red."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    with open(root / "category.csv", "w") as f:
        f.write("name,first,last,count,frequency\n")
        for cat in ("color", "object", "part", "scene"):
            f.write(f"{cat},1,1,1,1\n")
            rows = [f"{code},{n},{name},{images},1.0" for code, (n, (name, c)) in
                    enumerate(((n, v) for n, v in LABELS.items() if v[1] == cat), start=1)]
            (root / f"c_{cat}.csv").write_text("\n".join(["code,number,name,frequency,coverage", "0,0,-,0,0", *rows]) + "\n")
    with open(root / "label.csv", "w") as f:
        f.write("number,name,category,frequency,coverage,syns\n0,-,-,0,0,\n")
        for n, (name, cat) in LABELS.items():
            f.write(f"{n},{name},{cat}({images}),{images},1.0,\n")
    rows = []
    for i in range(images):
        img = np.clip((160 if i % 2 else 128) + rng.normal(0, 12, size=(SIDE, SIDE, 3)), 0, 255)
        color = np.zeros((SEG, SEG), np.int64)
        color[12:14, :] = 1                                   # blue stripe at segmentation rows 12-13
        img[24:28, :] = (20, 20, 230) + rng.normal(0, 5, size=(4, SIDE, 3))
        obj = np.zeros((SEG, SEG), np.int64)
        if i in SQUARES:
            y, x = SQUARES[i]
            obj[y:y + 5, x:x + 5] = 2
            img[2 * y:2 * y + 10, 2 * x:2 * x + 10] = (230, 20, 20) + rng.normal(0, 5, size=(10, 10, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
        Image.fromarray(encode_mask(color)).save(root / "images" / f"im{i}_color.png")
        Image.fromarray(encode_mask(obj)).save(root / "images" / f"im{i}_object.png")
        rows.append(dict(image=f"im{i}.png", split="train", ih=SIDE, iw=SIDE, sh=SEG, sw=SEG,
                         color=f"im{i}_color.png", object=f"im{i}_object.png", part="",
                         scene="3" if i % 2 else "", texture=""))
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


class Planted(nn.Module):
    """Unit 0 of ``features``: redness (R - (G + B) / 2) pooled 2 x 2 to the segmentation's 16 x 16;
    unit 1: constant 0 (responds to nothing); unit 2: unit 0 shifted 2 pixels right (fires on a 5 x 5 square
    overlapping the red one by 3 x 5); unit 3: brightness. ``pool``: the 1 x 1 map a classifier sees."""

    def __init__(self):
        super().__init__()
        self.features = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        red = F.avg_pool2d((x[:, :1] - (x[:, 1:2] + x[:, 2:3]) / 2), 2)
        maps = self.features(torch.cat([red, torch.zeros_like(red), torch.roll(red, 2, dims=3),
                                        F.avg_pool2d(x.mean(1, keepdim=True), 2)], 1))
        return self.pool(maps).flatten(1)


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    return write_broden(tmp_path_factory.mktemp("broden"))


def dataset(root, **kw):
    return Broden(root, size=(SIDE, SIDE), mean=(0, 0, 0), std=(1, 1, 1), **kw)


# the Broden reader -------------------------------------------------------------------------------------

def test_decode_is_red_plus_256_green():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (44, 1, 0)      # 44 + 256
    rgb[1, 1] = (7, 2, 99)      # 7 + 512, blue ignored
    assert decode_mask(rgb).tolist() == [[300, 0], [0, 519]]


def test_reader_decodes_masks_and_whole_image_labels(tmp_path):
    root = write_broden(tmp_path / "b", images=2)
    mask = np.zeros((SEG, SEG), np.int64)
    mask[3, 4] = 300
    Image.fromarray(encode_mask(mask)).save(root / "images" / "part.png")
    text = (root / "index.csv").read_text().splitlines()
    text[1] = text[1].replace(",,3,", ",part.png,3,") if ",,3," in text[1] else text[1].replace("png,,", "png,part.png,", 1)
    (root / "index.csv").write_text("\n".join(text) + "\n")
    ds = dataset(root)
    image, seg = ds[0]
    assert image.shape == (3, SIDE, SIDE)
    assert seg["masks"]["part"][0][3, 4] == 300 and seg["masks"]["part"][0].sum() == 300
    assert seg["masks"]["color"][0][12, 0] == 1 and seg["masks"]["color"][0][0, 0] == 0
    assert seg["labels"]["scene"] == [] and ds[1][1]["labels"]["scene"] == [3]
    assert ds.labels[2] == "red_square" and ds.label_category[2] == "object" and ds.label_category[300] == "part"


@pytest.mark.parametrize("remove", [None, "index.csv", "label.csv", "images"])
def test_missing_broden_is_one_line_exit_2(tmp_path, capsys, remove):
    root = tmp_path / "broden"
    if remove is not None:
        write_broden(root, images=2)
        target = root / remove
        if target.is_dir():
            import shutil
            shutil.rmtree(target)
        else:
            target.unlink()
    code = main(["dissect", "--checkpoint", str(tmp_path / "none.safetensors"), "--broden", str(root),
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("hcgnet: error:")
    assert "broden1_224" in err and "--broden" in err
    assert "python -m hcgnet.analysis.broden NEW_FOLDER" in err  # the offline way, there for a pip-installed user too
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("table, words", [
    ("code,number,name,frequency,coverage\n", "lists a label (rows of code, number, name, frequency, coverage"),
    ("code,number,name\n1,2,red_square\n", "c_color.csv line 2: needs code, number and coverage columns")])
def test_category_tables_without_labels_or_coverage_are_one_line_exit_2(tmp_path, capsys, table, words):
    root = write_broden(tmp_path / "b", images=2)
    for cat in ("color", "object", "part", "scene"):
        (root / f"c_{cat}.csv").write_text(table)
    code = main(["dissect", "--checkpoint", str(tmp_path / "none.safetensors"), "--broden", str(root),
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and words in err, err


# the quantile estimator --------------------------------------------------------------------------------

def test_malformed_index_and_bad_limit_are_one_line_exit_2(broden, tmp_path, capsys):
    bad = tmp_path / "bad"
    write_broden(bad, images=2)
    text = (bad / "index.csv").read_text().replace("png,train,32,32", "png,train,thirty-two,32", 1)
    (bad / "index.csv").write_text(text)
    cases = ((bad, [], "index.csv line 2: malformed row"), (broden, ["--limit", "0"], "--limit"),
             (broden, ["--device", "nonsense"], "--device"),
             (broden, ["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a GPU; on the CPU use --amp bf16"),
             (broden, ["--workers", "-1"], "--workers must be 0 or more"))
    for root, extra, words in cases:
        code = main(["dissect", "--checkpoint", str(tmp_path / "none.safetensors"), "--broden", str(root),
                     "--output", str(tmp_path / "out"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and words in err, err


def test_top_quantile_within_stated_error_of_numpy():
    rng = np.random.default_rng(1)
    batches = []
    for b in range(30):
        v = np.stack([rng.exponential(1.0, 997), rng.normal(0, 1, 997), rng.uniform(-1, 1, 997)])
        if b == 20:
            v[1, 5] = 40.0        # a late outlier: the range doubles several times
        batches.append(v)
    est = TopQuantile(3, bins=1024)
    for v in batches:
        est.update(torch.from_numpy(v))
    allv = np.concatenate(batches, 1)
    for q in (0.005, 0.05, 0.5):
        exact = np.quantile(allv, 1 - q, axis=1, method="lower")
        got, bound = est.quantile(q).numpy(), est.error_bound(q).numpy()
        assert np.all(np.abs(got - exact) <= bound), (q, got, exact, bound)
        assert np.all(bound <= 2 * (allv.max(1) - allv.min(1)) / 1024)     # the bound the docstring states
    assert np.all(est.error_bound(0.005).numpy() < 0.05) and est.counts.shape == (3, 1024)   # small, not vacuous


# dissection --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def result(broden):
    torch.manual_seed(0)
    return dissect(Planted(), dataset(broden), layers=["features"], batch_size=8)[0]


def test_planted_unit_detects_planted_concept(result):
    unit = result.units[0]
    assert (unit["concept"], unit["category"]) == ("red_square", "object")
    assert unit["detector"] and unit["iou"] > 0.9
    assert result.unique_detectors()["object"] == 1 and result.unique_detectors()["color"] == 0


def test_shifted_unit_iou_by_hand(result):
    # two squares of 25 pixels; the shifted unit fires on 2 x 25 (+ a few background pixels at the 0.5%
    # threshold), overlapping 2 x 15: IoU = 30 / (50 + 50 - 30) = 0.43, a bit less with the extra pixels
    unit = result.units[2]
    assert unit["concept"] == "red_square" and 0.38 < unit["iou"] <= 30 / 70 + 1e-9
    assert len(result.detectors) == 2 and result.unique_detectors()["object"] == 1   # one concept, two units


def test_unit_responding_to_nothing_is_no_detector(result):
    assert not result.units[1]["detector"] and result.units[1]["iou"] < 0.04
    # a constant unit never rises above its threshold: marked, not an empty cell
    assert (result.units[1]["concept"], result.units[1]["category"], result.units[1]["fired_pixels"]) == ("-", "-", 0)
    assert result.units[0]["fired_pixels"] > 0


def test_whole_image_label_scene(broden):
    # brightness: the 20 bright (indoor) images have 20 x 224 background pixels above every dark image's
    # (stripe 32 pixels darker); at the top 40% (4096 of 10240 pixels) it fires on bright ones only:
    # IoU with 'indoor' (every pixel of the 20 images) = 4096 / 5120 = 0.8
    r = dissect(Planted(), dataset(broden), layers=["features"], batch_size=16, quantile=0.4)[0]
    assert (r.units[3]["concept"], r.units[3]["category"]) == ("indoor", "scene")
    assert abs(r.units[3]["iou"] - 0.8) < 0.01


def test_thresholds_within_stated_error_of_numpy_quantile(broden, result):
    ds = dataset(broden)
    with torch.no_grad():
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        red = F.avg_pool2d(x[:, :1] - (x[:, 1:2] + x[:, 2:3]) / 2, 2)
    exact = np.quantile(red.numpy().ravel().astype(np.float64), 1 - 0.005, method="lower")
    assert abs(result.thresholds[0] - exact) <= result.threshold_error[0] + 1e-6
    assert result.threshold_error[0] < 1e-3


def test_limit_batch_of_one_and_bf16(broden):
    # (bf16: a smoke test of the autocast path; this model's element-wise ops stay float32)
    # 5 images, one square (image 3): 25 of 1280 pixels, so the top 2% is the square and one more pixel
    r = dissect(Planted(), dataset(broden, limit=5), layers=["features"], batch_size=1, quantile=0.02, amp="bf16")[0]
    assert r.units[0]["concept"] == "red_square" and r.units[0]["iou"] > 0.9
    assert set(r.top_images[0][:1]) == {3}


def test_bf16_really_runs_the_forward_passes_in_bfloat16(broden, single_thread):
    import hcgnet

    torch.manual_seed(0)
    model = hcgnet.create_model("HCGNet-(1,1,1)-(k=4,4,4)", num_classes=3).eval()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    dtypes = set()
    handle = conv.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
    try:
        results = {amp: dissect(model, dataset(broden, limit=3), layers=["stages.1.block"], amp=amp)[0]
                   for amp in ("none", "bf16")}
        assert dtypes == {torch.float32, torch.bfloat16}
    finally:
        handle.remove()
    # the maps are kept in float32 either way; bf16's thresholds are close to fp32's (8 bits of mantissa)
    fp32, bf16 = results["none"].thresholds, results["bf16"].thresholds
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, fp32, atol=0.05 * float(np.abs(fp32).max()))


def test_fp16_on_a_cpu_is_refused(broden):
    with pytest.raises(HCGNetError, match="--amp fp16 needs a GPU"):
        dissect(Planted(), dataset(broden, limit=2), layers=["features"], amp="fp16", device="cpu")


def test_one_by_one_layer_refused(broden):
    with pytest.raises(DissectError, match="1 x 1"):
        dissect(Planted(), dataset(broden, limit=2), layers=["pool"])


def test_unknown_layer_refused(broden):
    with pytest.raises(DissectError, match="no module named 'nope'"):
        dissect(Planted(), dataset(broden, limit=2), layers=["nope"])


# the command -------------------------------------------------------------------------------------------

TINY = "HCGNet-(1,1,1)-(k=4,4,4)"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import hcgnet

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    hcgnet.save_safetensors(hcgnet.create_model(TINY, num_classes=3), path, {"model_name": TINY})
    return path


def test_cli_writes_tables_and_pictures(broden, tiny_checkpoint, tmp_path, capsys, single_thread, monkeypatch):
    import hcgnet.analysis.dissect_plots as plots

    titles = []
    drawn = plots.plot_unique_detectors
    monkeypatch.setattr(plots, "plot_unique_detectors", lambda *a, title, **k: titles.append(title) or drawn(
        *a, title=title, **k))
    out = tmp_path / "out"
    code = main(["dissect", "--checkpoint", str(tiny_checkpoint), "--broden", str(broden), "--limit", "6",
                 "--batch-size", "4", "--workers", "0", "--top-units", "2", "--device", "cpu", "--amp", "bf16", "--output", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0
    layers = ["stages.0.block", "stages.1.block", "act"]     # hybrid blocks; the last after the final BN-ReLU
    assert "note: 6 images leave" in stderr and "at act (" in stderr    # too few for a 0.5% threshold
    for layer in layers:
        assert layer in stdout
        with open(out / f"{layer}.csv") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["unit", "concept", "category", "iou", "threshold", "detector", "fired_pixels"]
        assert all(0 <= float(r["iou"]) <= 1 for r in rows)
        assert Image.open(out / f"units_{layer}.png").size[0] > 100
    summary = json.loads((out / "summary.json").read_text())
    assert [r["layer"] for r in summary["layers"]] == layers and summary["config"]["images"] == 6
    assert summary["config"]["amp"] == "bf16" and summary["config"]["in_chans"] == 3
    listed = len((broden / "index.csv").read_text().splitlines()) - 1   # the header
    assert summary["config"]["limit"] == 6 and summary["config"]["images_listed"] == listed
    assert f"on the first 6 of {listed:,} Broden images" in stdout
    assert [c["sha256"] for c in summary["provenance"]["checkpoints"]] == [
        hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()]
    assert set(summary["threshold_error_max"]) == set(layers)
    import hcgnet
    tiny = hcgnet.create_model(TINY, num_classes=3)
    assert summary["layers"][-1]["units"] == len(rows) == tiny.num_features
    # the checkpoint carries no preprocessing: the image size comes from the model, not a constant
    assert summary["config"]["size"] == list(tiny.pretrained_cfg["input_size"][1:])
    with open(out / "summary.csv") as f:
        assert [r["layer"] for r in csv.DictReader(f)] == layers
    assert Image.open(out / "unique_detectors.png").size[0] > 100
    # titled with the run's folder too, as eval's confusion.png: every run's file is best.safetensors
    assert titles == [f"{tiny_checkpoint.parent.name}/{tiny_checkpoint.name}: unique detectors"]


def test_too_few_images_for_the_threshold_are_said():
    """0.5% of 40 images x 7 x 7 cells is 9.8 values above each unit's threshold: said, at the smallest map;
    Broden's 63,305 images leave 15,510 there: nothing said."""
    from types import SimpleNamespace

    from hcgnet.analysis.dissect import thin_threshold_note

    layers = [SimpleNamespace(layer="stages.0.block", shape=(8, 28, 28)),
              SimpleNamespace(layer="stages.2.block", shape=(16, 7, 7))]
    note = thin_threshold_note(layers, 40, 0.005)
    assert note.startswith("note: 40 images leave 9.8 activations per unit above the top-0.5% threshold at "
                           "stages.2.block (7x7)")
    assert thin_threshold_note(layers, 63305, 0.005) is None
    assert thin_threshold_note(layers, 409, 0.005) is None and thin_threshold_note(layers, 408, 0.005)  # 100.2, 99.96


def test_cli_progress_lines_when_not_on_a_terminal(broden, tiny_checkpoint, tmp_path, capsys, single_thread,
                                                   monkeypatch):
    import hcgnet.analysis.options as options

    monkeypatch.setattr(options, "LOG_EVERY_S", 0.0)      # a line per batch but the last of each pass
    code = main(["dissect", "--checkpoint", str(tiny_checkpoint), "--broden", str(broden), "--limit", "3",
                 "--batch-size", "1", "--workers", "0", "--top-units", "0", "--layer", "stages.2.block",
                 "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 0, err
    progress, [note] = [line for line in err.splitlines() if not line.startswith("note: ")], [
        line for line in err.splitlines() if line.startswith("note: ")]   # 3 images: too few, said once at the end
    assert [line.split(",")[0] for line in progress] == [
        "dissect 1/2 thresholds: 1/3 batches", "dissect 1/2 thresholds: 2/3 batches",
        "dissect 2/2 IoU: 1/3 batches", "dissect 2/2 IoU: 2/3 batches"]
    assert note.startswith("note: 3 images leave 0.96 activations per unit")   # 0.005 x 3 x 8 x 8


def test_cli_newcomers_mistakes_are_one_line(broden, tiny_checkpoint, tmp_path, capsys):
    base = ["dissect", "--checkpoint", str(tiny_checkpoint), "--broden", str(broden), "--limit", "2",
            "--workers", "0"]
    out = ["--output", str(tmp_path / "out")]
    cases = (
        (base, "required: --output (hcgnet dissect --help"),
        (["dissect", "--checkpoint", str(tiny_checkpoint), "--broden", str(broden / "index.csv"), *out],
         "is a file; pass the folder that holds index.csv"),
        (["dissect", "--checkpoint", str(tiny_checkpoint), "--broden", str(broden / "images"), *out],
         f"not a Broden directory but its parent is: pass --broden {broden}"),
        (["dissect", "--checkpoint", str(tiny_checkpoint.parent), "--broden", str(broden), *out],
         f"is a folder, not a checkpoint file; e.g. --checkpoint {tiny_checkpoint}"),
        (base + out + ["--layer", "stages.9.block"],
         "no module named 'stages.9.block' in the model; close names: stages.2.block, stages.1.block, "
         "stages.0.block; the default layers are stages.0.block, stages.1.block, act"),
        (base + out + ["--iou-threshold", "2"], "--iou-threshold must be above 0 and at most 1"),
        (base + ["--output", str(broden / "index.csv")], "is a file; give a folder for the tables and pictures"),
    )
    for argv, words in cases:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's way out: still one line, exit 2
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("hcgnet: error: "), err
        assert words in err, err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_pooled_layer(broden, tiny_checkpoint, tmp_path, capsys, single_thread):
    code = main(["dissect", "--checkpoint", str(tiny_checkpoint), "--broden", str(broden), "--limit", "2",
                 "--workers", "0", "--layer", "global_pool", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not a spatial map" in err and err.startswith("hcgnet: error:")


def test_timm_model_default_layers_are_its_feature_maps(broden, single_thread):
    import timm

    from hcgnet.analysis.dissect import default_layers

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3).eval()
    layers = default_layers(model)
    assert layers == [f["module"] for f in model.feature_info] and "layer4" in layers
    r = dissect(model, dataset(broden, limit=4), layers=["layer1"], batch_size=4)[0]
    assert r.shape[0] == 64 and len(r.units) == 64


def test_the_synthetic_set_of_the_readme_reads_as_broden(tmp_path):
    from hcgnet.analysis.broden import write_synthetic

    root = write_synthetic(tmp_path / "synthetic", images=6)
    ds = Broden(root, size=(32, 32))
    assert len(ds) == 6 and ds.categories == ["color", "object", "scene", "texture"]
    assert sorted(ds.labels.values()) == sorted(["red", "green", "blue", "yellow", "disc", "square", "bar",
                                                 "dark room", "bright room", "striped", "dotted"])
    for i in range(6):
        _, seg = ds[i]
        colour, shape = seg["masks"]["color"][0], seg["masks"]["object"][0]
        assert colour.shape == (32, 32) and set(np.unique(colour)) - {0} <= {1, 2, 3, 4}
        assert set(np.unique(shape)) - {0} <= {5, 6, 7} and ((colour > 0) == (shape > 0)).all()
        assert (colour > 0).any()
        assert len(seg["labels"]["scene"]) == 1 and len(seg["labels"]["texture"]) == 1


def test_the_synthetic_broden_script_helps_refuses_and_keeps_an_earlier_set(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = str(Path(__file__).resolve().parent.parent / "docs" / "synthetic_broden.py")

    def run(*argv):
        return subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, cwd=tmp_path,
                              timeout=120)

    shown = run("--help")
    assert shown.returncode == 0 and "NEW_FOLDER" in shown.stdout and "--force" in shown.stdout
    assert not (tmp_path / "--help").exists() and list(tmp_path.iterdir()) == []
    bare = run()
    assert bare.returncode == 2 and "NEW_FOLDER" in bare.stderr and "Traceback" not in bare.stderr
    first = run("syn", "--images", "2")
    assert first.returncode == 0 and (tmp_path / "syn" / "index.csv").is_file()
    index = (tmp_path / "syn" / "index.csv").read_text()
    again = run("syn", "--images", "3")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--force" in again.stderr
    assert "Traceback" not in again.stderr and (tmp_path / "syn" / "index.csv").read_text() == index
    from hcgnet.analysis.broden import main as write_main  # in this process: each start imports torch (2 s)

    assert write_main([str(tmp_path / "syn"), "--images", "3", "--force"]) == 0
    assert len((tmp_path / "syn" / "index.csv").read_text().splitlines()) == 4


# NetDissect-Lite's tally, reimplemented here as the oracle ----------------------------------------------
#
# Written from Lite's feature_operation.py (tally_job, tally) and loader/data_loader.py (SegmentationData):
# categories in category.csv's order; an image with no item in any selected category is left out; a cell
# whose items are all digits holds whole-image labels, otherwise mask PNGs (label = R + 256 G); a label's
# primary category is max over categories of (its c_<cat>.csv coverage, the category's index); a map is
# resized to the segmentation's size by Pillow's float bilinear resize (scipy's imresize(mode='F')); a unit
# fires where that is strictly above its threshold; the unit's area counts toward category c on an image
# where the fired pixels cover a label whose primary category is c, or the image has a whole-image label of
# primary category c; IoU = both / (area[primary] + label - both). hcgnet's deliberate differences (README):
# each (pixel, label) pair counts once per image; a mask stored at another size is resized nearest; a label
# no c_<cat>.csv lists is no concept (Lite files it under the last category).

def _cells(text):
    items = [s for s in (text or "").split(";") if s]
    return [int(s) if s.isdigit() else s for s in items]


def _nearest(a, shape):
    rows = ((np.arange(shape[0]) + 0.5) * a.shape[0] / shape[0]).astype(int)
    cols = ((np.arange(shape[1]) + 0.5) * a.shape[1] / shape[1]).astype(int)
    return a[rows][:, cols]


def lite_upsample(feature_map, shape):
    return np.asarray(Image.fromarray(feature_map.astype(np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.BILINEAR), dtype=np.float32)


def lite_tally(root, maps, thresholds, categories=None):
    """IoU (units, labels) for the images Lite keeps; ``maps[i]``: the (units, h, w) map of index.csv row i.
    Returns (iou, primary category per label or None, kept row indices, min |upsampled - threshold|)."""
    with open(root / "category.csv") as f:
        cats = [r["name"] for r in csv.DictReader(f) if categories is None or r["name"] in categories]
    with open(root / "label.csv") as f:
        n_labels = max(int(r["number"]) for r in csv.DictReader(f)) + 1
    listed = {}
    for ic, cat in enumerate(cats):
        with open(root / f"c_{cat}.csv") as f:
            for r in csv.DictReader(f):
                if int(r["code"]):
                    listed.setdefault(int(r["number"]), {})[ic] = float(r["coverage"])
    primary = [max((listed[l].get(ic, 0), ic) for ic in range(len(cats)))[1] if l in listed else None
               for l in range(n_labels)]
    labelcat = np.zeros((n_labels, len(cats)))
    for l, ic in enumerate(primary):
        if ic is not None:
            labelcat[l, ic] = 1
    with open(root / "index.csv") as f:
        rows = list(csv.DictReader(f))
    kept = [i for i, r in enumerate(rows) if any(d for c in cats for d in _cells(r.get(c)))]
    units = len(thresholds)
    both = np.zeros((units, n_labels))
    unit_cat = np.zeros((units, len(cats)))
    label_px = np.zeros(n_labels)
    margin = np.inf
    for i in kept:
        r = rows[i]
        sh, sw = int(r["sh"]), int(r["sw"])
        scalars, pixels = [], []
        for cat in cats:
            group = _cells(r.get(cat))
            if all(isinstance(d, int) for d in group):
                scalars += group
                continue
            for d in group:
                if isinstance(d, int):
                    pixels.append(np.full((sh, sw), d))
                else:
                    rgb = np.asarray(Image.open(root / "images" / d).convert("RGB")).astype(np.int64)
                    pixels.append(_nearest(rgb[:, :, 0] + 256 * rgb[:, :, 1], (sh, sw)))
        stack = np.stack(pixels) if pixels else np.zeros((0, sh, sw), np.int64)
        regions = {l: (stack == l).any(0) for l in np.unique(stack) if l}
        regions.update({l: np.ones((sh, sw), bool) for l in scalars if l})
        for l, region in regions.items():
            label_px[l] += region.sum()
        for u in range(units):
            up = lite_upsample(maps[i][u], (sh, sw))
            margin = min(margin, float(np.abs(up - thresholds[u]).min()))
            fired = up > thresholds[u]
            touched = np.zeros(len(cats))
            for l, region in regions.items():
                hit = (fired & region).sum()
                both[u, l] += hit
                if hit:
                    touched += labelcat[l]
            unit_cat[u] += fired.sum() * (touched > 0)
    iou = both / (unit_cat @ labelcat.T + label_px[None, :] - both + 1e-10)
    return iou, [cats[ic] if ic is not None else None for ic in primary], kept, margin


class Lookup(nn.Module):
    """Returns stored maps: image i carries its index in the red value of its top-left pixel."""

    def __init__(self, maps):
        super().__init__()
        self.maps = maps
        self.features = nn.Identity()

    def forward(self, x):
        ids = (x[:, 0, 0, 0] * 255).round().long()
        return self.features(self.maps[ids]).mean((2, 3))


ORACLE_CATS = ("color", "object", "part", "material", "scene", "texture")
# number: (name, {category: coverage in c_<cat>.csv}, label.csv's category field)
ORACLE_LABELS = {
    1: ("red", {"color": 0.2}, "color(30)"), 2: ("blue", {"color": 0.2}, "color(30)"),
    3: ("wall", {"object": 0.4}, "object(20)"),
    4: ("door", {"object": 0.3, "part": 0.05}, "part(50);object(3)"),    # primary: object (coverage, not count)
    300: ("handle", {"part": 0.02}, "part(9)"),                         # needs the green channel: 44 + 256
    6: ("wood", {"part": 0.1, "material": 0.1}, "part(5);material(5)"),  # a tie: the later category, material
    7: ("kitchen", {"scene": 1.0}, "scene(10)"), 8: ("street", {"scene": 1.0}, "scene(10)"),
    9: ("striped", {"texture": 1.0}, "texture(8)"),
    10: ("ghost", {}, "part(4)"),                                       # in no c_<cat>.csv: no concept
}
ORACLE_IMAGES, ORACLE_DROPPED = 30, (5, 17, 23)


def write_oracle_broden(root, seed=0):
    """30 rows (3 with no data, dropped), 32 x 32 PNG images, 16 x 16 segmentations; masks stored at 16, 32 or
    8 pixels; door drawn in object masks, in part masks of images without an object mask, and in both at once;
    whole-image labels in scene, material (digits in a pixel category) and texture; one texture mask PNG."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    with open(root / "category.csv", "w") as f:
        f.write("name,first,last,count,frequency\n" + "".join(f"{c},1,1,1,1\n" for c in ORACLE_CATS))
    for cat in ORACLE_CATS:
        rows = [(n, name, cov[cat]) for n, (name, cov, _) in ORACLE_LABELS.items() if cat in cov]
        (root / f"c_{cat}.csv").write_text("code,number,name,frequency,coverage\n0,0,-,0,0\n" + "".join(
            f"{code},{n},{name},5,{c}\n" for code, (n, name, c) in enumerate(rows, start=1)))
    (root / "label.csv").write_text("number,name,category,frequency,coverage,syns\n0,-,-,0,0,\n" + "".join(
        f'{n},{name},"{field}",5,0.1,\n' for n, (name, _, field) in ORACLE_LABELS.items()))
    regions = np.zeros((ORACLE_IMAGES, SEG, SEG), bool)        # door pixels, for the planted unit

    def save(name, labels, side=SEG):
        stored = labels if side == SEG else (np.kron(labels, np.ones((2, 2), np.int64)) if side > SEG else labels[::2, ::2])
        Image.fromarray(encode_mask(stored)).save(root / "images" / name)
        return name

    rows = []
    for i in range(ORACLE_IMAGES):
        img = rng.integers(0, 256, size=(SIDE, SIDE, 3)).astype(np.uint8)
        img[0, 0, 0] = i
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        row = dict(image=f"im{i}.png", split="train", ih=SIDE, iw=SIDE, sh=SEG, sw=SEG,
                   **{c: "" for c in ORACLE_CATS})
        if i not in ORACLE_DROPPED:
            color = np.where(rng.random((SEG, SEG)) < 0.5, 1, 2) * (rng.random((SEG, SEG)) < 0.6)
            row["color"] = save(f"im{i}_color.png", color)
            y, x = rng.integers(0, 10, 2)
            door = np.zeros((SEG, SEG), bool)
            door[y:y + 6, x:x + 4] = True
            regions[i] = door
            if i % 3 != 1:                       # an object mask: wall, door (stored at 16, 32 or 8)
                obj = np.where(door, 4, 3 * (rng.random((SEG, SEG)) < 0.5))
                row["object"] = save(f"im{i}_object.png", obj, side=(SEG, 2 * SEG, SEG // 2)[i % 3])
            if i % 3 != 0:                       # a part mask: door (the non-primary category), handle, wood, ghost
                part = np.where(door, 4, 0)
                part[rng.integers(0, 16), :] = 300
                part[:, rng.integers(0, 16)] = 6
                part[rng.integers(0, 16), rng.integers(0, 8):] = 10
                if i % 3 == 2:
                    part[door] = 4                # with the object mask: door in two masks at the same pixels
                row["part"] = save(f"im{i}_part.png", part)
            if i % 4 == 0:
                row["material"] = "6"             # digits: a whole-image label, whatever the category
            row["scene"] = ("7", "8", "", "7;8")[i % 4]
            row["texture"] = "9" if i % 5 == 0 else ""
            if i == 11:
                row["texture"] = save("im11_texture.png", np.where(regions[i], 9, 0))  # a mask: per pixel
            if i == 26:                           # whole-image labels only
                for c in ("color", "object", "part", "material", "texture"):
                    row[c] = ""
                row["scene"] = "8"
        rows.append(row)
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root, regions


def oracle_maps(regions, units, shape, seed=1):
    """Smooth noise (drawn at 4 x 4, so a unit fires in blobs whatever the map size) with unit 0 responding to
    door pixels, unit 2 to door pixels shifted 3 pixels right (a partial overlap), unit 1 to kitchens; dropped
    rows get 50 everywhere (a threshold that saw them would be 50)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(0, 1, size=(ORACLE_IMAGES, units, 4, 4)).astype(np.float32))
    maps = F.interpolate(coarse, size=shape, mode="bilinear", align_corners=False).numpy()
    maps += rng.normal(0, 0.2, size=maps.shape).astype(np.float32)
    door = torch.from_numpy(regions[:, None].astype(np.float32))
    maps[:, 0] += 6 * F.interpolate(door, size=shape, mode="area")[:, 0].numpy()
    maps[:, 2] += 6 * F.interpolate(torch.roll(door, 3, dims=3), size=shape, mode="area")[:, 0].numpy()
    maps[[i for i in range(ORACLE_IMAGES) if i % 4 in (0, 3)], 1] += 2.0
    maps[list(ORACLE_DROPPED)] = 50.0
    return maps


@pytest.fixture(scope="module")
def oracle_broden(tmp_path_factory):
    return write_oracle_broden(tmp_path_factory.mktemp("oracle"))


@pytest.mark.parametrize("shape", [(4, 4), (16, 16), (7, 11), (24, 20)])    # smaller, equal, odd, larger
def test_tally_equals_netdissect_lite_oracle(oracle_broden, shape, single_thread):
    root, regions = oracle_broden
    maps = oracle_maps(regions, 8, shape)
    ds = Broden(root, size=(SIDE, SIDE), mean=(0, 0, 0), std=(1, 1, 1))
    r = dissect(Lookup(torch.from_numpy(maps)), ds, layers=["features"], quantile=0.02, batch_size=7)[0]
    iou, primary, kept, margin = lite_tally(root, maps, r.thresholds)
    assert margin > 1e-5                     # no pixel within float rounding of a threshold: the test is exact
    assert len(ds) == len(kept) == ORACLE_IMAGES - len(ORACLE_DROPPED) and ds.dropped == len(ORACLE_DROPPED)
    # thresholds: the top 2% of the kept images' activations (50 from a dropped row would win)
    exact = np.quantile(maps[kept].transpose(1, 0, 2, 3).reshape(8, -1), 0.98, axis=1, method="lower")
    assert np.all(np.abs(r.thresholds - exact) <= r.threshold_error + 1e-6) and r.thresholds.max() < 10
    concepts = [l for l, c in enumerate(primary) if c is not None]
    assert r.label_numbers == concepts and 10 not in concepts
    assert [primary[4], primary[6], primary[300]] == ["object", "material", "part"]
    np.testing.assert_allclose(r.iou, iou[:, concepts], rtol=1e-9, atol=1e-12)
    assert (r.iou >= 0).all() and (r.iou <= 1).all()
    best = iou[:, concepts].max(1)
    assert [u["iou"] for u in r.units] == pytest.approx(best.tolist(), rel=1e-9)
    assert [u["detector"] for u in r.units] == (best >= 0.04).tolist()
    # the 0.04 threshold is pinned: some best IoUs lie between it and 0.4, some below it
    assert ((best >= 0.04) & (best < 0.4)).any() and ((best > 0) & (best < 0.04)).any()
    unique = {c: len({concepts[int(np.argmax(iou[u, concepts]))] for u in range(8) if best[u] >= 0.04
                      and primary[concepts[int(np.argmax(iou[u, concepts]))]] == c}) for c in ORACLE_CATS}
    assert r.unique_detectors() == unique
    assert (r.units[0]["concept"], r.units[0]["category"]) == ("door", "object") and r.units[0]["detector"]


def test_tally_by_hand_without_matplotlib():
    import importlib.util
    from pathlib import Path

    from hcgnet.analysis.dissect import Tally

    # A: door (primary object) only in a part mask, the unit fires on it (the 0.5 pixel equals the threshold:
    # no fire); B: door in the object and the part mask at one pixel (counted once), the unit also fires on an
    # unlabelled pixel; C: only a whole-image scene label, one fired pixel.
    tally = Tally(torch.tensor([0.5]), {4: "object", 7: "scene"}, ["object", "part", "scene"])
    door = lambda *px: np.array([[4 if (r, c) in px else 0 for c in range(2)] for r in range(2)])
    segs = [dict(size=(2, 2), masks={"part": [door((0, 0), (0, 1))]}, labels={}),
            dict(size=(2, 2), masks={"object": [door((0, 0))], "part": [door((0, 0))]}, labels={}),
            dict(size=(2, 2), masks={}, labels={"scene": [7]})]
    maps = torch.tensor([[[[1.0, 1.0], [0.0, 0.5]]], [[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 0.0], [0.0, 0.6]]]])
    tally.add(maps, segs)
    labels, cats, iou = tally.iou()
    assert labels == [4, 7] and cats == ["object", "scene"]
    # door: intersection 2 + 1, label 2 + 1, unit area (object) 2 + 2 -> 3 / (4 + 3 - 3); kitchen 1 / (1 + 4 - 1)
    assert iou.tolist() == [[0.75, 0.25]]
    assert tally.fired.tolist() == [2 + 2 + 1]            # every fired pixel, labelled or not
    # the computation's module never imports the plotting library (the pictures live in dissect_plots)
    assert "matplotlib" not in Path(importlib.util.find_spec("hcgnet.analysis.dissect").origin).read_text()


def test_upsampling_is_bilinear_with_half_pixel_centres_and_antialiased_when_larger():
    from hcgnet.analysis.dissect import upsample

    up = upsample(torch.tensor([[[[0.0, 1.0]]]]), (1, 4))[0, 0, 0]
    assert up.tolist() == [0.0, 0.25, 0.75, 1.0]
    # a map larger than the segmentation: Pillow's bilinear filter, widened to 2 pixels a side:
    # (0.75 * 0 + 0.75 * 0 + 0.25 * 1) / 1.75 = 1/7 (plain bilinear sampling would give 0)
    down = upsample(torch.tensor([[[[0.0, 0.0, 1.0, 1.0]]]]), (1, 2))[0, 0, 0]
    assert down.tolist() == pytest.approx([1 / 7, 6 / 7], abs=1e-6)


def test_default_layers_keep_the_spatial_ones_at_the_given_size(broden, single_thread):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3).eval()
    small = Broden(broden, size=(32, 32), mean=(0, 0, 0), std=(1, 1, 1), limit=2)
    # at 32 px: act1 16 x 16, layer1 8, layer2 4, layer3 2, layer4 1 x 1 (left out)
    assert [r.layer for r in dissect(model, small, batch_size=2)] == ["act1", "layer1", "layer2", "layer3"]
    tiny = Broden(broden, size=(2, 2), mean=(0, 0, 0), std=(1, 1, 1), limit=2)
    with pytest.raises(DissectError, match="1 x 1 .*a larger --size than 2"):
        dissect(model, tiny, batch_size=2)


def test_cli_does_not_replace_an_earlier_dissection_without_force(broden, tiny_checkpoint, tmp_path, capsys,
                                                                  single_thread):
    out = tmp_path / "out"
    out.mkdir()
    (out / "act.csv").write_text("earlier\n")
    argv = ["dissect", "--checkpoint", str(tiny_checkpoint), "--broden", str(broden), "--limit", "2",
            "--workers", "0", "--top-units", "0", "--output", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds act.csv" in err and "--force" in err
    assert (out / "act.csv").read_text() == "earlier\n" and not (out / "summary.json").exists()
    assert main(argv + ["--force"]) == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out}/" in stdout and "NetDissect-Lite" in stdout
    assert (out / "act.csv").read_text() != "earlier\n"
    assert json.loads((out / "summary.json").read_text())["method"].startswith("NetDissect-Lite")


def test_selected_categories_decide_primary_and_kept_images_as_in_the_oracle(oracle_broden, single_thread):
    root, regions = oracle_broden
    maps = oracle_maps(regions, 8, (7, 11))
    ds = Broden(root, size=(SIDE, SIDE), mean=(0, 0, 0), std=(1, 1, 1), categories=["scene", "part"])
    r = dissect(Lookup(torch.from_numpy(maps)), ds, layers=["features"], quantile=0.02, batch_size=7)[0]
    iou, primary, kept, margin = lite_tally(root, maps, r.thresholds, categories=["scene", "part"])
    assert margin > 1e-5 and ds.categories == ["part", "scene"]          # category.csv's order
    # without object, door's primary category is part; rows with neither part nor scene data are left out
    assert primary[4] == "part" and primary[3] is None and len(ds) == len(kept) < ORACLE_IMAGES - len(ORACLE_DROPPED)
    concepts = [l for l, c in enumerate(primary) if c is not None]
    assert r.label_numbers == concepts
    np.testing.assert_allclose(r.iou, iou[:, concepts], rtol=1e-9, atol=1e-12)


def test_force_removes_the_files_of_an_earlier_dissection_of_other_layers(broden, tiny_checkpoint, tmp_path, capsys,
                                                                            single_thread):
    out = tmp_path / "out"
    common = ["dissect", "--checkpoint", str(tiny_checkpoint), "--broden", str(broden), "--limit", "2",
              "--workers", "0", "--top-units", "1", "--output", str(out)]
    assert main(common + ["--layer", "stages.0.block"]) == 0
    assert {"stages.0.block.csv", "units_stages.0.block.png"} <= {p.name for p in out.iterdir()}
    (out / "notes.csv").write_text("my,own\n1,2\n")           # someone else's files: never touched
    (out / "units_of_mine.png").write_bytes(b"png")
    capsys.readouterr()
    assert main(common + ["--layer", "stages.1.block", "--force"]) == 0
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if not line.startswith("note: 2 images"))
    assert err.count("\n") == 0 and "removed stages.0.block.csv, units_stages.0.block.png of the earlier" in err
    assert sorted(p.name for p in out.iterdir()) == [
        "notes.csv", "stages.1.block.csv", "summary.csv", "summary.json", "unique_detectors.png", "units_of_mine.png",
        "units_stages.1.block.png"]
    # the same layer without strips: the earlier model's strip goes, and nothing is said of it (no other layer)
    assert main(common[:-4] + ["--top-units", "0", "--output", str(out), "--layer", "stages.1.block", "--force"]) == 0
    assert "removed" not in capsys.readouterr().err
    assert not (out / "units_stages.1.block.png").exists() and (out / "units_of_mine.png").exists()


def test_a_category_column_that_category_csv_does_not_list_is_refused(tmp_path, capsys):
    root = write_broden(tmp_path / "b", images=2)
    text = (root / "category.csv").read_text()
    (root / "category.csv").write_text(text.replace("\ncolor,", "\ncolour,"))     # a typo: c_color.csv is there
    with pytest.raises(HCGNetError, match="index.csv has labels in column 'color', which category.csv does not "
                                          "list .*; correct 'colour' to 'color' there"):
        dataset(root)
    code = main(["dissect", "--checkpoint", str(tmp_path / "none.safetensors"), "--broden", str(root),
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "column 'color'" in err
    # a column without labels (texture, which category.csv does not list either) loses nothing: accepted
    assert "texture" in (root / "index.csv").read_text().splitlines()[0]
    (root / "category.csv").write_text(text)
    assert dataset(root).categories == ["color", "object", "part", "scene"]
