"""ntfy (ntfy.sh or a self-hosted server): one JSON publish per alert to the server's root.

The JSON form (https://docs.ntfy.sh/publish/#publish-as-json) carries UTF-8 titles, which
ntfy's header form cannot. Priority uses ntfy's 1-5 scale; a tag that names an emoji shows it
in front of the title. The topic is a secret: on a server without access control, whoever
knows it can read and post.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import Field, SecretStr

from homelab_ops.notify.alert import Alert
from homelab_ops.notify.channels._base import ChannelConfig, JsonChannel
from homelab_ops.notify.http import Retry

PRIORITY = {"info": 3, "warn": 4, "fail": 5}  # default, high, max
EMOJI = {"info": "white_check_mark", "warn": "warning", "fail": "rotating_light"}


class Config(ChannelConfig):
    type: Literal["ntfy"]
    server: str = Field("https://ntfy.sh", pattern=r"^https?://")
    topic: SecretStr
    token: SecretStr | None = None  # an access token (tk_...), sent as `Authorization: Bearer ...`


def message(alert: Alert, topic: str) -> dict:
    """The publish body ntfy reads (pure)."""
    out = {
        "topic": topic,
        "title": alert.title,
        "message": "\n".join(p for p in (alert.body, alert.preformatted) if p) or alert.title,
        "priority": PRIORITY[alert.severity],
        "tags": [EMOJI[alert.severity], alert.source, alert.kind],
    }
    if alert.link:
        out["click"] = alert.link
    return out


class Ntfy(JsonChannel):
    def __init__(self, config: Config, *, timeout: float, retry: Retry, sleep: Callable[[float], None]):
        super().__init__(config.label, config.server.rstrip("/") + "/",
                         config.token.get_secret_value() if config.token else None,
                         timeout=timeout, retry=retry, sleep=sleep)
        self._topic = config.topic.get_secret_value()

    def body(self, alert: Alert) -> dict:
        return message(alert, self._topic)


def build(config: Config, *, timeout: float, retry: Retry, sleep: Callable[[float], None]) -> Ntfy:
    return Ntfy(config, timeout=timeout, retry=retry, sleep=sleep)
