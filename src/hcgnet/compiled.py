"""Compiled inference: a model compiled by Inductor for one batch size, its weights frozen into constants.

Freezing (``torch._inductor.config.freezing``) lets Inductor treat the weights and BatchNorm statistics as
constants: it folds them, pre-packs the convolution weights for oneDNN and plans memory once. It needs an
eval-mode model whose weights do not change afterwards, which is what ``hcgnet eval`` and ``hcgnet predict``
have. The int8 path (:mod:`hcgnet.quantize`) compiles its quantized program the same way.

One compiled batch size serves every batch (:class:`PaddedBatch`): a recompilation takes minutes on a CPU.
"""
import warnings
from typing import Callable

import torch
from torch import nn


class PaddedBatch(nn.Module):
    """``module`` (compiled for batches of exactly ``batch`` images) on any batch: split into chunks of
    ``batch``, the last padded with zeros and its padding dropped from the output. One compiled shape instead of
    a recompilation (minutes) for every other batch size; in eval mode the images do not see each other (batch
    norm uses its running statistics), so padding changes no row."""

    def __init__(self, module: Callable[[torch.Tensor], torch.Tensor], batch: int) -> None:
        super().__init__()
        self.module, self.batch = module, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        outputs = []
        for chunk in x.split(self.batch):
            n = len(chunk)
            if n < self.batch:
                channels_last = chunk.dim() == 4 and not chunk.is_contiguous() and chunk.is_contiguous(
                    memory_format=torch.channels_last)
                chunk = torch.cat([chunk, chunk.new_zeros((self.batch - n, *chunk.shape[1:]))])
                if channels_last:  # cat gives NCHW here, which the compiled program would compile again for
                    chunk = chunk.contiguous(memory_format=torch.channels_last)
            # Freezing is set on every call, so that no call compiles without it (it is read at compile time).
            with inductor_config.patch(freezing=True), warnings.catch_warnings():
                # torch 2.14's int8 lowering copy-constructs a tensor; the notice is for torch, not for the user
                warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
                outputs.append(self.module(chunk)[:n])
        return torch.cat(outputs)


def compile_frozen(model: nn.Module, batch: int) -> nn.Module:
    """``model`` in eval mode, compiled by Inductor with its weights frozen, for batches of ``batch`` images and
    taking any batch (:class:`PaddedBatch`). The compilation happens on the first call (under the caller's
    autocast and memory format, which later calls must keep). The weights must not change afterwards: they are
    constants of the compiled program."""
    model.eval()
    return PaddedBatch(torch.compile(model, dynamic=False), batch)
