"""Verdict notifications: a Slack-compatible JSON POST (Slack, Mattermost, Teams workflows,
Discord's /slack endpoint and most chat tools accept `{"text": …}`).

`notify` never raises: a webhook that is down must not stop a scheduled report. It
retries network errors, 408, 429 and 5xx with exponential backoff (honouring
`Retry-After`, capped), gives each attempt its own timeout, and logs one line when it
gives up. The URL is logged without its path, which holds the secret in Slack's URLs.
"""

from __future__ import annotations

import email.utils
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from flagscope.analysis.window import aware_utc

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 60.0  # no single wait longer than this, whatever Retry-After says
USER_AGENT = "flagscope-webhook/1"


def notify(
    url: str,
    payload: dict[str, Any],
    timeout_s: float = 5.0,
    retries: int = 3,
    backoff_s: float = 1.0,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """POST `payload` as JSON to `url`; True once a 2xx answer arrives.

    Up to `1 + retries` attempts, each with `timeout_s`; between them
    `backoff_s * 2**attempt` seconds, or the server's `Retry-After` when it is longer
    (both capped at 60 s). Never raises: failures are logged (one line) and return False.
    """
    where = redact(url)
    try:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            log.warning("webhook %s not sent: the URL must start with http:// or https://", where)
            return False
        body = orjson.dumps(payload)
        attempts = 1 + max(0, int(retries))
        problem = "no attempt made"
        for attempt in range(attempts):
            ok, problem, retry_after = _post(url, body, timeout_s)
            if ok:
                return True
            if retry_after is None or attempt + 1 == attempts:
                break
            sleep(min(MAX_BACKOFF_S, max(backoff_s * 2**attempt, retry_after)))
        log.warning(
            "webhook POST to %s failed after %d attempt(s): %s", where, attempt + 1, problem
        )
        return False
    except Exception as exc:  # noqa: BLE001 - a notification never takes the scheduler down
        log.warning("webhook POST to %s failed: %s: %s", where, type(exc).__name__, exc)
        return False


def _post(url: str, body: bytes, timeout_s: float) -> tuple[bool, str, float | None]:
    """One attempt: (delivered, problem, retry-after seconds or None if not retryable)."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read(65536)
            return True, "", None
    except urllib.error.HTTPError as exc:
        try:
            detail = exc.read(200).decode("utf-8", "replace").strip()
        except Exception:  # noqa: BLE001 - the body is only a hint for the log
            detail = ""
        finally:
            exc.close()
        problem = f"HTTP {exc.code}" + (f": {detail}" if detail else "")
        if exc.code in RETRY_STATUSES:
            return False, problem, retry_after_seconds(exc.headers.get("Retry-After"))
        return False, problem, None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{type(reason).__name__}: {reason}", 0.0


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); 0 if absent/bad."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, (aware_utc(when) - (now or datetime.now(UTC))).total_seconds())


def redact(url: str) -> str:
    """scheme://host[:port]/… — enough to tell which hook, without its secret path."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…" if parts.scheme else "<invalid URL>"


def escape(text: str) -> str:
    """Slack's three control characters (api.slack.com/reference/surfaces/formatting)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def verdict_changed_payload(
    flag: str, previous: str | None, current: str, summary: str, report_link: str
) -> dict[str, Any]:
    """`{"text": "<summary> — <link>", "blocks": [...]}` for a verdict change.

    `previous` None means the first run. `report_link` is a URL (rendered as a link) or a
    file path (rendered as text). Verdicts may be `Verdict` members or strings.
    """
    current = str(current)
    change = f"{previous} → {current}" if previous is not None else f"first verdict {current}"
    is_url = urllib.parse.urlsplit(report_link).scheme in ("http", "https")
    link = f"<{report_link}|report>" if is_url else f"`{escape(report_link)}`"
    return {
        "text": f"{escape(summary)} — {escape(report_link) if not is_url else report_link}",
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*flagscope* `{escape(flag)}`: *{change}*"},
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": escape(summary)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": link}]},
        ],
    }


def failing_payload(flag: str, error: str) -> dict[str, Any]:
    """A report (or guard) has started failing: sent once, not at every failed run."""
    text = f"flagscope `{escape(flag)}` is failing: {escape(error)}"
    return {"text": f"{text} (said once; a message follows when it works again)"}


def recovered_payload(flag: str, summary: str, report_link: str) -> dict[str, Any]:
    """A failing report works again (its verdict as before the failures)."""
    return {
        "text": f"flagscope `{escape(flag)}` works again: {escape(summary)} — {escape(report_link)}"
    }
