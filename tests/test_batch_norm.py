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


# Inside torch.compile on a CPU: batch statistics from per-image sums (hcgnet.layers.batch_norm._BatchSumsNorm).

def _aten_ops(module, x):
    """The ATen operators of ``module``'s compiled forward and backward graphs, from one training step."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    ops = set()

    def record(graph_module, example_inputs):
        ops.update(str(node.target) for node in graph_module.graph.nodes if node.op == "call_function")
        return make_boxed_func(graph_module.forward)

    torch._dynamo.reset()
    compiled = torch.compile(module, backend=aot_autograd(fw_compiler=record, bw_compiler=record))
    compiled(x.clone().requires_grad_()).sum().backward()
    return ops


@pytest.mark.parametrize("memory_format", [CL, torch.contiguous_format])
def test_compiled_training_takes_batch_sums_not_torchs_batch_norm(memory_format):
    """Compiled, a training norm is sums and pointwise operators (no ATen batch norm for Inductor to lower into
    its Welford reductions); in eval mode it stays torch's operator; eager never takes the path."""
    _, ours = _pair(24)
    x = _map((4, 24, 6, 6)).contiguous(memory_format=memory_format)
    ops = _aten_ops(ours.train(), x)
    assert "aten.sum.dim_IntList" in ops and not any("batch_norm" in op for op in ops), ops
    assert any("batch_norm" in op for op in _aten_ops(ours.eval(), x))
    from hcgnet.layers.batch_norm import takes_batch_sums

    assert not takes_batch_sums(x, ours.train())


def _float64_oracle(norm, x, grad, steps=2):
    """``_run`` on a float64 copy of torch's BatchNorm2d with ``norm``'s state, and its running statistics."""
    reference = nn.BatchNorm2d(norm.num_features, eps=norm.eps, momentum=norm.momentum, affine=norm.affine).double()
    reference.load_state_dict(norm.state_dict())
    out = _run(reference, x.double(), grad.double(), steps)
    return out + [reference.running_mean, reference.running_var, reference.num_batches_tracked]


def _compiled_run(norm, x, grad, backend, steps=2):
    torch._dynamo.reset()
    compiled = torch.compile(norm, backend=backend)
    out = _run(compiled, x, grad, steps)
    return out + [norm.running_mean, norm.running_var, norm.num_batches_tracked]


@pytest.mark.parametrize("memory_format", [CL, torch.contiguous_format])
@pytest.mark.parametrize("offset", [0.0, 20.0, 1000.0])
@pytest.mark.parametrize("kwargs", [{}, {"affine": False}, {"momentum": None}])
def test_batch_sums_against_float64(memory_format, offset, kwargs):
    """Outputs, input/weight/bias gradients and running statistics (two steps: momentum and the cumulative average
    both act) of the compiled float32 path, against torch's BatchNorm2d in float64. Channel means up to 1000 times
    their spread: unshifted, E[x^2] - E[x]^2 would lose the variance there (float32 keeps 7 digits of 1e6 + 4)."""
    _, ours = _pair(12, **kwargs)
    x = (_map((4, 12, 7, 9)) + offset).contiguous(memory_format=memory_format)
    grad = _grad(x).contiguous(memory_format=memory_format)
    expected = _float64_oracle(copy.deepcopy(ours), x, grad)
    got = _compiled_run(ours, x, grad, "aot_eager")
    # The inputs themselves are float32: near 1000 their rounding alone moves x - mean by 3e-5 of 1.
    rtol = 1e-5 if offset < 100 else 2e-4
    for name, g, e in zip(("output", "grad x", "grad weight", "grad bias", "running mean", "running var"), got, expected):
        assert _close(g.double(), e.double(), rtol), name
    assert int(got[-1]) == int(expected[-1]) == 2


@pytest.mark.parametrize("memory_format", [CL, torch.contiguous_format])
def test_batch_sums_under_inductor_are_as_close_to_float64_as_torchs_kernel(memory_format):
    """Inductor's kernels for the path (its reduction order, not the eager operators aot_eager runs): every result
    within 4x torch's own float32 kernel's distance from float64, or 1e-6 of its scale."""
    reference, ours = _pair(12)
    x = (_map((4, 12, 7, 9)) + 1000.0).contiguous(memory_format=memory_format)
    grad = _grad(x).contiguous(memory_format=memory_format)
    expected = _float64_oracle(copy.deepcopy(reference), x, grad)
    torchs = _run(reference, x, grad) + [reference.running_mean, reference.running_var]
    got = _compiled_run(ours, x, grad, "inductor")
    for name, g, t, e in zip(("output", "grad x", "grad weight", "grad bias", "running mean", "running var"),
                             got, torchs, expected):
        scale = e.abs().max().item()
        ours_error, torchs_error = ((g.double() - e).abs().max().item(), (t.double() - e).abs().max().item())
        assert ours_error <= max(4 * torchs_error, 1e-6 * scale), (name, ours_error, torchs_error)


def test_batch_sums_of_a_bf16_map_round_once():
    """A bf16 map with float32 affine weights (as under autocast): statistics and normalisation in float32, the
    output rounded to bf16 once, so within one bf16 rounding (2^-8 relative) of float64 on the same bf16 input;
    running statistics and parameter gradients (float32) much closer."""
    _, ours = _pair(12)
    x = _map((4, 12, 7, 9), dtype=torch.bfloat16)
    grad = _grad(x).to(torch.bfloat16)
    expected = _float64_oracle(copy.deepcopy(ours), x, grad)
    got = _compiled_run(ours, x, grad, "aot_eager")
    assert got[0].dtype == torch.float64 and ours.weight.dtype == torch.float32  # _run returns float64 copies
    for name, g, e, rtol in zip(("output", "grad x", "grad weight", "grad bias", "running mean", "running var"), got,
                                expected, (2 ** -8, 2 ** -8, 1e-5, 1e-5, 1e-5, 1e-5)):
        assert _close(g, e.double(), rtol), name
