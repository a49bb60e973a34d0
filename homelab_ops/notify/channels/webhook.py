"""A plain JSON POST per alert, in the shape Gotify reads (and ntfy when posted to its root).

Gotify reads `title`, `message` and `priority` (0-10); the other keys let any receiver route on
severity, kind and source. A bearer token, when set, goes in the Authorization header. The URL is
a secret: a Gotify `?token=` grants posting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from pydantic import SecretStr

from homelab_ops.notify.alert import Alert
from homelab_ops.notify.channels._base import ChannelConfig, JsonChannel
from homelab_ops.notify.http import Retry

PRIORITY = {"info": 2, "warn": 4, "fail": 5}


class Config(ChannelConfig):
    type: Literal["webhook"]
    url: SecretStr
    topic: str | None = None  # ntfy's JSON form, when the URL is an ntfy server's root
    token: SecretStr | None = None  # sent as `Authorization: Bearer ...`


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


class Webhook(JsonChannel):
    def __init__(self, url: str, *, name: str = "webhook", topic: str | None = None, token: str | None = None,
                 timeout: float = 10, retry: Retry = Retry(), sleep: Callable[[float], None] = time.sleep):
        super().__init__(name, url, token, timeout=timeout, retry=retry, sleep=sleep)
        self.topic = topic

    def body(self, alert: Alert) -> dict:
        return payload(alert, self.topic)


def build(config: Config, *, timeout: float, retry: Retry, sleep: Callable[[float], None]) -> Webhook:
    return Webhook(config.url.get_secret_value(), name=config.label, topic=config.topic,
                   token=config.token.get_secret_value() if config.token else None,
                   timeout=timeout, retry=retry, sleep=sleep)
