"""The ``hcgnet`` command line: ``info`` figures, ``convert``, and one-line errors with exit code 2."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hcgnet
from conftest import make_image_folder, silent_options
from hcgnet.cli import main
from hcgnet.models.checkpoints import read_state_dict

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE = FIXTURES / "cifar_A1.official.pth.tar"
FIXTURE_IO = FIXTURES / "cifar_A1.io.pt"



pytestmark = pytest.mark.usefixtures("single_thread")

PUBLISHED_PARAMS = {
    "hcgnet_a1": "1,065,301",
    "hcgnet_a2": "3,069,149",
    "hcgnet_a3": "11,239,897",
    "hcgnet_b": "12,845,501",
    "hcgnet_c": "42,153,208",
}


def run(capsys, *argv):
    """``main(argv)`` in-process -> (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err):
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hcgnet: error: ")
    assert "Traceback" not in err


# info -----------------------------------------------------------------------------------------


def test_info_table_lists_every_variant_with_published_params(capsys):
    code, out, err = run(capsys, "info")
    assert code == 0
    assert err == ""
    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] in PUBLISHED_PARAMS:
            assert cells[0] not in rows, f"{cells[0]} listed twice"
            rows[cells[0]] = cells
    assert set(rows) == set(PUBLISHED_PARAMS)
    header = re.split(r"\s{2,}", out.splitlines()[0].strip())
    params_col = header.index("params")
    published_col = header.index("published params")
    for name, cells in rows.items():
        assert cells[params_col] == PUBLISHED_PARAMS[name], name
        assert cells[published_col] == PUBLISHED_PARAMS[name], name
    assert "multiply-adds" in out
    # one row per variant in the table order of hcgnet.list_models()
    order = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in PUBLISHED_PARAMS]
    assert order == hcgnet.list_models()


def test_info_json_a1_with_100_classes(capsys):
    code, out, err = run(capsys, "info", "--json", "hcgnet_a1", "--num-classes", "100")
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 1
    row = rows[0]
    assert row["model"] == "hcgnet_a1"
    assert row["classes"] == 100
    assert row["params"] == 1102651
    assert row["published_params"] == 1102651
    assert abs(row["gmacs"] - 0.154) / 0.154 < 0.01
    assert row["input"] == "3x32x32"


def test_info_json_all_variants_params_and_macs(capsys):
    code, out, _ = run(capsys, "info", "--json")
    assert code == 0
    rows = {r["model"]: r for r in json.loads(out)}
    assert {k: f"{r['params']:,}" for k, r in rows.items()} == PUBLISHED_PARAMS
    measured_gmacs = {"hcgnet_a1": 0.154, "hcgnet_a2": 0.489, "hcgnet_a3": 1.956, "hcgnet_b": 2.003, "hcgnet_c": 6.972}
    for name, gmacs in measured_gmacs.items():
        assert abs(rows[name]["gmacs"] - gmacs) / gmacs < 0.01, name
    assert rows["hcgnet_b"]["input"] == "3x224x224"
    assert rows["hcgnet_c"]["classes"] == 1000


@pytest.mark.parametrize("spec", ["HCGNet-(8,8,8)-(k=12,24,36)", "hcgnet - (8, 8, 8) - (k = 12, 24, 36)"])
def test_info_spec_of_a_published_network_is_that_network(capsys, spec):
    code, out, _ = run(capsys, "info", "--json", spec)
    assert code == 0
    (row,) = json.loads(out)
    assert row["model"] == "hcgnet_a1"
    assert row["spec"] == "HCGNet-(8,8,8)-(k=12,24,36)"
    assert row["params"] == 1065301


def test_info_spec_of_a_new_network_counts_its_params(capsys):
    spec = "HCGNet-(4,4)-(k=12,24)"
    code, out, _ = run(capsys, "info", "--json", spec)
    assert code == 0
    (row,) = json.loads(out)
    assert row["model"] == "-"
    assert row["spec"] == spec
    assert row["classes"] == 10
    model = hcgnet.create_model(spec)
    assert row["params"] == sum(p.numel() for p in model.parameters())
    assert row["published_params"] is None


def test_info_table_accepts_a_spec_beside_a_name(capsys):
    code, out, _ = run(capsys, "info", "HCGNet-(4,4)-(k=12,24)", "hcgnet_b")
    assert code == 0
    lines = out.splitlines()
    assert any(line.startswith("-") and "HCGNet-(4,4)-(k=12,24)" in line for line in lines)
    assert any(line.startswith("hcgnet_b") and "12,845,501" in line for line in lines)
    assert not any(line.startswith("hcgnet_a1") for line in lines)


def test_info_negative_num_classes_is_an_error(capsys):
    assert_one_line_error(*run(capsys, "info", "--num-classes", "-5", "hcgnet_a1"))


def test_info_zero_num_classes_is_not_silently_the_default(capsys):
    code, out, err = run(capsys, "info", "--json", "--num-classes", "0", "hcgnet_a1")
    if code == 2:  # refusing it is acceptable too
        assert_one_line_error(code, out, err)
        return
    (row,) = json.loads(out)
    assert row["classes"] == 0
    assert row["params"] == sum(p.numel() for p in hcgnet.create_model("hcgnet_a1", num_classes=0).parameters())


def test_info_of_checkpoints_counts_the_networks_they_hold(capsys, trained, tmp_path):
    """A file among the names is a checkpoint: its network (switches included), at the input size it was trained
    for, with its classes and data; the fixture's run trained HCGNet-(1,1,1)-(k=8,8,8) on 4 classes of 8x8
    images (conftest)."""
    path, folder = trained
    spec = "HCGNet-(1,1,1)-(k=8,8,8)"
    switched = hcgnet.create_model(spec, num_classes=3, forget_gate=False)
    other = tmp_path / "no-forget-gate.safetensors"
    hcgnet.save_safetensors(switched, other, {"model_name": spec, "switches": json.dumps(switched.switches)})
    code, out, err = run(capsys, "info", str(path), str(other), "hcgnet_a1", "--json")
    assert code == 0, err
    held, no_gate, a1 = json.loads(out)
    assert held["model"] == str(path) and held["spec"] == spec and held["input"] == "3x8x8" and held["classes"] == 4
    assert held["params"] == sum(p.numel() for p in hcgnet.create_model(spec, num_classes=4).parameters())
    assert held["data"] == f"imagefolder:{folder}" and held["class_names"] == [f"class_{i}" for i in range(4)]
    assert held["published_params"] is None and held["gmacs"] > 0
    assert no_gate["spec"] == f"{spec} [forget_gate=False]" and no_gate["input"] == "3x32x32"
    assert no_gate["params"] == sum(p.numel() for p in switched.parameters())
    assert no_gate["params"] != sum(p.numel() for p in hcgnet.create_model(spec, num_classes=3).parameters())
    assert a1["model"] == "hcgnet_a1" and a1["params"] == 1065301
    code, out, err = run(capsys, "info", str(path))
    assert code == 0 and out.splitlines()[1].startswith(f"{path}  {spec}")


def test_info_of_a_gray_checkpoint_counts_its_one_channel_network(capsys, tmp_path):
    """A Fashion-MNIST run's network takes 1-channel 28x28 images (its metadata as ``hcgnet train`` writes it):
    ``info`` counts that network, not the RGB one of the same spec. The two differ only in the stem's 3x3
    convolution, whose multiply-adds per input channel are out_channels x 9 x 28 x 28; the paper's and the
    published figures are for RGB networks, so none is shown."""
    spec = "HCGNet-(1,1,1)-(k=8,8,8)"
    gray = hcgnet.create_model(spec, num_classes=10, in_chans=1)
    config = {"name": "fashion-mnist", "input_size": [1, 28, 28], "mean": [0.286], "std": [0.353], "resize": None,
              "class_names": [str(i) for i in range(10)]}
    path = tmp_path / "gray.safetensors"
    hcgnet.save_safetensors(gray, path, {"model_name": spec, "in_chans": "1", "data": "fashion-mnist",
                                         "data_config": json.dumps(config)})
    code, out, err = run(capsys, "info", str(path), spec, "--size", "28", "--json")
    assert code == 0, err
    held, rgb = json.loads(out)
    assert held["input"] == "1x28x28" and rgb["input"] == "3x28x28"
    assert held["params"] == sum(p.numel() for p in gray.parameters())
    stem_out = gray.stem.conv0.out_channels
    assert round((rgb["gmacs"] - held["gmacs"]) * 1e9) == 2 * stem_out * 9 * 28 * 28
    assert held["paper_params"] is None and held["published_params"] is None and held["paper_gmacs"] is None
    code, out, err = run(capsys, "info", "hcgnet_a1", "--model-kwargs", '{"in_chans": 1}', "--json")
    assert code == 0, err
    (a1_gray,) = json.loads(out)
    assert a1_gray["input"] == "1x32x32" and a1_gray["published_params"] is None and a1_gray["paper_params"] is None


@pytest.mark.parametrize("name", ["HCGNet-(1,1,1)-(k=8,8,8)", "hcgnet_a1"])
def test_info_of_a_checkpoint_counts_the_stem_its_weights_were_built_with(capsys, tmp_path, name):
    """save_safetensors records a spec's name, not its stem: info counted the name's own (CIFAR) stem beside the
    parameters of the ImageNet-stem network the file holds, and said to pass --stem imagenet."""
    model = hcgnet.create_model(name, num_classes=3, stem="imagenet")
    path = tmp_path / "imagenet-stem.safetensors"
    hcgnet.save_safetensors(model, path)
    code, out, err = run(capsys, "info", str(path), "--json")
    assert code == 0 and err == "", err
    code, out2, err = run(capsys, "info", name, "--stem", "imagenet", "--num-classes", "3", "--json")
    (held,), (asked,) = json.loads(out), json.loads(out2)
    assert held["params"] == sum(p.numel() for p in model.parameters()) == asked["params"]
    assert held["stem"] == "imagenet" and held["input"] == "3x224x224" and held["spec"].endswith("[imagenet stem]")
    assert held["gmacs"] == asked["gmacs"] and held["published_params"] is None and held["paper_params"] is None


def test_info_of_a_run_folder_names_the_checkpoint_in_it(capsys, tmp_path):
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    hcgnet.save_safetensors(hcgnet.create_model("HCGNet-(1,1,1)-(k=8,8,8)"), run_folder / "best.safetensors",
                            {"model_name": "HCGNet-(1,1,1)-(k=8,8,8)"})
    code, out, err = run(capsys, "info", str(run_folder))
    assert_one_line_error(code, out, err)
    assert f"{run_folder} is a folder" in err and str(run_folder / "best.safetensors") in err


def test_info_of_a_timm_baselines_checkpoint(capsys, tmp_path):
    """A run of a timm network (``hcgnet train --model resnet18``): counted at timm's input size, 224. ResNet-18
    has 11,689,512 parameters and 1.81 GFLOPs (multiply-adds) at 224 x 224 with 1000 classes (torchvision's
    ResNet18_Weights table); with 3 classes its classifier has 997 x 513 parameters fewer."""
    path = tmp_path / "r18.safetensors"
    hcgnet.save_safetensors(hcgnet.create_model("resnet18", num_classes=3), path, {"model_name": "resnet18"})
    code, out, err = run(capsys, "info", str(path), "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert list(row)[0] == "model" and row["model"] == str(path) and row["spec"] == "resnet18"
    assert row["input"] == "3x224x224" and row["classes"] == 3 and row["params"] == 11_689_512 - 997 * 513
    assert row["gmacs"] == pytest.approx(1.81, abs=0.01) and row["published_params"] is None


@pytest.mark.parametrize("argv, needle", [
    (["info", "missing/model.safetensors"], "no checkpoint file missing/model.safetensors"),
    (["info", str(FIXTURE)], f"does not say which model it holds; name it in a copy: hcgnet convert {FIXTURE} "
                             "NAMED.safetensors --model NAME"),
    (["info", str(FIXTURE_IO), "--num-classes", "5"], "the checkpoint"),
    (["info", str(Path(__file__))], "is not a PyTorch checkpoint"),
])
def test_info_of_a_file_it_cannot_count_is_one_line(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert_one_line_error(code, out, err)
    assert needle in err


# one-line errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, needle", [
    (["info", "hcgnet_z9"], "unknown model"),
    (["info", "resnet50"], "unknown model"),
    (["info", "hcgnet_a1", "nosuchnet"], "nosuchnet"),
    (["info", "HCGNet-(8,8,8)"], "malformed spec"),
    (["info", "HCGNet-(8,x,8)-(k=12,24,36)"], "malformed spec"),
    (["info", "HCGNet-(8,8,8)-(k=12,22,36)"], "22"),
    (["info", "HCGNet-(8,8,8)-(k=12,24)"], "growth rate"),
    (["info", "HCGNet-(0,8,8)-(k=12,24,36)"], "SMG"),
])
def test_info_errors_are_one_line_exit_2(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert_one_line_error(code, out, err)
    assert needle in err


def test_unknown_model_suggests_the_close_name(capsys):
    code, out, err = run(capsys, "info", "hcgnet_a4")
    assert_one_line_error(code, out, err)
    assert "did you mean hcgnet_a" in err


def test_growth_rate_not_divisible_by_4_says_why(capsys):
    code, out, err = run(capsys, "info", "HCGNet-(8,8,8)-(k=12,22,36)")
    assert_one_line_error(code, out, err)
    assert "growth rate 22" in err and "4" in err


def test_subprocess_error_exit_code_and_single_stderr_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hcgnet", "info", "HCGNet-(8,8,8)-(k=12,22,36)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hcgnet: error: ")
    assert "growth rate 22" in lines[0]


@pytest.mark.parametrize("argv, says", [
    (["--version"], "hcgnet " + hcgnet.__version__), (["--help"], "usage: hcgnet"), (["predict"], "hcgnet: error: "),
    (["train", "--epochz", "3"], "hcgnet: error: "), (["recipes"], "cifar10-a1-published"),
    (["detect", "train", "--help"], "--bn-affine"), (["detect", "eval", "--bogus"], "hcgnet detect eval --help"),
    (["attack", "--help"], "fgsm-any"), (["train", "--help"], "--model-kwargs JSON"),
    (["download", "--help"], "fashion-mnist"), (["download", "mnist"], "invalid choice: 'mnist'"),
])
def test_help_version_recipes_and_usage_errors_import_neither_torch_nor_timm(tmp_path, argv, says):
    """They answer at once: parsing (and listing recipes) needs no model library. (Checked by what is imported,
    not by timing.)"""
    probe = ("import runpy, sys\n"
             f"sys.argv = ['hcgnet', *{argv!r}]\n"
             "try:\n    runpy.run_module('hcgnet', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('imported:', *sorted({'torch', 'timm', 'torchvision', 'numpy'} & set(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert says in result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "imported:", result.stdout


def test_import_hcgnet_is_light_and_timm_still_finds_the_variants(tmp_path):
    probe = ("import sys\nimport hcgnet\nlight = not {'torch', 'timm'} & set(sys.modules)\n"
             "import timm\nprint(light, timm.create_model('hcgnet_a1').num_classes, hcgnet.create_model('hcgnet_a2').num_classes)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.stdout.split() == ["True", "10", "10"], result.stderr


def test_dir_lists_the_names_loaded_on_first_use_without_loading_them(tmp_path):
    """dir() and tab completion (IPython reads dir()) show create_model & co. before their first use."""
    probe = ("import sys\nimport hcgnet, hcgnet.training, hcgnet.analysis\n"
             "print('create_model' in dir(hcgnet), 'list_models' in dir(hcgnet), 'fit' in dir(hcgnet.training), "
             "'robustness' in dir(hcgnet.analysis), 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.stdout.split() == ["True", "True", "True", "True", "False"], result.stderr


@pytest.mark.parametrize("written", ["--output=~/ev", "~/conv.safetensors"])
def test_a_tilde_in_an_option_that_the_shell_leaves_is_the_home_folder(tmp_path, monkeypatch, capsys, written):
    """bash expands ~ in `--output ~/x` but not in `--output=~/x`: hcgnet does, instead of making a folder named ~."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    if written.startswith("--output"):
        folder = make_image_folder(tmp_path / "ten", classes=10, per_class=1, size=(32, 32))
        assert main(["eval", "--checkpoint", str(FIXTURE), "--model", "hcgnet_a1", "--data", f"imagefolder:{folder}",
                     "--workers", "0", written]) == 0
        assert (tmp_path / "home" / "ev" / "metrics.json").is_file()
    else:
        (tmp_path / "home").mkdir()
        assert main(["convert", str(FIXTURE), written, "--model", "hcgnet_a1"]) == 0
        assert (tmp_path / "home" / "conv.safetensors").is_file()
    assert not (tmp_path / "~").exists()


def test_a_run_refused_after_its_folder_was_made_leaves_no_parent_folders_either(tmp_path, capsys):
    out = tmp_path / "p" / "q" / "run"
    code = main(["train", "--model", "HCGNet-(1,1,1)-(k=4,4,4)", "--data", f"imagefolder:{tmp_path / 'nowhere'}",
                 "--output", str(out), "--device", "cpu"])
    assert code == 2 and "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    (tmp_path / "kept").mkdir()   # a folder that was there stays, whatever the run made inside it
    code = main(["train", "--model", "HCGNet-(1,1,1)-(k=4,4,4)", "--data", f"imagefolder:{tmp_path / 'nowhere'}",
                 "--output", str(tmp_path / "kept" / "a" / "run"), "--device", "cpu"])
    assert code == 2 and [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())


def test_argparse_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert", "only-one-argument"])
    assert e.value.code == 2
    assert "required: output" in capsys.readouterr().err


# convert --------------------------------------------------------------------------------------


def test_convert_fixture_gives_published_logits(tmp_path, capsys):
    out_path = tmp_path / "a1.safetensors"
    code, out, err = run(capsys, "convert", str(FIXTURE), str(out_path), "--model", "hcgnet_a1")
    assert code == 0
    assert err == ""
    assert "hcgnet_a1" in out
    assert "10 classes" in out
    assert "1,065,301" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a1.safetensors"]  # no temp files left

    model = hcgnet.create_model("hcgnet_a1", num_classes=10)
    metadata = hcgnet.load_checkpoint(model, out_path)
    assert metadata["model_name"] == "hcgnet_a1"
    assert metadata["num_classes"] == "10"
    io = torch.load(FIXTURE_IO, map_location="cpu", weights_only=True)
    model.eval()
    with torch.no_grad():
        y = model(io["x"])
    assert (y - io["y"]).abs().max().item() < 1e-4


def test_convert_with_a_spec_and_force(tmp_path, capsys):
    out_path = tmp_path / "a1.safetensors"
    out_path.write_bytes(b"old contents")
    code, out, _ = run(capsys, "convert", str(FIXTURE), str(out_path), "--model", "HCGNet-(8,8,8)-(k=12,24,36)",
                       "--force")
    assert code == 0
    assert "hcgnet_a1" in out
    state_dict, metadata = read_state_dict(out_path)
    assert metadata["model_name"] == "hcgnet_a1"
    reference, _ = read_state_dict(FIXTURE)
    assert set(state_dict) == set(reference)
    for key, value in reference.items():
        assert torch.equal(state_dict[key], value.reshape(state_dict[key].shape)), key


def test_convert_a1_as_a2_is_another_model(tmp_path, capsys):
    out_path = tmp_path / "a2.safetensors"
    code, out, err = run(capsys, "convert", str(FIXTURE), str(out_path), "--model", "hcgnet_a2")
    assert_one_line_error(code, out, err)
    assert "another model" in err
    assert not out_path.exists()
    assert list(tmp_path.iterdir()) == []


def test_convert_refuses_to_overwrite_without_force(tmp_path, capsys):
    out_path = tmp_path / "existing.safetensors"
    out_path.write_bytes(b"precious")
    code, out, err = run(capsys, "convert", str(FIXTURE), str(out_path), "--model", "hcgnet_a1")
    assert_one_line_error(code, out, err)
    assert "--force" in err
    assert out_path.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.safetensors"]


@pytest.mark.parametrize("name", ["a1.pth", "a1.safetensors.bak", "a1"])
def test_convert_output_must_end_in_safetensors(tmp_path, capsys, name):
    out_path = tmp_path / name
    code, out, err = run(capsys, "convert", str(FIXTURE), str(out_path), "--model", "hcgnet_a1")
    assert_one_line_error(code, out, err)
    assert ".safetensors" in err
    assert not out_path.exists()


def test_convert_into_missing_folder_is_an_error(tmp_path, capsys):
    out_path = tmp_path / "no" / "such" / "a1.safetensors"
    code, out, err = run(capsys, "convert", str(FIXTURE), str(out_path), "--model", "hcgnet_a1")
    assert_one_line_error(code, out, err)
    assert not (tmp_path / "no").exists()


def _truncated_fixture(path: Path) -> None:
    data = FIXTURE.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.write_text('{"model": "hcgnet_a1"}\n'), None),
    (lambda p: p.write_bytes(b""), None),
    (_truncated_fixture, "truncated"),
    (lambda p: torch.save([torch.zeros(3)], p), "not a model checkpoint"),
    (lambda p: p.write_text("these are not weights\n"), None),
], ids=["json-text", "empty", "truncated", "list-of-tensors", "plain-text"])
def test_convert_a_file_that_is_not_a_checkpoint(tmp_path, capsys, make, needle):
    src = tmp_path / "input.pth"
    make(src)
    out_path = tmp_path / "out.safetensors"
    code, out, err = run(capsys, "convert", str(src), str(out_path), "--model", "hcgnet_a1")
    assert_one_line_error(code, out, err)
    assert str(src) in err
    if needle:
        assert needle in err
    assert not out_path.exists()


def test_convert_missing_checkpoint_is_an_error(tmp_path, capsys):
    missing = tmp_path / "HCGNet_B_best.pth.tar"
    code, out, err = run(capsys, "convert", str(missing), str(tmp_path / "b.safetensors"), "--model", "hcgnet_b")
    assert_one_line_error(code, out, err)
    assert "not found" in err and str(missing) in err


def test_convert_unknown_model_is_an_error(tmp_path, capsys):
    code, out, err = run(capsys, "convert", str(FIXTURE), str(tmp_path / "x.safetensors"), "--model", "hcgnet_x")
    assert_one_line_error(code, out, err)
    assert "unknown model" in err


# info --size ----------------------------------------------------------------------------------


def test_info_size_counts_at_that_size_and_warns_about_the_cifar_stem(capsys):
    spec = "HCGNet-(2,2,2)-(k=8,8,8)"
    code, out, err = run(capsys, "info", "--json", spec)
    assert code == 0 and err == ""
    (small,) = json.loads(out)
    code, out, err = run(capsys, "info", "--json", spec, "--size", "224")
    assert code == 0
    (large,) = json.loads(out)
    assert (small["input"], large["input"]) == ("3x32x32", "3x224x224")
    assert large["params"] == small["params"]
    # convolutions scale with the pixels, (224 / 32)^2 = 49; the gates' fully connected layers do not
    assert 45 < large["gmacs"] / small["gmacs"] <= 49
    assert "CIFAR stem" in err and "--stem imagenet" in err and len(err.splitlines()) == 1


def test_info_takes_the_stem_its_note_advises_and_another_stem_is_another_network(capsys):
    """The CIFAR-stem note says "pass --stem imagenet": info takes it (as train does), says nothing more, and the
    row is that network's, without the variant's name or its published and paper figures."""
    spec = "HCGNet-(2,2,2)-(k=8,8,8)"
    code, out, err = run(capsys, "info", "--json", spec, "--size", "224", "--stem", "imagenet")
    assert code == 0 and err == ""
    (row,) = json.loads(out)
    assert row["stem"] == "imagenet" and row["spec"] == f"{spec} [imagenet stem]"
    built = hcgnet.create_model(spec, stem="imagenet")
    assert row["params"] == sum(p.numel() for p in built.parameters()) and row["classes"] == 1000
    for argv in (["--stem", "imagenet"], ["--model-kwargs", '{"stem": "imagenet"}']):
        code, out, err = run(capsys, "info", "--json", "hcgnet_a1", "--size", "224", *argv)
        assert code == 0 and err == ""
        (row,) = json.loads(out)
        assert row["model"] == "-" and row["stem"] == "imagenet"
        assert row["published_params"] is None and row["paper_params"] is None and row["paper_gmacs"] is None
    # a variant at its own stem is the variant
    code, out, _ = run(capsys, "info", "--json", "hcgnet_b", "--stem", "imagenet")
    assert json.loads(out)[0]["model"] == "hcgnet_b" and json.loads(out)[0]["published_params"] == 12_845_501


def test_info_size_of_an_imagenet_stem_network_says_nothing(capsys):
    code, out, err = run(capsys, "info", "hcgnet_b", "--size", "160")
    assert code == 0 and err == ""
    assert "160x160" in out


@pytest.mark.parametrize("size", ["0", "-3", "2"])
def test_info_size_too_small_is_one_line(capsys, size):
    assert_one_line_error(*run(capsys, "info", "hcgnet_a1", "--size", size))


# bad values and unwritable outputs: one line, exit code 2, nothing written --------------------

TINY = "HCGNet-(1,1,1)-(k=4,4,4)"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    path = base / "tiny.safetensors"
    hcgnet.save_safetensors(hcgnet.create_model(TINY, num_classes=3), path, {"model_name": TINY})
    folder = base / "images" / "a"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (20, 20), (200, 10, 10)).save(folder / "x.png")
    return path, folder / "x.png", base / "images"


@pytest.fixture
def read_only(tmp_path):
    """A folder no file can be created in: permission bits for a normal user; root ignores those, so for root
    /sys (sysfs refuses new files even to root)."""
    from hcgnet.files import can_write_in

    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder if not can_write_in(folder) else Path("/sys")
    folder.chmod(0o755)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _predict(tiny, *extra):
    return ["predict", "--checkpoint", str(tiny[0]), str(tiny[1]), *extra]


def _eval(tiny, *extra):
    return ["eval", "--checkpoint", str(tiny[0]), "--data", f"imagefolder:{tiny[2]}", "--workers", "0", *extra]


BENCH = ["bench", "--model", TINY, "--modes", "infer", "--batch-size", "2", "--size", "16", "--steps", "1",
         "--warmup", "0"]


@pytest.mark.parametrize("argv, needle", [
    (lambda t: _predict(t, "--topk", "-1"), "--topk must be 1 or more"),
    (lambda t: _predict(t, "--topk", "0"), "--topk must be 1 or more"),
    (lambda t: _predict(t, "--batch-size", "0"), "--batch-size must be 1 or more"),
    (lambda t: _eval(t, "--batch-size", "0"), "--batch-size must be 1 or more"),
    (lambda t: _eval(t, "--workers", "-1"), "--workers must be 0 or more"),
    (lambda t: _eval(t, "--amp", "fp16"), "--amp fp16 needs a GPU"),
    (lambda t: BENCH + ["--steps", "0"], "--steps must be 1 or more"),
    (lambda t: BENCH + ["--warmup", "-1"], "--warmup must be 0 or more"),
    (lambda t: BENCH + ["--device", "cuda"], "no CUDA GPU here; use --device cpu"),
    (lambda t: BENCH + ["--device", "tpu"], "--device"),
    (lambda t: ["export", "--checkpoint", str(t[0]), "--format", "onnx", "--output", "model.pt"],
     "use --output model.onnx"),
    (lambda t: ["export", "--checkpoint", str(t[0]), "--format", "pt2", "--output", "model.onnx"],
     "use --output model.pt2"),
    (lambda t: ["export", "--checkpoint", str(t[0]), "--format", "torchscript", "--output", "model.pt2"],
     "use --output model.pt"),
], ids=["topk-1", "topk0", "predict-batch0", "eval-batch0", "workers-1", "fp16-cpu", "steps0", "warmup-1",
        "cuda-without-gpu", "unknown-device", "onnx-as-pt", "pt2-as-onnx", "torchscript-as-pt2"])
def test_bad_values_are_one_line(capsys, tiny, no_gpu, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv(tiny))
    assert_one_line_error(code, out, err)
    assert needle in err
    assert list(tmp_path.iterdir()) == []   # nothing written


def _unwritable_cases(tiny, target):
    """Every command that writes a file, aimed at ``target``."""
    return [
        ["convert", str(tiny[0]), str(target / "x.safetensors"), "--force"],
        ["export", "--checkpoint", str(tiny[0]), "--format", "pt2", "--output", str(target / "x.pt2"), "--force"],
        BENCH + ["--json", str(target / "x.json")],
        BENCH + ["--csv", str(target / "x.csv")],
        BENCH + ["--plot", str(target / "x.png")],
        _predict(tiny, "--csv", str(target / "x.csv")),
    ]


@pytest.mark.parametrize("case", range(6), ids=["convert", "export", "bench-json", "bench-csv", "bench-plot",
                                                "predict-csv"])
def test_writing_into_a_read_only_folder_is_one_line(capsys, tiny, read_only, case):
    code, out, err = run(capsys, *_unwritable_cases(tiny, read_only)[case])
    assert_one_line_error(code, out, err)
    assert "cannot write" in err and str(read_only) in err


@pytest.mark.parametrize("case", range(6), ids=["convert", "export", "bench-json", "bench-csv", "bench-plot",
                                                "predict-csv"])
def test_writing_over_a_folder_is_one_line_and_keeps_it(capsys, tiny, tmp_path, case):
    argv = _unwritable_cases(tiny, tmp_path)[case]
    target = Path(next(a for a in argv if a.startswith(str(tmp_path))))
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    code, out, err = run(capsys, *argv)
    assert_one_line_error(code, out, err)
    assert "is a folder" in err
    assert (target / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("case", range(6), ids=["convert", "export", "bench-json", "bench-csv", "bench-plot",
                                                "predict-csv"])
def test_an_existing_result_is_kept_without_force_and_replaced_with_it(capsys, tiny, tmp_path, case):
    # (export as TorchScript: a pt2 export takes 10 s)
    argv = [{"pt2": "torchscript", str(tmp_path / "x.pt2"): str(tmp_path / "x.pt")}.get(a, a)
            for a in _unwritable_cases(tiny, tmp_path)[case] if a != "--force"]
    target = Path(next(a for a in argv if a.startswith(str(tmp_path))))
    target.write_text("193 earlier rows")
    code, out, err = run(capsys, *argv)
    assert_one_line_error(code, out, err)
    assert f"{target} already exists; pass --force to replace it" in err
    assert target.read_text() == "193 earlier rows"
    code, out, err = run(capsys, *argv, "--force")
    assert code == 0 and target.read_bytes() != b"193 earlier rows"
    assert f"wrote {target}" in out + err  # and says where (bench on stderr: its stdout is the table)


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    """A detector's two files as hcgnet detect train writes them: final.safetensors (its metadata says detector)
    and a training last.pt (a dict whose "model" is the detector's state dict)."""
    from coco_toy import TOY_MODEL, TOY_OPTIONS
    from hcgnet.detection.checkpoint import detector_metadata
    from hcgnet.detection.models import build_detector

    base = tmp_path_factory.mktemp("detector")
    model = build_detector(TOY_MODEL, "box", num_classes=2, trainable_stages=3, trained=True, min_size=64, max_size=96,
                           **TOY_OPTIONS)
    meta = detector_metadata(TOY_MODEL, "box", ["ball"], [1], 64, 96, 3, TOY_OPTIONS)
    hcgnet.save_safetensors(model, base / "final.safetensors", meta)
    torch.save({"model": model.state_dict(), **meta, "step": 3}, base / "last.pt")
    return base / "final.safetensors", base / "last.pt"


@pytest.mark.parametrize("command", ["eval", "predict", "convert", "export", "attack", "train"])
@pytest.mark.parametrize("which", [0, 1], ids=["safetensors", "last.pt"])
def test_a_detector_checkpoint_is_named_as_one(capsys, tiny, detectors, tmp_path, command, which):
    path = str(detectors[which])
    argv = {"eval": _eval(tiny), "predict": _predict(tiny), "convert": ["convert", path, str(tmp_path / "c.safetensors")],
            "export": ["export", "--checkpoint", path, "--format", "onnx", "--output", str(tmp_path / "m.onnx")],
            "attack": ["attack", "--checkpoint", path, "--data", f"imagefolder:{tiny[2]}", "--workers", "0",
                       "--output", str(tmp_path / "attack")],
            "train": ["train", "--initial-checkpoint", path, "--data",
                      f"imagefolder:{make_image_folder(tmp_path / 'images', per_class=4)}", "--epochs", "1",
                      "--model", TINY, "--output", str(tmp_path / "run")]}[command]
    argv = [path if a == str(tiny[0]) else a for a in argv]
    code, out, err = run(capsys, *argv)
    assert_one_line_error(code, "" if command == "train" else out, err)  # train first reports its data split
    assert f"{path} is a detector checkpoint (hcgnet detect train): use it with hcgnet detect eval" in err, err


def test_eval_output_in_a_read_only_folder_is_refused_before_evaluating(capsys, tiny, read_only):
    code, out, err = run(capsys, *_eval(tiny, "--output", str(read_only / "report")))
    assert_one_line_error(code, out, err)
    assert "cannot write" in err


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_a_run_folder_given_as_checkpoint_names_the_file_to_pass(tmp_path, capsys, command):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best.safetensors").write_bytes(b"")
    (run_dir / "last.pt").write_bytes(b"")
    from PIL import Image
    Image.new("RGB", (40, 30)).save(tmp_path / "shot.png")
    extra = {"eval": ["--data", "fashion_mnist"], "predict": [str(tmp_path / "shot.png")],
             "export": ["--format", "onnx", "--output", str(tmp_path / "m.onnx")]}
    code, out, err = run(capsys, command, "--checkpoint", str(run_dir), *extra[command])
    assert_one_line_error(code, out, err)
    assert "is a folder" in err and str(run_dir / "best.safetensors") in err


def test_plural_of_nouns_ending_in_ch_sh_s_x():
    from hcgnet.errors import plural
    assert [plural(2, n) for n in ("batch", "class", "box", "brush", "image", "epoch")] == [
        "2 batches", "2 classes", "2 boxes", "2 brushes", "2 images", "2 epochs"]
    assert plural(1, "batch") == "1 batch"


@pytest.mark.parametrize("argv, command", [
    (["bogus"], "hcgnet"), (["train", "--epochs", "abc"], "hcgnet train"), (["eval"], "hcgnet eval"),
    (["predict"], "hcgnet predict"), (["export", "--checkpoint", "x"], "hcgnet export"),
    (["bench", "--steps", "many"], "hcgnet bench"), (["convert"], "hcgnet convert"),
    (["info", "--size", "big"], "hcgnet info"), (["detect"], "hcgnet detect"), (["detect", "eval"], "hcgnet detect eval"),
    (["detect", "predict", "--checkpoint", "x"], "hcgnet detect predict"), (["attack", "--checkpoint", "x"], "hcgnet attack"),
    (["dissect"], "hcgnet dissect"), (["attention"], "hcgnet attention"),
    # a flag no command knows: said by the command it was given to, not by hcgnet
    (["train", "--epochz", "3"], "hcgnet train"), (["recipes", "--all"], "hcgnet recipes"),
    (["predict", "--checkpoint", "x", "a.png", "--tpok", "3"], "hcgnet predict"),
    (["predict", "--checkpoint", "x", "--images", "a.png"], "hcgnet predict"),
    (["detect", "predict", "--checkpoint", "x", "--output", "o", "a.png", "--scores", "1"], "hcgnet detect predict"),
])
def test_every_usage_mistake_is_one_line_naming_the_help(capsys, argv, command):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("hcgnet: error: "), err
    assert err.rstrip().endswith(f"({command} --help shows every option)"), err


@pytest.mark.parametrize("argv", [["--verbose"], ["--epochs=3", "train"]])
def test_an_option_before_any_command_is_named(capsys, argv):
    """argparse said only "the following arguments are required: command"."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith(f"hcgnet: error: unrecognized argument {argv[0]}: options follow a "
                                              "command, e.g. hcgnet train --help")


def test_predict_images_given_as_an_option_says_to_give_them_as_they_are(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--checkpoint", "x.safetensors", "--images", "a.png"])
    assert "give the image files, folders or quoted globs themselves, without --images" in capsys.readouterr().err


def test_every_option_of_every_command_says_what_it_does():
    from hcgnet.cli import build_parser

    parser = build_parser()
    commands = {name for action in parser._actions if hasattr(action, "choices") and action.choices
                for name in action.choices}
    assert commands >= {"train", "bench", "export", "detect"}
    silent = silent_options(parser, "hcgnet")
    assert not silent, silent


def test_every_flag_with_a_default_says_it_in_its_help():
    """Every option whose default is a value (not None: "none given") names it in its --help line, as
    ``(default ...)``; on/off flags (store_true/store_false) say what they do instead."""
    import argparse

    from hcgnet.cli import build_parser

    silent = []

    def walk(parser, command):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{command} {name}".strip())
            elif (action.option_strings and action.help != argparse.SUPPRESS and action.nargs != 0
                  and action.default not in (None, argparse.SUPPRESS) and "default" not in (action.help or "")):
                silent.append(f"{command} {action.option_strings[0]}")

    walk(build_parser(lazy=True), "")
    assert silent == []
