"""A week of hourly always-valid looks at an A/A flag, replayed in numpy: how often an
interval that decides a verdict leaves out 0 at some look (issue 9 point 11; the guard
watches the same way, only more often).

`bench/stats_audit.py --only aa_week` measures this through the real pipeline (lakes on
disk, `run_diff` at each of 168 looks), 70–95 s a week on this machine, so 40 weeks is
about an hour and the Monte-Carlo error stays near ±0.035. This replay keeps the package's own
inference — `pooled_rank_halfwidths`, `quantile_rank_interval`, `quantile_difference`,
`ratio_difference(floor=True)`, `sequential_estimate`, the `TOO_FEW_IN_TAIL` rule
(`bounded_by_data` with the always-valid stretch) — and does the engine's part in numpy:
each cohort's quantiles (type 7, where the pipeline interpolates a grid) and per-user
sums over the edge requests of the window so far. Traffic is `tests/production_sim.py`'s
(2,000 users over 168 h, 20 % exposure, heavy-tailed request counts, per-user latency
levels, five routes), drawn with the same generator.

    .venv/bin/python bench/week_replay.py --weeks 400 --seed 2020

prints, per interval (overall mean latency, p50, p95, p99), the share of weeks in which
it left out 0 at some look, with its Monte-Carlo standard error, which side it went to
first ("faster" = treatment's relative interval below 0), and the guarantee 0.05.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flagscope.analysis.result import DEFAULT_EXPECTED_USERS
from flagscope.analysis.stats import (
    Estimate,
    Method,
    RatioStats,
    Status,
    bounded_by_data,
    pooled_rank_halfwidths,
    quantile_difference,
    quantile_rank_interval,
    ratio_difference,
    sequential_estimate,
    sequential_stretch,
)
from flagscope.analysis.stats.estimate import critical_value, degenerate
from tests.production_sim import Traffic, draw_requests, draw_users

ALPHA = 0.05
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
METRICS = ("mean", *QUANTILES)


def _cohort(user: np.ndarray, ms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user of the cohort: requests and latency sum; and each request's user index."""
    _, index = np.unique(user, return_inverse=True)
    return np.bincount(index).astype(float), np.bincount(index, weights=ms), index


def _quantile(p: float, ms_t, idx_t, n_t, ms_c, idx_c, n_c) -> Estimate:
    below = []
    estimates = []
    for ms, idx, n in ((ms_t, idx_t, n_t), (ms_c, idx_c, n_c)):
        q = float(np.quantile(ms, p))
        counts = np.bincount(idx, weights=(ms <= q).astype(float), minlength=n.size)
        below.append(RatioStats.from_users(counts.tolist(), n.tolist()))
        estimates.append(q)
    halves = pooled_rank_halfwidths(p, below[0], below[1], ALPHA)
    ends = []
    for ms, q, b, half in zip((ms_t, ms_c), estimates, below, halves, strict=True):
        p_lo, p_hi = quantile_rank_interval(p, b, ALPHA, half)
        ends.append((min(float(np.quantile(ms, p_lo)), q), max(float(np.quantile(ms, p_hi)), q)))
    (t_lo, t_hi), (c_lo, c_hi) = ends
    est = quantile_difference(
        p, estimates[0], t_lo, t_hi, estimates[1], c_lo, c_hi, ALPHA, n_t.size, n_c.size
    )
    if not est.has_interval:
        return est
    users = n_t.size + n_c.size
    stretch = sequential_stretch(
        users, ALPHA, DEFAULT_EXPECTED_USERS, critical_value(est.alpha, est.df)
    )
    if not all(bounded_by_data(p, h, stretch) for h in halves):
        return degenerate(Status.TOO_FEW_IN_TAIL, ALPHA, Method.QUANTILE)  # no interval
    return sequential_estimate(est, users, ALPHA, DEFAULT_EXPECTED_USERS)


def week(seed: int, rep: int, hours: int) -> dict[str, int]:
    """First look (1..hours) at which each metric's relative interval left out 0, signed:
    negative when treatment looked faster; 0 if never."""
    traffic = Traffic(users=2000, hours=hours, exposure=0.2)
    rng = np.random.default_rng([seed, rep])
    edge = draw_requests(traffic, draw_users(traffic, rng), rng)
    first = dict.fromkeys(METRICS, 0)
    for look in range(1, hours + 1):
        inside = edge["hours"] < look
        cohorts = []
        for treated in (True, False):
            chosen = inside & (edge["treated"] == treated)
            cohorts.append((edge["user"][chosen], edge["ms"][chosen]))
        (u_t, ms_t), (u_c, ms_c) = cohorts
        (n_t, sum_t, idx_t), (n_c, sum_c, idx_c) = _cohort(u_t, ms_t), _cohort(u_c, ms_c)
        if min(n_t.size, n_c.size) < 2:
            continue
        found: dict[str, Estimate] = {}
        if not first["mean"]:
            mean = ratio_difference(
                RatioStats.from_users(sum_t.tolist(), n_t.tolist()),
                RatioStats.from_users(sum_c.tolist(), n_c.tolist()),
                ALPHA,
                floor=True,
            )
            found["mean"] = sequential_estimate(
                mean, n_t.size + n_c.size, ALPHA, DEFAULT_EXPECTED_USERS
            )
        for name, p in QUANTILES.items():
            if not first[name]:
                found[name] = _quantile(p, ms_t, idx_t, n_t, ms_c, idx_c, n_c)
        for name, est in found.items():
            if est.has_interval and est.has_relative:
                if est.rel_hi < 0:
                    first[name] = -look
                elif est.rel_lo > 0:
                    first[name] = look
        if all(first.values()):
            break
    return first


def _week(args: tuple[int, int, int]) -> dict[str, int]:
    return week(*args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weeks", type=int, default=400)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--hours", type=int, default=168)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    jobs = [(args.seed, rep, args.hours) for rep in range(args.weeks)]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(_week, jobs, chunksize=4))
    elapsed = time.perf_counter() - started
    print(f"{args.weeks} A/A weeks of {args.hours} hourly looks, seed {args.seed}, {elapsed:.0f} s")
    print(f"{'interval':10} {'left out 0 at some look':>24} {'faster first':>13}  guarantee")
    for name in METRICS:
        looks = [r[name] for r in results]
        missed = sum(1 for v in looks if v)
        share = missed / args.weeks
        se = math.sqrt(share * (1 - share) / args.weeks)
        faster = sum(1 for v in looks if v < 0)
        print(f"{name:10} {share:>14.3f} ± {se:.3f} {faster:>10} of {missed:<3} ≤ {ALPHA}")


if __name__ == "__main__":
    main()
