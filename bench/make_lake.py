"""A synthetic flagscope lake of any size, generated with DuckDB SQL (no Python per row).

`make_lake(lake_dir, events)` writes about `events` wide events with exactly the columns and
types of `flagscope.collector.lake.schema.SCHEMA`, as the collector would store them, in its layout:
`<lake>/date=YYYY-MM-DD/hour=HH/bench-<seq:012d>-000.parquet` (zstd, row groups of 128 Ki
rows, each file written under a temporary name engines skip and renamed into place), each
with its narrow companions (`flagscope.collector.lake.narrow`) unless `narrow=False`. A file holds whole
traces of one hour; an hour has one file per `rows_per_file` rows. 100 M events take a
few minutes on 2 cores and stay within DuckDB's `memory_limit` (4 GB by default).
CLI: `python bench/make_lake.py --events 10000000 --out DIR`.

What is generated (the numbers are the defaults; all randomness is a hash of (seed, trace
index, draw), so a seed gives the same rows whatever the file split or thread count):

- Time: the `hours` (24) whole hours before the hour that contains `end` (now), traffic
  following a day curve (busiest around 15:00 UTC, quietest around 03:00, ratio ~3:1).
  Every row of a trace lies in the hour of its root span.
- Users: `user-0000000` … (`events / 50` of them); a trace picks user index
  `floor(users * u**2)` for a uniform u, so activity is skewed: the top 1 % of users send
  ~10 % of the traffic, the busiest one a share `sqrt(1 / users)` of it (5 % at 20 k
  events, 0.07 % at 100 M).
- Every trace has a root SERVER span (kind 2, no parent) of `shop-frontend`, named
  "<method> <route>", with `http_method`, `http_route`, `http_status_code`, `status_code`,
  `is_error`, lognormal `duration_ms` per route (see ROUTES: median, sigma, share, error
  rate), `attributes` JSON (`http.request.method`, `http.route`, `url.path`,
  `http.response.status_code`, `enduser.id`), and `user_id` from `enduser.id` — except
  for 15 % anonymous requests on the browsing routes (`GET /`, `/product/{id}`,
  `/search`). Errors are HTTP 500/503 with status ERROR; 1 % of product pages are 404s.
- The frontend evaluates flag `dark-mode` (on/off, 50 % of users) on every root with a
  user: a `feature_flag.evaluation` span event and `flags = {'dark-mode': …}`.
- The flag under study (`flag`, default `new-checkout`) is evaluated only in
  `checkout-service`, on a child span (parent = the root), for the routes `GET /cart`,
  `POST /cart` and `POST /checkout` (~28 % of traces):
    - `POST /checkout`: a SERVER span `POST /orders` (route `/orders`, a request of its
      own service; 80 % of the root's latency, errors with the root) carrying the
      evaluation as a span event, `flags = {flag: 'on'|'off'}` and `user_id` (the
      evaluation's `feature_flag.context.id`); below it a CLIENT span `INSERT orders`.
    - `GET /cart`: an INTERNAL span `checkout.quote` carrying the evaluation likewise.
    - `POST /cart`: an INTERNAL span `checkout.quote` without flags, and a log record
      (signal 'log', name `feature_flag.evaluation`, severity INFO) on that span that
      carries the flag, the user and the attributes.
  A user is `on` when `hash('<flag>:<user>') < rollout` (a stable user hash; DuckDB's
  string hash), so the flag-on share of users is `rollout`. There is no crossover.
- Injected effect (`Effect`): on the effect's route (default `POST /checkout`), flag-on
  requests are `latency` slower (×1.30: every quantile and the mean; the `POST /orders`
  child too) and fail `errors` more often (+2 pp, the child fails with the root).
- `catalog-service`: `GET /product/{id}` traces have a SERVER child `GET /items/{id}`
  evaluating flag `recs-v2` (control/treatment, 50 % of users; none when anonymous).
- Test traffic (1.9 % of traces, excluded by the analysis):
    - QA users `qa-000` … (`users / 2000`, at least 4) send 1 % of traces, half of them
      `POST /checkout`; they are always `on`; their roots carry `test_user=true`
      (`is_test`, `test_reason='test_user=true'`), their flag spans and logs the user id
      (`is_test`, `test_reason='user_id matches qa-*'`, as the collector's default
      pattern marks them). Every row with a `qa-*` user has `is_test`.
    - Staff testers `emp-0000` … (`users / 5000`, at least 2) send 0.5 % of traces with
      the normal mix; half their roots carry `app.user.is_test=true` (`is_test`), the
      other half no marker at all: only exclusion *by user* removes those.
    - Synthetic monitors send 0.4 % of traces: `POST /checkout` roots without a user,
      `user_agent.synthetic.type=bot` (`is_test`), whose checkout span evaluates the flag
      for `monitor-00` … `monitor-02` *without* a marker: only exclusion *by trace*
      removes those.
- Logs (signal 'log', `event_id` a 32-hex digest as the collector's): an ERROR record
  (severity 17, `is_error`) on the root span of every failed request, an INFO record on
  5 % of traces, and the `POST /cart` evaluation records above.
- Ids: lowercase hex, `trace_id` 32 and `span_id` 16 characters, unique; in the files
  `trace_id` and `span_id` null where the keys spell them and `event_id` null for spans,
  as the collector leaves them (the views derive all three). Columns a signal does not
  fill are null as in the collector's output (`flags` is an empty map, never null; `is_test` never null).
  Expected rows per trace ≈ 1.8 (the trace count is derived from `events`).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flagscope.collector.lake.layout import temporary
from flagscope.collector.lake.narrow import write_companions
from flagscope.collector.lake.schema import NANOS, SCHEMA, derived_keys
from flagscope.collector.lake.write import parquet_writer

HOUR_NS = 3_600_000_000_000
ROW_GROUP_ROWS = 128 * 1024
# The manifest goes beside the lake, `<lake>.json`: the lake directory holds only what
# engines read (Polars, given a directory, reads every file in it).
MANIFEST_SUFFIX = ".json"


def manifest_path(lake_dir: Path | str) -> Path:
    lake = Path(lake_dir)
    return lake.with_name(lake.name + MANIFEST_SUFFIX)


# method, route, share of (regular) traffic, median latency ms, lognormal sigma, error rate
ROUTES = (
    ("GET", "/", 0.30, 25.0, 0.50, 0.002),
    ("GET", "/product/{id}", 0.30, 45.0, 0.50, 0.004),
    ("GET", "/search", 0.12, 90.0, 0.60, 0.006),
    ("GET", "/cart", 0.12, 30.0, 0.45, 0.003),
    ("POST", "/cart", 0.08, 50.0, 0.45, 0.005),
    ("POST", "/checkout", 0.08, 120.0, 0.40, 0.010),
)
PRODUCT, GET_CART, POST_CART, CHECKOUT = 1, 3, 4, 5
FLAG_ROUTES = (GET_CART, POST_CART, CHECKOUT)  # routes whose traces evaluate the flag
BROWSE_ROUTES = (0, 1, 2)  # routes that anonymous visitors use

# Kinds of traffic (share of traces).
QA_SHARE, STAFF_SHARE, MONITOR_SHARE = 0.01, 0.005, 0.004
QA_CHECKOUT = 0.5  # share of QA traces that are POST /checkout
MONITORS = 3
ANONYMOUS = 0.15  # share of browsing requests without a user
USER_SKEW = 2.0  # user index = floor(users * u ** USER_SKEW)
INFO_LOGS = 0.05

_DUCK_TYPES = {
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
    pa.string(): "VARCHAR",
    pa.int8(): "TINYINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    pa.map_(pa.string(), pa.string()): "MAP(VARCHAR, VARCHAR)",
    pa.uuid(): "UUID",
    pa.int64(): "BIGINT",
}


@dataclass(frozen=True)
class Effect:
    """What the flag does to flag-on requests of one route (relative latency, error pp)."""

    latency: float = 0.30
    errors: float = 0.02
    method: str = "POST"
    route: str = "/checkout"


@dataclass
class LakeInfo:
    lake: str
    events: int
    traces: int
    users: int
    files: int
    bytes: int
    seconds: float
    start: str  # ISO, UTC, inclusive
    end: str  # ISO, UTC, exclusive
    params: dict = field(default_factory=dict)


def _duck_type(arrow_type: pa.DataType) -> str:
    for known, name in _DUCK_TYPES.items():
        if arrow_type.equals(known):
            return name
    raise TypeError(f"no DuckDB type for {arrow_type}")


def _select(**columns: str) -> str:
    """A SELECT list with SCHEMA's columns in order, each cast; the ones not given are null
    but for the join keys, derived as the collector derives them."""
    unknown = set(columns) - set(SCHEMA.names)
    if unknown:
        raise KeyError(f"not in SCHEMA: {sorted(unknown)}")
    sources = ("trace_id", "span_id", "signal", "kind", "parent_span_id", "name")
    keys = derived_keys(*(columns.get(name, "NULL") for name in sources))
    for name, key in (("trace_id", keys["trace_key_hi"]), ("span_id", keys["span_key"])):
        if name in columns:  # null where the key spells it, as the collector leaves it
            hex_id = columns[name]
            columns[name] = (
                f"CASE WHEN {key} IS NULL OR {hex_id} <> lower({hex_id}) THEN {hex_id} END"
            )
    columns = keys | columns
    for stamp, nanos in NANOS.items():  # given as TIMESTAMP_NS: exact, and as UTC micros
        if stamp in columns:
            columns[nanos] = f"epoch_ns({columns[stamp]})"
            columns[stamp] = f"timezone('UTC', ({columns[stamp]})::TIMESTAMP)"
    items = []
    for f in SCHEMA:
        expr = columns.get(f.name, "NULL")
        items.append(f"CAST({expr} AS {_duck_type(f.type)}) AS {f.name}")
    return ",\n       ".join(items)


def _salt(k: int) -> int:
    """A 64-bit constant per draw (splitmix64 of k): draws are hash(base XOR salt)."""
    z = (k * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def _case(index: str, values: list[str]) -> str:
    return f"CASE {index} " + " ".join(f"WHEN {i} THEN {v}" for i, v in enumerate(values)) + " END"


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def expected_rows_per_trace(effect: Effect, rollout: float) -> float:
    shares = [r[2] for r in ROUTES]
    checkout_only = [0.0] * len(ROUTES)
    checkout_only[CHECKOUT] = 1.0
    regular = 1 - QA_SHARE - MONITOR_SHARE
    qa = [
        QA_CHECKOUT * c + (1 - QA_CHECKOUT) * s for c, s in zip(checkout_only, shares, strict=False)
    ]
    mix = [
        regular * s + QA_SHARE * q + MONITOR_SHARE * c
        for s, q, c in zip(shares, qa, checkout_only, strict=False)
    ]
    eff = _effect_route(effect)
    rows = 1.0 + INFO_LOGS
    for r, p in enumerate(mix):
        extra = {PRODUCT: 1, GET_CART: 1, POST_CART: 2, CHECKOUT: 2}.get(r, 0)
        error = ROUTES[r][5] + (effect.errors * rollout if r == eff else 0.0)
        rows += p * (extra + error)
    return rows


def _effect_route(effect: Effect) -> int:
    for i, (method, route, *_rest) in enumerate(ROUTES):
        if method == effect.method and route == effect.route:
            if i not in FLAG_ROUTES:
                raise ValueError(f"the effect's route must evaluate the flag: {FLAG_ROUTES}")
            return i
    raise ValueError(f"unknown route {effect.method} {effect.route}")


def hour_weights(first_hour: int, hours: int) -> list[float]:
    """Traffic per hour: a day curve peaking at 15:00 UTC."""
    return [
        1 + 0.5 * math.sin(2 * math.pi * (((first_hour + h) % 24) - 9) / 24) for h in range(hours)
    ]


# The last, empty branch of the UNION (u_info < 1 always) keeps every column nullable:
# DuckDB would otherwise write columns that are constant in every branch (signal,
# service_name, ...) as Parquet REQUIRED, where the collector's files have them optional.
def _trace_sql(
    seed: int, users: int, flag: str, rollout: float, effect: Effect, hour_ns: int, t0: int, t1: int
) -> str:
    """The SELECT producing every row of traces t0..t1 (global indices) in one hour."""
    eff = _effect_route(effect)
    cum, acc = [], 0.0
    for r in ROUTES[:-1]:
        acc += r[2]
        cum.append(acc)
    route_case = (
        "CASE "
        + " ".join(f"WHEN u_route < {c!r} THEN {i}" for i, c in enumerate(cum))
        + f" ELSE {len(ROUTES) - 1} END"
    )
    n_qa = max(4, users // 2000)
    n_staff = max(2, users // 5000)
    methods = _case("r", [_lit(r[0]) for r in ROUTES])
    routes = _case("r", [_lit(r[1]) for r in ROUTES])
    medians = _case("r", [repr(r[3]) for r in ROUTES])
    sigmas = _case("r", [repr(r[4]) for r in ROUTES])
    errors = _case("r", [repr(r[5]) for r in ROUTES])
    span_ns = HOUR_NS - 1_000_000_000  # roots start in the hour's first 59:59; children < 1 s later

    def u(k: int) -> str:  # the k-th uniform draw of a trace, in [0, 1)
        return f"(hash(xor(base, {_salt(k)}::UBIGINT)) >> 11)::DOUBLE / 9007199254740992.0"

    def bucket(name: str, user: str) -> str:
        return f"(hash({_lit(name + ':')} || {user}) >> 11)::DOUBLE / 9007199254740992.0"

    def ts(ns: str) -> str:
        return f"make_timestamp_ns({ns})"

    def span_id(k: int) -> str:
        return f"printf('%016x', hash(xor(base, {_salt(k)}::UBIGINT)))"

    def evaluation(key: str, variant: str, user: str) -> str:
        return (
            f'\'{{"feature_flag.key":"{key}","feature_flag.provider.name":"InMemoryProvider",'
            f'"feature_flag.result.variant":"\' || {variant} || \'","feature_flag.context.id":"\' '
            f"|| {user} || '\"}}'"
        )

    def event(key: str, variant: str, user: str, at: str) -> str:
        return (
            f'\'[{{"name":"feature_flag.evaluation","time_unix_nano":\' || ({at})::VARCHAR '
            f"|| ',\"attributes\":' || {evaluation(key, variant, user)} || '}}]'"
        )

    def resource(service: str) -> str:
        return _lit(
            json.dumps(
                {
                    "service.name": service,
                    "service.version": "2.3.0",
                    "deployment.environment": "production",
                },
                separators=(",", ":"),
            )
        )

    status_json = "',\"http.response.status_code\":' || status::VARCHAR"
    root = _select(
        time=ts("ts"),
        end_time=ts("ts + dur_ns"),
        signal="'span'",
        trace_id="trace_id",
        span_id="root_span",
        service_name="'shop-frontend'",
        scope_name="'shop.frontend'",
        name="method || ' ' || route",
        kind="2",
        duration_ms="dur_ns / 1e6",
        status_code="CASE WHEN err THEN 2 ELSE 0 END",
        status_message="CASE WHEN err THEN 'upstream failure' END",
        is_error="err",
        http_method="method",
        http_route="route",
        http_status_code="status",
        user_id="root_user",
        flags="CASE WHEN root_user IS NULL THEN MAP {} ELSE MAP {'dark-mode': dark} END",
        is_test="root_reason IS NOT NULL",
        test_reason="root_reason",
        attributes=(
            '\'{"http.request.method":"\' || method || \'","http.route":"\' || route '
            '|| \'","url.path":"\' || path || \'"\' || '
            + status_json
            + " || coalesce(',\"enduser.id\":\"' || root_user || '\"', '') || CASE who "
            'WHEN 1 THEN \',"test_user":true\' WHEN 3 THEN \',"user_agent.synthetic.type":"bot"\''
            " WHEN 2 THEN CASE WHEN staff_marked THEN ',\"app.user.is_test\":true' ELSE '' END"
            " ELSE '' END || '}'"
        ),
        resource_attributes=resource("shop-frontend"),
        span_events=f"CASE WHEN root_user IS NOT NULL THEN {event('dark-mode', 'dark', 'root_user', 'ts + 1000000')} END",
        dropped_attributes_count="0",
    )
    flag_lit = _lit(flag)
    child = _select(
        time=ts("ts + 2000000"),
        end_time=ts("ts + 2000000 + child_ns"),
        signal="'span'",
        trace_id="trace_id",
        span_id="child_span",
        parent_span_id="root_span",
        service_name="'checkout-service'",
        scope_name="'shop.checkout'",
        name=f"CASE WHEN r = {CHECKOUT} THEN 'POST /orders' ELSE 'checkout.quote' END",
        kind=f"CASE WHEN r = {CHECKOUT} THEN 2 ELSE 1 END",
        duration_ms="child_ns / 1e6",
        status_code=f"CASE WHEN r = {CHECKOUT} AND err THEN 2 ELSE 0 END",
        status_message=f"CASE WHEN r = {CHECKOUT} AND err THEN 'payment provider failure' END",
        is_error=f"r = {CHECKOUT} AND err",
        http_method=f"CASE WHEN r = {CHECKOUT} THEN 'POST' END",
        http_route=f"CASE WHEN r = {CHECKOUT} THEN '/orders' END",
        http_status_code=f"CASE WHEN r = {CHECKOUT} THEN status END",
        user_id=f"CASE WHEN r <> {POST_CART} THEN uid END",
        flags=f"CASE WHEN r <> {POST_CART} THEN MAP {{{flag_lit}: variant}} ELSE MAP {{}} END",
        is_test=f"who = 1 AND r <> {POST_CART}",
        test_reason=f"CASE WHEN who = 1 AND r <> {POST_CART} THEN 'user_id matches qa-*' END",
        attributes=(
            f'CASE WHEN r = {CHECKOUT} THEN \'{{"http.request.method":"POST",'
            f'"http.route":"/orders"\' || {status_json} || \'}}\' '
            "ELSE '{\"cart.items\":' || (1 + (u_misc * 7)::INTEGER)::VARCHAR || '}' END"
        ),
        resource_attributes=resource("checkout-service"),
        span_events=f"CASE WHEN r <> {POST_CART} THEN {event(flag, 'variant', 'uid', 'ts + 3000000')} END",
        dropped_attributes_count="0",
    )
    db = _select(
        time=ts("ts + 4000000"),
        end_time=ts("ts + 4000000 + db_ns"),
        signal="'span'",
        trace_id="trace_id",
        span_id="db_span",
        parent_span_id="child_span",
        service_name="'checkout-service'",
        scope_name="'shop.checkout'",
        name="'INSERT orders'",
        kind="3",
        duration_ms="db_ns / 1e6",
        status_code="0",
        is_error="false",
        flags="MAP {}",
        is_test="false",
        attributes='\'{"db.system":"postgresql","db.operation.name":"INSERT","db.collection.name":"orders"}\'',
        resource_attributes=resource("checkout-service"),
        dropped_attributes_count="0",
    )
    catalog = _select(
        time=ts("ts + 1000000"),
        end_time=ts("ts + 1000000 + child_ns"),
        signal="'span'",
        trace_id="trace_id",
        span_id="catalog_span",
        parent_span_id="root_span",
        service_name="'catalog-service'",
        scope_name="'shop.catalog'",
        name="'GET /items/{id}'",
        kind="2",
        duration_ms="child_ns / 1e6",
        status_code="CASE WHEN err THEN 2 ELSE 0 END",
        is_error="err",
        http_method="'GET'",
        http_route="'/items/{id}'",
        http_status_code="status",
        user_id="root_user",
        flags="CASE WHEN root_user IS NULL THEN MAP {} ELSE MAP {'recs-v2': recs} END",
        is_test="who = 1",
        test_reason="CASE WHEN who = 1 THEN 'user_id matches qa-*' END",
        attributes=(
            '\'{"http.request.method":"GET","http.route":"/items/{id}"\' || '
            + status_json
            + " || '}'"
        ),
        resource_attributes=resource("catalog-service"),
        span_events=f"CASE WHEN root_user IS NOT NULL THEN {event('recs-v2', 'recs', 'root_user', 'ts + 1500000')} END",
        dropped_attributes_count="0",
    )
    flag_log = _select(
        time=ts("ts + 3000000"),
        observed_time=ts("ts + 8000000"),
        signal="'log'",
        event_id="md5(trace_id || ':flag-log')",
        trace_id="trace_id",
        span_id="child_span",
        service_name="'checkout-service'",
        scope_name="'shop.checkout'",
        name="'feature_flag.evaluation'",
        is_error="false",
        user_id="uid",
        flags=f"MAP {{{flag_lit}: variant}}",
        is_test="who = 1",
        test_reason="CASE WHEN who = 1 THEN 'user_id matches qa-*' END",
        severity_number="9",
        severity_text="'INFO'",
        attributes=evaluation(flag, "variant", "uid"),
        resource_attributes=resource("checkout-service"),
        dropped_attributes_count="0",
    )
    error_log = _select(
        time=ts("ts + least(dur_ns * 9 // 10, 900000000)"),
        observed_time=ts("ts + least(dur_ns, 950000000)"),
        signal="'log'",
        event_id="md5(trace_id || ':error-log')",
        trace_id="trace_id",
        span_id="root_span",
        service_name="'shop-frontend'",
        scope_name="'shop.frontend'",
        is_error="true",
        http_route="route",
        flags="MAP {}",
        is_test="false",
        severity_number="17",
        severity_text="'ERROR'",
        body="'\"upstream failure: HTTP ' || status::VARCHAR || '\"'",
        attributes='\'{"exception.type":"UpstreamError","http.route":"\' || route || \'"}\'',
        resource_attributes=resource("shop-frontend"),
        dropped_attributes_count="0",
    )
    info_log = _select(
        time=ts("ts + 500000"),
        observed_time=ts("ts + 600000"),
        signal="'log'",
        event_id="md5(trace_id || ':info-log')",
        trace_id="trace_id",
        span_id="root_span",
        service_name="'shop-frontend'",
        scope_name="'shop.frontend'",
        is_error="false",
        flags="MAP {}",
        is_test="false",
        severity_number="9",
        severity_text="'INFO'",
        body="'\"handling ' || method || ' ' || path || '\"'",
        attributes="'{}'",
        resource_attributes=resource("shop-frontend"),
        dropped_attributes_count="0",
    )
    qa_end = QA_SHARE
    staff_end = qa_end + STAFF_SHARE
    monitor_end = staff_end + MONITOR_SHARE
    user_expr = (
        "CASE who"
        f" WHEN 1 THEN 'qa-' || lpad(floor(u_user * {n_qa})::BIGINT::VARCHAR, 3, '0')"
        f" WHEN 2 THEN 'emp-' || lpad(floor(u_user * {n_staff})::BIGINT::VARCHAR, 4, '0')"
        f" WHEN 3 THEN 'monitor-' || lpad(floor(u_user * {MONITORS})::BIGINT::VARCHAR, 2, '0')"
        f" ELSE 'user-' || lpad(floor({users} * pow(u_user, {USER_SKEW}))::BIGINT::VARCHAR, 7, '0') END"
    )
    return f"""
WITH seeded AS (
  SELECT i, hash(i, {seed}) AS base FROM range({t0}, {t1}) AS g(i)
), draws AS MATERIALIZED (
  SELECT i AS t, base,
         {hour_ns} + floor({u(0)} * {span_ns})::BIGINT AS ts,
         {u(1)} AS u_kind, {u(2)} AS u_user, {u(3)} AS u_anon, {u(4)} AS u_route,
         {u(5)} AS u_qaroute, {u(6)} AS u_n1, {u(7)} AS u_n2, {u(8)} AS u_err,
         {u(9)} AS u_mark, {u(10)} AS u_misc, {u(11)} AS u_info, {u(12)} AS u_n3
  FROM seeded
), kinds AS (
  SELECT *,
         CASE WHEN u_kind < {qa_end!r} THEN 1 WHEN u_kind < {staff_end!r} THEN 2
              WHEN u_kind < {monitor_end!r} THEN 3 ELSE 0 END AS who
  FROM draws
), routed AS (
  SELECT *,
         CASE WHEN who = 3 THEN {CHECKOUT} WHEN who = 1 AND u_qaroute < {QA_CHECKOUT!r} THEN {CHECKOUT}
              ELSE {route_case} END AS r,
         {user_expr} AS uid
  FROM kinds
), users AS (
  SELECT *,
         CASE WHEN who = 3 OR (who = 0 AND r IN {BROWSE_ROUTES} AND u_anon < {ANONYMOUS!r})
              THEN NULL ELSE uid END AS root_user,
         CASE WHEN who = 1 OR {bucket(flag, "uid")} < {float(rollout)!r} THEN 'on' ELSE 'off' END AS variant
  FROM routed
), traces AS (
  SELECT *,
         {methods} AS method, {routes} AS route,
         r IN {FLAG_ROUTES} AND r = {eff} AND variant = 'on' AS treated,
         printf('%016x%016x', hash(xor(base, {_salt(100)}::UBIGINT)),
                hash(xor(t::UBIGINT, {_salt(seed + 1_000_003)}::UBIGINT))) AS trace_id,
         {span_id(101)} AS root_span, {span_id(102)} AS child_span,
         {span_id(103)} AS db_span, {span_id(104)} AS catalog_span
  FROM users
), measured AS (
  SELECT *,
         ({medians} * exp({sigmas} * sqrt(-2 * ln(1 - u_n1)) * cos(2 * pi() * u_n2))
          * CASE WHEN treated THEN {1 + effect.latency!r} ELSE 1 END * 1e6)::BIGINT + 1000 AS dur_ns,
         u_err < {errors} + CASE WHEN treated THEN {effect.errors!r} ELSE 0 END AS err,
         who = 2 AND u_mark < 0.5 AS staff_marked
  FROM traces
), rows AS (
  SELECT *,
         CASE WHEN err THEN CASE WHEN u_misc < 0.8 THEN 500 ELSE 503 END
              WHEN r = {PRODUCT} AND u_misc < 0.01 THEN 404 ELSE 200 END AS status,
         CASE WHEN r = {PRODUCT} THEN '/product/' || (u_misc * 5000)::INTEGER::VARCHAR ELSE route END AS path,
         CASE who WHEN 1 THEN 'test_user=true' WHEN 3 THEN 'user_agent.synthetic.type=bot'
              WHEN 2 THEN CASE WHEN staff_marked THEN 'app.user.is_test=true' END END AS root_reason,
         CASE WHEN {bucket("dark-mode", "root_user")} < 0.5 THEN 'on' ELSE 'off' END AS dark,
         CASE WHEN {bucket("recs-v2", "root_user")} < 0.5 THEN 'treatment' ELSE 'control' END AS recs,
         (dur_ns * 0.8)::BIGINT AS child_ns,
         (2e6 * exp(0.5 * sqrt(-2 * ln(1 - u_n3)) * cos(2 * pi() * u_n2)))::BIGINT + 1000 AS db_ns
  FROM measured
)
SELECT {root} FROM rows
UNION ALL SELECT {child} FROM rows WHERE r IN {FLAG_ROUTES}
UNION ALL SELECT {db} FROM rows WHERE r = {CHECKOUT}
UNION ALL SELECT {catalog} FROM rows WHERE r = {PRODUCT}
UNION ALL SELECT {flag_log} FROM rows WHERE r = {POST_CART}
UNION ALL SELECT {error_log} FROM rows WHERE err
UNION ALL SELECT {info_log} FROM rows WHERE u_info < {INFO_LOGS!r}
UNION ALL SELECT {_select()} FROM draws WHERE u_info > 1
"""


_worker_con: duckdb.DuckDBPyConnection | None = None


def _write_file(job: tuple[str, str, int, bool]) -> int:
    """Run one file's COPY (in a worker process), and write its narrow companions as the
    collector does when `narrow`; returns the rows written."""
    global _worker_con
    path, sql, limit_mb, narrow = job
    if _worker_con is None:
        _worker_con = duckdb.connect()
        _worker_con.execute("SET threads = 1")
        _worker_con.execute(f"SET memory_limit = '{limit_mb}MB'")
        _worker_con.execute("SET preserve_insertion_order = false")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(target)
    # in time order through the collector's writer (its encodings), a row group at a time
    batches = _worker_con.sql(f"{sql} ORDER BY time_unix_nano").to_arrow_reader(ROW_GROUP_ROWS)
    rows = 0
    with open(tmp, "wb") as handle, parquet_writer(handle) as parquet:
        for batch in batches:
            parquet.write_table(
                pa.Table.from_batches([batch]).cast(SCHEMA), row_group_size=ROW_GROUP_ROWS
            )
            rows += batch.num_rows
    if narrow:
        write_companions(target, source=tmp, current=True)
    os.replace(tmp, target)
    return rows


def make_lake(
    lake_dir: Path | str,
    events: int,
    seed: int = 1,
    flag: str = "new-checkout",
    rollout: float = 0.2,
    effect: Effect = Effect(),
    *,
    hours: int = 24,
    end: datetime | None = None,
    rows_per_file: int = 1_000_000,
    threads: int | None = None,
    memory_limit: str = "4GB",
    progress: bool = False,
    narrow: bool = True,
) -> LakeInfo:
    """Write a synthetic lake of about `events` rows into `lake_dir` (see the module doc);
    `narrow=False` leaves out the narrow companions, as a lake from before issue 12."""
    began = time.perf_counter()
    lake = Path(lake_dir)
    if events < 1 or hours < 1:
        raise ValueError("events and hours must be positive")
    if not 0.0 <= rollout <= 1.0:
        raise ValueError("rollout must be in [0, 1]")
    end = end or datetime.now(UTC)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    first_hour = int(end.timestamp()) // 3600 - hours  # whole hours, none in the future
    users = max(10, events // 50)
    traces = max(1, round(events / expected_rows_per_trace(effect, rollout)))
    weights = hour_weights(first_hour, hours)
    total_w = sum(weights)
    bounds = [round(traces * sum(weights[: h + 1]) / total_w) for h in range(hours)]
    per_trace = expected_rows_per_trace(effect, rollout)

    # One task per file; `workers` processes write files side by side (a file of one hour
    # is often a single row group, which one DuckDB thread writes), one thread each.
    tasks: list[tuple[Path, int, int, int]] = []  # path, hour start ns, first, end trace
    start_trace = 0
    for h in range(hours):
        hour = first_hour + h
        n = bounds[h] - start_trace
        chunks = max(1, math.ceil(n * per_trace / rows_per_file))
        moment = datetime.fromtimestamp(hour * 3600, tz=UTC)
        part = lake / f"date={moment:%Y-%m-%d}" / f"hour={moment:%H}"
        for c in range(chunks):
            t0 = start_trace + n * c // chunks
            t1 = start_trace + n * (c + 1) // chunks
            if t1 > t0:
                path = part / f"bench-{len(tasks) + 1:012d}-000.parquet"
                tasks.append((path, hour * HOUR_NS, t0, t1))
        start_trace = bounds[h]

    workers = max(1, min(int(threads or os.cpu_count() or 1), len(tasks)))
    limit_mb = max(256, _megabytes(memory_limit) // workers)
    jobs = [
        (
            str(path),
            _trace_sql(seed, users, flag, rollout, effect, hour_ns, t0, t1),
            limit_mb,
            narrow,
        )
        for path, hour_ns, t0, t1 in tasks
    ]
    lake.mkdir(parents=True, exist_ok=True)
    rows_written = 0
    if workers == 1:
        results = map(_write_file, jobs)
        pool = None
    else:  # DuckDB's Python API holds the GIL: processes, not threads
        context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = context.Pool(workers)
        results = pool.imap_unordered(_write_file, jobs)
    try:
        for done, rows in enumerate(results, 1):
            rows_written += rows
            if progress and (done % max(1, len(jobs) // 20) == 0 or done == len(jobs)):
                print(
                    f"  {done}/{len(jobs)} files, {rows_written:,} rows, "
                    f"{time.perf_counter() - began:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    written = [task[0] for task in tasks]
    info = LakeInfo(
        lake=str(lake),
        events=rows_written,
        traces=traces,
        users=users,
        files=len(written),
        bytes=sum(p.stat().st_size for p in written),
        seconds=round(time.perf_counter() - began, 3),
        start=datetime.fromtimestamp(first_hour * 3600, tz=UTC).isoformat(),
        end=(
            datetime.fromtimestamp(first_hour * 3600, tz=UTC) + timedelta(hours=hours)
        ).isoformat(),
        params={
            "requested_events": events,
            "seed": seed,
            "flag": flag,
            "rollout": rollout,
            "effect": asdict(effect),
            "hours": hours,
            "rows_per_file": rows_per_file,
            "narrow": narrow,
        },
    )
    manifest_path(lake).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def read_manifest(lake_dir: Path | str) -> dict | None:
    path = manifest_path(lake_dir)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _megabytes(size: str) -> int:
    text = size.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 2**-10, "M": 1, "G": 2**10, "T": 2**20}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text) / 2**20)


def _number(text: str) -> int:
    return int(float(text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=_number, default=1_000_000, help="about how many rows (1e7 ok)"
    )
    parser.add_argument("--out", type=Path, required=True, help="lake directory to write")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--flag", default="new-checkout")
    parser.add_argument("--rollout", type=float, default=0.2)
    parser.add_argument(
        "--effect-latency",
        type=float,
        default=Effect.latency,
        help="relative latency added to flag-on POST /checkout (0.3 = +30 %%)",
    )
    parser.add_argument(
        "--effect-errors",
        type=float,
        default=Effect.errors,
        help="error rate added there (0.02 = +2 pp)",
    )
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument(
        "--end",
        type=datetime.fromisoformat,
        default=None,
        help="the window ends at this moment's hour (ISO, UTC; default now)",
    )
    parser.add_argument("--rows-per-file", type=_number, default=1_000_000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument(
        "--no-narrow", action="store_true", help="no narrow companions (a lake from before them)"
    )
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.glob("**/*.parquet")):
        parser.error(f"{args.out} already holds Parquet files; choose an empty directory")
    info = make_lake(
        args.out,
        args.events,
        seed=args.seed,
        flag=args.flag,
        rollout=args.rollout,
        effect=Effect(latency=args.effect_latency, errors=args.effect_errors),
        hours=args.hours,
        end=args.end,
        rows_per_file=args.rows_per_file,
        threads=args.threads,
        memory_limit=args.memory_limit,
        progress=True,
        narrow=not args.no_narrow,
    )
    print(
        f"{info.events:,} events ({info.traces:,} traces, {info.users:,} users) in {info.files} files, "
        f"{info.bytes / 2**20:,.1f} MiB, {info.seconds:.1f} s; window {info.start} .. {info.end}"
    )


if __name__ == "__main__":
    main()
