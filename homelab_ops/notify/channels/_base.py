"""What every channel's settings share."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
