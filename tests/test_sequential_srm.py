"""The sample-ratio check the guard and schedules repeat at every look: anytime-valid
(Lindon & Malek 2022), against an independent oracle (scipy's Dirichlet-multinomial and
multinomial), its level over many looks of A/A rollouts, its power, and its use in
sequential diffs."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import numpy as np
import pytest
from scipy import stats

from flagscope.analysis.diff import run_diff
from flagscope.analysis.result import DiffOptions
from flagscope.analysis.stats import Status, sequential_srm_test, srm_test
from flagscope.analysis.stats.srm import SEQUENTIAL_CONCENTRATION
from tests.synthetic import NOW, population, write


@pytest.mark.parametrize(
    ("observed", "shares"),
    [
        ({"on": 5030, "off": 4970}, {"on": 0.5, "off": 0.5}),
        ({"on": 5300, "off": 4700}, {"on": 0.5, "off": 0.5}),
        ({"on": 212, "off": 788}, {"on": 20, "off": 80}),
        ({"on": 3, "off": 0}, {"on": 0.1, "off": 0.9}),
        ({"a": 120, "b": 95, "c": 301}, {"a": 0.25, "b": 0.25, "c": 0.5}),
    ],
)
def test_the_bayes_factor_is_scipys_dirichlet_multinomial_over_the_multinomial(
    observed: dict[str, int], shares: dict[str, float]
) -> None:
    total = sum(shares.values())
    theta = np.array([shares[k] / total for k in shares])
    x = np.array([observed.get(k, 0) for k in shares])
    log_bf = stats.dirichlet_multinomial.logpmf(
        x, SEQUENTIAL_CONCENTRATION * theta, int(x.sum())
    ) - stats.multinomial.logpmf(x, int(x.sum()), theta)
    result = sequential_srm_test(observed, shares)
    assert result.status is Status.OK and result.sequential
    assert result.p_value == pytest.approx(min(1.0, math.exp(-log_bf)), rel=1e-9, abs=1e-300)
    assert result.chi2 == srm_test(observed, shares).chi2  # shown as before


def test_bad_input_is_refused_as_the_fixed_test_refuses_it() -> None:
    assert sequential_srm_test({"on": 1}, {"on": 1.0}).status is Status.INVALID_INPUT
    assert sequential_srm_test({"on": 0, "off": 0}, {"on": 1, "off": 1}).status is Status.NO_DATA
    assert sequential_srm_test({"x": 5}, {"on": 1, "off": 1}).status is Status.INVALID_INPUT


def _walks(
    rng: np.random.Generator, walks: int, users: int, share: float
) -> np.ndarray:  # cumulative treatment users at each arrival, one walk per row
    return np.cumsum(rng.random((walks, users)) < share, axis=1)


def test_looking_every_fifty_users_keeps_the_level_that_repeated_chi_square_loses() -> None:
    """800 A/A rollouts of a 20/80 split, looked at every 50 users up to 10,000 (200 looks):
    the sequential p-value goes below 0.05 at some look in at most 5 % of them (binomial
    slack), while the fixed-horizon χ² test, repeated, does in far more."""
    rng = np.random.default_rng(1414)
    shares = {"on": 0.2, "off": 0.8}
    treated = _walks(rng, 800, 10_000, 0.2)
    looks = range(49, 10_000, 50)
    sequential = fixed = 0
    for walk in treated:
        p_seq = p_fix = 1.0
        for i in looks:
            on = int(walk[i])
            counts = {"on": on, "off": i + 1 - on}
            p_seq = min(p_seq, sequential_srm_test(counts, shares).p_value)
            p_fix = min(p_fix, srm_test(counts, shares).p_value)
        sequential += p_seq < 0.05
        fixed += p_fix < 0.05
    bound = stats.binom.ppf(0.999, 800, 0.05) / 800
    assert sequential / 800 <= bound, sequential
    assert fixed / 800 > 0.2, fixed  # the problem it solves: looks alone make alerts


def test_a_real_mismatch_is_still_caught() -> None:
    """A 52/48 split configured as 50/50, 20,000 users: alert (p < 0.001); and a 25/75
    split configured 20/80 within the first 5,000 users of every seeded walk."""
    assert sequential_srm_test({"on": 10_400, "off": 9_600}, {"on": 1, "off": 1}).alert
    rng = np.random.default_rng(7)
    for walk in _walks(rng, 20, 5_000, 0.25):
        on = int(walk[-1])
        assert sequential_srm_test({"on": on, "off": 5_000 - on}, {"on": 0.2, "off": 0.8}).alert


def test_a_sequential_diff_reports_the_anytime_valid_check(tmp_path) -> None:
    lake = write(tmp_path, population(random.Random(3), 400, share_on=0.2))
    for sequential in (False, True):
        options = DiffOptions(
            "f",
            NOW - timedelta(hours=2),
            NOW + timedelta(minutes=1),
            expected_split={"on": 0.2, "off": 0.8},
            sequential=sequential,
        )
        result = run_diff(lake, options)
        assert result.srm is not None and result.srm.sequential is sequential
        check = next(h for h in result.health if h.name == "sample_ratio")
        assert ("anytime-valid p" in check.detail) is sequential
