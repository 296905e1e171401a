"""The statistics against hand-computed values and the paper's published table."""

from __future__ import annotations

import math

import pytest

from papaya_trio.bench import stats
from papaya_trio.bench.paper import PUBLISHED
from papaya_trio.bench.stats import LatencyHistogram

# A textbook sample: mean 5, squared deviations sum to 32, population variance 32/8 = 4.
TEXTBOOK = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]


def test_mean_population_std_and_cv_of_a_known_sample() -> None:
    assert stats.mean(TEXTBOOK) == 5.0
    assert stats.population_std(TEXTBOOK) == 2.0
    assert stats.coefficient_of_variation(TEXTBOOK) == 0.4


def test_cv_uses_the_population_not_the_sample_deviation() -> None:
    # Sample std of [1, 3] is sqrt(2); population std is 1; mean 2, so Cv is 1/2.
    assert stats.coefficient_of_variation([1.0, 3.0]) == 0.5


def test_constant_series_has_zero_cv() -> None:
    assert stats.coefficient_of_variation([14.7] * 120) == 0.0


@pytest.mark.parametrize(
    ("row", "total"),
    [
        # The published mean-CPU rows, summed by hand.
        ("C fork", 27.84),
        ("Go goroutines", 85.55),
    ],
)
def test_mean_of_a_published_row(row: str, total: float) -> None:
    values = [point.cpu_percent for point in PUBLISHED[row].values()]
    assert stats.mean(values) == pytest.approx(total / 7, rel=1e-12)


def test_cv_of_the_published_c_cpu_row_by_hand() -> None:
    # C fork CPU row: mean 27.84 / 7; squared deviations computed by hand below.
    values = [point.cpu_percent for point in PUBLISHED["C fork"].values()]
    mu = 27.84 / 7
    variance = sum((v - mu) ** 2 for v in values) / 7
    assert stats.population_std(values) == pytest.approx(math.sqrt(variance), rel=1e-12)
    assert stats.coefficient_of_variation(values) == pytest.approx(1.2651, abs=1e-4)


def test_published_table_matches_the_paper() -> None:
    assert PUBLISHED["C fork"][64].cpu_percent == 14.70
    assert PUBLISHED["C fork"][32].cv == 0.348
    assert PUBLISHED["Go goroutines"][1].cpu_percent == 1.94
    assert PUBLISHED["Go goroutines"][64].cv == 0.243
    # The paper's conclusion: the forking C server used less CPU at every load.
    for n, c_point in PUBLISHED["C fork"].items():
        assert c_point.cpu_percent < PUBLISHED["Go goroutines"][n].cpu_percent


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0, 1.0), (50, 2.5), (100, 4.0), (25, 1.75), (99, 3.97)],
)
def test_percentile_interpolates_linearly(q: float, expected: float) -> None:
    assert stats.percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


def test_errors_are_explicit() -> None:
    with pytest.raises(ValueError, match="empty"):
        stats.mean([])
    with pytest.raises(ValueError, match="mean is 0"):
        stats.coefficient_of_variation([0.0, 0.0])
    with pytest.raises(ValueError, match="between 0 and 100"):
        stats.percentile([1.0], 101)


def test_latency_histogram_percentiles_are_exact_to_a_bin() -> None:
    histogram = LatencyHistogram()
    for ms in range(1, 101):  # 1 ms .. 100 ms
        histogram.add(ms / 1000)
    assert histogram.count == 100
    assert histogram.percentile(50) == pytest.approx(0.05001, abs=1e-5)
    assert histogram.percentile(99) == pytest.approx(0.099, abs=1e-3)
    assert histogram.percentile(100) == histogram.max == 0.1


def test_latency_histogram_bounds_long_and_negative_latencies() -> None:
    histogram = LatencyHistogram()
    histogram.add(-1e-6)
    histogram.add(42.0)  # beyond the last bin: counted there, the max stays exact
    assert histogram.percentile(0) == pytest.approx(1e-5)
    assert histogram.percentile(100) == 42.0
    assert histogram.max == 42.0
    with pytest.raises(ValueError):
        LatencyHistogram().percentile(50)
