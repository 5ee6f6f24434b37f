"""OpenVINO on hcgnet's ONNX export (hcgnet.export.OpenVINOModel, ``hcgnet bench --runtimes openvino``) against
the fp32 eager model on the trained fixture's 400 test images (conftest's ``trained`` and ``test_set``).

Tolerances, against the fp32 eager logits:
    fp32: largest difference <= 1e-4 of the largest logit, top-1 identical (measured: 4e-7);
    bf16: top-1 within 0.5 points (2 images), mean difference <= 1% and largest <= 5% of the largest logit
    (measured on the Xeon with AMX: 0.1% and 1.1%, top-1 identical).
"""
import openvino
import pytest
import torch

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
    with pytest.raises(HCGNetError, match="is not an ONNX file; write one with hcgnet export --format onnx"):
        OpenVINOModel(tmp_path / "missing.onnx")
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
