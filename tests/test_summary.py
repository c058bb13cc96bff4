"""The one sentence a diff is summed up in (analysis/summary.py): what a newcomer read in
today's reports (issue 13) — a PASS near zero said "-0.0 pp (CI -0.0…+0.0)", and a
headline led with a metric whose interval includes zero while another decided."""

from __future__ import annotations

from flagscope.analysis.result import MetricResult
from flagscope.analysis.stats import Estimate, Method, Status
from flagscope.analysis.summary import _deciding_first, describe
from flagscope.analysis.verdict import Judgement, Verdict


def _estimate(diff: float, lo: float, hi: float, control: float = 0.01) -> Estimate:
    return Estimate(
        Status.OK, control, control + diff, diff, lo, hi,
        diff / control, lo / control, hi / control, (hi - lo) / 4, 0.5, 0.05, Method.NONE,
    )  # fmt: skip


def test_an_error_rate_near_zero_keeps_its_places_and_no_negative_zero() -> None:
    assert describe("error_rate", _estimate(-0.00001, -0.0002, 0.0003)) == (
        "error rate +0.00 pp (CI -0.02…+0.03)"
    )
    assert describe("error_rate", _estimate(-0.0004, -0.0004, 0.0)) == (
        "error rate -0.04 pp (CI -0.04…+0.00)"
    )
    assert describe("error_rate", _estimate(0.021, 0.012, 0.03)) == (
        "error rate +2.1 pp (CI +1.2…+3.0)"
    )


def test_the_headline_leads_with_the_metric_that_decided() -> None:
    open_ = MetricResult(
        "error_rate", _estimate(0.014, -0.022, 0.092), Judgement(Verdict.INCONCLUSIVE, "")
    )
    decided = MetricResult("mean_latency", _estimate(36.0, 17.0, 56.0, control=130.0),
                           Judgement(Verdict.REGRESSION, ""))  # fmt: skip
    assert _deciding_first([open_, decided], Verdict.REGRESSION) == [decided, open_]
    assert _deciding_first([open_, decided], Verdict.INCONCLUSIVE) == [open_, decided]


def test_an_error_rate_whose_relative_interval_disagrees_shows_only_the_deciding_one() -> None:
    from flagscope.analysis.render.text import change

    est = _estimate(0.004, 0.0005, 0.0075)  # absolute: excludes 0
    wide = Estimate(**{**est.__dict__, "rel_lo": -0.05, "rel_hi": 0.85})  # relative: does not
    metric = MetricResult("error_rate", wide, Judgement(Verdict.REGRESSION, ""))
    absolute, relative, _ = change(metric)
    assert absolute == "+0.40 pp [+0.05, +0.75]"
    assert relative == "+40.0 % (interval: the absolute one decides)"
    agreeing = MetricResult("error_rate", est, Judgement(Verdict.REGRESSION, ""))
    assert change(agreeing)[1] == "+40.0 % [+5.0, +75.0]"
