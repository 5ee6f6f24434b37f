"""The trainer as a person runs it: exact resume after SIGKILL, DDP on 2 CPU processes, NaN, refusals."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli, make_image_folder
from torch.utils.data import DataLoader

from hcgnet.distributed import Dist
from hcgnet.evaluation import evaluate
from hcgnet.models import create_model
from hcgnet.training import resume_config, trainer

TINY = "HCGNet-(1,1,1)-(k=8,8,8)"


def train_args(folder, out, *extra):
    return ["train", "--model", TINY, "--data", f"imagefolder:{folder}", "--image-size", "16", "--val-size", "0.2",
            "--test-size", "0.2",
            "--workers", "0", "--output", str(out), *extra]


def run_cli(args, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "hcgnet", *args], capture_output=True, text=True, env=env,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def _train(capsys, *args):
    """``hcgnet train ...`` in this process (a fresh interpreter costs seconds a run): (exit code, stderr), a
    failure of a run meant to succeed raised with its stderr."""
    code, _, err = cli(capsys, *args)
    return code, err


def _trains(capsys, *args):
    code, err = _train(capsys, *args)
    assert code == 0, err[-2000:]


def checkpoint_position(path):
    state = torch.load(path, weights_only=True)
    return state["epoch"], state["step_in_epoch"]


# The CLI in a child process with one hook, so that each interruption lands at an exact step. Polling the run's
# files from outside raced it (a step of the tiny network takes milliseconds; under CI load the poll saw runs
# finish first). argv: how, target step, steps per epoch, the CLI's arguments.
HOOKED_CLI = """
import os, signal, sys
from hcgnet.training import trainer
from hcgnet.training.logs import MetricsLog
how, target, steps_per_epoch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if how == "kill":  # SIGKILL instead of writing the first last.pt past step `target`: that step's work is lost
    real_save = trainer.save_atomic
    def save_or_die(obj, path):
        if path.name == "last.pt" and obj["epoch"] * steps_per_epoch + obj["step_in_epoch"] > target:
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, path)
    trainer.save_atomic = save_or_die
else:  # signal number `how` once step `target` is logged; negative: to the whole process group
    signum, real_add = int(how), MetricsLog.add_step
    def add_then_signal(self, step, *rest):
        real_add(self, step, *rest)
        if step == target:
            os.killpg(0, -signum) if signum < 0 else os.kill(os.getpid(), signum)
    MetricsLog.add_step = add_then_signal
from hcgnet.cli import main
sys.exit(main(sys.argv[4:]))
"""


def run_hooked(args, how, target, steps_per_epoch=0):
    return subprocess.run([sys.executable, "-c", HOOKED_CLI, str(how), str(target), str(steps_per_epoch), *args],
                          capture_output=True, text=True, timeout=600, start_new_session=True)


def kill_after(args, out, target, steps_per_epoch):
    """Run training until it is about to save the step after global step `target`, SIGKILL it there, and
    return the position of the last.pt it left."""
    proc = run_hooked(args, "kill", target, steps_per_epoch)
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}: {proc.stderr[-1500:]}"
    return checkpoint_position(out / "last.pt")


def test_sigkill_twice_then_resume_is_bit_identical(tmp_path):
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=20)
    # 60 images: 12 validation, 12 test, 36 training = 9 steps of 4 per epoch.
    common = ["--epochs", "3", "--batch-size", "4", "--checkpoint-every", "1", "--mixup", "0.4", "--drop-rate", "0.2"]
    steps_per_epoch = 9
    reference = tmp_path / "reference"
    run_cli(train_args(folder, reference, *common))

    interrupted = tmp_path / "interrupted"
    first = kill_after(train_args(folder, interrupted, *common), interrupted, 4, steps_per_epoch)
    second = kill_after(train_args(folder, interrupted, *common, "--resume"), interrupted, 14, steps_per_epoch)
    assert (first, second) == ((0, 4), (1, 5))  # both kills mid-epoch, the second in the resumed run's epoch
    resumed = run_cli(train_args(folder, interrupted, *common, "--resume"))
    assert "resumed" in resumed.stdout

    for name in ("final.safetensors", "best.safetensors"):
        a, b = load_file(reference / name), load_file(interrupted / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs after resuming"
    ref_rows = (reference / "metrics.csv").read_text().splitlines()
    res_rows = (interrupted / "metrics.csv").read_text().splitlines()
    assert len(ref_rows) == len(res_rows) == 4  # header + one row per epoch, no duplicates after resuming
    assert [r.split(",")[:6] for r in ref_rows] == [r.split(",")[:6] for r in res_rows]
    assert json.loads((reference / "results.json").read_text())["test_top1"] == \
        json.loads((interrupted / "results.json").read_text())["test_top1"]


def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=21)  # 63 images: 13 test, odd
    common = ["--epochs", "2", "--val-size", "0.2", "--lr", "0.1", "--lr-base-batch", "16"]  # lr 0.05 at batch 8
    # One thread per process in both runs: kernels with another thread count add floats in another order,
    # and 8 steps of this tiny network (BatchNorm over 4 images) amplify that to ~1e-3.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    # One process, the global batch of 8 split into the same two micro-batches of 4 that the ranks get
    # (x[0::2] and x[1::2]): the BatchNorm statistics of each half are then the same in both runs.
    run_cli(train_args(folder, one, *common, "--batch-size", "8", "--accum-steps", "2"), env=env)
    two = tmp_path / "two"
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "hcgnet",
                           *train_args(folder, two, *common, "--batch-size", "8")],  # global batch
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    result_one = json.loads((one / "results.json").read_text())
    result_two = json.loads((two / "results.json").read_text())
    assert result_two["world_size"] == 2 and result_two["replicas_identical"] is True
    assert result_one["test_images"] == result_two["test_images"] == 13  # every test image counted once

    a, b = load_file(one / "final.safetensors"), load_file(two / "final.safetensors")
    params = [k for k in a if "running_" not in k and "num_batches" not in k]
    # Same micro-batches, same statistics, gradients averaged either way ((g0 + g1) / 2 by all-reduce,
    # g0 / 2 + g1 / 2 by accumulation: equal in binary floating point), so the tolerance is zero.
    # BN running statistics are not compared: DDP keeps rank 0's, accumulation sees both halves.
    for key in params:
        assert torch.equal(a[key], b[key]), key
    # The learning rate is scaled by the global batch (8), not by one process's share (4).
    group = torch.load(two / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == pytest.approx(0.1 * 8 / 16)

    # Evaluation split over two processes (with rank 0's BN statistics broadcast) scores what one process
    # scores with the same weights: validation with the final weights, test with the best ones.
    data = trainer._build_data(resume_config(str(two)), bad_images_log=None)  # the run's own split
    for weights, dataset, expected in (
        ("final.safetensors", data.val, metrics_row(two / "metrics.csv", -1)),
        ("best.safetensors", data.test, {"val_loss": result_two["test_loss"], "val_top1": result_two["test_top1"]}),
    ):
        model = create_model(TINY, num_classes=3)
        model.load_state_dict(load_file(two / weights))
        one_process = evaluate(model, DataLoader(dataset, batch_size=5), Dist())
        assert float(expected["val_top1"]) == one_process["top1"], weights
        assert float(expected["val_loss"]) == pytest.approx(one_process["loss"], rel=1e-6), weights


def metrics_row(path, index):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))[index]


def test_nan_loss_stops_keeps_the_last_good_checkpoint_and_says_where(tmp_path, image_folder, capsys):
    out = tmp_path / "run"
    code, stderr = _train(capsys, *train_args(image_folder, out, "--epochs", "2", "--batch-size", "4", "--lr", "1e12",
                                             "--checkpoint-every", "1"))
    assert code == 2
    err = stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hcgnet: error: the loss became"), stderr[-2000:]
    assert "at step" in err[0] and "last.pt" in err[0]
    state = torch.load(out / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_refuses_an_output_folder_holding_another_run(tmp_path, image_folder, capsys):
    out = tmp_path / "run"
    _trains(capsys, *train_args(image_folder, out, "--epochs", "1", "--batch-size", "4"))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    weights = load_file(out / "final.safetensors")
    code, err = _train(capsys, *train_args(image_folder, out, "--epochs", "1", "--batch-size", "4"))
    assert code == 2 and "--resume" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # --resume of a finished run changes no weights; --overwrite starts again
    _trains(capsys, *train_args(image_folder, out, "--epochs", "1", "--batch-size", "4", "--resume"))
    assert all(torch.equal(v, load_file(out / "final.safetensors")[k]) for k, v in weights.items())
    _trains(capsys, *train_args(image_folder, out, "--epochs", "1", "--batch-size", "4", "--overwrite", "--seed", "1"))
    assert not torch.equal(weights["classifier.weight"], load_file(out / "final.safetensors")["classifier.weight"])


@pytest.mark.parametrize("change,name", [(["--batch-size", "6"], "batch_size"), (["--seed", "2"], "seed"),
                                         (["--lr", "0.2"], "lr")])
def test_resume_with_other_settings_is_refused(tmp_path, image_folder, change, name, capsys):
    out = tmp_path / "run"
    _trains(capsys, *train_args(image_folder, out, "--epochs", "1", "--batch-size", "4"))
    settings = dict(zip(["--epochs", "--batch-size"], ["1", "4"]))
    settings.update(dict(zip(change[::2], change[1::2])))
    code, err = _train(capsys, *train_args(image_folder, out, *sum(map(list, settings.items()), []), "--resume"))
    assert code == 2 and f"{name}=" in err and "Traceback" not in err


def test_unreadable_image_is_named_and_skip_bad_images_counts_it(tmp_path, image_folder, capsys):
    bad = image_folder / "class_1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    code, stderr = _train(capsys, *train_args(image_folder, tmp_path / "a", "--epochs", "1", "--batch-size", "4"))
    err = stderr.strip().splitlines()
    assert code == 2 and len(err) == 1 and "broken.png" in err[0] and "--skip-bad-images" in err[0]
    code, out, stderr = cli(capsys, *train_args(image_folder, tmp_path / "b", "--epochs", "1", "--batch-size", "4",
                                                "--skip-bad-images"))
    assert code == 0, stderr[-2000:]
    assert "skipped 1 unreadable image" in out


def test_bf16_channels_last_ema_run_stays_finite_and_exports_the_average(tmp_path, image_folder):
    out = tmp_path / "run"
    run_cli(train_args(image_folder, out, "--epochs", "2", "--batch-size", "4", "--amp", "bf16",
                       "--channels-last", "--ema", "--ema-decay", "0.5", "--mixup", "1.0"))
    result = json.loads((out / "results.json").read_text())
    assert 0.0 <= result["test_top1"] <= 1.0 and result["test_loss"] == result["test_loss"]  # not NaN
    assert result["provenance"]["torch"] == torch.__version__ and result["provenance"]["device"] == "cpu"
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert all(float(r.split(",")[3]) < 1e3 for r in rows)  # finite training loss every epoch
    state = torch.load(out / "last.pt", weights_only=True)
    exported = load_file(out / "final.safetensors")
    ema = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state["ema"].items()}
    assert torch.equal(exported["classifier.weight"], ema["classifier.weight"])
    assert not torch.equal(exported["classifier.weight"], state["model"]["classifier.weight"])


def test_compiled_training_matches_eager(tmp_path, image_folder):
    """--compile (torch.compile, Inductor on the CPU) trains the model eager mode trains: two fp32 steps end within
    1.5e-3 (of 1 + |value|) of each other.

    Not closer, because ReLU has a kink at 0: a pre-activation within fp32 rounding of 0 may fall on either side
    of it in two correct programs, and the gradients then part. On an AMD EPYC (2026-12-04) this test's first
    batch has one at -4.1e-6, 7.6e-7 of its map's largest value, which Inductor's program rounds to the other
    side: that flip alone moves the gradients by 3.6% of their scale (float64 with that ReLU flipped agrees with
    the compiled ones to 6e-5) and the parameters after two steps by 6.1e-4. On an Intel Xeon with AMX both runs
    ended within 9.5e-7. A learning rate 1% higher moves the parameters by 1.2e-3, 10% higher by 3.1e-3. That the
    compiled program computes eager's training step exactly is tested in float64, where no rounding reaches a
    kink: tests/test_fast_paths.py, test_inductor_training_steps_equal_eager_in_float64."""
    common = ["--epochs", "1", "--batch-size", "4", "--max-steps-per-epoch", "2", "--lr", "0.01"]
    run_cli(train_args(image_folder, tmp_path / "eager", *common))
    compiled = run_cli(train_args(image_folder, tmp_path / "compiled", *common, "--compile"))
    assert "torch.compile" in compiled.stdout
    a, b = load_file(tmp_path / "eager" / "final.safetensors"), load_file(tmp_path / "compiled" / "final.safetensors")
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(b[key], a[key], rtol=1.5e-3, atol=1.5e-3, msg=key)


def test_overwrite_with_bad_input_loses_nothing(tmp_path, image_folder, capsys):
    out = tmp_path / "run"
    _trains(capsys, *train_args(image_folder, out, "--epochs", "1", "--batch-size", "4"))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = ["train", "--model", TINY, "--data", f"imagefolder:{tmp_path / 'missing'}", "--output", str(out),
           "--overwrite"]
    code, err = _train(capsys, *bad)
    assert code == 2 and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    fresh = tmp_path / "never-created"
    assert _train(capsys, "train", "--model", "hcgnet_zz", "--data", f"imagefolder:{image_folder}", "--output",
                  fresh)[0] == 2
    assert not fresh.exists()


@pytest.mark.parametrize("name", ["model.pt", "a1.safetensors", "curves.png"])
def test_an_output_named_like_a_file_is_refused_and_not_created(tmp_path, image_folder, capsys, name):
    """``--output`` is the run's folder: a new one named like a checkpoint or picture was meant as a file."""
    from hcgnet.cli import main

    assert main(train_args(image_folder, tmp_path / name, "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is named like a file; give a folder name (such as" in err[0], err
    assert not (tmp_path / name).exists()
    (tmp_path / name).mkdir()    # a folder that exists is the user's choice, whatever its name
    assert main(train_args(image_folder, tmp_path / name, "--epochs", "1", "--batch-size", "4")) == 0
    assert (tmp_path / name / "final.safetensors").is_file()


@pytest.mark.parametrize("flag,value", [("--accum-steps", "0"), ("--workers", "-1"), ("--momentum", "-1"),
                                        ("--log-every", "0"), ("--label-smoothing", "1.5")])
def test_out_of_range_settings_are_one_line_errors(tmp_path, image_folder, flag, value, capsys):
    from hcgnet.cli import main

    assert main(train_args(image_folder, tmp_path / "run", flag, value)) == 2  # in-process: no 10 s start-up
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hcgnet: error:"), err
    assert not (tmp_path / "run").exists()


def interrupt_after(args, step, signum):
    """Run training and send it `signum` once it has logged global step `step`; its exit code and stderr."""
    proc = run_hooked(args, int(signum), step)
    return proc.returncode, proc.stderr


def test_sigterm_and_ctrl_c_save_a_checkpoint_and_resume_from_the_output_alone_is_bit_identical(tmp_path):
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=20)
    common = ["--epochs", "2", "--batch-size", "4", "--log-every", "1", "--mixup", "0.4", "--drop-rate", "0.2"]
    reference = tmp_path / "reference"
    run_cli(train_args(folder, reference, *common))

    out = tmp_path / "interrupted"
    code, err = interrupt_after(train_args(folder, out, *common), 3, signal.SIGTERM)
    lines = err.strip().splitlines()
    assert code == 143 and len(lines) == 1, err[-2000:]
    assert re.fullmatch(rf"hcgnet: interrupted at epoch 1 step (\d+); resume with: hcgnet train --output {out} "
                        "--resume", lines[0]), lines
    epoch, step = checkpoint_position(out / "last.pt")
    assert (epoch, step) == (0, int(re.search(r"step (\d+)", lines[0]).group(1))) == (0, 3)
    (out / ".last.pt.tmp.left-by-kill-9.tmp").write_bytes(b"half")
    code, err = interrupt_after(["train", "--output", str(out), "--resume"], 12, signal.SIGINT)
    assert code == 130 and "resume with" in err, err[-2000:]
    assert not (out / ".last.pt.tmp.left-by-kill-9.tmp").exists()
    resumed = run_cli(["train", "--output", str(out), "--resume"])
    assert "resumed" in resumed.stdout
    for name in ("final.safetensors", "best.safetensors"):
        a, b = load_file(reference / name), load_file(out / name)
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs after the interrupts"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_process_group_reaches_the_data_workers_too_and_still_saves(
        tmp_path, image_folder, signum):
    """A terminal's Ctrl-C, and a scheduler's (or `timeout`'s) SIGTERM, signal the whole process group,
    DataLoader workers included."""
    out = tmp_path / "run"
    args = train_args(image_folder, out, "--epochs", "3", "--batch-size", "4", "--log-every", "1", "--workers", "2")
    proc = run_hooked(args, -int(signum), 2)  # the run signals its own process group after step 2
    err = proc.stderr
    assert proc.returncode == 128 + signum and err.strip().startswith("hcgnet: interrupted at epoch"), err[-2000:]
    assert len(err.strip().splitlines()) == 1, err[-2000:]
    assert checkpoint_position(out / "last.pt") == (0, 2)


RANK0_FIRST = '''
import json, sys
from pathlib import Path
from hcgnet import distributed

out, fail = Path(sys.argv[1]), sys.argv[2] == "fail"
d = distributed.setup("cpu")


def work():
    seen = (out / "rank0-done").exists()  # on rank 1: has rank 0 finished before it began?
    if d.rank == 0:
        if fail:
            raise RuntimeError("rank 0 broke")
        (out / "rank0-done").write_text("")
    return seen


try:
    (out / f"{d.rank}.json").write_text(json.dumps(distributed.rank0_first(d, work, "loading the data")))
except Exception as e:
    (out / f"{d.rank}.err").write_text(f"{type(e).__name__}: {e}")
distributed.cleanup()
'''


@pytest.mark.parametrize("fail", [False, True])
def test_rank0_first_runs_the_other_ranks_after_rank_0_and_stops_them_when_it_fails(tmp_path, fail):
    script = tmp_path / "rank0_first.py"
    script.write_text(RANK0_FIRST)
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", str(script), str(tmp_path),
                           "fail" if fail else "ok"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    if fail:
        assert (tmp_path / "0.err").read_text() == "RuntimeError: rank 0 broke"
        assert (tmp_path / "1.err").read_text() == ("HCGNetError: loading the data failed on rank 0 "
                                                    "(its error says why)")
    else:
        assert json.loads((tmp_path / "0.json").read_text()) is False
        assert json.loads((tmp_path / "1.json").read_text()) is True  # rank 1 began after rank 0 had finished
