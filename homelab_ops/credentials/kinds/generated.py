"""generated: a random secret by length and alphabet, optionally with its htpasswd (bcrypt) line."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from homelab_ops.credentials import policy
from homelab_ops.credentials.errors import CredentialError
from homelab_ops.credentials.kinds._base import Context, Kind, KindOptions, Length, rule

DAGSTER_KINDS = {"secret"}
HOW = "a new random secret by its length and alphabet policy"


class Options(KindOptions):
    kind: Literal["generated"]
    length: Length = None
    alphabet: Annotated[str | None, rule(policy.resolve_alphabet)] = Field(
        None, description=f"{', '.join(policy.ALPHABETS)} or chars:<chars> (default alnum)")
    htpasswd_user: str | None = Field(None, description="also keep a bcrypt htpasswd line for this user")
    bcrypt_rounds: int | None = Field(None, ge=4, le=16, description="bcrypt cost of the htpasswd line (default 12)")

    @field_validator("htpasswd_user")
    @classmethod
    def _htpasswd_user(cls, v: str | None) -> str | None:
        if v is not None and (not v or ":" in v or any(c.isspace() for c in v)):
            raise ValueError("htpasswd_user may not be empty or contain ':' or spaces")
        return v


class Generated(Kind):
    """A random secret by policy (length, alphabet), optionally with its htpasswd (bcrypt) line."""

    settable = True

    def new_payload(self, ctx: Context) -> dict:
        return self._payload(ctx, policy.generate_secret(ctx.option("length", 32), ctx.option("alphabet", "alnum")))

    def _payload(self, ctx: Context, value: str) -> dict:
        payload = {"value": value}
        user = ctx.option("htpasswd_user")
        if user:
            payload["username"] = user
            payload["htpasswd"] = policy.htpasswd_line(user, value, ctx.option("bcrypt_rounds", 12))
        return payload

    def payload_from_value(self, ctx: Context, value: str) -> dict:
        return self._payload(ctx, value)

    def test(self, ctx: Context) -> None:
        _, p = ctx.read("pending", "test")
        chars = set(policy.resolve_alphabet(ctx.option("alphabet", "alnum")))
        if len(p["value"]) != ctx.option("length", 32) or not set(p["value"]) <= chars:
            raise CredentialError("the pending value does not meet the length and alphabet policy")
        if "htpasswd" in p and not policy.htpasswd_matches(p["htpasswd"], p["value"]):
            raise CredentialError("the pending htpasswd line does not verify against its password")


BEHAVIOUR = Generated()
