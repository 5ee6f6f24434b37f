"""Compiled inference with frozen weights (hcgnet.compiled, ``hcgnet eval --compile``, ``hcgnet predict --compile``)
against the plain fp32 eager model, on conftest's trained fixture (94.50% top-1, loss 0.28720328 on its 400 test
images, from the training run's results.json).

Tolerance, frozen and compiled fp32 against eager fp32: 1e-5 absolute + 1e-5 relative on the logits (as
tests/test_fast_paths.py allows torch.compile); Inductor reorders sums but computes in fp32.
"""
import json
import re

import pytest
import torch

from conftest import TRAINED_LOSS, TRAINED_TOP1, cli
from hcgnet.compiled import PaddedBatch, compile_frozen
from hcgnet.inference import load_model
from hcgnet.models.hcgnet import set_compiled_buffer

pytestmark = pytest.mark.usefixtures("single_thread")


def test_compiled_frozen_model_gives_the_eager_logits_at_any_batch_size(trained, test_set):
    test_images, expected = test_set[2], test_set[4]
    path, _ = trained
    model, _ = load_model(str(path))
    # The fixture's 8x8 maps are below HybridBlock.buffer_min_positions: min_positions 0 puts Inductor's
    # compilation of the buffer (HybridBlock.forward_buffer) to this test; the next one compiles the concatenations.
    set_compiled_buffer(model, True, min_positions=0)
    with torch.no_grad():
        compiled = compile_frozen(model, 64)
        for n in (400, 64, 5):  # 7 chunks (the last padded), exactly one, one padded
            torch.testing.assert_close(compiled(test_images[:n]), expected[:n], atol=1e-5, rtol=1e-5)
    assert compiled.module._orig_mod is model   # compiled, not the eager model called through a wrapper


def test_compiled_frozen_model_follows_the_weights_it_was_compiled_with(trained, test_set):
    """Frozen means the weights are constants of the program: a later change does not reach it, which is why
    only eval and predict (weights fixed) compile this way."""
    path, _ = trained
    model, _ = load_model(str(path))
    x = test_set[2][:8]
    with torch.no_grad():
        compiled = compile_frozen(model, 8)
        before = compiled(x)
        model.get_classifier().bias.add_(1.0)
        torch.testing.assert_close(compiled(x), before)
        assert not torch.allclose(model(x), before, atol=1e-3)


def test_eval_compile_gives_the_training_runs_top1_and_loss(trained, capsys):
    path, folder = trained
    code, out, err = cli(capsys, "eval", "--checkpoint", path, "--data", f"imagefolder:{folder}", "--workers", "0",
                         "--compile", "--batch-size", "64")
    assert code == 0, err
    assert "compiling the model with torch.compile, weights frozen" in err
    assert "Traceback" not in err and "WARNING" not in err
    top1, loss = re.search(r"top-1 ([\d.]+)%.*, loss ([\d.]+)$", out.splitlines()[0]).groups()
    assert float(top1) == pytest.approx(100 * TRAINED_TOP1)
    assert float(loss) == pytest.approx(TRAINED_LOSS, abs=1e-5)


def test_predict_compile_gives_the_eager_probabilities(trained, capsys):
    path, folder = trained
    images = sorted(str(p) for p in folder.rglob("*.png"))[::40]   # 20 images: one batch of 16, one padded
    code, out, err = cli(capsys, "predict", "--checkpoint", path, "--json", "--topk", "2", "--batch-size", "16",
                         *images)
    assert code == 0, err
    eager = json.loads(out)
    code, out, err = cli(capsys, "predict", "--checkpoint", path, "--json", "--topk", "2", "--batch-size", "16",
                         "--compile", *images)
    assert code == 0, err
    assert "compiling the model" in err
    compiled = json.loads(out)
    assert [r["image"] for r in compiled] == [r["image"] for r in eager]
    for a, b in zip(compiled, eager):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-5)


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_compile_with_int8_is_refused_in_one_line(trained, capsys, command):
    path, folder = trained
    where = ["--data", f"imagefolder:{folder}"] if command == "eval" else [str(next(folder.rglob("*.png")))]
    code, out, err = cli(capsys, command, "--checkpoint", path, *where, "--compile", "--int8")
    assert code == 2 and out == ""
    assert err.startswith("hcgnet: error: ") and len(err.splitlines()) == 1
    assert "--compile is for the float model" in err and "drop --compile" in err


def test_padded_batch_gives_each_image_its_own_output_at_any_batch_size():
    seen = []

    def fixed_batch_of_4(x):   # a stand-in for a program compiled for batches of exactly 4
        seen.append(len(x))
        return x.flatten(1).sum(1, keepdim=True) * 2

    padded = PaddedBatch(fixed_batch_of_4, 4)
    for n in (1, 3, 4, 5, 9):
        x = torch.randn(n, 3, 2, 2)
        torch.testing.assert_close(padded(x), x.flatten(1).sum(1, keepdim=True) * 2)
    assert set(seen) == {4}
    # a padded channels_last batch stays channels_last (else a compiled program would compile again)
    layouts = []
    padded = PaddedBatch(lambda x: layouts.append(x.is_contiguous(memory_format=torch.channels_last)) or x, 4)
    padded(torch.randn(6, 3, 5, 5).contiguous(memory_format=torch.channels_last))
    assert layouts == [True, True]


def _tiny_hcgnet_with_random_statistics() -> torch.nn.Module:
    from hcgnet import create_model

    torch.manual_seed(0)
    model = create_model("HCGNet-(3,2)-(k=8,12)", num_classes=5).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # statistics far from (0, 1): a module reading the wrong channels shows
        for norm in model.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):
                norm.running_mean.copy_(torch.randn(norm.num_features, generator=g))
                norm.running_var.copy_(torch.rand(norm.num_features, generator=g) + 0.5)
    return model


def test_compiled_inference_fills_one_buffer_per_block(monkeypatch):
    """Under torch.compile without gradients each hybrid block writes its features into one buffer
    (HybridBlock.forward_buffer), with the eager logits (Inductor's: the first test above), when its maps hold
    at least buffer_min_positions (batch x height x width);
    an export (torch.export: ONNX, int8), training and ``compiled_buffer = False`` keep the concatenations."""
    from hcgnet.models.hcgnet import HybridBlock

    calls = []
    buffered = HybridBlock.forward_buffer

    def spy(self, x):
        calls.append(len(self.layers))
        return buffered(self, x)

    monkeypatch.setattr(HybridBlock, "forward_buffer", spy)
    monkeypatch.setattr(HybridBlock, "buffer_min_positions", 0)
    model = _tiny_hcgnet_with_random_statistics()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x)
        assert calls == []
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(model, backend="eager")(x), expected, atol=1e-5, rtol=1e-5)
        assert sorted(calls) == [2, 3]
        calls.clear()
        # The size rule: the first block's maps hold 4 x 32 x 32 = 4096 positions, the second's 4 x 16 x 16.
        for threshold, buffered_depths in ((4096, [3]), (4097, []), (1024, [2, 3])):
            set_compiled_buffer(model, True, min_positions=threshold)
            torch._dynamo.reset()
            torch.testing.assert_close(torch.compile(model, backend="eager")(x), expected, atol=1e-5, rtol=1e-5)
            assert sorted(calls) == buffered_depths, threshold
            calls.clear()
        set_compiled_buffer(model, True, min_positions=0)
        torch.export.export(model, (x,))
        assert calls == []
        set_compiled_buffer(model, False)
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(model, backend="eager")(x), expected, atol=1e-5, rtol=1e-5)
        assert calls == []
    model.train()
    set_compiled_buffer(model, True)
    torch._dynamo.reset()
    torch.compile(model, backend="eager")(x).sum().backward()  # training: the custom op has no gradient
    assert calls == []
    torch._dynamo.reset()
