"""Pre-activation convolution: BN -> ReLU -> Conv, the unit every HCGNet convolution is built from."""
from torch import Tensor, nn


class PreActConv(nn.Module):
    """BatchNorm, ReLU, then a bias-free convolution with "same" padding.

    The normalisation sits in front so that a dense concatenation of raw outputs can feed it
    (DenseNet's composite function). ``groups == in_channels == out_channels`` gives a depthwise conv.
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
        self.norm = nn.BatchNorm2d(in_channels)
        self.act = nn.ReLU(inplace=True)
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
        return self.conv(self.act(self.norm(x)))
