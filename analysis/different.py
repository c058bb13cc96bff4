"""What is different about a route's bad requests under a flag (issue 13): the attribute
values over-represented among the treatment's failed (or slow) requests, ranked, as data
the UI and the reports show. The lake query is `different_query`; the test is
`stats.different`.

For a route and the two arms, "bad" is failed (`errors`: the request is an error) or slow
(`slow`: over the baseline's p95 latency of the route). Each candidate value — an
attribute (span, resource, or an `exception` span event's) of any span in the request's
trace, named by that span's service, e.g. `payments-service · service.version=2.3.1` — is
tested twice, users as the unit:

- treatment's bad requests against treatment's good ones (what tells failures apart), and
- treatment's bad requests against the baseline's bad ones (what is new under the flag;
  the baseline's requests of every kind when it has too few bad ones, and it is said).

Benjamini–Hochberg over both tests of every value as one family; a value is a finding
when both are significant at `alpha` and both shares are higher in the treatment's bad
requests, so the mark of failing itself (a 500 status, present in the baseline's failures
too) is not one. Findings rank by effect: the smaller of the two differences in share.

A value that describes the failure itself — `error.type`, an exception's type or message, a
status code (the semantic conventions' outcome attributes, `SYMPTOM_KEYS`) — is a
*symptom*: it tells how the bad requests fail, not where, and the baseline's good requests
can never carry it, so its effect is as large as can be whatever the cause. Causes (the
version, the instance, the region, the database: everything else) therefore rank before
symptoms, and the sentence names the top cause with the top symptom. Among causes of equal
effect (an instance that runs only that version) the service's version comes first: it is
what a team rolls back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from flagscope.analysis.stats.different import JackSums, benjamini_hochberg, pair_test

ALPHA = 0.05
MIN_BAD = 10  # treatment's bad requests below this: too few to say what they share
MIN_UNITS = 5  # users (units) carrying a value among them, for it to be tested
MIN_BASELINE_BAD = 20  # fewer baseline bad requests: compare with all of its requests
# The outcome attributes of the semantic conventions (and the span status the collector
# records as attributes): what a failure looks like, not what brought it about.
SYMPTOM_KEYS = frozenset(
    {
        "error.type",
        "exception.type",
        "exception.message",
        "exception.escaped",
        "http.response.status_code",
        "http.status_code",
        "rpc.grpc.status_code",
        "rpc.connect_rpc.error_code",
        "db.response.status_code",
        "otel.status_code",
        "otel.status_description",
        "status.code",
        "status.message",
    }
)


def is_symptom(key: str) -> bool:
    return key in SYMPTOM_KEYS


class Bad(StrEnum):
    ERRORS = "errors"
    SLOW = "slow"


class DiffStatus(StrEnum):
    OK = "OK"
    NO_DATA = "NO_DATA"  # the route has no requests of one arm in the window
    TOO_FEW_BAD = "TOO_FEW_BAD"  # treatment has fewer than MIN_BAD bad requests


@dataclass(frozen=True)
class Finding:
    service: str  # the service of the span that carries it
    key: str
    value: str
    share_bad: float  # of treatment's bad requests carrying it
    share_good: float  # of treatment's good requests
    share_baseline: float  # of the baseline's compared requests (bad, or all)
    units_bad: int  # users among treatment's bad requests carrying it
    p_good: float
    p_baseline: float
    q_good: float  # Benjamini–Hochberg adjusted, one family with q_baseline
    q_baseline: float
    design_effect: float  # the larger of the two tests'
    significant: bool

    @property
    def effect(self) -> float:
        return min(self.share_bad - self.share_good, self.share_bad - self.share_baseline)

    @property
    def label(self) -> str:
        return f"{self.service} · {self.key}={self.value}"

    @property
    def symptom(self) -> bool:
        return is_symptom(self.key)


@dataclass(frozen=True)
class GroupCounts:
    requests: int
    units: int


@dataclass(frozen=True)
class Difference:
    flag: str
    treatment: str
    baseline: str
    service: str | None
    route: str | None
    bad: Bad
    status: DiffStatus
    threshold_ms: float | None  # for `slow`: the baseline's p95
    baseline_group: str  # "bad" or "all": what the baseline's share is of
    counts: dict[str, GroupCounts]  # bad, good, baseline
    sampled: float  # share of units read (1.0: all)
    candidates: int  # values tested
    findings: tuple[Finding, ...]  # significant first, by effect; then the rest by effect
    alpha: float = ALPHA

    @property
    def significant(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.significant)

    @property
    def sentence(self) -> str:
        return sentence(self)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["findings"] = [
            asdict(f) | {"effect": f.effect, "symptom": f.symptom} for f in self.findings
        ]
        out["sentence"] = self.sentence
        return out


@dataclass(frozen=True)
class ValueSums:
    """The engine's answer for one candidate value: the two tests' sums and its users."""

    service: str
    key: str
    value: str
    units_bad: int
    vs_good: JackSums
    vs_baseline: JackSums


def rank(values: list[ValueSums], alpha: float = ALPHA) -> tuple[Finding, ...]:
    """Test every value twice, adjust all the p-values together, rank (module doc). A value
    every compared request carries (the SDK's name, a service every request passes) says
    nothing and is left out."""
    values = [v for v in values if not _everywhere(v)]
    tests = [(pair_test(v.vs_good), pair_test(v.vs_baseline)) for v in values]
    q = benjamini_hochberg([p for pair in tests for p in (pair[0].p_value, pair[1].p_value)])
    found = []
    for i, (v, (good, base)) in enumerate(zip(values, tests, strict=True)):
        q_good, q_base = q[2 * i], q[2 * i + 1]
        significant = q_good <= alpha and q_base <= alpha and good.diff > 0 and base.diff > 0
        found.append(
            Finding(
                v.service,
                v.key,
                v.value,
                good.share_a,
                good.share_b,
                base.share_b,
                v.units_bad,
                good.p_value,
                base.p_value,
                q_good,
                q_base,
                max(good.design_effect, base.design_effect),
                significant,
            )
        )
    return tuple(sorted(found, key=_rank_key))


def _rank_key(f: Finding) -> tuple[bool, bool, float, bool, str]:
    """Significant first; causes before symptoms (module doc); by effect; the version first
    among equals; then by name, so the order never depends on the engine's."""
    return (not f.significant, f.symptom, -f.effect, f.key != "service.version", f.label)


def _everywhere(v: ValueSums) -> bool:
    g, b = v.vs_good, v.vs_baseline
    return g.x_a == g.y_a and g.x_b == g.y_b and b.x_b == b.y_b


def _pct(share: float) -> str:
    return f"{share * 100:.0f} %"


def sentence(d: Difference) -> str:
    """'Failed requests under `on` (POST /checkout) are 95 % from `payments-service` v2.3.1
    vs …; they fail with `error.type=TimeoutError` …' — the top finding (a cause when there
    is one), and the top symptom, or the version of the symptom's service."""
    what = "Failed" if d.bad is Bad.ERRORS else "Slow"
    where = f" ({d.route})" if d.route else ""
    if d.status is not DiffStatus.OK:
        return f"{what} requests under `{d.treatment}`{where}: too few to say what they share."
    if not d.significant:
        return (
            f"{what} requests under `{d.treatment}`{where}: no attribute value stands out "
            f"(of {d.candidates} tested, none at q ≤ {d.alpha:g})."
        )
    top = d.significant[0]
    kind = "failed" if d.bad is Bad.ERRORS else "slow"
    against = (
        f"of baseline `{d.baseline}`'s {kind} requests"
        if d.baseline_group == "bad"
        else (f"of baseline `{d.baseline}`'s requests")
    )
    named = (
        f"from `{top.service}` v{top.value}"
        if top.key == "service.version"
        else f"`{top.key}={top.value}` from `{top.service}`"
    )
    out = (
        f"{what} requests under `{d.treatment}`{where} are {_pct(top.share_bad)} {named} "
        f"vs {_pct(top.share_baseline)} {against} and {_pct(top.share_good)} of its good ones"
    )
    symptom = next((f for f in d.significant if f.symptom), None)
    version = next(
        (
            f
            for f in d.significant
            if f.service == top.service and f.key == "service.version" and f is not top
        ),
        None,
    )
    if not top.symptom and symptom is not None:
        verb = "fail with" if d.bad is Bad.ERRORS else "carry"
        out += (
            f"; they {verb} `{symptom.key}={symptom.value}` from `{symptom.service}` "
            f"({_pct(symptom.share_bad)} vs {_pct(symptom.share_baseline)})"
        )
    elif version is not None:
        out += (
            f"; `{top.service}` v{version.value} served {_pct(version.share_bad)} of them "
            f"(vs {_pct(version.share_baseline)})"
        )
    return out + "."
