"""Latencies in fixed log-spaced bins, so that per-hour, per-user counts merge exactly.

A latency d > 0 ms falls in bin floor(log(d / LOW) / log(RATIO)) (bin 0 below LOW); a
latency of 0 (or less) is bin -1 and stays 0. Within a bin of n requests, the i-th is
taken to lie at LOW * RATIO ** (bin + (i + 1/2) / n): spread over the bin as a histogram
is, so that a quantile moves smoothly with its probability instead of jumping from bin
to bin. Every value so represented is within RATIO - 1 = 1 % of the true latency
(`PRECISION`: the two lie in one bin); a summarised window computes its quantile
functions as `cohorts` does (`quantile_cont`), on these values, and each user's requests
at or below a quantile estimate from their counts per bin (the share of the estimate's
own bin below it, for its requests there).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

RATIO = 1.01
LOW = 0.001  # ms
PRECISION = RATIO - 1  # the largest relative error of a represented latency (≥ LOW)
_TOP = 30_000  # SMALLINT: latencies up to LOW * RATIO ** 30000 (2e126 ms)


def bin_sql(column: str) -> str:
    return (
        f"CASE WHEN {column} <= 0 THEN -1 ELSE least(greatest(floor(ln({column} / {LOW}) / "
        f"ln({RATIO})), 0), {_TOP}) END::SMALLINT"
    )


def value(index: int) -> float:
    """The latency (ms) at the geometric centre of bin `index` (charts)."""
    return 0.0 if index < 0 else LOW * RATIO ** (index + 0.5)


def _spread(index: int, i: int, n: int) -> float:
    """The i-th of the n latencies (0-based) in bin `index`."""
    return 0.0 if index < 0 else LOW * RATIO ** (index + (i + 0.5) / n)


def quantiles(counts: Sequence[tuple[int, int]], probabilities: Sequence[float]) -> list[float]:
    """DuckDB's `quantile_cont` over the bins' latencies (`_spread`): for n values
    sorted, position h = (n - 1) p between the values at floor(h) and ceil(h),
    interpolated linearly. `counts`: (bin, count), sorted by bin, counts > 0."""
    bins = [b for b, _ in counts]
    sizes = [n for _, n in counts]
    ends = list(itertools.accumulate(sizes))  # values before the next bin
    total = ends[-1]

    def at(position: int) -> float:
        j = bisect.bisect_right(ends, position)
        return _spread(bins[j], position - (ends[j] - sizes[j]), sizes[j])

    out = []
    for p in probabilities:
        h = (total - 1) * p
        lo = math.floor(h)
        low = at(lo)
        out.append(low if h == lo else low + (h - lo) * (at(math.ceil(h)) - low))
    return out


def split(counts: Sequence[tuple[int, int]], cut: float) -> tuple[int, float]:
    """(b, f): the latencies at or below `cut` are those of every bin below b and the
    share f of bin b's (each request of a user in bin b counts f)."""
    for index, n in counts:
        if index < 0:
            if cut < 0:
                return index, 0.0
            continue
        lo = LOW * RATIO**index
        if _spread(index, n - 1, n) <= cut:
            continue
        x = math.log(cut / lo) / math.log(RATIO) if cut > 0 else -1.0
        below = min(max(math.floor(x * n - 0.5 + 1e-9) + 1, 0), n)
        return index, below / n
    return (counts[-1][0] + 1 if counts else 0), 0.0
