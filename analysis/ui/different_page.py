"""What is different about a route's bad requests under the flag
(`/different/<flag>?route=…&service=…&window=…&bad=errors|slow`): the sentence, paired bars
and table of `flagscope.analysis.render.different`, with links to switch between failed
and slow requests and down to the route's example traces."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flagscope.analysis.different import Bad, Difference
from flagscope.analysis.render import different
from flagscope.analysis.ui.layout import esc, link, pending, problem, section, url, when
from flagscope.analysis.ui.work import Answer


@dataclass(frozen=True)
class DifferentView:
    flag: str
    window: str
    start: datetime
    end: datetime
    treatment: str
    baseline: str
    service: str | None
    route: str | None
    bad: Bad
    answer: Answer[Difference]


def href(
    flag: str,
    window: str,
    treatment: str | None,
    baseline: str | None,
    service: str | None,
    route: str | None,
    bad: Bad = Bad.ERRORS,
) -> str:
    return url(
        "/different",
        flag,
        window=window,
        variant=treatment,
        baseline=baseline,
        service=service,
        route=route,
        bad=None if bad is Bad.ERRORS else bad.value,
    )


def render_body(v: DifferentView) -> list[str]:
    scope = " · ".join(x for x in (v.service, v.route) if x) or "every route"
    switch = " · ".join(
        f"<strong>{esc(title)}</strong>"
        if kind is v.bad
        else link(href(v.flag, v.window, v.treatment, v.baseline, v.service, v.route, kind), title)
        for kind, title in ((Bad.ERRORS, "failed requests"), (Bad.SLOW, "slow requests"))
    )
    examples = url(
        "/examples",
        v.flag,
        window=v.window,
        variant=v.treatment,
        baseline=v.baseline,
        service=v.service,
        route=v.route,
    )
    head = (
        f'<header><h1>What is different: {esc(v.flag)} <span class="muted">{esc(v.treatment)} '
        f'vs {esc(v.baseline)}</span></h1><p class="summary" id="scope">{esc(scope)}</p>'
        f'<p class="note">Requests from {esc(when(v.start))} to {esc(when(v.end))} whose trace '
        "evaluated the flag, labelled as the comparison labels them, test traffic left out. "
        f'Look at: <span id="bad-switch">{switch}</span> · {link(examples, "example traces →")}'
        "</p></header>"
    )
    found = v.answer.value
    if found is None:
        inner = problem(v.answer.error) if v.answer.error else pending("what is different")
        return [head, section("different", "What is different", inner)]
    return [head, different.html_section(found)]
