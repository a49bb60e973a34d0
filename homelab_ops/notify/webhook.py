"""The second channel: one JSON POST per alert, in a shape ntfy and Gotify both accept.

Gotify reads `title`, `message` and `priority` (0-10); ntfy reads the same plus `topic`,
`tags` and `click` when the JSON is posted to the server's root. A bearer token, when
set, goes in the Authorization header, which both understand.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from homelab_ops.notify.alert import Alert, Outcome
from homelab_ops.notify.http import Retry, post_json, with_retries

PRIORITY = {"info": 2, "warn": 4, "fail": 5}


def payload(alert: Alert, topic: str | None = None) -> dict:
    body = "\n".join(p for p in (alert.body, alert.preformatted) if p) or alert.title
    out = {
        "title": alert.title,
        "message": body,
        "priority": PRIORITY[alert.severity],
        "tags": [alert.severity, alert.source],
        "severity": alert.severity,
        "kind": alert.kind,
        "source": alert.source,
        "subject": alert.subject,
    }
    if alert.link:
        out["click"] = alert.link
    if alert.run_id:
        out["run_id"] = alert.run_id
    if topic:
        out["topic"] = topic
    return out


class Webhook:
    def __init__(self, url: str, *, topic: str | None = None, token: str | None = None, timeout: float = 10,
                 retry: Retry = Retry(), sleep: Callable[[float], None] = time.sleep):
        self._url = url
        self.topic = topic
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self.retry = retry
        self.sleep = sleep

    def __repr__(self) -> str:
        return "Webhook(<url hidden>)"

    def send(self, alert: Alert, *, deadline: float | None = None) -> Outcome:
        data = payload(alert, self.topic)
        resp, attempts = with_retries(
            lambda: post_json(self._url, data, timeout=self.timeout, headers=self._headers),
            self.retry, deadline=deadline, sleep=self.sleep)
        return Outcome("webhook", resp.ok, attempts, "" if resp.ok else resp.error)
