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


class LatencyHistogram:
    """A bounded histogram of latencies, for percentiles over millions of deliveries.

    Bins are 10 µs wide up to 100 ms and 1 ms wide from there up to 10 s (10,000 + 9,900
    bins, whatever the count); a longer latency counts in the last bin. The maximum is kept
    exactly. `percentile` answers with the upper edge of the bin holding the rank (the
    maximum for the last bin), so it is exact to 10 µs below 100 ms and to 1 ms up to 10 s.
    """

    FINE_SECONDS = 0.1
    FINE_BIN = 1e-5
    COARSE_BIN = 1e-3
    LIMIT_SECONDS = 10.0

    def __init__(self) -> None:
        fine = round(self.FINE_SECONDS / self.FINE_BIN)
        coarse = round((self.LIMIT_SECONDS - self.FINE_SECONDS) / self.COARSE_BIN)
        self._fine_bins = fine
        self._bins = [0] * (fine + coarse)
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        """Count one latency (negative values, from clock granularity, count as 0)."""
        if seconds < self.FINE_SECONDS:
            index = max(0, int(seconds / self.FINE_BIN))
        else:
            index = self._fine_bins + int((seconds - self.FINE_SECONDS) / self.COARSE_BIN)
        self._bins[min(index, len(self._bins) - 1)] += 1
        self.count += 1
        self.max = max(self.max, seconds)

    def _upper_edge(self, index: int) -> float:
        if index == len(self._bins) - 1:
            return self.max
        if index < self._fine_bins:
            return (index + 1) * self.FINE_BIN
        return self.FINE_SECONDS + (index - self._fine_bins + 1) * self.COARSE_BIN

    def percentile(self, q: float) -> float:
        """The latency below which `q` % of the counted ones fall (never above the max)."""
        if not self.count:
            raise ValueError("percentile of an empty histogram")
        if not 0 <= q <= 100:
            raise ValueError("percentile must be between 0 and 100")
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for index, count in enumerate(self._bins):
            seen += count
            if seen >= rank:
                return min(self._upper_edge(index), self.max)
        return self.max
