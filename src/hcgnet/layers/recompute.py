"""Activation recomputation (gradient checkpointing) that leaves BatchNorm running statistics alone.

Backward re-runs the forward of a checkpointed function; in training mode every BatchNorm inside would
update its running statistics a second time. During the re-run each norm's statistics buffers are swapped
for throw-away copies, so the model's buffers see exactly one update per forward, as without
checkpointing. Works for any module, not only HCGNet's.
"""
import contextlib
from typing import Callable, Iterator, List

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@contextlib.contextmanager
def statistics_frozen(module: nn.Module) -> Iterator[None]:
    """Inside the block, the norms of ``module`` update copies of their running statistics."""
    saved: List = []
    for norm in module.modules():
        if isinstance(norm, nn.modules.batchnorm._NormBase) and norm.training and norm.track_running_stats:
            for name in _STAT_BUFFERS:
                buffer = getattr(norm, name)
                if buffer is not None:
                    saved.append((norm, name, buffer))
                    setattr(norm, name, buffer.clone())
    try:
        yield
    finally:
        for norm, name, buffer in saved:
            setattr(norm, name, buffer)


def checkpoint_module(module: nn.Module, fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
    """``fn(*inputs)`` (which runs ``module``) without storing its intermediate tensors for backward."""
    if torch.compiler.is_compiling():
        # torch.compile traces the region once, functionally: its buffer updates happen once, in forward,
        # and the partitioner re-runs only the pure part in backward. (Dynamo cannot trace a context_fn.)
        return checkpoint(fn, *inputs, use_reentrant=False)
    return checkpoint(
        fn, *inputs, use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), statistics_frozen(module)),
    )
