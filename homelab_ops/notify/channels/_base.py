"""What every channel's settings share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from homelab_ops.notify.alert import Alert, Outcome
from homelab_ops.notify.http import Retry, post_json, with_retries

SEVERITY = Literal["info", "warn", "fail"]


class ChannelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    # How outcomes and the alerts table name this channel; defaults to its type.
    name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    min_severity: SEVERITY = "warn"  # info alerts (recoveries, the digest) stay on Telegram by default

    @property
    def label(self) -> str:
        return self.name or self.type


class JsonChannel:
    """A channel that is one JSON POST per alert: retries with backoff (a 429's Retry-After
    honoured), the tick's deadline, a bearer token; never raises. Subclasses say what to post."""

    def __init__(self, name: str, url: str, token: str | None, *, timeout: float, retry: Retry,
                 sleep: Callable[[float], None] = time.sleep):
        self.name = name
        self._url = url
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self.retry = retry
        self.sleep = sleep

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, <url hidden>)"

    def body(self, alert: Alert) -> dict:
        raise NotImplementedError

    def send(self, alert: Alert, *, deadline: float | None = None) -> Outcome:
        data = self.body(alert)
        resp, attempts = with_retries(
            lambda: post_json(self._url, data, timeout=self.timeout, headers=self._headers),
            self.retry, deadline=deadline, sleep=self.sleep)
        return Outcome(self.name, resp.ok, attempts, "" if resp.ok else resp.error)
