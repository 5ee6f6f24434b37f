"""hcgnet export: each format loads back and gives the eager outputs at other batch sizes and input sizes, and
carries the class names and preprocessing a deployment needs."""
import json
import re

import numpy as np
import onnxruntime
import pytest
import torch

import hcgnet
from hcgnet.cli import main
from hcgnet.export import export_model

SPEC = "HCGNet-(1,2,1)-(k=8,8,8)"


# What a run's checkpoint says about its data (as hcgnet train writes it), chosen here.
CLASSES = ["ant", "bee", "cat", "dog", "eel"]
DATA_CONFIG = {"name": "imagefolder", "input_size": [3, 32, 32], "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6],
               "resize": 36, "class_names": CLASSES}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = hcgnet.create_model(SPEC, num_classes=5).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    hcgnet.save_safetensors(model, path, {"model_name": SPEC, "class_names": json.dumps(CLASSES),
                                          "data_config": json.dumps(DATA_CONFIG)})
    return path, model


def _metadata_as_its_runtime_reads_it(path, fmt):
    """The file's metadata through the format's own API, not hcgnet's reader."""
    if fmt == "onnx":
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta() \
            .custom_metadata_map
    files = {"hcgnet.json": ""}
    if fmt == "torchscript":
        torch.jit.load(str(path), _extra_files=files)
    else:
        torch.export.load(str(path), extra_files=files)
    return json.loads(files["hcgnet.json"])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_export_runs_at_other_shapes_like_eager_and_carries_its_class_names_and_preprocessing(tmp_path, capsys,
                                                                                               checkpoint, fmt):
    from hcgnet.export import read_export_metadata

    path, model = checkpoint
    out = tmp_path / f"model.{fmt}"
    assert main(["export", "--checkpoint", str(path), "--format", fmt, "--output", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert "wrote" in stdout and "class names and preprocessing are in the file" in stdout
    assert stderr.startswith(f"exporting {path} to {fmt}: tracing")   # said before the wait, on stderr
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left
    for shape in [(1, 3, 32, 32), (4, 3, 40, 56)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = model(x)
            if fmt == "onnx":
                session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
                got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy().astype(np.float32)})[0])
            elif fmt == "torchscript":
                got = torch.jit.load(str(out))(x)
            else:
                got = torch.export.load(str(out)).module()(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    meta = _metadata_as_its_runtime_reads_it(out, fmt)
    assert meta["model_name"] == SPEC
    assert json.loads(meta["class_names"]) == CLASSES
    assert json.loads(meta["data_config"]) == DATA_CONFIG
    assert read_export_metadata(out) == meta
    _check_info_describes_the_export_as_its_checkpoint(path, out, fmt, capsys)


def _check_info_describes_the_export_as_its_checkpoint(path, out, fmt, capsys):
    """``hcgnet info model.onnx`` (or .pt, .pt2): the row of the checkpoint it was exported from, from the file's
    metadata; with design switches recorded, the network they build (as ``info SPEC --model-kwargs`` counts it)."""
    from hcgnet.export import write_onnx_metadata

    def info(*argv):
        capsys.readouterr()
        assert main(["info", *map(str, argv), "--json"]) == 0
        return json.loads(capsys.readouterr().out)[0]

    exported, recorded = info(out), info(path)
    assert exported.pop("exported") == fmt and exported.pop("model") == str(out)
    recorded.pop("model")
    assert exported == recorded and exported["params"] > 0 and exported["class_names"] == CLASSES
    if fmt != "onnx":
        return
    switches = {"forget_gate": False}
    write_onnx_metadata(out, {"switches": json.dumps(switches)})
    expected = info(SPEC, "--num-classes", 5, "--model-kwargs", json.dumps(switches))
    assert info(out)["params"] == expected["params"] < recorded["params"]


def test_export_refuses_to_overwrite_and_bad_folders(tmp_path, capsys, checkpoint):
    path, _ = checkpoint
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    assert main(["export", "--checkpoint", str(path), "--format", "onnx", "--output", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["export", "--checkpoint", str(path), "--format", "pt2", "--output", str(tmp_path / "no" / "m.pt2")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_export_without_format_writes_what_the_file_name_says(tmp_path, capsys, checkpoint):
    from hcgnet.export import format_of

    assert [format_of(f"m{suffix}") for suffix in (".onnx", ".ONNX", ".pt", ".pt2")] == ["onnx", "onnx",
                                                                                         "torchscript", "pt2"]
    path, model = checkpoint
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(path), "--output", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: torchscript,")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out))(x), model(x), rtol=1e-4, atol=1e-5)
    for name in ("model.bin", "model"):
        assert main(["export", "--checkpoint", str(path), "--output", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err == (f"hcgnet: error: {tmp_path / name} does not say which format to write; name it .onnx, .pt or "
                       ".pt2, or pass --format onnx/torchscript/pt2\n")
        assert not (tmp_path / name).exists()


def test_export_model_refuses_an_unknown_format(tmp_path):
    with pytest.raises(hcgnet.HCGNetError, match="unknown format"):
        export_model(hcgnet.create_model(SPEC), str(tmp_path / "m.x"), "tflite", (3, 32, 32))


class _Tampered(torch.nn.Module):
    """A loaded program whose outputs are off by 0.01: what a broken exporter or runtime would give."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + 0.01


def test_export_refuses_a_program_that_differs_from_eager(tmp_path, capsys, checkpoint, monkeypatch):
    path, _ = checkpoint
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: _Tampered(real_load(*a, **k)))
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(path), "--format", "torchscript", "--output", str(out)]) == 2
    captured = capsys.readouterr()
    progress, *lines = captured.err.splitlines()   # what it was doing, then the error in one line
    assert progress.startswith("exporting ")
    assert len(lines) == 1 and lines[0].startswith("hcgnet: error: ") and "Traceback" not in captured.err
    assert "differs from the eager model by 1.00e-02" in lines[0] and "not written" in lines[0]
    assert list(tmp_path.iterdir()) == []   # neither the file nor its temporary


def test_export_refuses_an_existing_folder_even_with_force(tmp_path, capsys, checkpoint):
    path, _ = checkpoint
    out = tmp_path / "model.onnx"
    out.mkdir()
    assert main(["export", "--checkpoint", str(path), "--format", "onnx", "--output", str(out), "--force"]) == 2
    assert "is a folder" in capsys.readouterr().err and out.is_dir() and list(out.iterdir()) == []
    folder = tmp_path / "exports"   # a folder without a suffix: said as a folder, not as a "nameless file"
    folder.mkdir()
    assert main(["export", "--checkpoint", str(path), "--format", "onnx", "--output", str(folder) + "/"]) == 2
    assert capsys.readouterr().err == (f"hcgnet: error: --output {folder} is a folder; give the name of a file to "
                                       f"write inside it, e.g. {folder / 'model.onnx'}\n")


def test_a_checkpoint_without_data_exports_the_variants_preprocessing_and_class_indices(checkpoint):
    from hcgnet.inference import export_metadata

    _, model = checkpoint   # model_name only, as a published checkpoint: the CIFAR stem's standard preprocessing
    meta = export_metadata(model, {"model_name": SPEC})
    config = json.loads(meta["data_config"])
    assert meta["model_name"] == SPEC and json.loads(meta["class_names"]) == ["0", "1", "2", "3", "4"]
    assert meta["class_indices"] == "true"   # names the checkpoint did not record
    assert config["input_size"] == [3, 32, 32] and config["resize"] is None
    assert config["class_names"] == ["0", "1", "2", "3", "4"]
    assert config["mean"] == pytest.approx([0.4914, 0.4822, 0.4465], abs=1e-4)   # CIFAR-10's channel means


def test_an_export_carries_the_networks_switches_and_its_runs_data_as_the_checkpoint_recorded_them(checkpoint):
    from hcgnet.inference import export_metadata

    _, model = checkpoint
    run = {"switches": '{"forget_gate": false}', "data": "imagefolder:shots", "data_dir": "/data", "val_size": "0.1",
           "test_size": "null", "seed": "3", "skip_bad_images": "true"}
    meta = export_metadata(model, {"model_name": SPEC, "class_names": json.dumps(CLASSES), "lr": "0.1", "epochs": "30",
                                   **run})
    assert {key: meta[key] for key in run} == run
    assert set(meta) == {"model_name", "class_names", "data_config", *run}   # nothing else of the run (and its
    # class names are its own: no class_indices)


def test_reading_the_metadata_of_a_file_that_is_no_export_is_one_line(tmp_path):
    from hcgnet.export import read_export_metadata

    for name in ("model.onnx", "model.pt2", "model.pt"):
        (tmp_path / name).write_bytes(b"not a model")
        with pytest.raises(hcgnet.HCGNetError, match=f"{name} is not an? "):
            read_export_metadata(tmp_path / name)


def test_the_onnx_file_alone_classifies_as_hcgnet_predict_does(tmp_path, capsys, checkpoint):
    """docs/onnx_predict.py (ONNX Runtime, NumPy and Pillow, reading the file's own metadata) and ``hcgnet predict
    --checkpoint model.onnx`` against ``hcgnet predict`` on the checkpoint, for both preprocessing styles:
    ImageNet's (shorter side to ``resize``, centre crop) and CIFAR's (native size untouched, any other fitted), on
    images of odd sizes and modes."""
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    from conftest import picture
    from hcgnet.export import write_onnx_metadata

    _, model = checkpoint
    images = [picture(tmp_path / "wide.jpg", 0, size=(37, 50)), picture(tmp_path / "native.png", 1, size=(32, 32)),
              picture(tmp_path / "tall.png", 2, size=(64, 20))]
    Image.open(images[2]).convert("L").save(tmp_path / "grey.png")
    Image.open(images[0]).convert("RGBA").save(tmp_path / "alpha.png")
    images += [tmp_path / "grey.png", tmp_path / "alpha.png"]
    out = tmp_path / "model.onnx"
    sketch = Path(__file__).resolve().parents[1] / "docs" / "onnx_predict.py"
    for resize in (36, None):
        config = {**DATA_CONFIG, "resize": resize}
        path = tmp_path / f"run-{resize}.safetensors"
        hcgnet.save_safetensors(model, path, {"model_name": SPEC, "class_names": json.dumps(CLASSES),
                                              "data_config": json.dumps(config)})
        if not out.exists():
            assert main(["export", "--checkpoint", str(path), "--output", str(out)]) == 0
        write_onnx_metadata(out, {"data_config": json.dumps(config)})   # the same network, the other style
        capsys.readouterr()
        assert main(["predict", "--checkpoint", str(path), *map(str, images), "--json"]) == 0
        expected = json.loads(capsys.readouterr().out)
        proc = subprocess.run([sys.executable, str(sketch), str(out), *map(str, images), "--json"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert main(["predict", "--checkpoint", str(out), *map(str, images), "--json"]) == 0   # the file itself
        for got in (json.loads(proc.stdout), json.loads(capsys.readouterr().out)):
            assert [r["image"] for r in got] == [r["image"] for r in expected]
            for g, e in zip(got, expected):
                assert [t["class"] for t in g["top"]] == [t["class"] for t in e["top"]]
                assert [t["index"] for t in g["top"]] == [t["index"] for t in e["top"]]
                assert [t["probability"] for t in g["top"]] == pytest.approx([t["probability"] for t in e["top"]],
                                                                              abs=1e-5)


@pytest.mark.parametrize("flags, needle", [
    (dict(model_name="hcgnet_a1"), "drop --model"), (dict(compile=True), "drop --compile"),
    (dict(int8="pt2e"), "drop --int8; hcgnet export --int8 writes an int8 file"), (dict(amp="bf16"), "drop --amp bf16"),
    (dict(channels_last=True), "drop --channels-last"), (dict(device="cuda"), "--device cuda"),
])
def test_predict_on_an_onnx_file_refuses_what_only_a_checkpoint_can_do(flags, needle, monkeypatch):
    from hcgnet.inference import check_exported_options

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # a GPU there or not: an ONNX file runs on the CPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(hcgnet.HCGNetError, match=re.escape(needle)) as e:
        check_exported_options("m.onnx", **flags)
    assert str(e.value).startswith("m.onnx is an ONNX export")
    check_exported_options("m.onnx", device="cpu")   # what it can do: nothing raised


def test_eval_scores_an_onnx_export_on_its_runs_own_test_split(trained, tmp_path, capsys):
    """An export carries its run's data and split settings as the checkpoint recorded them, so ``eval`` without
    ``--data`` rebuilds the run's 400 test images and scores the file on them, in ONNX Runtime and in OpenVINO:
    the training run's own top-1 and loss (its results.json). An ONNX file is told by its bytes, so a copy without
    the suffix is scored too."""
    import shutil

    import onnx
    from safetensors import safe_open

    from conftest import TRAINED_LOSS, TRAINED_TOP1, cli
    from hcgnet.export import read_export_metadata

    path, folder = trained
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(path), "--output", str(out)]) == 0
    capsys.readouterr()
    with safe_open(str(path), "pt") as f:
        recorded = f.metadata()
    carried = read_export_metadata(out)
    assert carried["data"] == f"imagefolder:{folder}"
    for key in ("val_size", "test_size", "seed"):
        assert carried[key] == recorded[key], key
    suffixless = tmp_path / "model-file"
    shutil.copy(out, suffixless)
    for file, extra in ((out, []), (out, ["--openvino", "fp32"]), (suffixless, [])):
        code, stdout, err = cli(capsys, "eval", "--checkpoint", file, "--workers", "0", "--batch-size", "64", *extra)
        assert code == 0, err
        assert "Traceback" not in err and "note:" not in err   # the file carries its class names and preprocessing
        head = stdout.splitlines()[0]
        assert head.startswith(f"{file} on imagefolder:{folder} (test, 400 images): top-1 "), head
        top1, loss = re.search(r"top-1 ([\d.]+)%.*, loss ([\d.]+)$", head).groups()
        assert float(top1) == pytest.approx(100 * TRAINED_TOP1)
        assert float(loss) == pytest.approx(TRAINED_LOSS, abs=1e-4)
    code, stdout, err = cli(capsys, "eval", "--checkpoint", out, "--split", "all", "--data", f"imagefolder:{folder}",
                            "--workers", "0", "--json")
    assert code == 0, err
    whole = json.loads(stdout)
    assert whole["count"] == 800 and whole["class_names"] == json.loads(carried["class_names"])
    code, stdout, err = cli(capsys, "eval", "--checkpoint", out, "--int8")
    assert code == 2 and stdout == "" and err.startswith(f"hcgnet: error: {out} is an ONNX export") and "drop --int8" in err
    # an export whose checkpoint recorded no data (a published one): eval asks for --data
    proto = onnx.load(str(out))
    kept = [p for p in proto.metadata_props if p.key in ("model_name", "class_names", "data_config")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(out))
    code, stdout, err = cli(capsys, "eval", "--checkpoint", out)
    assert code == 2 and err == f"hcgnet: error: {out} does not record the data it was trained on; pass --data\n"
    # exported from a checkpoint that recorded no class names (a published one), the file names its outputs by
    # index, marked as such: eval labels a folder with the folder's own classes, as it does for that checkpoint,
    # and says so; here the ImageNet layout, whose val/ is the test split (the same 800 images, by symlinks)
    from hcgnet.export import write_onnx_metadata

    indices = [str(i) for i in range(4)]
    write_onnx_metadata(out, {"class_names": json.dumps(indices), "class_indices": "true", "data_config": json.dumps(
        {**json.loads(carried["data_config"]), "class_names": indices})})
    layout = tmp_path / "layout"
    for split in ("train", "val"):
        (layout / split).mkdir(parents=True)
        for c in folder.iterdir():
            (layout / split / c.name).symlink_to(c, target_is_directory=True)
    code, stdout, err = cli(capsys, "eval", "--checkpoint", out, "--data", f"imagefolder:{layout}", "--workers", "0",
                            "--json")
    assert code == 0, err
    assert err == f"note: {out} carries no class names; using the dataset's class names\n"
    assert json.loads(stdout)["split"] == "test" and json.loads(stdout)["count"] == 800
    assert json.loads(stdout)["top1"] == whole["top1"] and json.loads(stdout)["class_names"] == whole["class_names"]
    code, stdout, err = cli(capsys, "predict", "--checkpoint", out, next(folder.rglob("*.png")), "--json")
    assert code == 0 and err == f"note: {out} carries no class names; using class indices\n", err
    assert json.loads(stdout)[0]["top"][0]["class"] in indices


def test_export_no_run_data_leaves_the_runs_local_folders_out(checkpoint, tmp_path, monkeypatch, capsys):
    """``--no-run-data``: the file carries its class names, preprocessing and switches, not the run's data and
    split settings (which name local folders); without it, both."""
    import hcgnet.export

    _, model = checkpoint
    path = tmp_path / "run.safetensors"
    hcgnet.save_safetensors(model, path, {"model_name": SPEC, "class_names": json.dumps(CLASSES),
                                          "data_config": json.dumps(DATA_CONFIG), "data": "imagefolder:/home/me/shots",
                                          "data_dir": "/home/me/data", "seed": "0", "switches": '{"groups": 4}'})
    written = []
    monkeypatch.setattr(hcgnet.export, "export_model", lambda *a, metadata=None, **k: written.append(metadata))
    for flags in (["--no-run-data"], []):
        assert main(["export", "--checkpoint", str(path), "--output", str(tmp_path / "m.onnx"), *flags]) == 0
    without, with_run = written
    assert set(without) == {"model_name", "class_names", "data_config", "switches"}
    assert with_run["data"] == "imagefolder:/home/me/shots" and with_run["data_dir"] == "/home/me/data"
