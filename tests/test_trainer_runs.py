"""The trainer called as a library (fast, in-process): the recipe it really applies, the global batch, writes
that fail, --overwrite that fails, stale temporary files, extending a run, progress lines in logs."""
import errno
import json
import math
import re
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_image_folder, signal_at_step
from hcgnet.errors import HCGNetError
from hcgnet.models import create_model
from hcgnet.training import make_config, resume_config
from hcgnet.training import trainer
from hcgnet.training.interrupts import TrainingInterrupted
from hcgnet.training.engine import NonFiniteLossError, StepContext, train_one_epoch
from hcgnet.distributed import Dist

TINY = "HCGNet-(1,1,1)-(k=4,4,4)"

pytestmark = pytest.mark.usefixtures("single_thread")


def config_for(folder, out, **extra):
    values = dict(model=TINY, data=f"imagefolder:{folder}", image_size=16, val_size=0.2, test_size=0.2, workers=0,
                  output=str(out),
                  epochs=1, batch_size=4, lr=0.05)
    values.update(extra)
    return make_config(overrides=values)


def fit(config):
    lines = []
    result = trainer.fit(config, log=lines.append)
    return result, lines


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    # 36 images: 7 validation, 7 test, 22 training (5 steps of 4)
    return make_image_folder(tmp_path_factory.mktemp("data") / "images", classes=3, per_class=12)


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# ------------------------------------------------------------------------------------------------ batch size


@pytest.mark.parametrize("train,world,accum,mixup,asked,expected", [
    (22, 1, 1, 0.0, 128, 22),   # the whole training set in one batch
    (23, 1, 1, 0.4, 128, 22),   # mixup pairs images: an even batch
    (23, 2, 1, 0.0, 128, 22),   # 11 per process
    (23, 2, 1, 0.4, 128, 20),   # 11 per process, even: 10
    (23, 1, 2, 0.4, 128, 20),   # two micro-batches of an even size: 2 x 10
    (22, 2, 1, 0.0, 10, 10),    # fits: unchanged (5 per process, 2 steps of the 11 each has)
])
def test_a_batch_larger_than_the_training_set_is_reduced_with_a_warning(train, world, accum, mixup, asked, expected):
    config = make_config(overrides=dict(data="cifar10", batch_size=asked, accum_steps=accum, mixup=mixup))
    lines = []
    assert trainer.global_batch_for(config, train, world, lines.append) == expected
    if expected != asked:
        assert len(lines) == 1 and f"using batch size {expected}" in lines[0] and f"{train} images" in lines[0]
    else:
        assert lines == []


@pytest.mark.parametrize("train,world,mixup,asked,unused,suggested", [
    (242, 1, 0.0, 128, 114, 121),   # the reported case: 1 step of 128, 114 images never seen in an epoch
    (243, 1, 0.4, 128, 115, 120),   # mixup: an even batch is suggested (121 -> 120)
    (242, 2, 0.0, 128, 114, 120),   # 121 per process, 64 used: 57 x 2 unused; 60 per process suggested
])
def test_a_batch_over_half_the_training_set_warns_of_the_images_left_out(train, world, mixup, asked, unused,
                                                                         suggested):
    config = make_config(overrides=dict(data="cifar10", batch_size=asked, mixup=mixup))
    lines = []
    assert trainer.global_batch_for(config, train, world, lines.append) == asked
    assert len(lines) == 1 and lines[0].startswith(f"warning: batch size {asked} is more than half the training set")
    assert f"1 step and leaves {unused} images unused" in lines[0]
    assert lines[0].endswith(f"; --batch-size {suggested} takes 2 steps per epoch")
    # exactly two batches, or a batch dividing the set: no images left out, no warning
    for fits in (train // world // 2 * world, train // world * world):
        lines = []
        trainer.global_batch_for(make_config(overrides=dict(data="cifar10", batch_size=fits)), train, world,
                                 lines.append)
        assert lines == [], fits


def test_a_batch_that_cannot_fit_or_divide_is_refused_in_one_line():
    config = make_config(overrides=dict(data="cifar10", batch_size=128, mixup=0.4))
    with pytest.raises(HCGNetError, match="3 images, too few"):
        trainer.global_batch_for(config, 3, 2, print)  # 1 image per process
    with pytest.raises(HCGNetError, match="divide evenly over 3 processes; use a multiple of 3"):
        trainer.global_batch_for(make_config(overrides=dict(data="cifar10", batch_size=128)), 1000, 3, print)


def test_default_batch_on_a_small_folder_trains_with_the_reduced_batch_and_a_limited_test(tmp_path, images):
    config = config_for(images, tmp_path / "run", batch_size=128, max_steps_per_epoch=1, max_test_images=5)
    result, lines = fit(config)
    assert result["global_batch"] == 22
    assert any("using batch size 22" in line for line in lines)
    assert result["test_images"] == 5 and result["test_images_available"] == 7 and result["max_test_images"] == 5
    assert any("first 5 of 7 test images" in line for line in lines)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["test_images"] == 5


def test_120_images_train_with_the_default_hold_out_and_batch(tmp_path):
    """The newcomer's case: no --val-size, --test-size or --batch-size (once: 5,000 held out, then a batch of 128)."""
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=40, size=(12, 12))
    config = make_config(overrides=dict(model=TINY, data=f"imagefolder:{folder}", image_size=16, workers=0,
                                        output=str(tmp_path / "run"), epochs=1, max_steps_per_epoch=1))
    assert (config.val_size, config.test_size, config.batch_size) == (None, None, 128)
    result, lines = fit(config)
    assert "held out 12 of 120 images (10%) for validation" in " ".join(lines)
    assert result["global_batch"] == 96 and result["test_images"] == 12


# ------------------------------------------------------------------------------------------------ the recipe


class Spy:
    """Wraps a class: records the keyword arguments of every instance and how often instances are called."""

    def __init__(self, cls):
        self.cls, self.kwargs, self.calls = cls, [], 0

    def __call__(self, *args, **kwargs):
        self.kwargs.append(kwargs)
        instance = self.cls(*args, **kwargs)
        spy = self

        class Counted(type(instance)):
            def __call__(self, *a, **k):
                spy.calls += 1
                return super().__call__(*a, **k)

        instance.__class__ = Counted
        return instance


def test_the_trainer_applies_the_recipe_and_trains_only_what_prepare_model_leaves_trainable(tmp_path, images,
                                                                                            monkeypatch):
    mixup, soft = Spy(trainer.Mixup), Spy(trainer.SoftTargetCrossEntropy)
    monkeypatch.setattr(trainer, "Mixup", mixup)
    monkeypatch.setattr(trainer, "SoftTargetCrossEntropy", soft)
    prepared = []

    def freeze_stem(model, config, log):
        prepared.append(config)
        for p in model.stem.parameters():
            p.requires_grad_(False)

    monkeypatch.setattr(trainer, "prepare_model", freeze_stem)
    out = tmp_path / "run"
    config = config_for(images, out, mixup=0.4, label_smoothing=0.15, weight_decay=3e-4, momentum=0.8,
                        lr_base_batch=16, max_steps_per_epoch=2)
    fit(config)
    assert len(prepared) == 1
    assert mixup.kwargs == [dict(mixup_alpha=0.4, label_smoothing=0.15, num_classes=3)] and mixup.calls == 2
    assert soft.calls == 2  # the loss of both steps is the soft-target one mixup needs
    state = torch.load(out / "last.pt", weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert group["nesterov"] is True and group["momentum"] == 0.8 and group["weight_decay"] == 3e-4
    assert group["initial_lr"] == pytest.approx(0.05 * 4 / 16)  # lr scaled by the batch
    model = create_model(TINY, num_classes=3)
    trainable = [n for n, p in model.named_parameters() if not n.startswith("stem.")]
    assert len(group["params"]) == len(trainable)  # the frozen stem is not in the optimiser


def test_nesterov_off_and_no_mixup_reach_the_optimiser_and_the_loss(tmp_path, images, monkeypatch):
    mixup = Spy(trainer.Mixup)
    monkeypatch.setattr(trainer, "Mixup", mixup)
    out = tmp_path / "run"
    fit(config_for(images, out, nesterov=False, label_smoothing=0.1, max_steps_per_epoch=1))
    assert mixup.kwargs == []
    group = torch.load(out / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]
    assert group["nesterov"] is False and group["initial_lr"] == 0.05


# ------------------------------------------------------------------------------------------------ NaN


def test_the_nan_stop_happens_before_the_optimiser_step():
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    calls = []

    def loss_fn(out, y):  # NaN at the second step
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(out, y)
        return loss * float("nan") if len(calls) == 2 else loss

    after_first = {}

    def on_step(done, loss):
        after_first.update({k: v.clone() for k, v in model.state_dict().items()})
        after_first.update({f"momentum.{i}": optimizer.state[p]["momentum_buffer"].clone()
                            for i, p in enumerate(model.parameters())})

    batches = [(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])) for _ in range(2)]
    ctx = StepContext(optimizer, loss_fn, Dist())
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        train_one_epoch(model, batches, ctx, lambda i: None, on_step=on_step)
    for k, v in model.state_dict().items():
        if v.is_floating_point() and "running_" not in k:  # the NaN forward pass did update BN statistics
            assert torch.equal(v, after_first[k]), k
    for i, p in enumerate(model.parameters()):
        assert torch.equal(optimizer.state[p]["momentum_buffer"], after_first[f"momentum.{i}"])


# ------------------------------------------------------------------------------------------------ writes


def test_a_checkpoint_write_failing_half_way_keeps_the_previous_file_and_no_temporary(tmp_path, images, monkeypatch):
    out = tmp_path / "run"
    real_save, saves, kept = torch.save, [], {}

    def failing_save(obj, path, *a, **k):
        saves.append(path)
        if len(saves) == 3:
            kept["last.pt"] = (out / "last.pt").read_bytes()
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.EIO, "Input/output error")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(HCGNetError) as e:
        fit(config_for(images, out, checkpoint_every=1, max_steps_per_epoch=4))
    assert "writing " + str(out / "last.pt") in str(e.value) and "\n" not in str(e.value)
    assert (out / "last.pt").read_bytes() == kept["last.pt"]
    assert sorted(p.name for p in out.iterdir() if ".tmp" in p.name) == []


def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path, images, monkeypatch):
    out = tmp_path / "run"
    real_save, saves = torch.save, []

    def full_disk(obj, path, *a, **k):
        saves.append(path)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(HCGNetError) as e:
        fit(config_for(images, out, checkpoint_every=1, max_steps_per_epoch=3))
    assert str(e.value) == f"no space left writing {out / 'last.pt'}; free space and resume with --resume"
    assert torch.load(out / "last.pt", weights_only=True)["step_in_epoch"] == 1
    monkeypatch.setattr(torch, "save", real_save)
    result, lines = fit(config_for(images, out, checkpoint_every=1, max_steps_per_epoch=3, resume=True))
    assert any("resumed" in line and "step 1" in line for line in lines) and result["epochs"] == 1


def test_resuming_a_finished_run_changes_nothing_and_one_stopped_while_testing_scores_its_test_set(tmp_path, images):
    """--resume of a run with its results: said, nothing rewritten (as detect train); of one stopped after its
    last epoch but before its results (killed while scoring the test set): the test set is scored."""
    out = tmp_path / "run"
    first, _ = fit(config_for(images, out, max_steps_per_epoch=1))
    before = folder_bytes(out)
    again, lines = fit(config_for(images, out, max_steps_per_epoch=1, resume=True))
    assert lines == [f"{out} already finished its 1 epoch; nothing to resume (to train longer, pass --resume "
                     "--epochs with more than 1)"]
    assert again == json.loads((out / "results.json").read_text()) and again["test_top1"] == first["test_top1"]
    assert folder_bytes(out) == before
    (out / "results.json").unlink()
    again, lines = fit(config_for(images, out, max_steps_per_epoch=1, resume=True))
    assert f"resumed {out}: it has trained all 1 epoch, so only the test set is scored again (pass --epochs 2 or " \
           "more to train longer)" in lines
    assert not any("at epoch 2" in line for line in lines)
    assert again["test_top1"] == first["test_top1"] and again["test_images"] == first["test_images"]


def test_a_run_without_test_images_records_no_test_scores(tmp_path, images):
    """--test-size 0: results.json says null for the scores (not 0% top-1 and a loss of 0) and the log says why."""
    out = tmp_path / "run"
    result, lines = fit(config_for(images, out, max_steps_per_epoch=1, test_size=0))
    saved = json.loads((out / "results.json").read_text())
    assert saved["test_images"] == 0 and result["test_images"] == 0
    assert saved["test_top1"] is None and saved["test_top5"] is None and saved["test_loss"] is None
    assert "no test images: the test set was not scored" in lines


def test_steps_csv_has_each_epochs_last_step_when_runs_are_shorter_than_log_every(tmp_path, images):
    """--log-every 20 (the default) in epochs of 3 steps: steps.csv still gets a row per epoch, at its last step;
    with --log-every 2, steps 2 and 3 of each epoch."""
    def logged(out):
        return [int(r.split(",")[0]) for r in (out / "steps.csv").read_text().splitlines()[1:]]

    fit(config_for(images, tmp_path / "a", max_steps_per_epoch=3, epochs=2))
    assert logged(tmp_path / "a") == [3, 6]
    fit(config_for(images, tmp_path / "b", max_steps_per_epoch=3, epochs=2, log_every=2))
    assert logged(tmp_path / "b") == [2, 3, 5, 6]


def test_the_nan_advice_names_amp_only_when_mixed_precision_is_on(tmp_path, images):
    with pytest.raises(NonFiniteLossError) as e:
        fit(config_for(images, tmp_path / "run", max_steps_per_epoch=2, lr=1e30, amp="bf16"))
    assert str(e.value).endswith("; lower --lr or use --amp none")


# ------------------------------------------------------------------------------------------------ output folder


def test_overwrite_that_fails_with_nan_keeps_the_old_run_byte_identical(tmp_path, images):
    out = tmp_path / "run"
    fit(config_for(images, out, max_steps_per_epoch=2))
    before = folder_bytes(out)
    with pytest.raises(NonFiniteLossError) as e:
        fit(config_for(images, out, max_steps_per_epoch=2, lr=1e30, overwrite=True))
    assert f"{out} still holds the old run" in str(e.value)
    assert str(e.value).endswith("; lower --lr")  # no "--amp none" advice: amp is already none
    assert folder_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no replacement folder left behind
    fit(config_for(images, out, max_steps_per_epoch=2, seed=5, overwrite=True))
    assert folder_bytes(out)["best.safetensors"] != before["best.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_bad_images_leave_only_their_list_and_an_overwrite_keeps_the_old_run(tmp_path):
    folder = make_image_folder(tmp_path / "images", classes=2, per_class=6)
    (folder / "class_0" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "run"
    with pytest.raises(HCGNetError) as e:
        fit(config_for(folder, out))
    listed = out / "bad_images.txt"
    assert f"the full list is in {listed}" in str(e.value)
    assert [p.name for p in out.iterdir()] == ["bad_images.txt"] and "broken.png" in listed.read_text()
    listed.unlink()
    (folder / "class_0" / "broken.png").rename(tmp_path / "broken.png")
    fit(config_for(folder, out, max_steps_per_epoch=1))
    before = folder_bytes(out)
    (tmp_path / "broken.png").rename(folder / "class_1" / "broken.png")
    with pytest.raises(HCGNetError) as e:
        fit(config_for(folder, out, max_steps_per_epoch=1, overwrite=True))
    kept = tmp_path / "run.bad_images.txt"
    assert f"the full list is in {kept}" in str(e.value) and "class_1/broken.png" in kept.read_text()
    assert folder_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "run", "run.bad_images.txt"]


def test_fp16_without_a_gpu_is_refused_before_the_folder_is_read(tmp_path, monkeypatch):
    """The refusal comes before the images are scanned: nothing is written (not even the list of a broken
    image the scan would have found), and the one line is the whole message."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder = make_image_folder(tmp_path / "images", classes=2, per_class=6)
    (folder / "class_0" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(HCGNetError) as e:
        fit(config_for(folder, tmp_path / "run", amp="fp16"))
    assert str(e.value) == "--amp fp16 needs a GPU; on the CPU use --amp bf16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_the_run_stopped_by_a_bad_image_can_be_rerun_with_skip_bad_images_in_the_same_folder(tmp_path):
    # the error says "pass --skip-bad-images"; doing just that must not meet "already holds a run"
    folder = make_image_folder(tmp_path / "images", classes=2, per_class=6)
    (folder / "class_0" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "run"
    with pytest.raises(HCGNetError, match="skip-bad-images"):
        fit(config_for(folder, out))
    fit(config_for(folder, out, max_steps_per_epoch=1, skip_bad_images=True))
    assert (out / "best.safetensors").is_file() and "class_0/broken.png" in (out / "bad_images.txt").read_text()


def test_an_output_inside_the_image_folder_is_refused(tmp_path):
    folder = make_image_folder(tmp_path / "images", classes=2, per_class=3)
    with pytest.raises(HCGNetError, match="inside the image folder"):
        fit(config_for(folder, folder / "runs" / "a"))
    assert not (folder / "runs").exists()


def test_a_folder_with_a_runs_file_name_but_no_run_is_not_called_a_run(tmp_path):
    """The user's own metrics.csv: "already holds a run; pass --resume" led to "there is no run" on --resume."""
    folder = make_image_folder(tmp_path / "images", classes=2, per_class=3)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.csv").write_text("my,own\n")
    with pytest.raises(HCGNetError) as e:
        fit(config_for(folder, out))
    assert str(e.value) == (f"{out} holds metrics.csv, which a run writes, but no run to resume (no last.pt or "
                            "config.yaml); choose another --output, or pass --overwrite (overwrite=True) to replace "
                            "them")
    assert (out / "metrics.csv").read_text() == "my,own\n" and sorted(p.name for p in out.iterdir()) == ["metrics.csv"]


def test_a_run_starting_or_resuming_removes_temporary_files_a_killed_run_left(tmp_path, images):
    out = tmp_path / "run"
    fit(config_for(images, out, max_steps_per_epoch=1))
    stale = [out / ".last.pt.tmp.k1ll3d.tmp", out / ".best.pt.tmp.x9.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    (out / "notes.tmp.txt").write_text("mine")  # not ours: stays
    killed_overwrite = tmp_path / ".run.overwrite"
    killed_overwrite.mkdir()
    (killed_overwrite / "last.pt").write_bytes(b"half")
    fit(config_for(images, out, max_steps_per_epoch=1, resume=True))
    assert not any(p.exists() for p in stale) and (out / "notes.tmp.txt").exists()
    assert not killed_overwrite.exists()


# ------------------------------------------------------------------------------------------------ resume


def test_resume_given_only_the_output_extends_a_finished_run(tmp_path, images):
    out = tmp_path / "run"
    _, lines = fit(config_for(images, out, max_steps_per_epoch=2, log_every=1, device="cpu"))
    assert any("1 process on cpu" in line for line in lines)
    assert "device" not in (out / "config.yaml").read_text()  # where it ran is not what it trains
    config = resume_config(str(out), {"epochs": 3})
    assert config.resume and config.model == TINY and config.max_steps_per_epoch == 2 and config.epochs == 3
    assert config.device is None
    result, lines = fit(config)
    assert result["epochs"] == 3 and any("(now 3 epochs)" in line for line in lines)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    # The extended run follows a cosine over 3 epochs: lr(t) = lr/2 (1 + cos(pi t / 3)), t = fractional epoch
    # of the step's own learning rate (set before the step: step s of 2 per epoch uses t = (s - 1) / 2).
    steps = [r.split(",") for r in (out / "steps.csv").read_text().splitlines()[1:]]
    for step, _, lr, _ in steps[2:]:
        t = (int(step) - 1) / 2
        assert float(lr) == pytest.approx(0.025 * (1 + math.cos(math.pi * t / 3)), rel=1e-6), step
    with pytest.raises(HCGNetError, match="it has already trained 3 epochs"):
        fit(resume_config(str(out), {"epochs": 2}))


def test_resume_config_of_a_folder_without_a_run_is_one_line(tmp_path):
    with pytest.raises(HCGNetError, match="nothing to resume"):
        resume_config(str(tmp_path / "none"), {})


@pytest.mark.parametrize("make", [False, True])
def test_train_resume_of_an_output_without_a_run_says_there_is_no_run_not_no_dataset(tmp_path, capsys, make):
    from hcgnet.cli import main

    out = tmp_path / "missing"
    if make:
        out.mkdir()
    assert main(["train", "--resume", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    what = "it holds no config.yaml" if make else "no such folder"
    assert err == f"hcgnet: error: nothing to resume: there is no run in {out} ({what}); check --output, or start " \
                  "a run there with --data ...\n"


# ------------------------------------------------------------------------------------------------ logs


PROGRESS = re.compile(r"step (\d+)/(\d+) \(epoch (\d+)/(\d+), step (\d+)/(\d+)\): loss \d+\.\d{4}, lr [0-9.e-]+, "
                      r"[0-9.]+ images/s, ETA \d+:\d\d:\d\d$")


def test_a_log_that_is_not_a_terminal_gets_progress_lines_and_the_data_notes(tmp_path, images, monkeypatch):
    monkeypatch.setattr(trainer, "LOG_SECONDS", 0.0)
    monkeypatch.setattr(trainer, "_stdout_is_terminal", lambda: False)
    images = make_image_folder(tmp_path / "images", classes=3, per_class=12)
    (images / "class_2" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "run"
    _, lines = fit(config_for(images, out, epochs=2, max_steps_per_epoch=3, skip_bad_images=True))
    progress = [PROGRESS.match(line) for line in lines]
    steps = [int(m.group(1)) for m in progress if m]
    assert steps == [1, 2, 3, 4, 5, 6], lines
    last = [m for m in progress if m][-1]
    assert last.groups()[1:] == ("6", "2", "2", "3", "3")
    assert "held out 7 of 36 images (19.4%) for validation (val_size=0.2)" in lines, lines
    assert f"skipped 1 unreadable image (broken.png); the list is in {out / 'bad_images.txt'}" in lines
    assert "class_2/broken.png" in (out / "bad_images.txt").read_text()
    monkeypatch.setattr(trainer, "_stdout_is_terminal", lambda: True)  # a terminal has the bar instead
    _, lines = fit(config_for(images, tmp_path / "tty", max_steps_per_epoch=2, skip_bad_images=True))
    assert not any(PROGRESS.match(line) for line in lines)


def test_the_cifar_stem_on_large_images_is_named_in_a_warning(tmp_path, images):
    _, lines = fit(config_for(images, tmp_path / "cifar", image_size=72, max_steps_per_epoch=1))
    assert f"warning: {TINY} has the CIFAR stem (no downsampling before the first hybrid block), so at 72 px" in \
        " ".join(lines) and "pass --stem imagenet" in " ".join(lines)
    _, lines = fit(config_for(images, tmp_path / "imagenet", image_size=72, max_steps_per_epoch=1, stem="imagenet"))
    assert not any("CIFAR stem" in line for line in lines)
    _, lines = fit(config_for(images, tmp_path / "small", image_size=64, max_steps_per_epoch=1))
    assert not any("CIFAR stem" in line for line in lines)


def test_without_image_size_the_cifar_stem_trains_at_32_px_and_the_log_names_the_augmentation(tmp_path, images):
    from hcgnet.models.checkpoints import read_metadata

    out = tmp_path / "run"
    _, lines = fit(config_for(images, out, image_size=None, hflip=0.0, max_steps_per_epoch=1))
    config = json.loads(read_metadata(str(out / "best.safetensors"))["data_config"])
    assert config["input_size"] == [3, 32, 32] and config["resize"] is None  # the CIFAR stem's whole 32 px images
    assert "augmentation: CIFAR's (pad 4 px, random 32x32 crop, no flip (--hflip 0))" in lines
    assert not any("top-5" in line for line in lines)  # 3 classes: top-5 is always 100%
    assert trainer.model_defaults(make_config(overrides=dict(data="cifar10", model=TINY, stem="imagenet"))
                                  )["input_size"] == (3, 224, 224)


def test_curves_have_the_learning_rate_of_every_epoch_and_top5_only_when_it_says_something(tmp_path):
    from hcgnet.training.logs import MetricsLog

    log = MetricsLog(tmp_path, tensorboard=False)  # epoch rows alone, as before a step is logged
    for epoch, lr in ((1, 0.1), (2, 0.05)):
        log.add_epoch({"epoch": epoch, "step": 2 * epoch, "lr": lr, "train_loss": 1.0, "train_acc": 0.5,
                       "val_loss": 1.0, "val_top1": 0.5, "val_top5": 1.0, "seconds": 1.0, "images_per_s": 1.0})
    assert log.curves()["lr"] == [("end of epoch", [1.0, 2.0], [0.1, 0.05])]
    assert [label for label, _, _ in log.curves()["accuracy"]] == ["train top-1", "validation top-1",
                                                                  "validation top-5"]
    assert [label for label, _, _ in log.curves(top5=False)["accuracy"]] == ["train top-1", "validation top-1"]
    log.add_step(3, 1.5, 0.9, 0.07)
    assert log.curves()["lr"][0] == ("logged steps", [1.5], [0.07])
    assert log.plot(tmp_path / "curves.png", "日本 data", top5=False).is_file()


def test_a_resumed_run_keeps_the_preprocessing_it_started_with(tmp_path, images):
    """A run started before the model chose the input size resumes at the size it started with."""
    from hcgnet.models.checkpoints import read_metadata

    out = tmp_path / "run"
    fit(config_for(images, out, image_size=None, max_steps_per_epoch=1))
    state = torch.load(out / "last.pt", weights_only=True)
    started = json.loads(state["data_config"])
    assert started["input_size"] == [3, 32, 32]
    state["data_config"] = json.dumps({**started, "input_size": [3, 24, 24]})  # as if the defaults had changed since
    torch.save(state, out / "last.pt")
    fit(resume_config(str(out), {"epochs": 2}))
    assert json.loads(read_metadata(str(out / "final.safetensors"))["data_config"])["input_size"] == [3, 24, 24]


def test_an_unknown_model_is_refused_before_any_data_is_read(tmp_path, images, monkeypatch):
    monkeypatch.setattr(trainer, "build_data", lambda *a, **k: pytest.fail("the data was read first"))
    with pytest.raises(HCGNetError, match="unknown model 'nonsense'"):
        fit(config_for(images, tmp_path / "run", model="nonsense"))
    assert not (tmp_path / "run").exists()  # nothing left behind


# ------------------------------------------------------------------------------------------------ eval


def test_eval_split_test_is_refused_on_a_folder_the_run_did_not_train_on(tmp_path, images):
    from hcgnet.inference import evaluate_checkpoint

    out = tmp_path / "run"
    fit(config_for(images, out, max_steps_per_epoch=1))
    other = make_image_folder(tmp_path / "other", classes=3, per_class=4, seed=9)
    for split in ("test", "val"):
        with pytest.raises(HCGNetError, match=f"--split {split} is the training run's held-out images of "
                                              f"imagefolder:{images}, and {other} is not that data; pass --split all"):
            evaluate_checkpoint(str(out / "best.safetensors"), f"imagefolder:{other}", split=split, workers=0,
                                device="cpu")
    notes = []
    scored = evaluate_checkpoint(str(out / "best.safetensors"), f"imagefolder:{other}", workers=0, device="cpu",
                                 log=notes.append)
    assert scored["split"] == "all" and scored["count"] == 12
    assert notes == [f"note: {other} is not the data the checkpoint was trained on (imagefolder:{images}): scoring "
                     "all of it (--split all)"]  # no hint towards --split test, which would not be its held-out images


def test_eval_rebuilds_the_split_of_a_run_trained_with_another_seed(tmp_path, images):
    from hcgnet.inference import evaluate_checkpoint

    out = tmp_path / "run"
    result, _ = fit(config_for(images, out, seed=3, max_steps_per_epoch=2))
    scored = evaluate_checkpoint(str(out / "best.safetensors"), f"imagefolder:{images}", split="test", workers=0,
                                 device="cpu")
    assert scored["count"] == result["test_images"] == 7
    assert scored["loss"] == pytest.approx(result["test_loss"], rel=1e-5)
    assert scored["top1"] == result["test_top1"]


def test_eval_of_a_run_with_the_imagenet_stem_and_skipped_images_scores_its_own_test_set(tmp_path):
    """The checkpoint of a spec trained with --stem imagenet loads as that network, and eval leaves out the
    images the run skipped, so it rebuilds exactly the run's test set."""
    from hcgnet.inference import evaluate_checkpoint

    folder = make_image_folder(tmp_path / "images", classes=3, per_class=12)
    (folder / "class_1" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "run"
    result, _ = fit(config_for(folder, out, stem="imagenet", skip_bad_images=True, max_steps_per_epoch=2))
    scored = evaluate_checkpoint(str(out / "best.safetensors"), f"imagefolder:{folder}", split="test", workers=0,
                                 device="cpu")
    assert scored["count"] == result["test_images"] == 7
    assert scored["loss"] == pytest.approx(result["test_loss"], rel=1e-5)


def test_stem_and_dropblock_reach_the_model_and_the_dropblock_ramp_steps_with_the_lr(tmp_path, images, monkeypatch):
    real_create, created, ramp = trainer.create_model, [], []

    def create(name, num_classes=None, **kwargs):
        created.append(kwargs)
        return real_create(name, num_classes=num_classes, **kwargs)

    class Ramp:
        def __init__(self, model, config):
            ramp.append(("init", config.drop_block))

        def step(self, epoch):
            ramp.append(round(epoch, 6))

    monkeypatch.setattr(trainer, "create_model", create)
    monkeypatch.setattr(trainer, "DropBlockSchedule", Ramp)
    fit(config_for(images, tmp_path / "run", stem="imagenet", drop_block=0.1, epochs=2, max_steps_per_epoch=2))
    assert created[-1]["stem"] == "imagenet" and created[-1]["drop_block_rate"] == 0.1
    assert ramp == [("init", 0.1), 0.0, 0.5, 1.0, 1.5]  # beside every learning-rate step


def test_sigterm_saves_the_current_step_and_names_the_resume_command(tmp_path, images, monkeypatch):
    out = tmp_path / "run"
    signal_at_step(monkeypatch, signal.SIGTERM, 3)
    with pytest.raises(TrainingInterrupted) as e:
        fit(config_for(images, out, epochs=2, max_steps_per_epoch=4))
    assert e.value.exit_code == 143
    assert str(e.value) == f"interrupted at epoch 1 step 3; resume with: hcgnet train --output {out} --resume"
    state = torch.load(out / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after the run


def test_ctrl_c_during_overwrite_keeps_the_old_run(tmp_path, images, monkeypatch):
    out = tmp_path / "run"
    fit(config_for(images, out, max_steps_per_epoch=2))
    before = folder_bytes(out)
    signal_at_step(monkeypatch, signal.SIGINT, 1)
    with pytest.raises(TrainingInterrupted) as e:
        fit(config_for(images, out, max_steps_per_epoch=2, seed=4, overwrite=True))
    assert e.value.exit_code == 130 and f"{out} still holds the old run" in str(e.value)
    assert folder_bytes(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_ctrl_c_during_an_overwrite_that_skips_bad_images_leaves_nothing_beside_the_old_run(tmp_path, monkeypatch):
    """The replacement skipped an unreadable image, as asked, and had begun training: its list of them is not
    needed to mend anything, and "the new one was discarded" means nothing of it stays."""
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=8)
    (folder / "class_0" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "run"
    fit(config_for(folder, out, max_steps_per_epoch=2, skip_bad_images=True))
    before = folder_bytes(out)
    signal_at_step(monkeypatch, signal.SIGINT, 1)
    with pytest.raises(TrainingInterrupted, match="still holds the old run"):
        fit(config_for(folder, out, max_steps_per_epoch=2, seed=4, overwrite=True, skip_bad_images=True))
    assert folder_bytes(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["images", "run"]


def test_a_signal_at_the_last_step_of_an_epoch_resumes_to_the_same_weights(tmp_path, images, monkeypatch):
    common = dict(epochs=2, max_steps_per_epoch=4, mixup=0.4, drop_rate=0.2)
    fit(config_for(images, tmp_path / "reference", **common))
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        signal_at_step(m, signal.SIGTERM, 4)  # the epoch's last step: validation not yet run
        with pytest.raises(TrainingInterrupted, match="epoch 1 step 4;"):
            fit(config_for(images, out, **common))
    fit(config_for(images, out, resume=True, **common))
    a, b = load_file(tmp_path / "reference" / "final.safetensors"), load_file(out / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "reference" / "metrics.csv").read_text().splitlines()[1].split(",")[:6] == \
        (out / "metrics.csv").read_text().splitlines()[1].split(",")[:6]


# ------------------------------------------------------------------------------------------------ interrupts


def test_a_second_ctrl_c_stops_at_once_a_sigterm_does_not():
    import os

    from hcgnet.training.interrupts import StopSignals

    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler repeating itself: still the orderly stop
        assert stop.signum == signal.SIGTERM
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)   # the first Ctrl-C only asks
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second stops here, mid-whatever


def test_a_second_ctrl_c_during_a_step_stops_the_run_without_saving(tmp_path, images, monkeypatch):
    import os

    from hcgnet.training.logs import ProgressLines

    real_step = ProgressLines.step

    def twice(self, global_step, loss, lr):
        real_step(self, global_step, loss, lr)
        if global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ProgressLines, "step", twice)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(config_for(images, out, epochs=2))
    assert not (out / "last.pt").exists()  # the first Ctrl-C would have saved step 2 before stopping


def saved_run(epoch, step_in_epoch, epochs=4):
    config = make_config(overrides=dict(data="cifar10", epochs=epochs))
    return {"config": config.to_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch, "world_size": 1}


@pytest.mark.parametrize("epoch,step,shortest", [(1, 3, 2), (1, 0, 1), (0, 5, 1), (3, 0, 3)])
def test_a_run_may_be_shortened_but_not_to_before_where_it_stands(epoch, step, shortest):
    from hcgnet.training.resume import check_resumable

    saved = saved_run(epoch, step)
    for epochs in range(shortest, 6):
        check_resumable(Path("run"), saved, make_config(overrides=dict(data="cifar10", epochs=epochs)), 1)
    if shortest > 1:
        with pytest.raises(HCGNetError, match=f"not {shortest - 1}; it has already trained {epoch} epochs"):
            check_resumable(Path("run"), saved, make_config(overrides=dict(data="cifar10", epochs=shortest - 1)), 1)


def test_a_run_from_before_an_option_existed_resumes_with_its_default():
    from hcgnet.training.resume import check_resumable

    saved = saved_run(1, 0)
    del saved["config"]["hflip"]  # a run saved before --hflip: it flipped with probability 0.5
    check_resumable(Path("run"), saved, make_config(overrides=dict(data="cifar10", epochs=4)), 1)
    with pytest.raises(HCGNetError, match="it was trained with hflip=0.5, not 0.0"):
        check_resumable(Path("run"), saved, make_config(overrides=dict(data="cifar10", epochs=4, hflip=0.0)), 1)


# ------------------------------------------------------------------------------------------------ from anywhere


def test_a_run_on_a_relative_folder_resumes_and_is_scored_from_any_working_folder(tmp_path, monkeypatch, capsys):
    """--data imagefolder:imgs is recorded as the folder it names (config.yaml, last.pt), so that --resume given
    only --output, and eval of last.pt, find it from elsewhere; a run that skipped an unreadable image has its
    last.pt scored without it, as its .safetensors is."""
    from conftest import cli

    make_image_folder(tmp_path / "imgs", classes=3, per_class=12)
    (tmp_path / "imgs" / "class_0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    monkeypatch.chdir(tmp_path)
    fit(make_config(overrides=dict(model=TINY, data="imagefolder:imgs", image_size=16, val_size=0.2, test_size=0.2,
                                   workers=0, output="runs/a", epochs=1, batch_size=4, lr=0.05,
                                   max_steps_per_epoch=1, skip_bad_images=True)))
    folder = tmp_path / "imgs"
    assert f"data: imagefolder:{folder}\n" in (tmp_path / "runs" / "a" / "config.yaml").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = resume_config(str(tmp_path / "runs" / "a"), {"epochs": 2})
    assert config.data == f"imagefolder:{folder}"
    result, _ = fit(config)
    assert result["epochs"] == 2
    code, out, err = cli(capsys, "eval", "--checkpoint", tmp_path / "runs" / "a" / "last.pt", "--workers", "0")
    assert code == 0, err
    assert "skipped 1 unreadable image (broken.jpg), as the checkpoint's training run did" in err + out


def test_a_run_of_a_relative_folder_from_before_resumes_from_its_own_working_folder(tmp_path, images, monkeypatch):
    """config.yaml and last.pt written before folders were recorded absolute (data as typed): the same folder,
    written either way from the run's own working folder, is the same data."""
    monkeypatch.chdir(images.parent)
    out = tmp_path / "run"
    fit(config_for(images, out, max_steps_per_epoch=1))
    state = torch.load(out / "last.pt", weights_only=False)
    state["config"]["data"] = f"imagefolder:{images.name}"
    torch.save(state, out / "last.pt")
    saved = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(saved.replace(f"imagefolder:{images}", f"imagefolder:{images.name}"))
    result, _ = fit(resume_config(str(out), {"epochs": 2}))
    assert result["epochs"] == 2


def test_resuming_to_fewer_epochs_than_trained_says_so_before_the_warm_up_rule(tmp_path, images):
    out = tmp_path / "run"
    fit(config_for(images, out, max_steps_per_epoch=1, epochs=3, warmup_epochs=1))
    with pytest.raises(HCGNetError, match="it has already trained 3 epochs"):
        fit(resume_config(str(out), {"epochs": 1}))   # a warm-up of 1 epoch would leave no cosine in 1 either


def test_fine_tuning_without_model_builds_the_network_the_checkpoint_names(tmp_path, images):
    from hcgnet.models.checkpoints import save_safetensors

    weights = tmp_path / "w.safetensors"
    save_safetensors(create_model(TINY, num_classes=5), weights)
    config = make_config(recipe="finetune", overrides=dict(data=f"imagefolder:{images}",
                                                           initial_checkpoint=str(weights), output=str(tmp_path / "o")))
    assert config.model == TINY   # not the default hcgnet_a1
    assert make_config(recipe="finetune", overrides=dict(data=f"imagefolder:{images}", model="hcgnet_a1",
                                                         initial_checkpoint=str(weights))).model == "hcgnet_a1"


@pytest.mark.parametrize("rank,world,local,expected", [
    (0, 1, None, "resume with: hcgnet train --output runs/x --resume"),
    (0, 2, "2", "resume with: torchrun --nproc-per-node 2 -m hcgnet train --output runs/x --resume"),
    (1, 2, "2", "resume with: torchrun --nproc-per-node 2 -m hcgnet train --output runs/x --resume"),
    (0, 4, "2", "resume with: hcgnet train --output runs/x --resume, launched by torchrun as before (4 processes)"),
])
def test_an_interrupted_run_names_the_command_that_resumes_it_once(monkeypatch, rank, world, local, expected):
    """Under torchrun a resume needs as many processes (a plain `hcgnet train --resume` is refused), and every
    process stops: only rank 0 says so."""
    from types import SimpleNamespace

    if local is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    run = object.__new__(trainer.Run)
    run.d = Dist(rank=rank, world_size=world)
    run.folder = SimpleNamespace(replacing=False, out="runs/x")
    with pytest.raises(TrainingInterrupted) as e:
        run.interrupted(signal.SIGINT, 2, 5)
    assert str(e.value) == f"interrupted at epoch 3 step 5; {expected}"
    assert e.value.exit_code == 130 and e.value.quiet == (rank != 0)


def test_the_cli_says_an_interrupt_once_under_torchrun(monkeypatch, capsys):
    """Every process of a torchrun run stops on the signal; the resume command is printed by rank 0 alone."""
    from hcgnet import cli

    for quiet, said in ((False, "hcgnet: interrupted at epoch 1 step 2; resume with: X\n"), (True, "")):
        def stopped(args, quiet=quiet):
            raise TrainingInterrupted("interrupted at epoch 1 step 2; resume with: X", signal.SIGTERM, quiet=quiet)

        monkeypatch.setattr(cli, "cmd_recipes", stopped)
        assert cli.main(["recipes"]) == 143
        assert capsys.readouterr().err == said
