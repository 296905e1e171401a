"""Descriptive statistics used by the bench, as pure functions.

The paper reports, per load, the mean CPU % and the coefficient of variation
Cv = population standard deviation / mean, so `population_std` divides by n (not n - 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; raises ValueError on an empty sequence."""
    if not values:
        raise ValueError("mean of an empty sequence")
    return math.fsum(values) / len(values)


def population_std(values: Sequence[float]) -> float:
    """Population standard deviation (divides by n, as the paper's Cv does)."""
    mu = mean(values)
    return math.sqrt(math.fsum((v - mu) ** 2 for v in values) / len(values))


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Cv = population standard deviation / mean; raises ValueError when the mean is 0."""
    mu = mean(values)
    if mu == 0:
        raise ValueError("coefficient of variation is undefined when the mean is 0")
    return population_std(values) / mu


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) with linear interpolation between ranks.

    Same definition as numpy's default ("linear"): rank = q / 100 * (n - 1).
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError("percentile must be between 0 and 100")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
