"""``hcgnet info`` of a detector checkpoint (``hcgnet detect train``'s final.safetensors or last.pt): counted with
``--detection FILE`` from its metadata; without ``--detection`` refused in one line that says to add it."""
import json

import pytest
import torch

from coco_toy import TOY_MODEL, TOY_OPTIONS
from hcgnet.cli import main
from hcgnet.detection.checkpoint import detector_metadata
from hcgnet.models import save_safetensors

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A Faster R-CNN's files as hcgnet detect train writes them (trained at 64 x 96 px, categories 3 and 7),
    and its parameter count, summed here from the model that was saved."""
    from hcgnet.detection.models import build_detector

    base = tmp_path_factory.mktemp("detector")
    model = build_detector(TOY_MODEL, "box", num_classes=3, trainable_stages=3, trained=True, min_size=64,
                           max_size=96, **TOY_OPTIONS)
    meta = detector_metadata(TOY_MODEL, "box", ["box", "ball"], [3, 7], 64, 96, 3, TOY_OPTIONS)
    save_safetensors(model, base / "final.safetensors", meta)
    torch.save({"model": model.state_dict(), **meta, "epoch": 1}, base / "last.pt")
    return base / "final.safetensors", base / "last.pt", sum(p.numel() for p in model.parameters())


def test_info_detection_counts_a_detector_checkpoint_from_its_metadata(capsys, detector):
    final, last, params = detector
    assert main(["info", "--detection", str(final), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["model"] == TOY_MODEL and row["task"] == "box" and row["classes"] == 3 and row["params"] == params
    assert row["class_names"] == ["box", "ball"] and row["category_ids"] == [3, 7] and row["checkpoint"] == str(final)
    # at the size it was trained for; its options' 50 proposals and 10 detections, not torchvision's 1000 and 100
    assert row["image"] == row["network_input"] == "64x96" and (row["proposals"], row["detections"]) == (50, 10)
    # Faster R-CNN's box head by hand: fc6 over 256x7x7, fc7, then 3 class scores and 4 coordinates per class
    box_head = 50 * (256 * 49 * 1024 + 1024 * 1024 + 1024 * (3 + 4 * 3))
    assert row["gmacs_by_part"]["box_head"] * 1e9 == pytest.approx(box_head, rel=1e-9)
    assert "mask_head" not in row["gmacs_by_part"] and row["paper_params"] is None
    assert main(["info", "--detection", str(last), "--json"]) == 0           # the run's last.pt: the same row
    assert {**json.loads(capsys.readouterr().out), "checkpoint": str(final)} == row
    assert main(["info", "--detection", str(final), "--image-size", "128x192", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["network_input"] == "128x192"
    assert main(["info", "--detection", str(final)]) == 0                    # the table names the file
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["checkpoint", str(final)] and f"{params:,}" in out


def _one_line(capsys, argv, expected):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.startswith("hcgnet: error: ") and err.count("\n") == 1, err
    assert expected in err and "Traceback" not in err, err


@pytest.mark.parametrize("which", [0, 1], ids=["safetensors", "last.pt"])
def test_info_of_a_detector_checkpoint_without_detection_says_to_add_it(capsys, detector, which):
    path = str(detector[which])
    _one_line(capsys, ["info", path], f"is a detector checkpoint (hcgnet detect train); count it with hcgnet info "
                                      f"--detection {path}")
    _one_line(capsys, ["info", "hcgnet_a1", path, "--json"], f"hcgnet info --detection {path}")


def test_info_detection_refusals_of_files_are_one_line(capsys, detector, tmp_path):
    final = str(detector[0])
    for flags in (["--num-classes", "5"], ["--task", "mask"]):               # the file holds its own
        _one_line(capsys, ["info", "--detection", final, *flags], "holds its own: drop them")
    classifier = tmp_path / "classifier.safetensors"
    save_safetensors({"w": torch.zeros(1)}, classifier, {"model_name": "hcgnet_a1"})
    _one_line(capsys, ["info", "--detection", str(classifier)],
              f"is not a detector checkpoint (written by hcgnet detect train); count a classifier with hcgnet info "
              f"{classifier}, without --detection")
    _one_line(capsys, ["info", "--detection", str(detector[0].parent)], "is a folder, not a checkpoint file")
    _one_line(capsys, ["info", "--detection", str(tmp_path / "missing.safetensors")], "missing.safetensors")
