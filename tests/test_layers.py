"""The building blocks against the paper's equations, and the gates as plug-ins in another network."""
import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.models.resnet import BasicBlock, ResNet

from hcgnet.layers import (
    DilatedDepthwiseConv2d,
    AttentionPool,
    BatchOfOneError,
    ForgetGate,
    GroupConv2d,
    MultiScaleExcitationCell,
    PreActConv,
    SMGModule,
    SqueezeCell,
    UpdateGate,
)
from hcgnet.layers.conv import _DilatedDepthwiseConvFn, _phases
from hcgnet.errors import ModelSpecError


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _reference_pool(pool: AttentionPool, x: torch.Tensor) -> torch.Tensor:
    """Eqs. 5-6 written out: softmax of the 1x1 scores over all positions, weighted sum per channel."""
    s = pool.score(x)  # (B, 1, H, W)
    weights = torch.softmax(s.flatten(1), dim=1).view_as(s)
    return (x * weights).sum(dim=(2, 3))


def test_preact_conv_is_bn_relu_conv_with_same_padding():
    conv = PreActConv(8, 16, 3, stride=2, groups=4, dilation=1).eval()
    x = torch.randn(2, 8, 9, 12)
    expected = conv.conv(torch.relu(conv.norm(x)))
    assert torch.equal(conv(x), expected)
    assert conv(x).shape == (2, 16, 5, 6)
    depthwise = PreActConv(8, 8, 3, groups=8, dilation=2)
    assert depthwise.conv.weight.shape == (8, 1, 3, 3)
    assert depthwise(x).shape == x.shape  # padding 2 keeps the size with dilation 2
    assert conv.conv.bias is None


def _rounding_bound(dtype, exact, abs_sum, terms):
    """How far any CPU kernel's result may be from the exact (float64) sum of ``terms`` products of values
    already in ``dtype``: the final rounding to ``dtype`` (unit roundoff u), partial sums rounded to
    ``dtype`` at most ceil(log2 terms) times along a term's path (a blocked or pairwise reduction, as
    oneDNN's AVX2 bf16 kernels do), and float32 accumulation ((terms - 1) float32 roundings). Each
    rounding moves a partial sum by at most u times the sum of the |products| (``abs_sum``)."""
    u, u32 = torch.finfo(dtype).eps / 2, torch.finfo(torch.float32).eps / 2
    return u * exact.abs() + (math.ceil(math.log2(terms)) * u + (terms - 1) * u32) * abs_sum


@pytest.mark.numerics
@pytest.mark.parametrize("size", [(8, 8), (7, 10), (5, 3), (1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dilated_depthwise_fast_backward_gives_the_dilated_conv_gradients(size, channels_last, dtype):
    """The flipped-kernel input gradient and the phase-map weight gradient, and torch's own dilated conv,
    both within rounding of the float64 sums (odd sides too). Not fast against torch's kernel: in bf16
    that kernel's rounding differs from CPU to CPU (oneDNN's AVX2 kernels round partial sums)."""
    conv = DilatedDepthwiseConv2d(6)
    x = torch.randn(3, 6, *size).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(3, 6, *size).to(dtype)

    def exact(x, weight, grad):  # float64 output and gradients of the same (already rounded) values
        x, weight = x.double().requires_grad_(), weight.double().requires_grad_()
        y = nn.functional.conv2d(x, weight, padding=2, dilation=2, groups=6)
        return (y, *torch.autograd.grad(y, (x, weight), grad.double()))

    weight = conv.weight.detach().to(dtype)
    sums, abs_sums = exact(x, weight, grad), exact(x.abs(), weight.abs(), grad.abs())
    terms = (9, 9, 3 * size[0] * size[1])  # products per output, input-gradient and weight-gradient value
    for fn in (lambda t: nn.functional.conv2d(t, conv.weight.to(dtype), padding=2, dilation=2, groups=6),
               conv.forward_fast_backward):
        xi = x.detach().clone().requires_grad_()
        y = fn(xi)
        got = (y, *torch.autograd.grad(y, (xi, conv.weight), grad))
        assert got[2].dtype == torch.float32  # the parameter's gradient in the parameter's dtype
        for g, e, a, n in zip(got, sums, abs_sums, terms):
            error = (g.double() - e).abs()
            assert (error <= _rounding_bound(dtype, e, a, n)).all(), error.max()


@pytest.mark.parametrize("size", [(8, 8), (7, 10), (5, 3)])
def test_phase_maps_are_the_strided_sub_maps_in_the_input_layout(size):
    """The weight gradient's phase maps: x[..., i::2, j::2] (zero-padded to even sides) stacked along the batch,
    phase (i, j) at images (2i + j) * B ..., and channels_last for a channels_last map (one layout for oneDNN)."""
    x = torch.randn(3, 6, *size)
    padded = nn.functional.pad(x, (0, size[1] % 2, 0, size[0] % 2))
    expected = torch.cat([padded[..., i::2, j::2] for i in range(2) for j in range(2)])
    for layout in (torch.contiguous_format, torch.channels_last):
        got = _phases(x.contiguous(memory_format=layout), 2)
        assert torch.equal(got, expected)
        assert got.is_contiguous(memory_format=layout)


def _compiled_graphs_in_training_then_inference(module, x):
    """The FX graphs dynamo captures for ``module(x)`` with gradients on, then under ``no_grad``."""
    graphs = []
    torch._dynamo.reset()
    compiled = torch.compile(module, backend=lambda gm, _: graphs.append(gm) or gm, fullgraph=True)
    compiled(x)
    with torch.no_grad():
        compiled(x)
    return graphs


def _assert_exports_keep_the_plain_conv(conv, x):
    """``torch.export``, even with gradients on, keeps the plain conv that its consumers know, for NCHW,
    channels_last and bf16 inputs."""
    for example in (x, x.contiguous(memory_format=torch.channels_last), x.bfloat16()):
        exported = torch.export.export(conv.to(example.dtype), (example,)).graph.nodes
        assert [n.target for n in exported if n.op == "call_function"] == [torch.ops.aten.conv2d.default]
    conv.float()


def test_dilated_depthwise_takes_the_fast_backward_for_cpu_bf16_channels_last_or_compiled_training(monkeypatch):
    conv = DilatedDepthwiseConv2d(4)
    calls = []
    monkeypatch.setattr(_DilatedDepthwiseConvFn, "apply", lambda x, *args: calls.append(x.dtype) or x)
    x = torch.randn(2, 4, 6, 6)
    conv(x)  # eager fp32 NCHW training: standard backward
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x.bfloat16())  # bf16 training: fast backward
        with torch.no_grad():
            conv(x.bfloat16())  # bf16 inference: nothing to differentiate
    assert calls == [torch.bfloat16]
    conv(x.contiguous(memory_format=torch.channels_last))  # eager fp32 channels_last training: fast backward
    with torch.no_grad():
        conv(x.contiguous(memory_format=torch.channels_last))
    assert calls == [torch.bfloat16, torch.float32]
    monkeypatch.undo()
    # compiled (fp32), the graph holds the autograd function in training and the plain conv in inference
    fast = [any(n.target is torch.ops.higher_order.autograd_function_apply for n in g.graph.nodes)
            for g in _compiled_graphs_in_training_then_inference(conv, x)]
    assert fast == [True, False]
    _assert_exports_keep_the_plain_conv(conv, x)
    assert isinstance(PreActConv(4, 4, 3, groups=4, dilation=2).conv, DilatedDepthwiseConv2d)
    assert type(PreActConv(4, 4, 3, groups=4).conv) is nn.Conv2d


@pytest.mark.numerics
@pytest.mark.parametrize("size", [(8, 8), (7, 10), (1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_conv_in_training_gives_the_group_conv_and_its_gradients(size, channels_last, dtype):
    """GroupConv2d's training form (a transposed conv of the transposed, flipped kernel) within rounding of
    the float64 group conv, its input gradient and its weight gradient; bf16 as the networks run it, under
    autocast (the weight's gradient then in fp32)."""
    conv = GroupConv2d(16, 8, 3, groups=4)  # 4 inputs and 2 outputs per group
    x = torch.randn(3, 16, *size).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(3, 8, *size).to(dtype)

    def exact(x, weight, grad):
        x, weight = x.double().requires_grad_(), weight.double().requires_grad_()
        y = nn.functional.conv2d(x, weight, padding=1, groups=4)
        return (y, *torch.autograd.grad(y, (x, weight), grad.double()))

    weight = conv.weight.detach().to(dtype)
    sums, abs_sums = exact(x, weight, grad), exact(x.abs(), weight.abs(), grad.abs())
    terms = (4 * 9, 2 * 9, 3 * size[0] * size[1])  # products per output, input-gradient and weight-gradient value
    xi = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = conv(xi)
    got = (y, *torch.autograd.grad(y, (xi, conv.weight), grad))
    assert got[2].dtype == torch.float32
    for g, e, a, n in zip(got, sums, abs_sums, terms):
        error = (g.double() - e).abs()
        assert (error <= _rounding_bound(dtype, e, a, n)).all(), error.max()


class _Convolutions(TorchDispatchMode):
    """Records whether each ATen convolution that runs is a transposed one."""

    def __init__(self):
        super().__init__()
        self.transposed = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            self.transposed.append(args[6])
        return func(*args, **(kwargs or {}))


def test_group_conv_is_transposed_in_cpu_training_only():
    conv = GroupConv2d(16, 8, 3, groups=4)
    x = torch.randn(2, 16, 6, 6)
    for example in (x, x.contiguous(memory_format=torch.channels_last)):
        with _Convolutions() as seen, torch.no_grad():
            conv(example)  # inference: the plain conv
        assert seen.transposed == [False]
        with _Convolutions() as seen:
            conv(example)  # fp32 training
        assert seen.transposed == [True]
        with _Convolutions() as seen:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                conv(example)  # bf16 training
        assert seen.transposed == [True]
    # compiled: the transposed conv in training, the plain one in inference
    transposed = [any(n.target in (torch.conv_transpose2d, nn.functional.conv_transpose2d) for n in g.graph.nodes)
                  for g in _compiled_graphs_in_training_then_inference(conv, x)]
    assert transposed == [True, False]
    _assert_exports_keep_the_plain_conv(conv, x)
    scripted = torch.jit.script(conv)
    torch.testing.assert_close(scripted(x), nn.functional.conv2d(x, conv.weight, padding=1, groups=4))


def test_preact_conv_takes_the_group_conv_layer_for_stride_1_group_convs_that_reduce_channels():
    assert type(PreActConv(48, 12, 3, groups=4).conv) is GroupConv2d  # a hybrid block's squeeze cell
    assert type(PreActConv(90, 60, 3, stride=2).conv) is nn.Conv2d  # a transition's
    assert type(PreActConv(12, 48, 3, groups=4).conv) is nn.Conv2d  # more outputs than inputs per group
    assert type(PreActConv(16, 8, 3, stride=2, groups=4).conv) is nn.Conv2d
    assert type(PreActConv(8, 4, 1).conv) is nn.Conv2d
    assert type(PreActConv(8, 8, 3, groups=8).conv) is nn.Conv2d  # depthwise
    assert type(PreActConv(16, 8, 2, groups=4).conv) is nn.Conv2d  # an even kernel has no "same" padding
    with pytest.raises(ValueError, match="odd kernel"):
        GroupConv2d(16, 8, 2, groups=4)
    layer = PreActConv(16, 8, 3, groups=4).conv
    assert (layer.padding, layer.groups, layer.bias, layer.weight.shape) == ((1, 1), 4, None, (8, 4, 3, 3))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("size", [(5, 7), (1, 1), (16, 3), (32, 32)])
def test_attention_pool_matches_equations_with_their_gradients(size, channels_last):
    """Each memory layout has its own formula (AttentionPool's docstring): both give eqs. 5-6 and their
    gradients with respect to the map, the scoring weights and the bias (zero: a softmax ignores a shift)."""
    pool = AttentionPool(6)
    x = torch.randn(3, 6, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad = torch.randn(3, 6)
    results = []
    for f in (pool, lambda t: _reference_pool(pool, t)):
        pool.zero_grad()
        x.grad = None
        out = f(x)
        out.backward(grad)
        results.append((out.detach(), x.grad, pool.score.weight.grad, pool.score.bias.grad))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert results[0][3].abs().item() < 1e-6


def test_compiled_attention_pool_fuses_its_products_and_matches_equations():
    """Under torch.compile a channels_last map is scored and pooled by products and sums (which Inductor fuses),
    not by the matrix products eager uses for that layout; outputs and gradients still give eqs. 5-6, in float64
    to 1e-12."""
    pool = AttentionPool(6).double()
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    graphs = []

    def backend(gm, example_inputs):  # record what Dynamo traced, run it as traced
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(pool, backend=backend, fullgraph=True)
    grad = torch.randn(3, 6, dtype=torch.float64)
    results = []
    for f in (compiled, lambda t: _reference_pool(pool, t)):
        pool.zero_grad()
        t = x.clone().requires_grad_(True)
        out = f(t)
        out.backward(grad)
        results.append((out.detach(), t.grad, pool.score.weight.grad))
    torch._dynamo.reset()
    targets = {str(node.target) for node in graphs[0].graph.nodes if node.op in ("call_function", "call_method")}
    assert not any(name in target for target in targets for name in ("linear", "bmm", "matmul", "mm")), targets
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


def test_attention_pool_onnx_export_scores_the_map_with_a_convolution(tmp_path):
    """An ONNX export scores the map with the 1x1 convolution itself, on the map as it is (position_scores: OpenVINO
    would reorder a map reshaped for a matrix product), and pools it with one batched matrix product: the
    map feeds a Conv and the pooling's Reshape (besides Shape), one MatMul is left, and ONNX Runtime gives eqs. 5-6
    at sizes other than the traced one."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    pool = AttentionPool(6).eval()
    height, width = torch.export.Dim("height", min=1, max=64), torch.export.Dim("width", min=1, max=64)
    program = torch.onnx.export(pool, (torch.randn(2, 6, 5, 7),), dynamic_shapes={"x": {2: height, 3: width}},
                                dynamo=True, verbose=False)
    program.save(str(tmp_path / "pool.onnx"))
    graph = onnx.load(str(tmp_path / "pool.onnx")).graph
    consumers = sorted(n.op_type for n in graph.node if graph.input[0].name in n.input and n.op_type != "Shape")
    assert consumers == ["Conv", "Reshape"], consumers
    assert [node.op_type for node in graph.node if node.op_type in ("MatMul", "Gemm")] == ["MatMul"]
    session = onnxruntime.InferenceSession(str(tmp_path / "pool.onnx"), providers=["CPUExecutionProvider"])
    for size in [(5, 7), (1, 1), (16, 3)]:
        x = torch.randn(2, 6, *size)
        got = torch.from_numpy(session.run(None, {graph.input[0].name: x.numpy()})[0])
        with torch.no_grad():
            torch.testing.assert_close(got, _reference_pool(pool, x), atol=1e-6, rtol=1e-5)


def test_attention_pool_hook_sees_a_normalised_map():
    pool = AttentionPool(4)
    seen = []
    pool.attention.register_forward_hook(lambda m, i, o: seen.append(o))
    pool(torch.randn(2, 4, 5, 6))
    assert seen[0].shape == (2, 1, 5, 6)
    torch.testing.assert_close(seen[0].sum(dim=(1, 2, 3)), torch.ones(2))


def test_attention_pool_with_constant_scores_is_global_average():
    pool = AttentionPool(4)
    nn.init.zeros_(pool.score.weight)
    x = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(pool(x), x.mean(dim=(2, 3)))


def test_forget_gate_matches_eq_11_and_decays():
    gate = ForgetGate(8, reduction=2).eval()
    x = torch.randn(3, 8, 5, 4)
    z = _reference_pool(gate.context, x)
    b = gate.bottleneck
    f = torch.sigmoid(gate.expand(torch.tanh(b.norm(b.fc(z)))))
    torch.testing.assert_close(gate(x), x * f[:, :, None, None])
    assert 0 < f.min() and f.max() < 1
    assert gate.bottleneck.fc.out_features == 4


def test_update_gate_matches_eqs_7_to_10():
    gate = UpdateGate(6, reduction=2).eval()
    a, b = torch.randn(2, 3, 6, 5, 7).unbind(0)
    za, zb = _reference_pool(gate.context_a, a), _reference_pool(gate.context_b, b)
    bn = gate.bottleneck
    h = torch.tanh(bn.norm(bn.fc(torch.cat([za, zb], dim=1))))
    ua, ub = gate.expand_a(h).exp(), gate.expand_b(h).exp()
    ua, ub = ua / (ua + ub), ub / (ua + ub)
    v = gate(a, b)
    assert v.shape == (3, 6, 1, 1)
    torch.testing.assert_close(v.flatten(1), ua * za + ub * zb)
    assert gate.bottleneck.fc.out_features == 2 * 6 // 2


def test_update_gate_branch_weights_sum_to_one():
    gate = UpdateGate(5, reduction=4)
    seen = []
    gate.branch_weights.register_forward_hook(lambda m, i, o: seen.append(o))
    gate(torch.randn(4, 5, 3, 3), torch.randn(4, 5, 3, 3))
    assert seen[0].shape == (4, 2, 5)
    torch.testing.assert_close(seen[0].sum(dim=1), torch.ones(4, 5))


def test_gate_activation_is_a_switch():
    gate = ForgetGate(8, act_layer=nn.ReLU)
    assert isinstance(gate.bottleneck.act, nn.ReLU)
    assert isinstance(ForgetGate(8).bottleneck.act, nn.Tanh)


def test_training_on_a_batch_of_one_is_refused_clearly():
    smg = SMGModule(8, 4)
    with pytest.raises(BatchOfOneError, match="batch of one"):
        smg(torch.randn(1, 8, 6, 6))
    smg.eval()
    assert smg(torch.randn(1, 8, 6, 6)).shape == (1, 4, 6, 6)


def test_squeeze_and_excitation_cells_shapes():
    cell = SqueezeCell(20, 8, 32, groups=4, stride=2)
    assert cell.conv1x1.conv.weight.shape == (32, 20, 1, 1)
    assert cell.conv3x3.conv.weight.shape == (8, 8, 3, 3)
    y = cell(torch.randn(2, 20, 7, 10))
    assert y.shape == (2, 8, 4, 5)
    excite = MultiScaleExcitationCell(8)
    a, b = excite(y)
    assert a.shape == b.shape == y.shape
    assert excite.conv3x3_dilated.conv.dilation == (2, 2)


def test_smg_output_is_forget_plus_update():
    smg = SMGModule(16, 8, alpha=4, groups=4).eval()
    assert smg.squeeze.conv1x1.conv.out_channels == math.floor(4 * 8)
    x = torch.randn(2, 16, 6, 9)
    squeezed = smg.squeeze(x)
    expected = smg.forget_gate(squeezed) + smg.update_gate(*smg.excite(squeezed))
    torch.testing.assert_close(smg(x), expected)
    with pytest.raises(ModelSpecError, match=r"SMG output channels \(6\) must be a positive multiple of groups \(4\)"):
        SMGModule(16, 6, groups=4)


@pytest.mark.parametrize("build,message", [
    (lambda: ForgetGate(8, 0), "a gate's reduction must be a whole number of 1 or more, got 0"),
    (lambda: ForgetGate(8, 9), "reduction 9 leaves a gate over 8 channels without hidden units; use a reduction "
                               "of at most 8"),
    (lambda: UpdateGate(8, 17), "reduction 17 leaves a gate over 8 channels without hidden units; use a reduction "
                                "of at most 16"),   # the update gate's bottleneck reads both branches: 2C inputs
    (lambda: SMGModule(16, 8, groups=0), "groups must be a whole number of 1 or more, got 0"),
    (lambda: SMGModule(16, 8, alpha=0.1), "alpha 0.1 makes the squeeze cell floor(0.1 x 8) = 0 channels wide"),
    (lambda: SMGModule(16, 8, squeeze_channels=6), "squeeze_channels (6) must be a positive multiple of groups (4)"),
    (lambda: ForgetGate(0), "ForgetGate's channels must be a whole number of 1 or more, got 0"),
    (lambda: UpdateGate(2.5), "UpdateGate's channels must be a whole number of 1 or more, got 2.5"),
    (lambda: AttentionPool(-1), "AttentionPool's channels must be a whole number of 1 or more, got -1"),
    (lambda: SMGModule(0, 8), "SMGModule's in_channels must be a whole number of 1 or more, got 0"),
    (lambda: PreActConv(8, 0), "PreActConv's out_channels must be a whole number of 1 or more, got 0"),
    (lambda: SqueezeCell(-2, 8, 8), "SqueezeCell's in_channels must be a whole number of 1 or more, got -2"),
    (lambda: MultiScaleExcitationCell(1.5), "MultiScaleExcitationCell's channels must be a whole number of 1 or more"),
])
def test_blocks_refuse_settings_they_cannot_be_built_with_in_one_line(build, message):
    with pytest.raises(ModelSpecError) as info:
        build()
    assert message in str(info.value) and "\n" not in str(info.value)
    assert ForgetGate(8, 8).bottleneck.fc.out_features == 1 and UpdateGate(8, 16).expand_a.in_features == 1


@pytest.mark.parametrize("call,message", [
    (lambda: ForgetGate(8)(torch.randn(2, 16, 4, 4)), "ForgetGate over 8 channels takes (N, 8, H, W) maps, got a "
                                                      "tensor of shape (2, 16, 4, 4)"),
    (lambda: ForgetGate(8)(torch.randn(8, 4, 4)), "got a tensor of shape (8, 4, 4)"),
    (lambda: UpdateGate(8)(torch.randn(2, 8, 4, 4), torch.randn(2, 4, 4, 4)), "UpdateGate over 8 channels takes"),
    (lambda: SMGModule(16, 16)(torch.randn(2, 8, 8, 8)), "SMGModule over 16 channels takes (N, 16, H, W) maps"),
    (lambda: AttentionPool(3)(torch.randn(2, 3, 5)), "AttentionPool over 3 channels takes (N, 3, H, W) maps"),
    (lambda: PreActConv(8, 4, 3)(torch.randn(2, 16, 5, 5)), "PreActConv over 8 channels takes (N, 8, H, W) maps, got "
                                                             "a tensor of shape (2, 16, 5, 5)"),
    (lambda: SqueezeCell(16, 8, 8)(torch.randn(2, 8, 5, 5)), "SqueezeCell over 16 channels takes (N, 16, H, W) maps"),
    (lambda: MultiScaleExcitationCell(8)(torch.randn(2, 4, 5, 5)), "MultiScaleExcitationCell over 8 channels takes"),
])
def test_blocks_given_maps_of_another_shape_say_what_they_take_in_one_line(call, message):
    with pytest.raises(ModelSpecError) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_shape_checks_leave_scripted_traced_and_compiled_blocks_working():
    torch.manual_seed(0)
    smg = SMGModule(16, 8).eval()
    x = torch.randn(2, 16, 6, 9)
    with torch.no_grad():
        expected = smg(x)
        torch.testing.assert_close(torch.jit.script(smg)(x), expected)
        torch.testing.assert_close(torch.fx.symbolic_trace(smg)(x), expected)
        torch.testing.assert_close(torch.compile(smg, backend="eager", fullgraph=True)(x), expected)


class GatedBasicBlock(BasicBlock):
    """torchvision's ResNet basic block with HCGNet's gates plugged in (as in the gates' docstring):
    the forget gate decays the shortcut, the update gate adds global context from two branches."""

    def __init__(self, inplanes, planes, *args, **kwargs):
        super().__init__(inplanes, planes, *args, **kwargs)
        self.forget_gate = ForgetGate(planes)
        self.update_gate = UpdateGate(planes)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        mid = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(mid))
        return self.relu(out + self.forget_gate(identity) + self.update_gate(mid, out))


def test_gates_plug_into_a_torchvision_resnet_and_train():
    model = ResNet(GatedBasicBlock, [1, 1, 1, 1], num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(4, 3, 32, 48), torch.tensor([0, 1, 2, 3])
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    named = dict(model.named_parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in named.values())
    gate_params = [n for n in named if "_gate." in n and not n.endswith("score.bias")]
    assert len(gate_params) == 4 * (7 + 10)  # per block: forget 7 + update 10 tensors (score biases aside)
    assert all(named[n].grad.abs().sum() > 0 for n in gate_params)
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert torch.isfinite(nn.functional.cross_entropy(model(x), y))


class _SoftmaxDtypes(torch.overrides.TorchFunctionMode):
    """Records the input dtype of every softmax across the update gate's two branches ((B, 2, C), dim 1)."""

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.softmax, torch.Tensor.softmax, nn.functional.softmax):
            x, dim = args[0], kwargs.get("dim", args[1] if len(args) > 1 else None)
            if x.dim() == 3 and x.shape[1] == 2 and dim == 1:
                self.dtypes.append(x.dtype)
        return func(*args, **kwargs)


@pytest.mark.numerics
def test_update_gate_branch_softmax_runs_in_float32_under_bf16_autocast():
    gate = UpdateGate(8).eval()
    a, b = torch.randn(3, 8, 6, 6), torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        expected = gate(a, b)
        spy = _SoftmaxDtypes()
        with torch.autocast("cpu", dtype=torch.bfloat16), spy:
            got = gate(a, b)
    assert spy.dtypes == [torch.float32]
    # the rest of the gate runs in bf16: within bf16 rounding of the fp32 result
    torch.testing.assert_close(got.float(), expected, rtol=3e-2, atol=3e-2)


def test_a_float64_model_stays_float64_through_softmaxes_and_frozen_norms():
    """The softmaxes run in float32 under autocast (bf16 logits) but must not round a float64 model to float32:
    the attention pool, the update gate's branch softmax and FrozenBatchNorm against float64 written out."""
    from hcgnet.layers import FrozenBatchNorm
    from hcgnet.layers.gates import UpdateGate

    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    pool = AttentionPool(6).double()
    w, b = pool.score.weight.view(1, 6, 1, 1), pool.score.bias
    weights = torch.softmax(((x * w).sum(1) + b).flatten(1), dim=1).view(2, 1, 5, 7)
    torch.testing.assert_close(pool(x), (x * weights).sum((2, 3)), rtol=1e-13, atol=1e-15)

    norm = FrozenBatchNorm(6)
    norm.running_mean, norm.running_var = torch.randn(6).double(), torch.rand(6).double() + 0.5
    norm.weight, norm.bias = torch.randn(6).double(), torch.randn(6).double()
    view = (1, 6, 1, 1)
    expected = (x - norm.running_mean.view(view)) / (norm.running_var.view(view) + 1e-5).sqrt() * \
        norm.weight.view(view) + norm.bias.view(view)
    torch.testing.assert_close(norm(x), expected, rtol=1e-13, atol=1e-15)

    gate = UpdateGate(6).double().eval()
    a, c = torch.randn(2, 6, 5, 7, dtype=torch.float64), torch.randn(2, 6, 5, 7, dtype=torch.float64)
    z = torch.stack((gate.context_a(a), gate.context_b(c)), dim=1)
    h = gate.bottleneck(z.flatten(1))
    u = torch.softmax(torch.stack((gate.expand_a(h), gate.expand_b(h)), dim=1), dim=1)
    torch.testing.assert_close(gate(a, c), (u * z).sum(1)[:, :, None, None], rtol=1e-13, atol=1e-15)
