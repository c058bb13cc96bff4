"""Statistical audit of `flagscope diff` end to end: production-shaped traffic
(tests/production_sim.py) written as lakes on disk, read by the real `run_diff`, over many
seeded replicates; every figure with its Monte-Carlo standard error.

Scenarios (R = --reps; 20 % exposure, a 24 h window, --users users):

  aa               A/A, one fixed-horizon look (R): P(REGRESSION or IMPROVEMENT),
                   P(REGRESSION), and the coverage of every interval that can decide the
                   verdict (overall, route-mix adjusted, per route) of the true 0
  aa_sequential    A/A, 24 hourly sequential looks (R/10): P(any look decisive);
                   with --peek also the fixed-horizon intervals read at the same looks
  errors_2pp       +2 pp error probability on every route (R/10): power at the fixed
                   horizon, and when the sequential verdict first fires (a look every 2 h)
  p95_30pct        p95 and p99 of every route × 1.3, the median untouched (R/10): the same
  checkout_2pp     +2 pp on POST /checkout only (8 % of requests) (R/5): power, coverage
  aa_whale         A/A with one user sending ~13 % of all requests (R/5)
  aa_crossover     A/A, 2 % of users evaluated in the other variant later on (R/5)
  aa_crossover3/8  the same with 3 % and 8 % of users (R/5): 8 % is beyond the 5 % limit,
                   so every replicate must be UNHEALTHY, never decisive
  aa_small         A/A with 60 users per cohort (120 users, 50 % exposure) (R/5)
  aa_week          A/A over a week (users spread over 168 h), 168 hourly sequential looks
                   (R/10): P(any look decisive), and the share whose always-valid p-value
                   of an adjusted metric fell below 0.05 at some look
  aa_anonymous     A/A, 30 % of evaluations without a user id (R/5)
  mix_shift        the treatment sends 10 % of its requests to a route of its own, and
                   nothing else changes (R/5): verdicts, coverage where the truth is known
  aa_testers       A/A plus 5 QA testers in treatment, test-marked, failing 20× as often
                   (R/5): what the exclusion of test traffic leaves

Targets: a false-alarm rate at most 0.05 — beyond chance when above the 99.9 % quantile of
Binomial(R, 0.05) / R; a coverage inside the central 99.9 % range of Binomial(R, 0.95) / R.
Prints a table and writes bench/out/stats_audit.json (git-ignored). Run:
`.venv/bin/python bench/stats_audit.py --reps 200` (~5–10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import machine
from tests.production_sim import (
    LookPlan,
    Replicate,
    Traffic,
    any_look_false_alarms,
    binomial,
    coverage,
    every,
    false_alarms,
    fixed_horizon,
    power,
    simulate,
    timing,
    truth,
    verdict_scale,
    worker_pool,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "stats_audit.json"
Row = tuple[
    str, str, float | None, float | None, str, str
]  # scenario, measure, rate, se, target, ok
# What the table shows beyond A/A (the JSON has every interval and stratum).
DECISIVE_KEYS = (
    "adjusted error_rate",
    "adjusted mean_latency",
    "route error_rate",
    "route p95_latency",
    "overall error_rate",
    "overall p95_latency",
)


Report = Callable[[str, Traffic, list[Replicate]], tuple[list[Row], dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    traffic: Traffic
    reps: int
    plan: LookPlan
    report: Report


def _row(name: str, measure: str, figure: dict[str, float], target: str = "", ok: str = "") -> Row:
    return (name, measure, figure["rate"], figure["se"], target, ok)


def _at_most(name: str, measure: str, figure: dict[str, float], bound: float) -> Row:
    ok = "ok" if figure["rate"] <= bound else "FAIL"
    return _row(name, measure, figure, f"≤ 0.05 (MC bound {bound:.3f})", ok)


def _coverage_rows(
    name: str, found: dict[str, Any], check: bool = True, keys: tuple[str, ...] | None = None
) -> list[Row]:
    lo, hi = found["band"]
    rows = []
    for key, figure in found["pooled"].items():
        if keys is not None and key not in keys:
            continue
        label = f"coverage {key}" + (" (all strata)" if key.startswith("route") else "")
        ok = ("ok" if lo <= figure["rate"] <= hi else "FAIL") if check else ""
        rows.append(_row(name, label, figure, f"0.95 ({lo:.3f}–{hi:.3f})", ok))
    lowest = sorted(found["strata"].items(), key=lambda kv: kv[1]["rate"])[:2]
    return rows + [_row(name, f"  lowest stratum: {k}", v, "0.95") for k, v in lowest]


def report_aa(
    name: str, traffic: Traffic, reps: list[Replicate]
) -> tuple[list[Row], dict[str, Any]]:
    found = false_alarms(reps)
    cov = coverage(reps, truth(traffic))
    rows = [
        _at_most(name, "P(REGRESSION or IMPROVEMENT)", found["decisive"], found["bound"]),
        _at_most(name, "P(REGRESSION)", found["regression"], found["bound"]),
        _row(name, f"P(UNHEALTHY) {found['unhealthy_checks'] or ''}", found["unhealthy"]),
        *_coverage_rows(name, cov),
    ]
    diff_scale = coverage(reps, truth(traffic), scale="diff")
    return rows, {"false_alarms": found, "coverage": cov, "coverage_diff_scale": diff_scale}


def report_sequential(
    name: str, traffic: Traffic, reps: list[Replicate]
) -> tuple[list[Row], dict[str, Any]]:
    out: dict[str, Any] = {}
    rows: list[Row] = []
    for sequential in (True, False):
        looks = sum(x.sequential == sequential for x in reps[0].looks)
        if not looks:
            continue
        found = any_look_false_alarms(reps, sequential)
        mode = "sequential" if sequential else "fixed-horizon (peeking)"
        row = _at_most(
            name, f"P(any of {looks} {mode} looks decisive)", found["decisive"], found["bound"]
        )
        rows.append(row if sequential else (*row[:5], "(contrast)"))
        out["sequential" if sequential else "peeking"] = found
        if sequential:
            excluded = any_look_excludes_zero(reps)
            out["interval_excluded_zero"] = excluded
            rows += [
                _at_most(name, f"  {key} interval excluded 0 at some look", figure, found["bound"])
                for key, figure in excluded.items()
                if key in SEQUENTIAL_KEYS
            ]
    return rows, out


# The always-valid intervals whose excursions the outside audit counted over a week.
SEQUENTIAL_KEYS = (
    "adjusted error_rate",
    "adjusted mean_latency",
    "overall p95_latency",
    "overall p99_latency",
)


def any_look_excludes_zero(reps: list[Replicate]) -> dict[str, dict[str, float]]:
    """A/A over sequential looks: per overall/adjusted metric, the share of replicates
    whose always-valid interval (on the verdict's scale) left out 0 at some look — the
    always-valid guarantee is that this share is at most α."""
    hits: dict[str, int] = {}
    for r in reps:
        seen: set[str] = set()
        for look in r.looks:
            if not look.sequential:
                continue
            for i in look.intervals:
                key = f"{i.scope} {i.metric}"
                on_diff = verdict_scale(i.metric) == "diff"
                if i.scope == "route" or not i.has_interval or not (on_diff or i.has_relative):
                    continue
                hits.setdefault(key, 0)
                lo, hi = (i.lo, i.hi) if on_diff else (i.rel_lo, i.rel_hi)
                if lo > 0 or hi < 0:
                    seen.add(key)
        for key in seen:
            hits[key] += 1
    return {key: binomial(count, len(reps)) for key, count in sorted(hits.items())}


def report_power(
    name: str, traffic: Traffic, reps: list[Replicate]
) -> tuple[list[Row], dict[str, Any]]:
    fixed = power(reps, sequential=False)
    ok = "ok" if fixed["final"]["rate"] >= 0.8 else "FAIL"
    rows = [_row(name, "P(REGRESSION), fixed horizon", fixed["final"], "≥ 0.8", ok)]
    out: dict[str, Any] = {"fixed": fixed, "coverage": coverage(reps, truth(traffic))}
    if any(x.sequential for x in reps[0].looks):
        seq = out["sequential"] = power(reps, sequential=True)
        rows.append(_row(name, "P(REGRESSION) by the last sequential look", seq["any_look"]))
        hour = seq["first_look_median_hours"]
        rows.append((name, "first sequential REGRESSION, median hour", hour, None, "", ""))
    rows += _coverage_rows(name, out["coverage"], check=False, keys=DECISIVE_KEYS)
    return rows, out


def report_verdicts(
    name: str, traffic: Traffic, reps: list[Replicate]
) -> tuple[list[Row], dict[str, Any]]:
    """No target: what the pipeline says, and coverage where the model's truth is known."""
    found = false_alarms(reps)
    cov = coverage(reps, truth(traffic))
    rows = [
        _row(name, "P(REGRESSION)", found["regression"]),
        _row(name, "P(REGRESSION or IMPROVEMENT)", found["decisive"]),
        *_coverage_rows(name, cov, check=False, keys=DECISIVE_KEYS),
    ]
    return rows, {"verdicts": found, "coverage": cov}


def scenarios(users: int, reps: int, peek: bool) -> list[Scenario]:
    base = Traffic(users=users, hours=24)
    tenth, fifth = max(10, reps // 10), max(20, reps // 5)
    hourly = every(1, base)
    week = replace(base, hours=168)
    with_final = (*every(2, base), *fixed_horizon(base))  # detection to within 2 hours
    sequential_plan = (
        tuple(x for h, _ in hourly for x in ((h, True), (h, False))) if peek else hourly
    )

    def once(name: str, traffic: Traffic, report: Report, count: int = fifth) -> Scenario:
        return Scenario(name, traffic, count, fixed_horizon(traffic), report)

    return [
        once("aa", base, report_aa, reps),
        Scenario("aa_sequential", base, tenth, sequential_plan, report_sequential),
        Scenario("errors_2pp", base.with_effect(error_pp=2.0), tenth, with_final, report_power),
        Scenario("p95_30pct", base.with_effect(tail_factor=1.3), tenth, with_final, report_power),
        once("checkout_2pp", base.with_effect(error_pp=2.0, route="POST /checkout"), report_power),
        once("aa_whale", replace(base, whale_requests=round(1.5 * users)), report_aa),
        once("aa_crossover", replace(base, crossover=0.02), report_aa),
        once("aa_crossover3", replace(base, crossover=0.03), report_aa),
        once("aa_crossover8", replace(base, crossover=0.08), report_aa),
        once("aa_small", replace(base, users=120, exposure=0.5), report_aa),
        Scenario("aa_week", week, tenth, every(1, week), report_sequential),
        once("aa_anonymous", replace(base, eval_without_user=0.3), report_aa),
        once("mix_shift", base.with_effect(new_route_share=0.1), report_verdicts),
        once("aa_testers", replace(base, testers=5), report_aa),
    ]


def _print_table(rows: list[Row]) -> None:
    print(f"\n{'scenario':14} {'measure':58} {'estimate':>9} {'± MC SE':>8}  {'target':26} ok")
    last = None
    for name, measure, rate, se, target, ok in rows:
        shown = "" if rate is None else f"{rate:9.3f}"
        error = "" if se is None else f"{se:8.3f}"
        print(
            f"{name if name != last else '':14} {measure:58} {shown:>9} {error:>8}  {target:26} {ok}"
        )
        last = name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=200, help="A/A replicates (others scale)")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None, help="processes (default ≤ 2)")
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--peek", action="store_true", help="A/A sequential: also fixed looks")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    # A scenario's seed is its place in the full list, so --only reproduces the full run.
    chosen = list(enumerate(scenarios(args.users, args.reps, args.peek)))
    if args.only:
        names = set(args.only.split(","))
        chosen = [(k, s) for k, s in chosen if s.name in names]
    facts = machine()
    print(f"machine: {facts['cpu']}, {facts['cores']} cores; seed {args.seed}, {args.users} users")
    rows: list[Row] = []
    results: dict[str, Any] = {}
    began = time.perf_counter()
    with (
        worker_pool(args.workers) as pool,
        tempfile.TemporaryDirectory(prefix="stats-audit-") as tmp,
    ):
        for k, scenario in chosen:
            t0 = time.perf_counter()
            reps = simulate(
                scenario.traffic,
                scenario.reps,
                args.seed * 1000 + k,
                scenario.plan,
                pool,
                Path(tmp),
            )
            seconds = time.perf_counter() - t0
            found_rows, found = scenario.report(scenario.name, scenario.traffic, reps)
            rows += found_rows
            results[scenario.name] = {
                "reps": scenario.reps,
                "looks": len(scenario.plan),
                "traffic": dataclasses.asdict(scenario.traffic),
                "seconds": seconds,
                "timing": timing(reps),
                **found,
            }
            t = results[scenario.name]["timing"]
            print(
                f"{scenario.name}: {scenario.reps} replicates × {len(scenario.plan)} looks in "
                f"{seconds:.0f} s; per replicate {t['traces']:.0f} traces, {t['rows']:.0f} rows, "
                f"build {t['build_s']:.2f} s, {t['diff_s']:.2f} s per diff",
                flush=True,
            )
    _print_table(rows)
    total = time.perf_counter() - began
    # The workers have exited: their CPU time is the children's (load on the machine from
    # elsewhere stretches the wall time, not this).
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = children.ru_utime + children.ru_stime
    print(f"\n{total:.0f} s in all, {cpu:.0f} CPU-s in the worker processes")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": facts,
        "args": {k: str(v) for k, v in vars(args).items()},
        "seconds": total,
        "worker_cpu_seconds": cpu,
        "table": rows,
        "scenarios": results,
    }
    args.out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
