"""The benchmark scripts' results files: an earlier one is never replaced without --force, and the refusal comes
before any work, as one line (hcgnet.files.script_output_file); a mistake in what a script is asked is one line too
(hcgnet.errors.script_errors), and every option says what it does."""
import argparse
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script, silent_options

from hcgnet.files import script_output_file

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"

# script: the arguments it requires besides --json (a clone that is not there: the file is checked first)
SCRIPTS = {
    "attention_pool": [], "batch_norm": [], "compiled_batch_norm": [], "compiled_dilated_backward": [], "compiled_group_conv": [], "dense_compiled": ["--published", "no-clone"],
    "detection_step": [], "dilated_depthwise": [], "dispatch_count": ["--published", "no-clone"], "gate_passes": [], "group_conv": [],
    "histogram_search": [], "image_scan": [],
    "int8": [], "loop_tails": [], "memory_efficient": [], "onnx_forms": [], "openvino_shapes": [], "predict_threads": [], "profile_step": [], "shared_statistics": [],
    "targets": ["--published", "no-clone"], "train_throughput": [],
}


def _run_script(name, argv, tmp_path, monkeypatch, capsys):
    """``python benchmarks/NAME.py ARGV`` in this process, from ``tmp_path``: (exit code, stdout, stderr). A fresh
    interpreter would spend seconds importing torch for a refusal that takes milliseconds; one script is still
    run that way below (test_a_refusal_in_a_fresh_interpreter_prints_nothing_else)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts that share loop_tails' flags import it
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()

    def no_work(*args, **kwargs):  # a refusal comes before any work: the first forward pass fails the test at once
        raise AssertionError(f"{name} ran a model before refusing")

    monkeypatch.setattr(torch.nn.Module, "__call__", no_work)
    capsys.readouterr()
    try:
        runpy.run_path(str(BENCHMARKS / f"{name}.py"), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        torch.set_num_threads(threads)  # a script may set its --threads before it refuses
        monkeypatch.undo()
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.timeout(120)  # a script that did not refuse would run its benchmark here (the guard sees forwards only)
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_an_earlier_result_is_kept_without_force(name, tmp_path, monkeypatch, capsys):
    out = tmp_path / "x.json"
    out.write_text("earlier figures")
    extra = [str(tmp_path / a) if a == "no-clone" else a for a in SCRIPTS[name]]
    code, stdout, stderr = _run_script(name, ["--json", str(out), *extra], tmp_path, monkeypatch, capsys)
    assert code == 2 and stdout == "", stdout[-2000:] + stderr[-2000:]
    assert stderr == f"{name}: error: {out} already exists; pass --force to replace it\n"
    assert out.read_text() == "earlier figures"


@pytest.mark.parametrize("name", ["int8", "train_throughput"])
def test_a_refusal_in_a_fresh_interpreter_prints_nothing_else(name, tmp_path):
    """As a user runs it, in a fresh interpreter: the one line and nothing else (no notice of a library on import)."""
    out = tmp_path / "x.json"
    out.write_text("earlier figures")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--json", str(out)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr == f"{name}: error: {out} already exists; pass --force to replace it\n"


def test_every_script_with_a_results_file_is_checked():
    # a script declares --json itself or takes loop_tails.step_arguments, which does
    writers = {p.stem for p in BENCHMARKS.glob("*.py")
               if '"--json"' in p.read_text() or "step_arguments(" in p.read_text()}
    # gpu_suite checks its file with its other inputs (tests/test_gpu_suite.py)
    assert writers - {"gpu_suite"} == set(SCRIPTS)


def test_the_helper_lets_a_new_file_through(tmp_path):
    assert script_output_file(None, False, "bench") is None
    assert script_output_file(tmp_path / "new.json", False, "bench") == tmp_path / "new.json"
    assert not (tmp_path / "new.json").exists()


def test_targets_merges_other_workloads_and_replaces_one_only_with_force(tmp_path, monkeypatch, capsys):
    targets = load_script(BENCHMARKS / "targets.py")
    monkeypatch.setattr(targets, "against_published", lambda *a, **k: {"rows": [], "machine": "this one"})
    monkeypatch.setattr(targets, "check_clone", lambda path: None)  # no clone needed: nothing is timed
    out = tmp_path / "targets.json"
    out.write_text(json.dumps({"workloads": {"a1-train": {"rows": "earlier"}}, "machine": "earlier"}))

    def run(*argv):
        monkeypatch.setattr(sys, "argv", ["targets.py", "--published", str(tmp_path), "--json", str(out), *argv])
        targets.main()

    with pytest.raises(SystemExit) as e:
        run("--only", "a1-infer,a1-train")
    assert e.value.code == 2
    assert capsys.readouterr().err == f"targets: error: {out} already exists; pass --force to replace it\n"
    run("--only", "a1-infer")  # another workload: merged in, nothing replaced
    assert json.loads(out.read_text())["workloads"]["a1-train"] == {"rows": "earlier"}
    assert set(json.loads(out.read_text())["workloads"]) == {"a1-train", "a1-infer"}
    run("--only", "a1-train", "--force")
    assert json.loads(out.read_text())["workloads"]["a1-train"]["rows"] == []


@pytest.mark.parametrize("argv", [["--published", "no-clone"], ["--published", "no-clone", "--only", "a9-train"]])
def test_targets_refuses_a_missing_clone_or_workload_in_one_line(argv, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    argv = [str(tmp_path / a) if a == "no-clone" else a for a in argv]
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "targets.py"), *argv], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("targets: error: "), proc.stderr
    assert ("a9-train" in lines[0]) == ("--only" in argv) and ("git clone" in lines[0]) != ("--only" in argv)


# script: arguments that name a network that does not exist (a clone that is not there: the model is checked first)
UNKNOWN_MODEL = {
    "compiled_batch_norm": ["--model", "no_such_net"], "compiled_dilated_backward": ["--model", "no_such_net"],
    "compiled_group_conv": ["--model", "no_such_net"], "dense_compiled": ["--model", "no_such_net", "--published",
                                                                          "no-clone"],
    "dispatch_count": ["--models", "no_such_net", "--published", "no-clone"], "int8": ["--models", "no_such_net"],
    "histogram_search": ["--models", "no_such_net"],
    "loop_tails": ["--model", "no_such_net"], "memory_efficient": ["--model", "no_such_net"],
    "onnx_forms": ["--model", "no_such_net"], "openvino_shapes": ["--model", "no_such_net"],
    "predict_threads": ["--model", "no_such_net"],
    "profile_step": ["--model", "no_such_net"], "train_throughput": ["--model", "no_such_net"],
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(UNKNOWN_MODEL))
def test_an_unknown_network_is_refused_in_one_line(name, tmp_path, monkeypatch, capsys):
    argv = [str(tmp_path / a) if a == "no-clone" else a for a in UNKNOWN_MODEL[name]]
    code, stdout, stderr = _run_script(name, argv, tmp_path, monkeypatch, capsys)
    assert code == 2, stdout[-2000:] + stderr[-2000:]
    assert stderr.startswith(f"{name}: error: ") and stderr.count("\n") == 1, stderr[-2000:]
    assert "no_such_net" in stderr


def test_every_script_that_takes_a_network_is_checked():
    takes = {p.stem for p in BENCHMARKS.glob("*.py") if '"--model"' in p.read_text() or '"--models"' in p.read_text()
             or "step_arguments(" in p.read_text()}
    assert takes - {"gpu_suite"} == set(UNKNOWN_MODEL)


class _Parsed(Exception):
    """Raised instead of parsing: carries the script's parser out of its main()."""


def test_every_option_of_every_script_says_what_it_does(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts that share loop_tails' flags import it

    def stop(parser, *args, **kwargs):
        raise _Parsed(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    silent, scripts = [], sorted(BENCHMARKS.glob("*.py"))
    for path in scripts:
        with pytest.raises(_Parsed) as parsed:
            load_script(path, f"benchmark_{path.stem}").main()
        silent += silent_options(parsed.value.args[0], path.stem)
    assert len(scripts) > 20 and not silent, silent
