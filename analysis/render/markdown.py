"""`flagscope diff --format markdown`: ready to paste into a pull request or a chat."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flagscope.analysis.render import text

if TYPE_CHECKING:
    from flagscope.analysis.result import DiffResult


def table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def render(r: DiffResult) -> str:
    o = r.options
    out = [
        f"**{r.summary}**",
        "",
        f"Verdict **{r.verdict.value}**: {r.reason}",
        "",
        f"Window {text.window(r)}; {text.exclusions(r)}.",
    ]
    if r.compared:
        seq = ", always-valid (sequential)" if o.sequential else ""
        out += [
            "",
            "### Cohorts",
            "",
            table(*text.cohort_rows(r)),
            "",
            f"### Overall ({text.confidence_pct(r)} % intervals{seq})",
            "",
            table(*text.metric_rows(r.metrics)),
            "",
            "Adjusted for the service/route mix:",
            "",
            table(*text.metric_rows(r.adjusted)),
        ]
        if r.breakdown:
            out += ["", "### Per service and route", "", table(*text.breakdown_rows(r))]
        out += ["", "### Health", ""]
        out += [f"- {'✅' if h.ok else '❌'} **{h.name}**: {h.detail}" for h in r.health]
    return "\n".join(out) + "\n"
