"""COCO AP through hcgnet's evaluation code (pycocotools' COCOeval underneath), ``hcgnet detect eval`` and
``hcgnet detect predict``. A stand-in "oracle" detector that answers with the ground truth gives AP 1.0; the
same with the labels swapped gives 0, so the figures come from the detections and their category mapping."""
import csv
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageColor
from torch import nn

from coco_toy import TOY_MODEL, TOY_OPTIONS, make_coco
from hcgnet.cli import main
from hcgnet.detection import checkpoint as detector_files
from hcgnet.detection.checkpoint import detector_metadata
from hcgnet.detection.data import CocoDetectionSet, read_coco
from hcgnet.detection.draw import PALETTE
from hcgnet.detection.evaluate import METRICS, evaluate_coco, score_results, to_coco_results
from hcgnet.models import save_safetensors

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]  # pycocotools, NumPy 2


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("coco"), count=6)


def truth(data, image_ids, swap_labels=False):
    """The ground truth of ``image_ids`` as torchvision detector outputs (score 1, masks as probabilities)."""
    outputs = []
    for image, t in CocoDetectionSet(data, image_ids, train=False, masks=True):
        labels = 3 - t["labels"] if swap_labels else t["labels"]
        outputs.append({"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": labels,
                        "scores": torch.ones(len(labels)), "masks": t["masks"][:, None].float()})
    return outputs


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_fed_back_scores_ap_1(toy, iou_type):
    data = read_coco(*toy, masks=True)
    boxes, masks = to_coco_results(truth(data, data.image_ids), data.image_ids, data.category_ids)
    results = boxes if iou_type == "bbox" else masks
    assert {r["category_id"] for r in results} == {3, 7}              # labels 1, 2 mapped back to the ids
    scores = score_results(data.coco, results, iou_type)
    assert scores["AP"] == scores["AP50"] == scores["AP75"] == 1.0
    assert scores["APl"] is None                                      # the toy has no object over 96^2 px


def test_swapped_labels_score_zero_and_no_detections_score_zero(toy):
    data = read_coco(*toy, masks=True)
    boxes, masks = to_coco_results(truth(data, data.image_ids, swap_labels=True), data.image_ids, data.category_ids)
    assert score_results(data.coco, boxes, "bbox")["AP"] == 0.0 and score_results(data.coco, masks, "segm")["AP"] == 0.0
    assert score_results(data.coco, [], "bbox") == {m: 0.0 for m in METRICS}


class Oracle(nn.Module):
    """Answers each image with the ground truth of the dataset's images, in order (what `detect` feeds it)."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = list(outputs)

    def forward(self, images):
        return [self.outputs.pop(0) for _ in images]


def oracle_info(data, task="mask"):
    return {"model": "oracle", "task": task, "num_classes": 3, "class_names": data.class_names,
            "category_ids": data.category_ids, "min_size": 64, "max_size": 96, "trainable_stages": 0, "options": {}}


def test_evaluate_coco_end_to_end_with_an_oracle_scores_ap_1(toy, monkeypatch):
    data = read_coco(*toy, masks=True)
    monkeypatch.setattr(detector_files, "load_detector",
                        lambda path, device: (Oracle(truth(data, data.image_ids)), oracle_info(data)))
    m = evaluate_coco("oracle.safetensors", *toy, batch_size=4, workers=0, device="cpu", log=lambda *a: None)
    assert m["box"]["AP"] == 1.0 and m["mask"]["AP"] == 1.0 and m["images"] == 6
    assert len(m["results"]["segm"]) == len(data.coco.anns)


@pytest.fixture(scope="module")
def untrained(toy, tmp_path_factory):
    """A checkpoint of the stand-in detector as the trainer writes it (untrained: the tests check files and
    formats, the oracle checks the figures)."""
    from hcgnet.detection.models import build_detector

    torch.manual_seed(0)
    model = build_detector(TOY_MODEL, "mask", num_classes=3, min_size=64, max_size=96, **TOY_OPTIONS)
    path = tmp_path_factory.mktemp("ckpt") / "final.safetensors"
    save_safetensors(model, path, detector_metadata(TOY_MODEL, "mask", ["box", "ball"], [3, 7], 64, 96, 3, TOY_OPTIONS))
    return path


def test_detect_eval_prints_the_table_or_json_and_writes_reports_only_once_without_force(toy, untrained, tmp_path,
                                                                                          capsys):
    args = ["detect", "eval", "--checkpoint", str(untrained), "--images", str(toy[0]), "--annotations", str(toy[1]),
            "--device", "cpu", "--workers", "0"]
    code = main(args + ["--output", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split() == list(METRICS) and lines[2].split()[0] == "box" and lines[3].split()[0] == "mask"
    assert main(args + ["--json"]) == 0          # as eval --json: JSON alone on stdout
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["box"]) == set(METRICS) == set(printed["mask"]) and printed["images"] == 6
    assert "results" not in printed
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    recorded = saved.pop("provenance"), printed.pop("provenance")   # two runs: their dates may differ
    assert saved == printed and saved["amp"] == "none"
    assert {r["checkpoints"][0]["sha256"] for r in recorded} == {hashlib.sha256(untrained.read_bytes()).hexdigest()}
    csv_rows = (tmp_path / "report" / "metrics.csv").read_text().splitlines()
    assert csv_rows[0] == "kind," + ",".join(METRICS) and [r.split(",")[0] for r in csv_rows[1:]] == ["box", "mask"]
    detections = json.loads((tmp_path / "report" / "detections_bbox.json").read_text())
    assert all(d["category_id"] in (3, 7) and len(d["bbox"]) == 4 for d in detections)
    (tmp_path / "report" / "metrics.json").write_text("kept")
    assert main(args + ["--output", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds metrics.json, metrics.csv, detections_bbox.json" in err
    assert "--force" in err and (tmp_path / "report" / "metrics.json").read_text() == "kept"
    assert main(args + ["--output", str(tmp_path / "report"), "--force"]) == 0
    replaced = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert {k: v for k, v in replaced.items() if k != "provenance"} == saved


def test_masks_are_thresholded_at_one_half():
    """A soft mask written here: 0.51 and 0.9 count, 0.5 and 0.49 do not (torchvision's and COCO's rule); the
    result's RLE is decoded by pycocotools, the drawing is compared pixel by pixel."""
    from pycocotools import mask as mask_utils

    from hcgnet.detection.draw import draw_detections
    from hcgnet.detection.evaluate import to_coco_results

    soft = torch.zeros(1, 1, 12, 16)
    soft[0, 0, 0:4, 0:4], soft[0, 0, 0:4, 4:8] = 0.51, 0.5
    soft[0, 0, 4:8, 0:4], soft[0, 0, 4:8, 4:8] = 0.49, 0.9
    hand = np.zeros((12, 16), dtype=np.uint8)
    hand[0:4, 0:4] = hand[4:8, 4:8] = 1
    out = {"boxes": torch.tensor([[13.0, 10.0, 15.0, 11.0]]), "labels": torch.tensor([1]),
           "scores": torch.tensor([0.9]), "masks": soft}
    _, masks = to_coco_results([out], [5], [3, 7])
    assert len(masks) == 1 and masks[0]["category_id"] == 3
    assert np.array_equal(mask_utils.decode(masks[0]["segmentation"]), hand)
    image = torch.zeros(3, 12, 16, dtype=torch.uint8)
    drawn = draw_detections(image, {k: v for k, v in out.items()}, ["box", "ball"])
    tinted = (drawn[:, :9, :12] != 0).any(dim=0).numpy()   # away from the box and its label
    assert np.array_equal(tinted, hand[:9, :12].astype(bool))


def _input_sizes(model, sizes):
    """Record the (H, W) of every batch the backbone receives."""
    model.backbone.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    return model


def test_detect_eval_and_predict_run_at_the_training_resolution(toy, tmp_path, monkeypatch, capsys):
    """A detector trained at --image-size 128 --max-size 192: the toy's 64x64, 96x64 and 64x96 images reach the
    backbone at 128x128, 128x192 and 192x128 (twice their size), not at torchvision's default 800 px."""
    from hcgnet.detection.models import build_detector

    torch.manual_seed(0)
    model = build_detector(TOY_MODEL, "mask", num_classes=3, min_size=128, max_size=192, **TOY_OPTIONS)
    path = tmp_path / "final.safetensors"
    save_safetensors(model, path, detector_metadata(TOY_MODEL, "mask", ["box", "ball"], [3, 7], 128, 192, 4,
                                                    TOY_OPTIONS))
    load = detector_files.load_detector
    sizes = []
    monkeypatch.setattr(detector_files, "load_detector", lambda p, device: (
        (_input_sizes(m, sizes), info) for m, info in [load(p, device)]).__next__())
    assert main(["detect", "eval", "--checkpoint", str(path), "--images", str(toy[0]), "--annotations", str(toy[1]),
                 "--device", "cpu", "--workers", "0", "--batch-size", "1"]) == 0
    assert sorted(set(sizes)) == [(128, 128), (128, 192), (192, 128)] and len(sizes) == 6
    sizes.clear()
    assert main(["detect", "predict", "--checkpoint", str(path), str(toy[0]), "--output", str(tmp_path / "drawn"),
                 "--device", "cpu"]) == 0
    assert sorted(set(sizes)) == [(128, 128), (128, 192), (192, 128)] and len(sizes) == 6
    capsys.readouterr()


def test_a_saved_detector_loads_back_into_the_same_weights(untrained):
    from safetensors.torch import load_file

    model, info = detector_files.load_detector(untrained)
    saved = load_file(str(untrained))
    assert info["category_ids"] == [3, 7] and info["class_names"] == ["box", "ball"] and info["options"] == TOY_OPTIONS
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert model.rpn._post_nms_top_n["testing"] == TOY_OPTIONS["rpn_post_nms_top_n_test"]


def test_a_saved_detector_under_another_name_is_still_read_as_safetensors(untrained, tmp_path):
    """By its first bytes, as the classifier's files are: a final.safetensors renamed loses its suffix, not its
    format (it was read with torch.load and refused)."""
    import shutil

    renamed = shutil.copy(untrained, tmp_path / "detector.weights")
    assert detector_files.is_detector_file(renamed)
    assert detector_files.read_detector_info(renamed) == detector_files.read_detector_info(untrained)
    assert detector_files.load_detector(renamed)[1]["category_ids"] == [3, 7]


def test_detections_come_back_in_the_original_image_pixels(toy):
    """The detector works at twice the size (min_size 128) and answers in the image's own 96 x 64 pixels."""
    from hcgnet.detection.evaluate import detect
    from hcgnet.detection.models import build_detector

    data = read_coco(*toy, masks=True)
    torch.manual_seed(0)
    model = build_detector(TOY_MODEL, "mask", num_classes=3, min_size=128, max_size=192,
                           **{**TOY_OPTIONS, "box_score_thresh": 0.0})
    (image_id, out), = detect(model, data, [2], "mask", torch.device("cpu"))
    assert image_id == 2 and len(out["boxes"]) > 0 and out["masks"].shape[-2:] == (64, 96)
    assert out["boxes"][:, 2].max() <= 96 and out["boxes"][:, 3].max() <= 64
    assert out["boxes"][:, 2].max() > 48                                       # not squeezed into a corner


@pytest.mark.parametrize("case", ["other categories", "classifier checkpoint", "fp16 on cpu", "run folder",
                                  "annotations folder", "header cut", "tensors cut", "output below a file"])
def test_eval_refusals_are_one_line(toy, untrained, tmp_path, capsys, case):
    images, annotations, checkpoint, extra = toy[0], toy[1], untrained, []
    if case == "other categories":
        data = json.loads(toy[1].read_text())
        data["categories"].append({"id": 9, "name": "cone"})
        annotations = tmp_path / "other.json"
        annotations.write_text(json.dumps(data))
        expected = "has categories [3, 7, 9] but"
    elif case == "classifier checkpoint":
        checkpoint = tmp_path / "classifier.safetensors"
        save_safetensors({"w": torch.zeros(1)}, checkpoint, {"model_name": "hcgnet_a1"})
        expected = "is not a detector checkpoint"
    elif case == "run folder":
        checkpoint = tmp_path / "run"
        checkpoint.mkdir()
        (checkpoint / "final.safetensors").write_bytes(b"")
        expected = f"{checkpoint} is a folder, not a checkpoint file; e.g. {checkpoint / 'final.safetensors'}"
    elif case == "annotations folder":
        annotations, expected = images, f"annotation file {images} is a folder"
    elif case in ("header cut", "tensors cut"):   # a safetensors file's first 8 bytes give its header's length
        whole = untrained.read_bytes()
        header = 8 + int.from_bytes(whole[:8], "little")
        checkpoint = tmp_path / "cut.safetensors"
        checkpoint.write_bytes(whole[:header // 2] if case == "header cut" else whole[:header + 100])
        expected = f"{checkpoint} is truncated or corrupt"
    elif case == "output below a file":
        (tmp_path / "notes.txt").write_text("mine")
        extra, expected = ["--output", str(tmp_path / "notes.txt" / "x")], f"{tmp_path / 'notes.txt'} is a file"
    else:
        extra, expected = ["--amp", "fp16"], "--amp fp16 needs a GPU"
    code = main(["detect", "eval", "--checkpoint", str(checkpoint), "--images", str(images), "--annotations",
                 str(annotations), "--device", "cpu", "--workers", "0", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hcgnet: error: ") and err.count("\n") == 1 and expected in err, err


# ------------------------------------------------------------------------------------------------ predict


def test_predict_draws_boxes_and_masks_and_goes_on_past_a_bad_image(toy, tmp_path, capsys, monkeypatch):
    data = read_coco(*toy, masks=True)
    found = truth(data, [1])[0]
    monkeypatch.setattr(detector_files, "load_detector",
                        lambda path, device: (Oracle([dict(found)] * 2), oracle_info(data)))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    source, twin = data.path_of(1), tmp_path / "other" / "000.png"   # the same name in another folder
    twin.parent.mkdir()
    twin.write_bytes(source.read_bytes())
    code = main(["detect", "predict", "--checkpoint", "oracle.safetensors", str(source), str(broken), str(twin.parent),
                 "--output", str(tmp_path / "drawn"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0 and "cannot read image" in captured.err and str(broken) in captured.err
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["000.png", "000_1.png"]
    before = np.asarray(Image.open(source).convert("RGB")).astype(int)
    after = np.asarray(Image.open(tmp_path / "drawn" / "000.png").convert("RGB")).astype(int)
    x1, y1, x2, y2 = [int(v) for v in found["boxes"][0]]
    changed = np.abs(after - before).sum(axis=2) > 0
    assert changed[y1, x1:x2].mean() > 0.9 and changed[y1:y2, x1].mean() > 0.9      # the box's outline
    colour = ImageColor.getrgb(PALETTE[int(found["labels"][0]) - 1])                   # in its class's colour
    assert (after[y1 + 1, x1 + 8:x2 - 1] == colour).all(axis=1).mean() > 0.9
    mask = found["masks"][0, 0].numpy() > 0.5
    inside = mask.copy()
    inside[y1:y1 + 3], inside[:, x1:x1 + 3] = False, False                            # off the outline and label
    assert changed[inside].mean() > 0.9                                               # the mask, tinted
    far = np.ones_like(changed)
    for a1, b1, a2, b2 in found["boxes"].int().tolist():                             # each box, mask and label
        far[max(b1 - 14, 0):b2 + 2, max(a1 - 2, 0):max(a2, a1 + 60) + 2] = False
    assert far.mean() > 0.2                                                           # enough left to compare
    assert not changed[far].any()
    assert "box 1.00" in captured.out or "ball 1.00" in captured.out
    # the same PNGs again: refused before any work, the pictures kept; --force replaces them
    drawn = (tmp_path / "drawn" / "000.png").read_bytes()
    (tmp_path / "drawn" / "000_1.png").write_bytes(b"mine")
    args = ["detect", "predict", "--checkpoint", "oracle.safetensors", str(source), str(twin.parent), "--output",
            str(tmp_path / "drawn"), "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds 000.png, 000_1.png" in err and "--force" in err
    assert (tmp_path / "drawn" / "000_1.png").read_bytes() == b"mine"
    monkeypatch.setattr(detector_files, "load_detector",
                        lambda path, device: (Oracle([dict(found)] * 2), oracle_info(data)))
    assert main(args + ["--force"]) == 0
    assert (tmp_path / "drawn" / "000_1.png").read_bytes() == drawn


def test_predict_json_and_csv_give_the_boxes_drawn_in_coco_terms(toy, tmp_path, capsys, monkeypatch):
    """The oracle answers with image 1's ground truth: --json and --csv must give back its annotations as
    instances.json has them, [x, y, w, h] in the image's pixels under the dataset's category ids (3 and 7, not
    the labels 1 and 2), one row per detection; --csv is refused over an earlier file without --force."""
    data = read_coco(*toy, masks=True)
    found = truth(data, [1])[0]
    monkeypatch.setattr(detector_files, "load_detector",
                        lambda path, device: (Oracle([dict(found)] * 2), oracle_info(data)))
    coco = json.loads(toy[1].read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    expected = sorted((names[a["category_id"]], a["category_id"], a["bbox"]) for a in coco["annotations"]
                      if a["image_id"] == 1)
    assert {c for _, c, _ in expected} <= {3, 7} and expected
    source, broken = str(data.path_of(1)), tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    table = tmp_path / "detections.csv"
    args = ["detect", "predict", "--checkpoint", "oracle.safetensors", source, str(broken), "--output",
            str(tmp_path / "drawn"), "--device", "cpu", "--csv", str(table)]
    assert main(args + ["--json"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)                                 # JSON alone on stdout
    assert len(expected) == 1 and f"wrote {table}: 2 images, 1 detection\n" in captured.err   # not "1 detections"
    drawn, = [r for r in printed if "png" in r]
    assert drawn["image"] == source and drawn["png"] == str(tmp_path / "drawn" / "000.png")
    assert [r["image"] for r in printed if "error" in r] == [str(broken)]
    got = sorted((d["class"], d["category_id"], d["bbox"]) for d in drawn["detections"])
    assert [(n, c) for n, c, _ in got] == [(n, c) for n, c, _ in expected]
    for (_, _, box), (_, _, truth_box) in zip(got, expected):
        assert box == pytest.approx(truth_box, abs=1e-3)
    assert all(d["score"] == 1.0 for d in drawn["detections"])
    rows = list(csv.DictReader(table.open()))
    assert [r["image"] for r in rows] == [source] * len(expected) + [str(broken)]
    assert "cannot read image" in rows[-1]["error"] and rows[-1]["png"] == ""
    from_csv = sorted((r["class"], int(r["category_id"]), [float(r[k]) for k in "xywh"]) for r in rows[:-1])
    for (n, c, box), (m, d, truth_box) in zip(from_csv, expected):
        assert (n, c) == (m, d) and box == pytest.approx(truth_box, abs=0.01)
    table.write_text("mine")                                           # an earlier file: kept without --force
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{table} already exists; pass --force" in err and table.read_text() == "mine"
    assert main(args + ["--force"]) == 0 and table.read_text() != "mine"
    assert capsys.readouterr().out.startswith(f"wrote {table}")        # text mode: said on stdout


@pytest.mark.parametrize("case", ["header cut", "output below a file", "output inside the images"])
def test_predict_refusals_are_one_line(toy, untrained, tmp_path, capsys, case):
    checkpoint, output = untrained, tmp_path / "drawn"
    if case == "output inside the images":   # its PNGs would be detected in next time
        output, expected = toy[0] / "drawn", f"is inside {toy[0]}, which this command reads images from"
    elif case == "header cut":
        checkpoint = tmp_path / "cut.safetensors"
        checkpoint.write_bytes(untrained.read_bytes()[:20])
        expected = f"{checkpoint} is truncated or corrupt"
    else:
        (tmp_path / "notes.txt").write_text("mine")
        output, expected = tmp_path / "notes.txt" / "x", f"{tmp_path / 'notes.txt'} is a file, not a folder"
    code = main(["detect", "predict", "--checkpoint", str(checkpoint), str(toy[0]), "--output", str(output),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hcgnet: error: ") and err.count("\n") == 1 and expected in err, err
    assert not (toy[0] / "drawn").exists()


def test_predict_with_no_readable_image_is_one_line(tmp_path, capsys, untrained):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    code = main(["detect", "predict", "--checkpoint", str(untrained), str(broken), "--output", str(tmp_path / "o"),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[-1].startswith("hcgnet: error: the input could not be read")


@pytest.mark.slow  # a fresh interpreter importing torch
def test_detect_eval_and_predict_do_not_import_the_trainer():
    code = ("import sys, hcgnet.detection, hcgnet.detection.evaluate, hcgnet.detection.draw, "
            "hcgnet.detection.checkpoint, hcgnet.detection.config; "
            "print(sorted(m for m in sys.modules if m.startswith('hcgnet.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
