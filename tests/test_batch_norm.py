"""hcgnet's BatchNorm2d against torch's nn.BatchNorm2d: the wide view of narrow channels_last maps gives torch's
outputs, gradients and running statistics, and every other case is torch's own code path."""
import copy
import math

import pytest
import torch
from torch import nn

import hcgnet
from hcgnet.layers import BatchNorm2d, PreActConv
from hcgnet.layers.batch_norm import takes_wide_view

CL = torch.channels_last


def _pair(channels: int, **kwargs):
    """torch's BatchNorm2d with random affine weights and running statistics, and hcgnet's with the same state."""
    g = torch.Generator().manual_seed(2)
    reference = nn.BatchNorm2d(channels, **kwargs)
    with torch.no_grad():
        if reference.weight is not None:
            reference.weight.uniform_(0.5, 1.5, generator=g)
            reference.bias.normal_(generator=g)
        if reference.running_mean is not None:
            reference.running_mean.normal_(generator=g)
            reference.running_var.uniform_(0.5, 2.0, generator=g)
    ours = BatchNorm2d(channels, **kwargs)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def _map(shape, dtype=torch.float32, seed=0):
    """A channels_last map whose channels have different means and spreads (a mean far from zero included)."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    spread = torch.linspace(0.5, 3.0, c).view(1, c, 1, 1)
    offset = torch.linspace(-4.0, 20.0, c).view(1, c, 1, 1)
    return (torch.randn(shape, generator=g) * spread + offset).to(dtype).contiguous(memory_format=CL)


def _grad(x):
    """An upstream gradient from a seed of its own. Drawn from ``_map``'s seed, it would be an affine function of
    the input per channel, and the input gradient (which removes exactly those components) would be all rounding
    error: the test once depended on the global generator's state that way."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(x.shape, generator=g).contiguous(memory_format=CL)


def _run(norm, x, grad, steps=2):
    """``steps`` training passes; the last one's output and gradients (input, weight, bias) in float64."""
    for _ in range(steps):
        x_ = x.detach().clone().requires_grad_()
        y = norm(x_)
    params = [p for p in (norm.weight, norm.bias) if p is not None]
    grads = torch.autograd.grad(y, [x_] + params, grad)
    return [t.double() for t in (y,) + tuple(grads)]


def _close(a, b, rtol):
    scale = b.abs().max().clamp_min(1e-12)
    return ((a - b).abs().max() / scale).item() <= rtol


@pytest.mark.parametrize("channels, shape_hw, batch", [(12, (32, 32), 8), (3, (5, 16), 4), (6, (7, 8), 2),
                                                      (8, (9, 10), 3), (15, (4, 4), 16)])
def test_wide_view_gives_torchs_outputs_gradients_and_running_statistics_fp32(channels, shape_hw, batch):
    x = _map((batch, channels) + shape_hw)
    reference, ours = _pair(channels)
    assert takes_wide_view(x, ours.train())
    grad = _grad(x)
    expected, got = _run(reference, x, grad), _run(ours, x, grad)
    for e, g in zip(expected, got):
        assert _close(g, e, 1e-5)
    for name in ("running_mean", "running_var"):
        assert torch.allclose(getattr(ours, name), getattr(reference, name), rtol=1e-5, atol=1e-6), name
    assert ours.num_batches_tracked.item() == reference.num_batches_tracked.item() == 2


def test_wide_view_against_float64_formulas():
    """An oracle of its own: the batch normalisation formulas in float64 (biased variance for normalising,
    unbiased for the running variance), and their gradients by autograd."""
    x = _map((4, 12, 6, 6))
    reference, ours = _pair(12, momentum=0.3)
    grad = _grad(x)
    mean0 = ours.running_mean.double().clone()
    var0 = ours.running_var.double().clone()
    y, gx, gw, gb = _run(ours, x, grad, steps=1)
    xd = x.double().requires_grad_()
    w = ours.weight.detach().double().requires_grad_()
    b = ours.bias.detach().double().requires_grad_()
    mean = xd.mean((0, 2, 3), keepdim=True)
    var = ((xd - mean) ** 2).mean((0, 2, 3), keepdim=True)
    yd = (xd - mean) / torch.sqrt(var + 1e-5) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    expected = torch.autograd.grad(yd, (xd, w, b), grad.double())
    assert _close(y, yd.detach(), 1e-6)
    for e, g in zip(expected, (gx, gw, gb)):
        assert _close(g, e, 1e-5)
    count = x.numel() // 12
    assert torch.allclose(ours.running_mean.double(), 0.7 * mean0 + 0.3 * mean.flatten(), atol=1e-5)
    assert torch.allclose(ours.running_var.double(), 0.7 * var0 + 0.3 * var.flatten() * count / (count - 1),
                          rtol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(momentum=None), dict(affine=False), dict(track_running_stats=False)])
def test_wide_view_variants_of_the_module(kwargs):
    x = _map((4, 12, 8, 8))
    reference, ours = _pair(12, **kwargs)
    grad = _grad(x)
    for e, g in zip(_run(reference, x, grad, steps=3), _run(ours, x, grad, steps=3)):
        assert _close(g, e, 1e-5)
    for name in ("running_mean", "running_var"):
        if getattr(reference, name) is not None:
            assert torch.allclose(getattr(ours, name), getattr(reference, name), rtol=1e-5, atol=1e-6)
    if kwargs.get("track_running_stats") is False:
        # No running statistics: eval mode normalises with the batch's too, over the wide view.
        reference.eval(), ours.eval()
        assert takes_wide_view(x, ours)
        assert _close(ours(x).double(), reference(x).double(), 1e-5)


def test_wide_view_in_bfloat16_is_as_close_to_float32_as_torchs():
    """Under CPU autocast a bf16 map meets float32 parameters. Both torch's kernel and the wide view are compared
    with float32 batch normalisation of the same bf16 values: the wide view rounds twice where torch rounds once,
    so its error may be up to three times torch's (plus one bf16 step of the output's scale)."""
    x = _map((8, 12, 16, 16), dtype=torch.bfloat16)
    reference, ours = _pair(12)
    exact = copy.deepcopy(reference)
    grad = _grad(x).to(torch.bfloat16)
    assert takes_wide_view(x, ours.train())
    truth = _run(exact, x.float(), grad.float())
    torchs, got = _run(reference, x, grad), _run(ours, x, grad)
    for t, r, g in zip(truth, torchs, got):
        assert g.dtype == r.dtype
        step = t.abs().max() * 2 ** -8
        assert (g - t).abs().max() <= 3 * (r - t).abs().max() + step
    for name in ("running_mean", "running_var"):
        assert torch.allclose(getattr(ours, name), getattr(exact, name), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["nchw", "eval", "wide", "odd positions", "float64"])
def test_other_cases_are_torchs_own_path(case):
    """Bit for bit torch's: NCHW maps, eval mode, 16 channels or more, positions not a multiple of the factor."""
    shape, dtype = {"nchw": ((4, 12, 8, 8), None), "eval": ((4, 12, 8, 8), None), "wide": ((4, 16, 8, 8), None),
                    "odd positions": ((3, 12, 5, 5), None), "float64": ((4, 12, 8, 8), torch.float64)}[case]
    x = _map(shape)
    if case == "nchw":
        x = x.contiguous()
    if dtype is not None:
        x = x.to(dtype)
    reference, ours = _pair(shape[1])
    if dtype is not None:
        reference.to(dtype), ours.to(dtype)
    if case == "eval":
        reference.eval(), ours.eval()
    assert not takes_wide_view(x, ours)
    assert torch.equal(ours(x), reference(x))
    assert torch.equal(ours.running_var, reference.running_var)


def test_in_place_relu_after_it_and_gradients_through_a_preact_conv():
    """PreActConv's ReLU works in place on the norm's output; the conv's gradients match a copy whose norm is
    torch's BatchNorm2d."""
    torch.manual_seed(0)
    ours = PreActConv(12, 12, 3, groups=12).to(memory_format=CL)
    reference = copy.deepcopy(ours)
    plain = nn.BatchNorm2d(12)
    plain.load_state_dict(ours.norm.state_dict())
    reference.norm = plain
    x = _map((4, 12, 8, 8))
    assert isinstance(ours.norm, BatchNorm2d) and takes_wide_view(x, ours.norm)
    grads = []
    for module in (reference, ours):
        x_ = x.clone().requires_grad_()
        module(x_).square().sum().backward()
        grads.append([x_.grad] + [p.grad for p in module.parameters()])
    for e, g in zip(*grads):
        assert _close(g.double(), e.double(), 1e-5)


def test_torchscript_and_state_dict_keys():
    reference, ours = _pair(12)
    assert list(ours.state_dict()) == list(reference.state_dict())
    scripted = torch.jit.script(copy.deepcopy(ours))
    x = _map((4, 12, 8, 8))
    assert _close(scripted(x).double(), reference(x).double(), 1e-5)
    assert torch.allclose(scripted.running_mean, reference.running_mean, atol=1e-6)
    scripted.eval(), reference.eval()
    assert torch.equal(scripted(x), reference(x))


def test_hcgnet_training_step_matches_torchs_batch_norm():
    """A narrow HCGNet (k = 8) trained one step in channels_last: losses, every gradient and the running statistics
    equal those of a copy whose 2-d norms are torch's own BatchNorm2d."""
    torch.manual_seed(0)
    model = hcgnet.create_model("HCGNet-(2,2,2)-(k=8,8,8)", num_classes=3).to(memory_format=CL)
    reference = copy.deepcopy(model)
    for name, module in list(reference.named_modules()):
        if isinstance(module, BatchNorm2d):
            plain = nn.BatchNorm2d(module.num_features)
            plain.load_state_dict(module.state_dict())
            parent = reference.get_submodule(name.rsplit(".", 1)[0])
            setattr(parent, name.rsplit(".", 1)[1], plain)
    assert not any(isinstance(m, BatchNorm2d) for m in reference.modules())
    x = torch.randn(8, 3, 16, 16).contiguous(memory_format=CL)
    labels = torch.arange(8) % 3
    for net in (model, reference):
        torch.nn.functional.cross_entropy(net(x), labels).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        # atol: biases in front of a softmax or a BatchNorm get only rounding noise (their true gradient is 0)
        assert (p.grad - q.grad).abs().max() <= 1e-4 * q.grad.abs().max() + 1e-6, name
    for (name, b), c in zip(model.named_buffers(), reference.buffers()):
        assert torch.allclose(b.double(), c.double(), rtol=1e-5, atol=1e-6), name
    assert math.isfinite(sum(p.grad.sum().item() for p in model.parameters()))
