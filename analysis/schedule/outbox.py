"""Notifications that are not forgotten: a JSON-lines outbox that outlives a failed POST.

A notification is written to the outbox before its first attempt. `deliver` then tries
every pending message once — all at the same time, each with its own timeout — and
records each outcome. What failed stays pending and is tried again at the next call (the
next look of the guard, the next run of a report), so a dead webhook neither blocks the
other flags (no backoff sleeps in the loop) nor loses the message, and a crash between
"decided to notify" and "sent" leaves the message pending rather than gone. A message
still undelivered after `max_age` is given up: one log line, and `expired` recorded.

Lines (oldest first; only the last state of an id counts):

    {"id": …, "at": …, "flag": …, "state": "pending", "payload": {…}}
    {"id": …, "at": …, "state": "sent" | "failed" | "expired", "problem": …}

The webhook URL is not stored: it is a secret (Slack's path is the key), and the caller
gives it at delivery (`url_for(flag)`), so a changed URL in the config takes effect.
When nothing is pending the file is emptied, so it does not grow with every alert.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flagscope.analysis import report_archive
from flagscope.analysis.schedule import webhook
from flagscope.analysis.window import iso_z, naive_utc, parse_time

log = logging.getLogger(__name__)

MAX_PARALLEL = 8  # concurrent POSTs of one delivery round
DEFAULT_MAX_AGE = timedelta(days=1)


@dataclass(frozen=True)
class Pending:
    id: str
    at: datetime  # naive UTC: when the notification was decided
    flag: str
    payload: dict[str, Any]
    attempts: int = 0
    problem: str | None = None  # why the last attempt failed


@dataclass(frozen=True)
class Delivery:
    """One attempt's outcome."""

    id: str
    flag: str
    state: str  # sent, failed, expired
    problem: str | None = None


class Outbox:
    def __init__(
        self,
        path: Path,
        notify: Callable[..., bool] = webhook.notify,
        timeout_s: float = 5.0,
        retries: int = 0,
        max_age: timedelta = DEFAULT_MAX_AGE,
    ) -> None:
        self.path = Path(path)
        self.notify = notify
        self.timeout_s = timeout_s
        self.retries = retries  # quick retries inside one round (webhook.notify's backoff)
        self.max_age = max_age

    def add(self, flag: str, payload: dict[str, Any], now: datetime) -> str:
        """Record a notification to deliver; its id."""
        ident = uuid.uuid4().hex
        self._append(
            {"id": ident, "at": iso_z(naive_utc(now)), "flag": flag, "state": "pending",
             "payload": payload}
        )  # fmt: skip
        return ident

    def pending(self) -> list[Pending]:
        """The messages not yet delivered (nor given up), oldest first."""
        messages: dict[str, Pending] = {}
        for entry in report_archive.read_jsonl(self.path):
            ident, state = entry.get("id"), entry.get("state")
            if not isinstance(ident, str):
                continue
            if state == "pending" and isinstance(entry.get("payload"), dict):
                messages[ident] = Pending(
                    ident, _time(entry.get("at")), str(entry.get("flag")), entry["payload"]
                )
            elif ident in messages and state == "failed":
                old = messages[ident]
                messages[ident] = Pending(
                    ident, old.at, old.flag, old.payload, old.attempts + 1, entry.get("problem")
                )
            elif state in ("sent", "expired"):
                messages.pop(ident, None)
        return list(messages.values())

    def deliver(self, url_for: Callable[[str], str | None], now: datetime) -> list[Delivery]:
        """Try every pending message once, in parallel; record and return the outcomes.
        A message whose flag has no webhook any more (`url_for` gives None) is dropped."""
        now = naive_utc(now)
        jobs: list[tuple[Pending, str]] = []
        outcomes: list[Delivery] = []
        for message in self.pending():
            url = url_for(message.flag)
            if now - message.at > self.max_age or not url:
                why = "no webhook configured" if not url else f"undelivered for {self.max_age}"
                log.warning("notification for %s given up: %s", message.flag, why)
                outcomes.append(Delivery(message.id, message.flag, "expired", why))
            else:
                jobs.append((message, url))
        if jobs:
            with ThreadPoolExecutor(min(MAX_PARALLEL, len(jobs))) as pool:
                sent = list(pool.map(lambda job: self._send(*job), jobs))
            for (message, url), ok in zip(jobs, sent, strict=True):
                problem = None if ok else f"POST to {webhook.redact(url)} failed; retried later"
                outcomes.append(
                    Delivery(message.id, message.flag, "sent" if ok else "failed", problem)
                )
        for outcome in outcomes:
            self._append(
                {"id": outcome.id, "at": iso_z(now), "state": outcome.state,
                 "problem": outcome.problem}
            )  # fmt: skip
        if outcomes and not self.pending():
            report_archive.write_atomically(self.path, b"")
        return outcomes

    def _send(self, message: Pending, url: str) -> bool:
        # Each message in its own thread: one hook's backoff holds up no other message; what
        # still fails is tried again next round.
        return bool(
            self.notify(url, message.payload, timeout_s=self.timeout_s, retries=self.retries)
        )

    def _append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        report_archive.append_line(self.path, record)


def _time(value: Any) -> datetime:
    try:
        return naive_utc(parse_time(str(value), "outbox"))
    except Exception:  # noqa: BLE001 - a damaged time must not hold a message back forever
        return datetime.min
