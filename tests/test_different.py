"""What is different (issue 13): the user-as-unit test against scipy, its jackknife sums
against a direct computation, its level in a seeded A/A simulation with heavy users (where
a test over requests is not), and a lake with a planted cause — payments-service 2.3.1
timing out under `on` — that must come out first."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
from scipy import stats

from flagscope.analysis.diff import run_diff
from flagscope.analysis.different import Bad, DiffStatus, ValueSums, rank
from flagscope.analysis.different_query import what_is_different, with_differences
from flagscope.analysis.render import html, markdown
from flagscope.analysis.render import json as json_report
from flagscope.analysis.result import DiffOptions
from flagscope.analysis.stats.different import JackSums, design_effect, pair_test, user_variance
from flagscope.analysis.ui.layout import utc_now
from flagscope.analysis.verdict import Verdict
from tests import planted_cause

Users = list[tuple[float, float, float, float]]


def _one_request_each(table: list[list[int]]) -> Users:
    """Users of one request each from a 2×2 table [[a carrying, a not], [b carrying, b not]]."""
    (a1, a0), (b1, b0) = table
    return [(1, 1, 0, 0)] * a1 + [(0, 1, 0, 0)] * a0 + [(0, 0, 1, 1)] * b1 + [(0, 0, 0, 1)] * b0


def test_one_request_per_user_is_the_uncorrected_chi_square_of_scipy() -> None:
    rng = np.random.default_rng(41)
    deep = 0
    for _ in range(300):
        n_a, n_b = (int(x) for x in rng.integers(5, 400, 2))
        a1, b1 = int(rng.integers(0, n_a + 1)), int(rng.integers(0, n_b + 1))
        table = [[a1, n_a - a1], [b1, n_b - b1]]
        if a1 + b1 in (0, n_a + n_b):
            continue  # a zero margin: scipy has no statistic to give
        got = pair_test(JackSums.from_users(_one_request_each(table)))
        chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
        assert got.design_effect == pytest.approx(1.0, abs=1e-9)
        assert got.z**2 == pytest.approx(chi2, rel=1e-9)
        assert got.p_value == pytest.approx(p, rel=1e-7, abs=1e-300)
        assert got.diff == pytest.approx(a1 / n_a - b1 / n_b, abs=1e-15)
        deep += p < 1e-6
    assert deep > 20  # the comparison reached into the tail


def _jackknife_directly(users: Users) -> float:
    """The delete-one-user jackknife of s_a − s_b, deleting each user for real."""
    u = np.array(users, dtype=float)

    def diff(rows: np.ndarray) -> float:
        return rows[:, 0].sum() / rows[:, 1].sum() - rows[:, 2].sum() / rows[:, 3].sum()

    full = diff(u)
    deltas = np.array([full - diff(np.delete(u, i, axis=0)) for i in range(len(u))])
    n = len(u)
    return float((n - 1) / n * ((deltas - deltas.mean()) ** 2).sum())


def test_the_engines_one_pass_sums_give_the_jackknife_of_deleting_each_user() -> None:
    rng = np.random.default_rng(43)
    for _ in range(50):
        n = int(rng.integers(5, 60))
        y_a = rng.integers(0, 30, n).astype(float)
        y_b = rng.integers(0, 30, n).astype(float)  # users in both groups, too
        y_a[0], y_b[1] = 3, 3  # neither group empty
        x_a = rng.binomial(y_a.astype(int), rng.uniform(0, 1, n)).astype(float)
        x_b = rng.binomial(y_b.astype(int), rng.uniform(0, 1, n)).astype(float)
        users = [tuple(map(float, row)) for row in zip(x_a, y_a, x_b, y_b, strict=True)]
        users = [u for u in users if u[1] + u[3] > 0]
        assert user_variance(JackSums.from_users(users)) == pytest.approx(  # type: ignore[arg-type]
            _jackknife_directly(users),
            rel=1e-9,  # type: ignore[arg-type]
        )


def test_a_heavy_user_who_fails_alone_inflates_the_design_effect() -> None:
    light = [(0.0, 1.0, 0.0, 3.0)] * 60 + [(0.0, 1.0, 1.0, 3.0)] * 20
    heavy = [(40.0, 40.0, 0.0, 1.0)]  # every failure of theirs carries the value
    alone = pair_test(JackSums.from_users(light))
    with_heavy = pair_test(JackSums.from_users(light + heavy))
    assert alone.p_value == 1.0 or alone.diff <= 0
    assert with_heavy.diff > 0.2
    assert design_effect(JackSums.from_users(light + heavy)) > 5
    assert with_heavy.p_value > 0.05  # one person is not 40 independent failures
    requests = [[40, 80], [20, 221]]  # the same as a table of independent requests
    assert stats.chi2_contingency(requests, correction=False)[1] < 1e-6


def test_ranking_adjusts_every_test_together_as_scipy_does() -> None:
    rng = np.random.default_rng(47)
    values = []
    for i in range(12):
        users_g: Users = []
        users_c: Users = []
        lift = 0.4 if i < 3 else 0.0
        for _ in range(80):
            bad = float(rng.integers(1, 4))
            carry = float(rng.binomial(int(bad), min(0.3 + lift, 1)))
            good = float(rng.integers(1, 6))
            users_g.append((carry, bad, float(rng.binomial(int(good), 0.3)), good))
            users_c.append((carry, bad, 0.0, 0.0))
        for _ in range(60):
            base = float(rng.integers(1, 4))
            users_c.append((0.0, 0.0, float(rng.binomial(int(base), 0.3)), base))
        values.append(
            ValueSums(
                "svc", "k", str(i), 80, JackSums.from_users(users_g), JackSums.from_users(users_c)
            )
        )
    found = rank(values)
    p = [x for f in sorted(found, key=lambda f: int(f.value)) for x in (f.p_good, f.p_baseline)]
    q = [x for f in sorted(found, key=lambda f: int(f.value)) for x in (f.q_good, f.q_baseline)]
    assert q == pytest.approx(stats.false_discovery_control(p, method="bh").tolist(), rel=1e-12)
    assert {f.value for f in found if f.significant} == {"0", "1", "2"}
    assert [f.value for f in found[:3]] == sorted(
        ("0", "1", "2"), key=lambda v: -next(f.effect for f in found if f.value == v)
    )


def _aa_replicate(rng: np.random.Generator, users: int = 200, versions: int = 4) -> tuple:
    """Treatment's users with Pareto-sized traffic, a version each and a failure propensity
    of their own, independent of the version: no value is truly different."""
    sizes = np.minimum(np.floor(rng.pareto(1.2, users) * 5 + 1), 300)
    version = rng.integers(0, versions, users)
    bad = rng.binomial(sizes.astype(int), rng.beta(0.5, 5, users)).astype(float)
    good = sizes - bad
    ours, requests = [], []
    for v in range(versions):
        carry = (version == v).astype(float)
        rows = [(b * c, b, g * c, g) for b, g, c in zip(bad, good, carry, strict=True)]
        ours.append(pair_test(JackSums.from_users(rows)).p_value)
        table = [[bad @ carry, bad @ (1 - carry)], [good @ carry, good @ (1 - carry)]]
        requests.append(stats.chi2_contingency(table, correction=False)[1])
    return ours, requests


@pytest.mark.simulation
def test_aa_with_heavy_users_holds_the_level_where_a_test_over_requests_does_not() -> None:
    rng = np.random.default_rng(53)
    reps, alpha = 300, 0.05
    ours = requests = 0
    for _ in range(reps):
        a, b = _aa_replicate(rng)
        ours += sum(p < alpha for p in a)
        requests += sum(p < alpha for p in b)
    tests = reps * 4
    # binomial 99.9 % upper bound at the nominal 5 % over 1,200 tests: 0.069
    assert ours / tests <= stats.binom.ppf(0.999, tests, alpha) / tests
    assert requests / tests > 3 * alpha  # the request-level χ² is far anti-conservative


# -- a planted cause, through the real collector ---------------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield planted_cause.record(tmp_path_factory.mktemp("planted"))


def _window() -> tuple:
    end = utc_now()
    return end - timedelta(hours=2), end


@pytest.mark.parametrize("bad", [Bad.ERRORS, Bad.SLOW])
def test_the_planted_version_and_its_timeouts_come_out_first(planted: Path, bad: Bad) -> None:
    start, end = _window()
    d = what_is_different(
        planted, planted_cause.FLAG, "on", "off", start, end, None, "POST /checkout", bad
    )
    assert d.status is DiffStatus.OK
    top = d.significant[0]  # the planted cause
    assert (top.service, top.key, top.value) == ("payments-service", "service.version", "2.3.1")
    assert top.share_bad > 0.8 and top.share_good < 0.5 and not top.symptom
    versions = [f for f in d.significant if f.key == "service.version"]
    assert versions == [top]
    # how they fail: the first symptom, after every cause
    symptom = next(f for f in d.significant if f.symptom)
    assert symptom.service == "payments-service"
    assert (symptom.key, symptom.value) in {
        ("error.type", "TimeoutError"),
        ("exception.type", "TimeoutError"),
    }
    causes = [f.symptom for f in d.significant]
    assert causes == sorted(causes)  # False (a cause) before True
    assert not any(f.key == "app.region" for f in d.significant)  # the users' regions: noise
    assert "TimeoutError" in d.sentence and "`payments-service` v2.3.1" in d.sentence
    assert d.sentence.index("v2.3.1") < d.sentence.index("TimeoutError")
    assert f"{top.share_bad * 100:.0f} %" in d.sentence
    data = d.to_dict()
    assert data["findings"][0]["key"] == "service.version" and data["sentence"] == d.sentence
    assert data["findings"][0]["symptom"] is False


def test_failures_that_the_baseline_shares_are_not_findings(planted: Path) -> None:
    """A 500 marks every failure of both arms: over-represented against treatment's good
    requests, not against the baseline's failed ones, so not a finding."""
    start, end = _window()
    d = what_is_different(
        planted, planted_cause.FLAG, "on", "off", start, end, None, "POST /checkout"
    )
    status = next(
        f for f in d.findings if f.key == "http.response.status_code" and f.value == "500"
    )
    assert status.share_bad == 1.0 and status.share_baseline == 1.0
    assert status.q_good < 1e-6 and not status.significant
    assert d.baseline_group == "bad" and d.counts["baseline"].requests >= 20


def test_a_route_without_requests_is_a_status_not_a_crash(planted: Path) -> None:
    start, end = _window()
    d = what_is_different(
        planted, planted_cause.FLAG, "on", "off", start, end, None, "GET /nowhere"
    )
    assert d.status is DiffStatus.NO_DATA and d.findings == ()
    assert "too few" in d.sentence
    assert math.isfinite(d.sampled)


def test_the_reports_show_what_is_different_about_the_regressed_route(planted: Path) -> None:
    start, end = _window()
    result = run_diff(planted, DiffOptions(planted_cause.FLAG, start, end, "on", "off"))
    assert result.verdict is Verdict.REGRESSION
    result = with_differences(planted, result)
    # the edge's route, and payments-service's own entry span's, both regressed
    routes = [d.route for d in result.different]
    assert sorted(routes) == ["POST /charge", "POST /checkout"]
    page = html.render(result)
    key = f"different-{routes.index('POST /checkout') + 1}"
    section = page[page.index(f'<section id="{key}">') :]
    section = section[: section.index("</section>")]
    assert "<code>payments-service</code> v2.3.1" in section
    assert section.count('<g class="bar"') >= 9 and "&lt;script&gt;" in section
    text = markdown.render(result)
    assert "### What is different: POST /checkout" in text
    assert "payments-service · service.version=2.3.1" in text and "TimeoutError" in text
    data = orjson.loads(json_report.render(result))
    (entry,) = [d for d in data["different"] if d["route"] == "POST /checkout"]
    assert entry["status"] == "OK" and entry["bad"] == "errors"
    assert entry["findings"][0]["value"] == "2.3.1" and "v2.3.1" in entry["sentence"]


def test_a_comparison_without_a_regressed_route_has_no_such_section(planted: Path) -> None:
    start, end = _window()
    options = DiffOptions(planted_cause.FLAG, start, end, "on", "off", route="GET /cart")
    result = with_differences(planted, run_diff(planted, options))
    assert result.verdict is not Verdict.REGRESSION and result.different == ()
    assert 'id="different-' not in html.render(result)
    assert "What is different" not in markdown.render(result)
