"""Means, 95% t-intervals and paired differences for a handful of seeds (no scipy: a table of the quantile)."""
import math
from typing import Dict, Optional, Sequence, Tuple

# t_{0.975, df} for df = 1..30 (Student's t, two-sided 95%), to 6 decimals.
T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
        2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
        2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
Z975 = 1.959963984540054
NO_SPREAD = 1e-9  # a spread of the differences below this is rounding: the seeds all differ by the same amount


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom: the table up to 30, beyond it the
    Cornish-Fisher expansion around the normal quantile (Abramowitz & Stegun 26.7.5; error below 1e-6)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be 1 or more, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z, v = Z975, float(df)
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3)
            + (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / (92160 * v ** 4))


def mean_interval(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """n, mean, sample standard deviation and the 95% t-interval of the mean (None where n is too small)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "low": None, "high": None}
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "low": None, "high": None}
    std = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))
    half = t975(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half}


def verdict(low: Optional[float], high: Optional[float]) -> str:
    """better / worse when the 95% interval of the difference lies above / below 0, else undecided."""
    if low is not None and low > 0:
        return "better"
    if high is not None and high < 0:
        return "worse"
    return "undecided"


def paired_difference(variant: Dict[int, float], base: Dict[int, float]) -> Dict[str, object]:
    """The difference variant - base over the seeds both have (seed -> value), with its 95% t-interval and
    verdict: the seeds pair the runs (same data order, hold-out and augmentation draws)."""
    seeds = sorted(set(variant) & set(base))
    result = mean_interval([variant[s] - base[s] for s in seeds])
    if result["std"] is not None and result["std"] < NO_SPREAD:
        # The same difference for every seed (accuracy on a small test set moves in steps of 1/N): a
        # t-interval of zero width, which is no evidence; no interval, undecided.
        result["low"] = result["high"] = None
    result["verdict"] = verdict(result["low"], result["high"]) if seeds else "-"  # nothing to compare yet
    return result


def clip(value: Optional[float], bounds: Optional[Tuple[float, float]]) -> Optional[float]:
    """``value`` within ``bounds`` (None: as it is): a t-interval of few seeds can reach past what the score
    can take (an accuracy below 0), which says nothing more than the bound itself."""
    if value is None or bounds is None:
        return value
    return min(max(value, bounds[0]), bounds[1])


def interval_text(stats: Dict[str, Optional[float]], scale: float = 100.0, digits: int = 2,
                  bounds: Optional[Tuple[float, float]] = None) -> Tuple[str, str]:
    """``("mean ± std", "[low, high]")`` in percent, with ``-`` for what a single run cannot give; the
    interval is clipped to ``bounds`` (unscaled) when given."""
    def f(x: Optional[float]) -> str:
        if x is None:
            return "-"
        text = f"{scale * x:.{digits}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text  # -0.004 rounds to "-0.00": 0.00

    mean = f(stats["mean"]) + ("" if stats.get("std") is None else f" ± {f(stats['std'])}")
    ci = "-" if stats["low"] is None else f"[{f(clip(stats['low'], bounds))}, {f(clip(stats['high'], bounds))}]"
    return mean, ci
