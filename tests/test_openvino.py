"""OpenVINO on hcgnet's ONNX export (hcgnet.export.OpenVINOModel, ``hcgnet bench --runtimes openvino``) against
the fp32 eager model on the trained fixture's 400 test images (conftest's ``trained`` and ``test_set``).

Tolerances, against the fp32 eager logits:
    fp32: largest difference <= 1e-4 of the largest logit, top-1 identical (measured: 4e-7);
    bf16: top-1 within 0.5 points (2 images), mean difference <= 1% and largest <= 5% of the largest logit
    (measured on the Xeon with AMX: 0.1% and 1.1%, top-1 identical).
"""
import json
import re

import openvino
import pytest
import torch

from conftest import TRAINED_LOSS, TRAINED_TOP1, cli
from hcgnet.errors import HCGNetError
from hcgnet.export import OpenVINOModel, export_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def onnx_path(test_set, tmp_path_factory):
    model, _, x, _, _ = test_set
    return export_model(model, str(tmp_path_factory.mktemp("ov") / "model.onnx"), "onnx", tuple(x.shape[1:]))


def top1(logits, y):
    return (logits.argmax(1) == y).float().mean().item()


def test_openvino_fp32_gives_the_eager_logits(onnx_path, test_set):
    _, _, x, y, expected = test_set
    got = OpenVINOModel(onnx_path, "fp32")(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_openvino_bf16_stays_within_half_a_point_of_fp32(onnx_path, test_set):
    _, _, x, y, expected = test_set
    got = OpenVINOModel(onnx_path, "bf16")(x)
    assert abs(top1(got, y) - top1(expected, y)) <= 0.005
    scale, diff = expected.abs().max().item(), (got - expected).abs()
    assert diff.mean().item() <= 0.01 * scale and diff.max().item() <= 0.05 * scale
    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        # this CPU computes in bfloat16: rounding happened (a float32 program agrees to 1e-6)
        assert diff.max().item() > 1e-4 * scale


def test_openvino_refuses_what_it_does_not_run(onnx_path, tmp_path):
    with pytest.raises(HCGNetError, match="OpenVINO runs fp32 or bf16, not fp16"):
        OpenVINOModel(onnx_path, "fp16")
    with pytest.raises(HCGNetError, match="missing.onnx not found; write one with hcgnet export --format onnx"):
        OpenVINOModel(tmp_path / "missing.onnx")   # not "is not an ONNX file": there is no file at all
    with pytest.raises(HCGNetError, match="is a folder, not an ONNX file"):
        OpenVINOModel(tmp_path)
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(HCGNetError, match="OpenVINO cannot read .*broken.onnx as a model"):
        OpenVINOModel(tmp_path / "broken.onnx")


def test_openvino_compiles_each_input_shape_once(onnx_path, test_set):
    """The export's sizes are dynamic; each new input shape gets a model compiled with its sizes fixed, kept for
    the next call of that shape."""
    _, _, x, _, expected = test_set
    run = OpenVINOModel(onnx_path, "fp32")
    for n in (1, 7, 64, 7):
        assert torch.allclose(run(x[:n]), expected[:n], atol=1e-4 * expected.abs().max().item(), rtol=0)
    assert sorted(run.requests) == [(n, *x.shape[1:]) for n in (1, 7, 64)]
    for shape, request in run.requests.items():  # compiled with every size fixed, none left dynamic
        assert request.get_compiled_model().inputs[0].get_partial_shape().is_static
        assert list(request.get_compiled_model().inputs[0].get_shape()) == list(shape)
    before = run.requests[(7, *x.shape[1:])]
    run(x[:7])
    assert run.requests[(7, *x.shape[1:])] is before


def test_openvino_refuses_a_shape_its_plugin_cannot_compile(onnx_path, test_set, monkeypatch):
    _, _, x, _, _ = test_set
    run = OpenVINOModel(onnx_path, "bf16")

    def fails(*args, **kwargs):
        raise RuntimeError("Exception from src/plugins/intel_cpu: No suitable implementations.")

    monkeypatch.setattr(run.core, "compile_model", fails)
    shape = ", ".join(str(n) for n in (2, *x.shape[1:]))
    with pytest.raises(HCGNetError, match=rf"cannot compile .*model.onnx at bf16 for input \[{shape}\]; try fp32"):
        run(x[:2])
    assert run.requests == {}


# ------------------------------------------------------------------------------------------- eval/predict --openvino


def test_eval_openvino_gives_the_training_runs_top1_and_loss(trained, capsys):
    """fp32 in OpenVINO scores what eager scores: the training run's own top-1 and loss (results.json)."""
    path, folder = trained
    code, out, err = cli(capsys, "eval", "--checkpoint", path, "--data", f"imagefolder:{folder}", "--workers", "0",
                         "--openvino", "fp32", "--batch-size", "64")
    assert code == 0, err
    assert "exporting the model to ONNX for OpenVINO (fp32)" in err and "Traceback" not in err
    top1, loss = re.search(r"top-1 ([\d.]+)%.*, loss ([\d.]+)$", out.splitlines()[0]).groups()
    assert float(top1) == pytest.approx(100 * TRAINED_TOP1)
    assert float(loss) == pytest.approx(TRAINED_LOSS, abs=1e-4)


def test_predict_openvino_gives_the_eager_probabilities(trained, capsys):
    path, folder = trained
    images = sorted(str(p) for p in folder.rglob("*.png"))[::40]  # 20 images: a batch of 16 and one of 4
    runs = {}
    for extra in ([], ["--openvino", "fp32"], ["--openvino", "bf16"]):
        code, out, err = cli(capsys, "predict", "--checkpoint", path, "--json", "--topk", "2", "--batch-size", "16",
                             *extra, *images)
        assert code == 0, err
        runs[" ".join(extra)] = json.loads(out)
    eager = runs[""]
    for name, tolerance in (("--openvino fp32", 1e-5), ("--openvino bf16", 0.05)):
        assert [r["image"] for r in runs[name]] == [r["image"] for r in eager]
        agree = 0
        for a, b in zip(runs[name], eager):
            agree += a["top"][0]["class"] == b["top"][0]["class"]
            assert a["top"][0]["probability"] == pytest.approx(b["top"][0]["probability"], abs=tolerance), name
        assert agree == len(eager) if name.endswith("fp32") else agree >= len(eager) - 1


@pytest.mark.parametrize("extra,says", [
    (["--compile"], "--openvino and --compile do not go together"),
    (["--int8"], "--openvino and --int8 do not go together"),
    (["--amp", "bf16"], "--openvino and --amp bf16 do not go together"),
    (["--channels-last"], "--openvino and --channels-last do not go together"),
])
def test_eval_openvino_with_another_fast_path_is_refused_in_one_line(trained, capsys, extra, says):
    path, folder = trained
    code, out, err = cli(capsys, "eval", "--checkpoint", path, "--data", f"imagefolder:{folder}", "--workers", "0",
                         "--openvino", "bf16", *extra)
    assert code == 2 and out == ""
    assert err.startswith("hcgnet: error: ") and len(err.splitlines()) == 1 and says in err, err


def test_openvino_missing_is_one_line_before_any_export(monkeypatch, test_set):
    import builtins

    from hcgnet.export import openvino_model

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    model = test_set[0]
    with pytest.raises(HCGNetError, match=r"pip install 'hcgnet\[openvino\]'"):
        openvino_model(model, (3, 32, 32), "fp32")


@pytest.mark.parametrize("device", ["banana", "meta"])
def test_openvino_on_another_device_is_refused_in_one_line(device):
    from hcgnet.export import check_openvino_options

    with pytest.raises(HCGNetError) as info:
        check_openvino_options("bf16", device=device)
    assert "\n" not in str(info.value) and device in str(info.value)
