"""What every credential kind shares: the rotation steps' Context, the Kind base, the common options.

The steps follow AWS Secrets Manager's rotation functions. Each is idempotent
and safe to re-run: `create` reuses a pending version left by an interrupted
run, `set` applies the pending value again, `finish` promotes only once. A new
value is always stored as `pending` before anything outside the store changes,
so no crash can lose the only copy of a password that is already in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Callable, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from homelab_ops.credentials.errors import CredentialError
from homelab_ops.credentials.policy import Definition
from homelab_ops.notify.redact import embedded_secrets
from homelab_ops.units import Duration

if TYPE_CHECKING:
    from homelab_ops.credentials.config import CredentialsConfig
    from homelab_ops.credentials.store import Store


@dataclass
class Context:
    """What a step needs: the store, the credential's definition, and where to put notes."""

    store: Store
    definition: Definition
    config: CredentialsConfig | None = None  # None: a step run without settings (a test, `creds set`)
    notes: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set, repr=False)  # every value seen, redacted from errors
    left_to_restart: list[str] = field(default_factory=list)  # consumers the `restart` step left to the owner

    def __post_init__(self):
        for v in self.definition.secret_params.values():
            self.secrets.add(v)
            self.secrets.update(embedded_secrets(v, whole_is_secret=True))  # an admin DSN's password

    @property
    def name(self) -> str:
        return self.definition.name

    def status(self):
        return self.store.status(self.name)

    def read(self, stage: str, why: str) -> tuple[int, dict]:
        version, payload = self.store.read(self.name, stage, purpose=f"rotation {why}")
        self.secrets.update(str(v) for v in payload.values())
        return version, payload

    def option(self, key: str, default: Any = None) -> Any:
        return self.definition.option(key, default)


class Kind:
    """A kind whose new value is made here (a password) and promoted once it works."""

    rotatable = True
    settable = False  # may `creds set` store a value directly?

    def new_payload(self, ctx: Context) -> dict:
        raise NotImplementedError

    def create(self, ctx: Context) -> None:
        if ctx.status().pending is None:
            payload = self.new_payload(ctx)
            ctx.secrets.update(str(v) for v in payload.values())
            ctx.store.put_pending(ctx.name, payload)

    def set(self, ctx: Context) -> None:
        pass

    def test(self, ctx: Context) -> None:
        pass

    def finish(self, ctx: Context) -> None:
        pending = ctx.status().pending
        if pending is not None:
            ctx.store.promote(ctx.name, pending.version)

    def reconcile(self, ctx: Context) -> None:
        """Tidy-up that runs on every rotation attempt, even when nothing is due."""

    def revert(self, ctx: Context) -> str:
        """Undo `set` when a consumer cannot use the new value, so the current one works again;
        returns what was done, for the error. Kinds whose current value stays valid until `finish`
        (an S3 key, a value only the store holds) have nothing to undo."""
        return "the current value still works: nothing is removed before finish"

    def payload_from_value(self, ctx: Context, value: str) -> dict:
        return {"value": value}


# ---------------------------------------------------------------------------
# Options: each kind's model derives from KindOptions; the settings file and
# `creds add` both validate through it.
# ---------------------------------------------------------------------------


def rule(check: Callable[[Any], Any]) -> AfterValidator:
    """A policy check as a field validator: pydantic reports ValueError, policy raises CredentialError."""

    def validate(v):
        if v is not None:
            try:
                check(v)
            except CredentialError as e:
                raise ValueError(str(e)) from None
        return v

    return AfterValidator(validate)


Length = Annotated[int | None, Field(None, ge=12, le=512, description="characters (default 32)")]


def kind_of(model: type[BaseModel]) -> str:
    """The `kind` value an options model is chosen by (its Literal)."""
    return get_args(model.model_fields["kind"].annotation)[0]


def a_kind(kind: str) -> str:
    """`a manual credential`, `an s3-access-key credential`: for error messages."""
    return f"{'an' if kind[0] in 'aeio' or kind.startswith('s3') else 'a'} {kind} credential"


class KindOptions(BaseModel):
    """The options every kind takes; a kind's model adds its own and `kind: Literal[...]`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    period: Duration = Field(
        "30d", description="rotate (or warn) after this long: 30d, 12h, 1w")
    consumers: list[Annotated[str, Field(min_length=1)]] = Field(
        [], description="compose services to restart after a rotation")
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _needs(cls, data: Any) -> Any:
        """A required option missing or empty gets one message naming it, as owners read it."""
        if isinstance(data, dict):
            for name, f in cls.model_fields.items():
                if name != "kind" and f.is_required() and not data.get(name):
                    hint = f" ({f.description})" if f.description else ""
                    raise ValueError(f"{a_kind(kind_of(cls))} needs `{name}`{hint}")
        return data
