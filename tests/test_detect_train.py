"""``hcgnet detect train``: the 1x schedule, one training step, the run's files, exact resume after a signal,
and (slow) a short CPU training that raises the toy set's AP well above an untrained detector's."""
import json
import shutil
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from coco_toy import TOY_MODEL, TOY_OPTIONS, make_coco, toy_config
from conftest import signal_at_step
from hcgnet.cli import main
from hcgnet.detection import trainer
from hcgnet.detection.checkpoint import load_detector
from hcgnet.detection.config import DetectConfig, learning_rate
from hcgnet.detection.data import CocoDetectionSet, collate, read_coco
from hcgnet.detection.evaluate import evaluate_detector
from hcgnet.detection.models import build_detector
from hcgnet.training.interrupts import TrainingInterrupted

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]  # pycocotools, NumPy 2


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("coco"), count=8)


def test_the_default_schedule_is_the_papers_1x_with_torchvisions_warm_up():
    c = DetectConfig()
    assert (c.lr, c.lr_base_batch, c.batch_size, c.momentum, c.weight_decay, c.epochs) == (0.02, 16, 16, 0.9, 1e-4, 12)
    total = 12 * 1000                                  # 12 epochs of 1,000 steps
    steps = (0, 500, 1000, 7999, 8000, 10999, 11000, 11999)
    expected = (0.02 * 0.001, 0.02 * (0.001 * 0.5 + 0.5),  # linear warm-up from 0.001 of the rate, 1,000 steps
                0.02, 0.02, 0.002, 0.002, 0.0002, 0.0002)  # x0.1 after epochs 8 and 11
    assert [learning_rate(s, total, 0.02, c) for s in steps] == pytest.approx(expected)


@pytest.mark.parametrize("per_epoch", [1, 3, 7330])          # 7,330: COCO train2017's 117,266 images in 16s
def test_twelve_epochs_drop_the_rate_where_mmdetections_step_8_11_does(per_epoch):
    """mmdetection's 1x ``lr_config = dict(policy='step', step=[8, 11])``, by epoch: epoch e (0-based) runs at
    lr * 0.1 ** (how many of 8, 11 are <= e); no warm-up here, to see the steps alone."""
    c = DetectConfig(warmup_steps=0)
    total = 12 * per_epoch
    for step in sorted({0, total - 1, *(e * per_epoch + d for e in range(12) for d in (0, per_epoch - 1))}):
        epoch = step // per_epoch
        mmdet = 0.02 * 0.1 ** sum(epoch >= m for m in (8, 11))
        assert learning_rate(step, total, 0.02, c) == pytest.approx(mmdet, rel=1e-12), step


@pytest.mark.parametrize("epochs, per_epoch, expected", [
    (1, 2, (1, 1)),                          # a 1-epoch smoke run: 8/12 of 2 steps (1.33) done only at its end
    (1, 5, (1, 1, 1, 1, 0.1)),               # 8/12 of 5 = 3.33 steps done before step 4; 11/12 = 4.58: the end
    (3, 2, (1, 1, 1, 1, 0.1, 0.1)),          # 8/12 of 6 = 4 done before step 4; 11/12 = 5.5: the end
    (2, 6, (1,) * 8 + (0.1,) * 3 + (0.01,)),  # 12 steps: the 1x's epochs 8 and 11 in steps
])
def test_a_short_run_drops_the_rate_only_after_that_part_of_it_is_done(epochs, per_epoch, expected):
    c = DetectConfig(warmup_steps=0)
    total = epochs * per_epoch
    assert [learning_rate(s, total, 1.0, c) for s in range(total)] == pytest.approx(expected)


def test_the_published_preset_is_the_published_mmdetection_config():
    """detection/hcgnet_config.py of the published implementation: warm-up 500 iterations from 1/3 of the rate
    (mmcv: lr * (1 - (1 - 1/3) * (1 - i / 500))), steps after epochs 8 and 11, BN scale and shift trained, gradients
    clipped at max_norm 35."""
    c = DetectConfig.preset("published")
    assert (c.bn_affine, c.clip_grad, c.warmup_steps, c.lr, c.epochs) == ("trainable", 35.0, 500, 0.02, 12)
    total = 12 * 1000
    steps = (0, 250, 499, 500, 7999, 8000, 11000)
    expected = (0.02 / 3, 0.02 * 2 / 3, 0.02 * (1 - (2 / 3) * (1 / 500)), 0.02, 0.02, 0.002, 0.0002)
    assert [learning_rate(s, total, 0.02, c) for s in steps] == pytest.approx(expected)
    d = DetectConfig()  # torchvision's reference instead
    assert (d.bn_affine, d.clip_grad, d.warmup_steps, d.warmup_factor) == ("frozen", None, 1000, 0.001)
    assert DetectConfig.preset("published", clip_grad=10.0).clip_grad == 10.0   # what is given wins


def test_detect_train_flags_choose_the_preset_and_override_it(toy, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(trainer, "train", lambda config: seen.append(config))
    base = ["detect", "train", "--images", str(toy[0]), "--annotations", str(toy[1]), "--output", str(tmp_path)]
    assert main(base) == 0 and main(base + ["--preset", "published"]) == 0
    assert main(base + ["--preset", "published", "--warmup-factor", "0.5", "--bn-affine", "frozen"]) == 0
    assert main(base + ["--clip-grad", "35", "--warmup-steps", "500", "--warmup-factor", "0.333",
                        "--bn-affine", "trainable"]) == 0
    got = [(c.bn_affine, c.clip_grad, c.warmup_steps, c.warmup_factor) for c in seen]
    assert got == [("frozen", None, 1000, 0.001), ("trainable", 35.0, 500, pytest.approx(1 / 3)),
                   ("frozen", 35.0, 500, 0.5), ("trainable", 35.0, 500, 0.333)]


def test_clipping_scales_the_gradients_to_the_maximum_norm():
    """Hand values: gradients (3, 4) and (0, 12) have a global norm of 13; clipped at 6.5 they halve."""
    from hcgnet.detection.engine import DetectionStep, clip_gradients
    from hcgnet.distributed import Dist

    a, b, frozen = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    step = DetectionStep(torch.optim.SGD([a, b], lr=0.1), Dist(), clip_grad=6.5)
    a.grad, b.grad, frozen.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 12.0]), torch.tensor([100.0, 0.0])
    clip_gradients(step)
    assert a.grad.tolist() == pytest.approx([1.5, 2.0]) and b.grad.tolist() == pytest.approx([0.0, 6.0])
    assert frozen.grad.tolist() == [100.0, 0.0]       # not the optimiser's: not counted, not touched
    step.clip_grad = 100.0                           # a norm below the maximum is left as it is
    clip_gradients(step)
    assert a.grad.tolist() == pytest.approx([1.5, 2.0])
    step.clip_grad = None
    a.grad = torch.tensor([300.0, 400.0])
    clip_gradients(step)
    assert a.grad.tolist() == [300.0, 400.0]


def test_a_backbone_from_scratch_needs_two_images_per_process(toy, tmp_path):
    from hcgnet.errors import HCGNetError

    with pytest.raises(HCGNetError, match="2 images or more") as info:
        trainer.train(toy_config(*toy, tmp_path / "run", batch_size=1), log=lambda *a: None)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("flags, expected", [
    (["--model", "hcgnet_bb"], "unknown model 'hcgnet_bb'"),
    (["--batch-size", "1"], "2 images or more"),
    (["--trainable-stages", "2"], "--trainable-stages"),
    (["--detector-options", '{"anchors": 3}'], "--detector-options: unknown option 'anchors'"),
])
def test_model_and_batch_mistakes_are_refused_before_the_annotations_are_read(toy, tmp_path, capsys, monkeypatch,
                                                                              flags, expected):
    """COCO's annotations take seconds to read and check (118k image headers): a typo is refused first."""
    monkeypatch.setattr(trainer, "read_coco", lambda *a, **k: pytest.fail("the annotations were read first"))
    out = tmp_path / "run"
    code = main(["detect", "train", "--images", str(toy[0]), "--annotations", str(toy[1]), "--output", str(out),
                 "--device", "cpu", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hcgnet: error: ") and err.count("\n") == 1, err
    assert expected in err and not out.exists()


def test_a_set_whose_every_object_is_a_crowd_says_so(toy, tmp_path, capsys):
    data = json.loads(toy[1].read_text())
    for a in data["annotations"]:
        a["iscrowd"] = 1
    crowds = tmp_path / "crowds.json"
    crowds.write_text(json.dumps(data))
    code = main(["detect", "train", "--images", str(toy[0]), "--annotations", str(crowds), "--output",
                 str(tmp_path / "run"), "--device", "cpu", "--model", TOY_MODEL])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert (f"hcgnet: error: {crowds} has no training image with an object to learn from: every object is a crowd "
            "(iscrowd 1)") in err
    assert not (tmp_path / "run").exists()


def test_the_warm_up_is_capped_at_the_run_and_the_steps_scale_with_epochs():
    c = DetectConfig(warmup_steps=1000)
    assert learning_rate(5, 10, 1.0, c) == pytest.approx(0.001 * 0.5 + 0.5)   # halfway through a 10-step run
    c = DetectConfig(warmup_steps=0)
    assert [learning_rate(s, 24, 1.0, c) for s in (15, 16, 21, 22)] == pytest.approx([1, 0.1, 0.1, 0.01])


def test_one_training_step_has_finite_losses_and_gradients(toy):
    data = read_coco(*toy, masks=True)
    torch.manual_seed(0)
    model = build_detector(TOY_MODEL, "mask", num_classes=data.num_classes, min_size=64, max_size=96, **TOY_OPTIONS)
    images, targets = collate([CocoDetectionSet(data, [i], train=True, masks=True)[0] for i in (1, 2)])
    model.train()
    losses = model(list(images), list(targets))
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    assert all(math.isfinite(float(v.detach())) and float(v.detach()) > 0 for v in losses.values())
    sum(losses.values()).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable.values())
    assert any(p.grad.abs().sum() > 0 for n, p in trainable.items() if n.startswith("backbone.body"))
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


@pytest.mark.slow
def test_detect_train_writes_the_run_and_refuses_to_overwrite_it(toy, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["detect", "train", "--images", str(toy[0]), "--annotations", str(toy[1]), "--val-images", str(toy[0]),
            "--val-annotations", str(toy[1]), "--model", TOY_MODEL, "--task", "box", "--image-size", "64",
            "--max-size", "96", "--batch-size", "2", "--lr", "0.01", "--epochs", "1", "--max-steps-per-epoch", "2",
            "--workers", "0", "--device", "cpu", "--output", str(out), "--detector-options",
            '{"rpn_post_nms_top_n_test": 50, "box_detections_per_img": 10}']
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "lr 0.00125" in log                         # 0.02 scaled to a global batch of 2 (of 16)
    assert {"last.pt", "final.safetensors", "metrics.csv", "steps.csv", "config.yaml", "results.json"} <= \
        {p.name for p in out.iterdir()}
    header, row = (out / "metrics.csv").read_text().splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    assert values["epoch"] == "1" and values["step"] == "2" and float(values["train_loss"]) > 0
    assert values["val_box_ap"] != "" and values["val_mask_ap"] == "" and values["loss_mask"] == ""
    model, info = load_detector(out / "final.safetensors")
    last = torch.load(out / "last.pt", weights_only=True)
    assert info["task"] == "box" and info["category_ids"] == [3, 7] and info["min_size"] == 64
    assert all(torch.equal(v, last["model"][k]) for k, v in model.state_dict().items())
    assert load_detector(out / "last.pt")[1] == info                     # eval/predict read last.pt too
    assert main(args) == 2                             # the same output again: refused, the run kept
    assert ("already holds a run (last.pt); pass --resume (resume=True from Python) to continue it or --overwrite "
            "(overwrite=True) to replace it") in capsys.readouterr().err
    assert main(args + ["--amp", "fp16", "--overwrite"]) == 2
    assert capsys.readouterr().err == "hcgnet: error: --amp fp16 needs a GPU; on the CPU use --amp bf16\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]      # refused before the replacement folder
    metrics = (out / "metrics.csv").read_text()
    assert main(["detect", "train", "--output", str(out), "--resume", "--overwrite", "--epochs", "2"]) == 2
    assert capsys.readouterr().err == ("hcgnet: error: --resume continues the run in the output folder, --overwrite "
                                       "replaces it: choose one\n")   # as train says; it resumed, dropping rows
    assert (out / "metrics.csv").read_text() == metrics
    assert torch.equal(load_file(out / "final.safetensors")["roi_heads.box_predictor.cls_score.weight"],
                       model.roi_heads.box_predictor.cls_score.weight)


@pytest.mark.slow
def test_a_run_interrupted_mid_epoch_resumes_to_the_same_weights(toy, tmp_path, monkeypatch, capsys):
    common = dict(epochs=2, checkpoint_every=0, log_every=1)  # 4 steps per epoch; flips, RPN and ROI sampling random
    trainer.train(toy_config(*toy, tmp_path / "reference", **common), log=lambda *a: None)
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        signal_at_step(m, signal.SIGTERM, 3)
        with pytest.raises(TrainingInterrupted, match=f"epoch 1 step 3; resume with: hcgnet detect train --output {out} "
                                                      "--resume"):
            trainer.train(toy_config(*toy, out, **common), log=lambda *a: None)
    assert torch.load(out / "last.pt", weights_only=True)["step_in_epoch"] == 3
    assert main(["detect", "train", "--output", str(out), "--resume"]) == 0   # the run's own config.yaml
    assert "resumed" in capsys.readouterr().out
    a, b = load_file(tmp_path / "reference" / "final.safetensors"), load_file(out / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [(tmp_path / d / "metrics.csv").read_text().splitlines() for d in ("reference", "run")]
    assert [r.split(",")[:4] for r in rows[0]] == [r.split(",")[:4] for r in rows[1]]   # epoch, step, lr, loss
    # The rate of each global step, by hand: base 0.01, warm-up over steps 0-3 from 0.001, x0.1 from step 6 (the
    # first with 8/12 of the 8 steps, 5.33, done); 11/12 of them (7.33) is done only at the end, so no second drop.
    # The second epoch does not restart the warm-up.
    hand = [0.01 * f for f in (0.001, 0.25075, 0.5005, 0.75025, 1, 1, 0.1, 0.1)]
    for run in ("reference", "run"):
        header, *lines = (tmp_path / run / "steps.csv").read_text().splitlines()
        at = header.split(",").index("lr")
        assert [float(line.split(",")[at]) for line in lines] == pytest.approx(hand), run


LEARN_MODEL = os.environ.get("HCGNET_LEARN_DETECTOR", TOY_MODEL)


#: The README's CPU try-out ("Detection"), word for word but the folders.
TRY_OPTIONS = {"rpn_post_nms_top_n_train": 50, "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32}
TRY_ARGS = ["--model", LEARN_MODEL, "--task", "box", "--image-size", "64", "--max-size", "96", "--batch-size", "2",
            "--lr", "0.08", "--epochs", "20", "--warmup-steps", "20", "--workers", "0",
            "--detector-options", json.dumps(TRY_OPTIONS)]


@pytest.mark.slow
def test_a_few_hundred_cpu_steps_raise_the_box_ap(tmp_path):
    """The README's CPU try-out: 160 steps (16 images, batch 2, 20 epochs) of a Faster R-CNN from scratch on the
    toy set; box AP on the training images goes from about 0 to well above it."""
    images, annotations = make_coco(tmp_path / "coco", count=16)
    data = read_coco(images, annotations)
    torch.manual_seed(DetectConfig.seed)               # the untrained detector the run starts from
    start = build_detector(LEARN_MODEL, "box", num_classes=3, min_size=64, max_size=96, **TRY_OPTIONS)
    before = evaluate_detector(start, data, data.category_ids, "box", torch.device("cpu"))["box"]["AP"]
    assert main(["detect", "train", "--images", str(images), "--annotations", str(annotations),
                 "--output", str(tmp_path / "run"), "--device", "cpu", *TRY_ARGS]) == 0
    model, info = load_detector(tmp_path / "run" / "final.safetensors")
    after = evaluate_detector(model, data, info["category_ids"], "box", torch.device("cpu"))["box"]["AP"]
    assert before < 0.05 and after > 0.3, (before, after)


class NaNDetector(torch.nn.Module):
    """A detector whose loss is NaN: what a too-high learning rate leads to."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, images, targets=None):
        return {"loss_classifier": self.w * 0.5, "loss_box_reg": self.w * float("nan")}


def test_a_non_finite_loss_stops_the_run_in_one_line_before_touching_the_weights(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trainer, "build_detector", NaNDetector)
    out = tmp_path / "run"
    code = main(["detect", "train", "--images", str(toy[0]), "--annotations", str(toy[1]), "--output", str(out),
                 "--device", "cpu", "--workers", "0", "--batch-size", "2", "--task", "box"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("hcgnet: error: the detection loss became nan at step 1 of the epoch (loss_classifier 0.5, "
                          "loss_box_reg nan) (epoch 1); training stopped and no checkpoint had been written yet; "
                          "lower --lr"), err


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_one_model_and_score_every_image(toy, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "hcgnet", "detect", "train", "--images",
         str(toy[0]), "--annotations", str(toy[1]), "--val-images", str(toy[0]), "--val-annotations", str(toy[1]),
         "--model", TOY_MODEL, "--task", "box", "--image-size", "64", "--max-size", "96", "--batch-size", "4",
         "--epochs", "1", "--workers", "0", "--device", "cpu", "--output", str(out), "--detector-options",
         json.dumps(TOY_OPTIONS)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["world_size"] == 2 and result["replicas_identical"] is True and result["steps"] == 2  # 8 / 4
    assert result["validation"]["images"] == 8
    group = torch.load(out / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]
    # Global batch 4 (not one process's 2); step 1 of 2: halfway through the warm-up (capped at the run), and
    # before both x0.1 steps (8/12 of 2 steps, 1.33, is done only at the end).
    assert group["lr"] == pytest.approx(0.02 * 4 / 16 * (0.001 * 0.5 + 0.5))


def test_the_clipping_note_is_logged_once_and_names_the_file(tmp_path, monkeypatch):
    """Training and validating on the same file with a box 1 px out: one note, naming that file."""
    images, annotations = make_coco(tmp_path / "coco", count=4)
    data = json.loads(annotations.read_text())
    x, y, w, h = data["annotations"][0]["bbox"]
    data["annotations"][0]["bbox"] = [x, y, 64 - x + 1, h]   # image 1 is 64 wide
    annotations.write_text(json.dumps(data))

    def stop(self, num_classes, weights=True):
        if weights:  # the real build, after the data (the meta one before it checks the flags)
            raise trainer.HCGNetError("stopped after the data")

    monkeypatch.setattr(trainer.DetectRun, "build_model", stop)
    lines = []
    config = toy_config(images, annotations, tmp_path / "run", val_images=str(images), val_annotations=str(annotations))
    with pytest.raises(trainer.HCGNetError, match="stopped after the data"):
        trainer.train(config, log=lines.append)
    notes = [line for line in lines if "clipped" in line]
    assert notes == [f"{annotations}: clipped 1 box sticking out of its image by at most 2 px"]


def test_clipping_under_a_grad_scaler_clips_the_true_gradients():
    """fp16's scaler multiplies the loss (here by 1024): the clip must see the unscaled gradients. Hand values:
    d/da of (a . (3, 4)) is (3, 4), norm 5; clipped at 2.5 it is (1.5, 2), so SGD at lr 1 moves a by -(1.5, 2)."""
    from hcgnet.detection.engine import DetectionStep, clip_gradients
    from hcgnet.distributed import Dist
    from hcgnet.training.engine import optimizer_step

    a = torch.nn.Parameter(torch.zeros(2))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    step = DetectionStep(torch.optim.SGD([a], lr=1.0), Dist(), scaler=scaler, clip_grad=2.5)
    scaler.scale((a * torch.tensor([3.0, 4.0])).sum()).backward()
    clip_gradients(step)
    optimizer_step(step.optimizer, scaler)
    assert a.detach().tolist() == pytest.approx([-1.5, -2.0])


@pytest.mark.parametrize("options, expected", [
    ({"box_detections_per_imgg": 50}, "unknown option 'box_detections_per_imgg' (did you mean box_detections_per_img?)"),
    ({"anchors": 3}, "unknown option 'anchors' (the options are box_batch_size_per_image, box_bg_iou_thresh, "),
    ({"min_size": 600}, "give min_size with --image-size, not here"),
])
def test_an_unknown_detector_option_is_refused_before_anything_is_written(toy, tmp_path, capsys, options, expected):
    out = tmp_path / "run"
    code = main(["detect", "train", "--images", str(toy[0]), "--annotations", str(toy[1]), "--output", str(out),
                 "--device", "cpu", "--detector-options", json.dumps(options)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hcgnet: error: --detector-options: ") and err.count("\n") == 1, err
    assert expected in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ short runs


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """5 images (the newcomer's set): a batch of 2 takes 2 steps per epoch and leaves 1 image out."""
    return make_coco(tmp_path_factory.mktemp("five"), count=5)


def test_a_short_run_logs_its_steps_says_what_it_leaves_out_and_a_finished_run_is_not_resumed(five, tmp_path):
    out, lines = tmp_path / "run", []
    config = toy_config(*five, out, task="box", lr=0.08, lr_base_batch=16, warmup_steps=2)
    trainer.train(config, log=lines.append)
    text = "\n".join(lines)
    assert "lr 0.01 (--lr 0.08 scaled to batch 2 of 16)" in text                 # 0.08 * 2 / 16
    assert "each epoch takes 2 batches of 2 and leaves 1 training image unused (drawn anew each epoch)" in text
    # Step 2 of 2 (20 = --log-every would write none): halfway through the 2-step warm-up, no x0.1 drop yet.
    header, *rows = (out / "steps.csv").read_text().splitlines()
    assert len(rows) == 1
    row = dict(zip(header.split(","), rows[0].split(",")))
    assert row["step"] == "2" and float(row["lr"]) == pytest.approx(0.01 * (0.001 * 0.5 + 0.5))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    lines.clear()
    again = trainer.train(resume_config_of(out), log=lines.append)
    assert lines == [f"{out} already finished its 1 epoch; nothing to resume (to train longer, pass --resume "
                     "--epochs with more than 1)"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before and again["epochs"] == 1
    lines.clear()
    assert trainer.train(resume_config_of(out, epochs=2), log=lines.append)["epochs"] == 2   # the advice works
    assert "resumed" in lines[0] and [r.split(",")[0] for r in (out / "metrics.csv").read_text().splitlines()[1:]] \
        == ["1", "2"]


def resume_config_of(out, **overrides):
    from hcgnet.detection.config import resume_detect_config

    return resume_detect_config(str(out), overrides)


def test_a_batch_over_half_the_images_is_warned_about_as_the_classifiers_is(five, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "build_detector", NaNDetector)   # set-up only: no detector needed

    def stop(self):
        raise trainer.HCGNetError("stopped after the set-up")

    monkeypatch.setattr(trainer.DetectRun, "train", stop)
    lines = []
    with pytest.raises(trainer.HCGNetError, match="stopped after the set-up"):
        trainer.train(toy_config(*five, tmp_path / "run", task="box", batch_size=4), log=lines.append)
    assert "warning: batch size 4 is more than half the training set (5 images): each epoch takes 1 step and " \
           "leaves 1 image unused; --batch-size 2 takes 2 steps per epoch" in lines


@pytest.mark.parametrize("existing", [False, True])
def test_an_unreadable_image_stops_the_run_before_its_first_step_and_leaves_nothing_behind(five, tmp_path, capsys,
                                                                                          existing):
    images = tmp_path / "images"
    shutil.copytree(five[0], images)
    for path in images.iterdir():                        # every image cut short: the first batch fails, whichever
        path.write_bytes(path.read_bytes()[:60])         # it is, though each header (and size) still reads
    out = tmp_path / "run"
    if existing:
        out.mkdir()                                      # a folder the user made: kept, but empty again
    code = main(["detect", "train", "--images", str(images), "--annotations", str(five[1]), "--output", str(out),
                 "--model", TOY_MODEL, "--task", "box", "--image-size", "64", "--max-size", "96", "--batch-size", "2",
                 "--workers", "0", "--device", "cpu", "--detector-options", json.dumps(TOY_OPTIONS)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot read image " in err, err
    assert (list(out.iterdir()) == []) if existing else not out.exists()


@pytest.mark.parametrize("make", [False, True])
def test_detect_train_resume_of_an_output_without_a_run_says_there_is_no_run(tmp_path, capsys, make):
    out = tmp_path / "nothing"
    if make:
        out.mkdir()
    assert main(["detect", "train", "--output", str(out), "--resume"]) == 2
    what = "it holds no config.yaml" if make else "no such folder"
    assert capsys.readouterr().err == f"hcgnet: error: nothing to resume: there is no run in {out} ({what}); check " \
                                      "--output, or start a run there with --images ... --annotations ...\n"
    assert out.exists() == make
