"""OpenVINO on hcgnet's ONNX export (hcgnet.export.openvino_model, ``hcgnet bench --runtimes openvino``) against
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
from hcgnet.export import export_model, openvino_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def onnx_path(test_set, tmp_path_factory):
    model, _, x, _, _ = test_set
    return export_model(model, str(tmp_path_factory.mktemp("ov") / "model.onnx"), "onnx", tuple(x.shape[1:]))


def top1(logits, y):
    return (logits.argmax(1) == y).float().mean().item()


def test_openvino_fp32_gives_the_eager_logits(onnx_path, test_set):
    _, _, x, y, expected = test_set
    got = openvino_model(onnx_path, "fp32")(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_openvino_bf16_stays_within_half_a_point_of_fp32(onnx_path, test_set):
    _, _, x, y, expected = test_set
    got = openvino_model(onnx_path, "bf16")(x)
    assert abs(top1(got, y) - top1(expected, y)) <= 0.005
    scale, diff = expected.abs().max().item(), (got - expected).abs()
    assert diff.mean().item() <= 0.01 * scale and diff.max().item() <= 0.05 * scale
    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        # this CPU computes in bfloat16: rounding happened (a float32 program agrees to 1e-6)
        assert diff.max().item() > 1e-4 * scale


def test_openvino_refuses_what_it_does_not_run(onnx_path, tmp_path):
    with pytest.raises(HCGNetError, match="OpenVINO runs fp32 or bf16, not fp16"):
        openvino_model(onnx_path, "fp16")
    with pytest.raises(HCGNetError, match="is not an ONNX file; write one with hcgnet export --format onnx"):
        openvino_model(tmp_path / "missing.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(HCGNetError, match="OpenVINO cannot read .*broken.onnx as a model"):
        openvino_model(tmp_path / "broken.onnx")


def test_openvino_runs_a_batch_its_first_call_did_not_have(onnx_path, test_set):
    """The export's batch and spatial sizes are dynamic: one compiled model serves any batch."""
    _, _, x, _, expected = test_set
    run = openvino_model(onnx_path, "fp32")
    for n in (1, 7, 64):
        assert torch.allclose(run(x[:n]), expected[:n], atol=1e-4 * expected.abs().max().item(), rtol=0)

