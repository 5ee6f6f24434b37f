"""torchao's histogram observer with its range search run on Python floats: the same ranges, in a fraction of
the time.

``HistogramObserver._non_linear_param_search`` (torchao 0.18) narrows an activation's range in steps of
1e-5 of its mass; on every step it walks the cumulative histogram from each end of the range to the step's
bounds, each comparison indexing a tensor (a few microseconds). Where a few bins hold most of the mass (small
feature maps, flat images) it takes tens of thousands of steps: 0.16 s per observer, 32 s for the ~200
observers of a small HCGNet trained on 8x8 images, more than its calibration. :class:`HistogramObserver` here
takes the same steps, finding each bound by bisection in a list of the cumulative sums (nondecreasing: the
counts are not negative), each bound rounded to float32 as the tensor comparison rounds it, and runs through
the steps that move neither bin (most of them) in a loop of float arithmetic alone. It stops at the same bins;
``tests/test_observers.py`` holds it to torchao's own search on histograms of every shape, and
``benchmarks/histogram_search.py`` on every observer of HCGNet-A1 and B (13-24x faster there).
"""
import bisect
import dataclasses
from typing import Optional, Tuple

import numpy as np
import torch
from torchao.quantization.pt2e import observer

#: The search's step, a fraction of the histogram's mass (torchao's).
STEP = 1e-5


class HistogramObserver(observer.HistogramObserver):
    """torchao's ``HistogramObserver`` with the range search on Python floats."""

    def _non_linear_param_search(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if not bool(torch.isfinite(self.histogram).all() and (self.histogram >= 0).all()):
            # not a histogram of counts: bisection does not apply
            return super()._non_linear_param_search()
        bin_width = (self.max_val - self.min_val) / self.bins
        total = torch.sum(self.histogram).item()
        cumulative = torch.cumsum(self.histogram, dim=0).tolist()  # float32 values: exact as Python floats
        alpha, beta = 0.0, 1.0  # the mass cut from below and kept from above
        start_bin, end_bin = 0, self.bins - 1
        norm_min = float("inf")
        while alpha < beta:
            next_alpha, next_beta = alpha + STEP, beta - STEP
            # float32, as torch compares a float32 tensor with a Python number
            low, high = float(np.float32(next_alpha * total)), float(np.float32(next_beta * total))
            # torchao walks up from start_bin while cumulative < low, and down from end_bin while > high
            left = bisect.bisect_left(cumulative, low, start_bin, end_bin)
            right = bisect.bisect_right(cumulative, high, start_bin + 1, end_bin + 1) - 1
            if left - start_bin > end_bin - right:
                next_start, next_end, alpha = left, end_bin, next_alpha
            else:
                next_start, next_end, beta = start_bin, right, next_beta
            if (next_start, next_end) == (start_bin, end_bin):
                beta = _steps_kept(cumulative[end_bin] if end_bin > start_bin else None, alpha, beta, total)
                continue
            norm = self._compute_quantization_error(next_start, next_end)
            if norm > norm_min:
                break
            norm_min, start_bin, end_bin = norm, next_start, next_end
        return self.min_val + bin_width * start_bin, self.min_val + bin_width * (end_bin + 1)


def _steps_kept(cumulative_end: Optional[float], alpha: float, beta: float, total: float) -> float:
    """``beta`` after the steps of torchao's search that change nothing from here. A step that moves neither bin
    lowers ``beta`` and leaves ``alpha``, so the next moves nothing either while the end bin's cumulative sum is
    at most the float32 upper bound (always, when the range is one bin: ``cumulative_end`` None). A bound
    ``x >= c`` in float64 is ``>= c`` in float32 too (rounding is monotone, ``c`` a float32); the first step with
    ``x < c`` is left to the caller, which takes it exactly as torchao does."""
    while alpha < beta and (cumulative_end is None or (beta - STEP) * total >= cumulative_end):
        beta = beta - STEP
    return beta


def with_fast_histograms(config):
    """``config`` (a torchao ``QuantizationConfig``) with its activations' torchao histogram observers replaced
    by :class:`HistogramObserver`, same arguments; any other observer is left as it is."""
    def swap(spec):
        make = getattr(spec, "observer_or_fake_quant_ctr", None)
        partial = getattr(make, "p", None)
        if partial is None or partial.func is not observer.HistogramObserver or partial.args:
            return spec
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=HistogramObserver.with_args(**partial.keywords))

    return dataclasses.replace(config, input_activation=swap(config.input_activation),
                               output_activation=swap(config.output_activation))
