"""JSON over HTTP(S) with retries: the transport every channel shares.

urllib from the standard library sends, tenacity retries. Nothing here raises for an
HTTP or network failure: a result says what happened, so a channel that is down never
breaks the sensor that alerts. 429 answers are retried after the server's `retry_after`
(Telegram's `parameters.retry_after`, or a Retry-After header), 5xx and network errors
after an exponential backoff; all waiting stops at the caller's deadline.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import tenacity


@dataclass
class Response:
    status: int | None  # None: no HTTP answer at all
    body: dict | None = None  # parsed JSON, when the answer was JSON
    error: str = ""  # what went wrong, worded without the URL (it may hold a token)
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class Retry:
    attempts: int = 4
    backoff: float = 1.0  # first wait after a 5xx or a network error; doubles each time
    max_backoff: float = 30.0
    max_retry_after: float = 60.0  # a 429 asking for longer than this is a failure, not a wait


def _retry_after(body: dict | None, headers) -> float | None:
    if isinstance(body, dict):
        value = (body.get("parameters") or {}).get("retry_after")
        if isinstance(value, (int, float)):
            return float(value)
    header = headers.get("Retry-After") if headers is not None else None
    try:
        return float(header) if header is not None else None
    except ValueError:
        return None


def post_json(url: str, payload: dict, *, timeout: float, headers: dict[str, str] | None = None) -> Response:
    """One POST; never raises for HTTP or network trouble."""
    data = json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "homelab-ops",
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status, hdrs = resp.read(), resp.status, resp.headers
    except urllib.error.HTTPError as e:
        raw, status, hdrs = e.read() or b"", e.code, e.headers
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        return Response(None, error=f"{type(e).__name__}: {reason}")
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else None
    error = ""
    if not 200 <= status < 300:
        error = f"HTTP {status}"
        if body and body.get("description"):
            error += f": {body['description']}"
        elif body and body.get("error"):
            error += f": {body['error']}"
    return Response(status, body, error, _retry_after(body, hdrs) if status == 429 else None)


def _retryable(resp: Response) -> bool:
    """429, 5xx and no answer at all are worth another try; any other 4xx is final."""
    return not resp.ok and (resp.status is None or resp.status == 429 or resp.status >= 500)


def with_retries(send: Callable[[], Response], retry: Retry, *, deadline: float | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> tuple[Response, int]:
    """Call `send` until it succeeds, fails for good (4xx other than 429), or runs out of attempts or time.

    tenacity does the looping; what is ours is the judgement: a 429 waits as long as the server
    asks (Telegram puts it in the body, not a header, so urllib3's Retry would not see it), unless
    that is longer than `max_retry_after`; other failures back off exponentially; no wait runs past
    the caller's deadline (a sensor tick must end)."""
    backoff = tenacity.wait_exponential(multiplier=retry.backoff, min=retry.backoff, max=retry.max_backoff)

    def wait(state: tenacity.RetryCallState) -> float:
        resp = state.outcome.result()
        asked = resp.retry_after if resp.status == 429 else None
        return asked if asked is not None else backoff(state)

    def why_stop(state: tenacity.RetryCallState) -> str | None:
        resp = state.outcome.result()
        if state.attempt_number >= retry.attempts:
            return ""
        if resp.status == 429 and state.upcoming_sleep > retry.max_retry_after:
            return f" (asked to wait {state.upcoming_sleep:g}s, more than {retry.max_retry_after:g}s)"
        if deadline is not None and clock() + state.upcoming_sleep > deadline:
            return " (no time left to retry)"
        return None

    def give_up(state: tenacity.RetryCallState) -> Response:
        resp = state.outcome.result()
        resp.error += why_stop(state) or ""
        return resp

    attempts = 0

    def counted() -> Response:
        nonlocal attempts
        attempts += 1
        return send()

    resp = tenacity.Retrying(
        retry=tenacity.retry_if_result(_retryable), wait=wait, sleep=sleep,
        stop=lambda state: why_stop(state) is not None, retry_error_callback=give_up)(counted)
    return resp, attempts
