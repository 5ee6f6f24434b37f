"""hcgnet export: each format loads back and gives the eager outputs at other batch sizes and input sizes."""
import numpy as np
import onnxruntime
import pytest
import torch

import hcgnet
from hcgnet.cli import main
from hcgnet.export import export_model

SPEC = "HCGNet-(1,2,1)-(k=8,8,8)"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = hcgnet.create_model(SPEC, num_classes=5).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    hcgnet.save_safetensors(model, path, {"model_name": SPEC})
    return path, model


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_export_runs_at_other_shapes_like_eager(tmp_path, capsys, checkpoint, fmt):
    path, model = checkpoint
    out = tmp_path / f"model.{fmt}"
    assert main(["export", "--checkpoint", str(path), "--format", fmt, "--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
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
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hcgnet: error: ") and "Traceback" not in captured.err
    assert "differs from the eager model by 1.00e-02" in lines[0] and "not written" in lines[0]
    assert list(tmp_path.iterdir()) == []   # neither the file nor its temporary


def test_export_refuses_an_existing_folder_even_with_force(tmp_path, capsys, checkpoint):
    path, _ = checkpoint
    out = tmp_path / "model.onnx"
    out.mkdir()
    assert main(["export", "--checkpoint", str(path), "--format", "onnx", "--output", str(out), "--force"]) == 2
    assert "is a folder" in capsys.readouterr().err and out.is_dir() and list(out.iterdir()) == []
