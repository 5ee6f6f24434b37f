"""Pre-activation convolution: BN -> ReLU -> Conv, the unit every HCGNet convolution is built from."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcgnet.errors import check_whole
from hcgnet.layers.batch_norm import BatchNorm2d
from hcgnet.layers.checks import check_maps
from hcgnet.layers.compiling import compiling_not_exporting


def _phases(x: Tensor, d: int) -> Tensor:
    """(B, C, H, W) -> (d*d*B, C, H/d, W/d): the d*d phase sub-maps ``x[..., i::d, j::d]`` stacked along
    the batch (sides padded with zeros to a multiple of d), in ``x``'s memory format: a channels_last map gives
    channels_last phase maps, so that oneDNN's weight gradient meets one layout (against NCHW phase maps: the
    compiled fp32 A1 step 0.979 of the time, eager bf16 channels_last backward passes 0.42-0.72; BENCHMARKS.md)."""
    b, c, h, w = x.shape
    x = F.pad(x, (0, -w % d, 0, -h % d))
    h, w = x.shape[-2] // d, x.shape[-1] // d
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        pixels = x.permute(0, 2, 3, 1).reshape(b, h, d, w, d, c).permute(2, 4, 0, 1, 3, 5)
        return pixels.reshape(d * d * b, h, w, c).permute(0, 3, 1, 2)
    return x.reshape(b, c, h, d, w, d).permute(3, 5, 0, 1, 2, 4).reshape(d * d * b, c, h, w)


class _DilatedDepthwiseConvFn(torch.autograd.Function):
    """A dilated depthwise "same" conv whose backward pass avoids oneDNN's dilated-backward kernels:

    * grad input: the same depthwise conv, with the kernel flipped, over the incoming gradient (a
      forward-pass kernel: for stride 1 and symmetric padding, correlation's transpose is correlation
      with the flipped kernel);
    * grad weight: each tap pairs ``x`` and the gradient at offsets that are multiples of d, so it is the
      undilated depthwise conv's weight gradient over the phase sub-maps stacked along the batch.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, dilation: int, padding: int) -> Tensor:
        w = weight.to(x.dtype)
        ctx.save_for_backward(x, w)
        ctx.conf = (dilation, padding, weight.dtype)
        return F.conv2d(x, w, None, 1, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        d, padding, weight_dtype = ctx.conf
        grad = grad.to(x.dtype)
        channels = x.shape[1]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, w.flip(-2, -1), None, 1, padding, d, channels)
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                _phases(grad, d), _phases(x, d), w, None, [1, 1], [padding // d] * 2, [1, 1], False, [0, 0],
                channels, [False, True, False])[1].to(weight_dtype)
        return grad_x, grad_w, None, None


class DilatedDepthwiseConv2d(nn.Conv2d):
    """A depthwise, stride-1, "same"-padded convolution with dilation ``d``: an ``nn.Conv2d`` in every
    respect (parameters, state dict, forward pass, export), with its own backward pass for CPU training
    in bfloat16, on channels_last maps, and under ``torch.compile`` (not an export).

    There torch's backward pass (torch 2.14, oneDNN) is slow, the weight gradient most of all (in bf16 3-9x
    the whole of hcgnet's, in fp32 channels_last 1.4-2.2x; ``benchmarks/dilated_depthwise.py``), and with
    channels_last maps of 30x30 or more its bf16 weight gradient is wrong (off by up to 1e20;
    ``tests/test_fast_paths.py``). So the gradients come from :class:`_DilatedDepthwiseConvFn`, which computes
    the same sums with the fast, undilated kernels. Eager fp32 NCHW keeps torch's (there hcgnet's is faster on
    some of A1's shapes and slower on others), as do GPUs and inference.
    """

    def __init__(self, channels: int, kernel_size: int = 3, dilation: int = 2) -> None:
        super().__init__(channels, channels, kernel_size, padding=dilation * (kernel_size - 1) // 2,
                         dilation=dilation, groups=channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(x, self.weight, self.bias)
        return dilated_depthwise_conv2d(x, self.weight, self.dilation[0], self.padding[0])

    @torch.jit.unused
    def forward_fast_backward(self, x: Tensor) -> Tensor:
        """The same forward pass, with gradients from :class:`_DilatedDepthwiseConvFn` whatever the input."""
        return _DilatedDepthwiseConvFn.apply(x, self.weight, self.dilation[0], self.padding[0])


def _cpu_training_not_export(x: Tensor) -> bool:
    """Where hcgnet's own forms of a convolution may run: gradients on, a CPU tensor, and not an export or a
    TorchScript trace (which keep the plain convolution their consumers know, whatever the dtype or layout;
    ``jit.trace`` checks its trace by running again without gradients, which would choose the other form)."""
    return (torch.is_grad_enabled() and x.device.type == "cpu" and not torch.compiler.is_exporting()
            and not torch.jit.is_tracing())


@torch.jit.unused
def dilated_depthwise_conv2d(x: Tensor, weight: Tensor, dilation: int, padding: int) -> Tensor:
    """The convolution of :class:`DilatedDepthwiseConv2d`, choosing its backward pass from the input.

    A leaf of FX graphs (``torch.fx.wrap`` below, which every tracer honours, torchvision's and timm's
    included): the choice reads the device, dtype and grad mode of the real tensor at run time, which a
    symbolic trace cannot branch on.
    """
    if _cpu_training_not_export(x) and (
            x.dtype == torch.bfloat16 or x.is_contiguous(memory_format=torch.channels_last)
            or compiling_not_exporting()):
        return _DilatedDepthwiseConvFn.apply(x, weight, dilation, padding)
    return F.conv2d(x, weight, None, 1, padding, dilation, weight.shape[0])


torch.fx.wrap("dilated_depthwise_conv2d")


def _transposed_kernel(weight: Tensor, groups: int) -> Tensor:
    """The kernel of the transposed convolution that equals a stride-1 group conv with ``weight``: per group,
    input and output channels swapped and the taps flipped, (G*o, i, k, k) -> (G*i, o, k, k)."""
    out_channels, per_group, k, k2 = weight.shape
    weight = weight.view(groups, out_channels // groups, per_group, k, k2).transpose(1, 2)
    return weight.reshape(groups * per_group, out_channels // groups, k, k2).flip(-2, -1)


@torch.jit.unused
def group_conv2d(x: Tensor, weight: Tensor, padding: int, groups: int) -> Tensor:
    """The convolution of :class:`GroupConv2d`, choosing its form from the input.

    In CPU training (gradients on, not an export) it is the transposed convolution of the transposed kernel:
    the same sums, with oneDNN's data-gradient kernel in the forward pass and, in the backward pass, its
    kernels for the roles swapped, which are the fast ones when each group has few outputs. A leaf of FX
    graphs, as :func:`dilated_depthwise_conv2d`.
    """
    if _cpu_training_not_export(x):
        return F.conv_transpose2d(x, _transposed_kernel(weight, groups), None, 1, padding, 0, groups)
    return F.conv2d(x, weight, None, 1, padding, 1, groups)


torch.fx.wrap("group_conv2d")


class GroupConv2d(nn.Conv2d):
    """A stride-1, "same"-padded group convolution with fewer output than input channels per group (the
    squeeze cell's 3x3 group conv in a hybrid block: 3-9 outputs per group in HCGNet-A1): an ``nn.Conv2d`` in
    every respect (parameters, state dict, forward pass, export), computed in CPU training as a transposed
    convolution (:func:`group_conv2d`).

    There oneDNN (torch 2.14) computes the plain form's forward pass and weight gradient at a fraction of its
    speed for the data gradient, whose roles the transposed form swaps in: forward and backward, A1's group
    convs take 0.53-0.54 of the time on NCHW maps and 0.69-0.86 on channels_last maps with 3 and 6 outputs
    per group in fp32 (0.37-0.44 and 0.85-0.91 in bf16), and break even with 9 (1.02-1.06; the whole A1
    step: ``BENCHMARKS.md``, ``benchmarks/group_conv.py``). GPUs, inference and exports keep the plain
    convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int) -> None:
        if kernel_size % 2 == 0:  # an even kernel has no "same" padding, and the two forms' sizes would differ
            raise ValueError(f"GroupConv2d needs an odd kernel size, not {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, groups=groups,
                         bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(x, self.weight, self.bias)
        return group_conv2d(x, self.weight, self.padding[0], self.groups)


class PreActConv(nn.Module):
    """BatchNorm, ReLU, then a bias-free convolution with "same" padding.

    The normalisation sits in front so that a dense concatenation of raw outputs can feed it
    (DenseNet's composite function). ``groups == in_channels == out_channels`` gives a depthwise conv
    (a :class:`DilatedDepthwiseConv2d` when dilated); a stride-1 group conv with fewer outputs than inputs is a
    :class:`GroupConv2d`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        check_whole("PreActConv's in_channels", in_channels)
        check_whole("PreActConv's out_channels", out_channels)
        self.in_channels = in_channels
        self.norm = BatchNorm2d(in_channels)
        self.act = nn.ReLU(inplace=True)
        if dilation > 1 and stride == 1 and groups == in_channels == out_channels:
            self.conv: nn.Conv2d = DilatedDepthwiseConv2d(in_channels, kernel_size, dilation)
        elif dilation == 1 and stride == 1 and kernel_size % 2 and 1 < groups and out_channels < in_channels:
            self.conv = GroupConv2d(in_channels, out_channels, kernel_size, groups)
        else:
            self.conv = nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=dilation * (kernel_size - 1) // 2,
                dilation=dilation,
                groups=groups,
                bias=False,
            )

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_maps(x, self.in_channels, "PreActConv")
        return self.conv(self.act(self.norm(x)))
