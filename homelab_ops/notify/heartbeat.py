"""A dead man's switch: homelab-ops pings a monitor outside the Pi, so its silence is noticed.

Every alert path runs inside the Dagster daemon; when the daemon dies, the Pi loses power or
the Docker host hangs, nothing inside can say so. A push monitor (Healthchecks.io, Uptime Kuma,
ntfy) that expects a ping every few minutes can. The URL is a secret: whoever has it can mark
the homelab healthy.

URL forms, as the monitors define them:
- Healthchecks.io (and its API clones): `<url>` success, `<url>/start`, `<url>/fail`;
- Uptime Kuma push monitors (`.../api/push/<token>?status=up&msg=OK`): `status=up|down`, `msg=`;
- anything else is treated like Healthchecks (ntfy: the body is the message).
"""

from __future__ import annotations

import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from homelab_ops.notify.http import Response, Retry, post_json, with_retries

START, SUCCESS, FAIL = "start", "success", "fail"
EVENTS = (START, SUCCESS, FAIL)


def ping_url(base: str, event: str, message: str = "") -> str:
    """The URL that reports `event` to the monitor behind `base` (pure)."""
    if event not in EVENTS:
        raise ValueError(f"unknown heartbeat event {event!r}; one of {', '.join(EVENTS)}")
    parts = urlsplit(base)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "status" for k, _ in query):  # Uptime Kuma: the state is a query parameter
        if event == START:
            return base  # Kuma has no "started"; a plain push keeps the monitor up
        state = "up" if event == SUCCESS else "down"
        kept = [(k, v) for k, v in query if k not in ("status", "msg")]
        kept += [("status", state), ("msg", message[:200] or state)]
        return urlunsplit(parts._replace(query=urlencode(kept)))
    if event == SUCCESS:
        return base
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + event))


def ping(base: str, event: str, message: str = "", *, timeout: float = 10.0, attempts: int = 2,
         deadline: float | None = None) -> Response:
    """Send one heartbeat; never raises (a monitor that is down must not break the sensor).

    The body carries `message` (Healthchecks keeps it as the ping's log); it must already be
    redacted by the caller."""
    url = ping_url(base, event, message)

    def send() -> Response:  # no attempt may outlast the deadline, not only no wait between them
        left = timeout if deadline is None else min(timeout, deadline - time.monotonic())
        if left <= 0:
            return Response(None, error="no time left to ping")
        return post_json(url, {"event": event, "message": message}, timeout=left)

    resp, _ = with_retries(send, Retry(attempts=attempts, backoff=1.0, max_backoff=5.0), deadline=deadline)
    return resp
