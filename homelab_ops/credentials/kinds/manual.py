"""manual: a secret no API can rotate, tracked by age and replaced with `creds set`."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from homelab_ops.credentials.errors import CredentialError
from homelab_ops.credentials.kinds._base import Context, Kind, KindOptions

DAGSTER_KINDS = {"secret"}
HOW = "no API can rotate it: the check warns when it is overdue; store a new value with `homelab-ops creds set`"


class Options(KindOptions):
    kind: Literal["manual"]
    pattern: str | None = Field(None, description="a regular expression new values must match")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"pattern is not a regular expression: {e}") from None
        return v


class Manual(Kind):
    """A secret no API can rotate (a Telegram bot token): tracked by age, replaced with `creds set`."""

    rotatable = False
    settable = True

    def payload_from_value(self, ctx: Context, value: str) -> dict:
        pattern = ctx.option("pattern")
        if pattern and not re.fullmatch(pattern, value):
            raise CredentialError(f"the value does not match {ctx.name}'s pattern; nothing stored")
        return {"value": value}


BEHAVIOUR = Manual()
