"""Rotation: run a credential's four steps, resuming whatever an interrupted run left pending.

Every step writes an audit row with its outcome. A failed step raises
RotationError with a message scrubbed of every value the step saw; the
original exception is not chained, so no secret reaches a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from homelab_ops.credentials import consumers, policy
from homelab_ops.credentials.errors import CredentialError, RotationError
from homelab_ops.credentials.envfile import checked_template
from homelab_ops.credentials.kinds import Context, Kind, kind_for
from homelab_ops.credentials.store import Store
from homelab_ops.errors import typed_first_line
from homelab_ops.credentials.config import CredentialsConfig

# `restart` gives the consumers the new value and waits for them to be healthy (consumers.py):
# before `finish`, so an old S3 key is deleted only once nothing uses it.
STEPS = ("create", "set", "test", "restart", "finish")


@dataclass
class RotationResult:
    name: str
    kind: str
    rotated: bool
    resumed: bool = False
    version: int | None = None
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    consumers: tuple[str, ...] = ()
    left_to_restart: tuple[str, ...] = ()  # consumers the `restart` step could not give the new value

    @property
    def restart(self) -> tuple[str, ...]:
        """The services the owner must still restart to pick up the new value."""
        return self.left_to_restart if self.rotated else ()


def _reason(e: Exception) -> str:
    if isinstance(e, CredentialError):
        return str(e)
    return typed_first_line(e)


def _run(ctx: Context, step: str) -> None:
    kind = kind_for(ctx.definition.kind)
    try:
        if step == "reconcile":
            kind.reconcile(ctx)
        elif step == "restart":
            consumers.restart(ctx)
        else:
            getattr(kind, step)(ctx)
    except Exception as e:  # any failure, including a lost database connection
        message = policy.redact(_reason(e), ctx.secrets)
        ctx.store.audit(f"step:{step}", ctx.name, outcome="failed", detail=message)
        raise RotationError(ctx.name, step, message) from None
    ctx.store.audit(f"step:{step}", ctx.name, outcome="ok")


def _context(store: Store, name: str, config: CredentialsConfig | None) -> Context:
    d = store.get_definition(name)
    if not kind_for(d.kind).rotatable:
        store.audit("rotate", name, outcome="denied", detail="manual credential")
        raise CredentialError(f"{name} is a manual credential: no API can rotate it; store a new value with "
                              f"`homelab-ops creds set {name}`")
    return Context(store, d, config)


def _check_env_template(ctx: Context) -> None:
    """The env template is read by the restart step and after `finish`: one it cannot render stops the
    rotation before any step, not between a changed password and its consumers."""
    template_path = ctx.config.credentials.env_template if ctx.config else None
    if not template_path:
        return
    try:
        checked_template(template_path)
    except CredentialError as e:
        ctx.store.audit("rotate", ctx.name, outcome="failed", detail=str(e))
        raise RotationError(ctx.name, "env template", str(e)) from None


def run_step(store: Store, name: str, step: str, *, config: CredentialsConfig | None = None) -> list[str]:
    """One step on its own (for operators and tests); returns the step's notes."""
    if step not in STEPS:
        raise CredentialError(f"unknown step {step!r}: use one of {', '.join(STEPS)}")
    try:
        ctx = _context(store, name, config)
        with store.rotation_lock(name):
            _run(ctx, step)
    except psycopg.Error as e:
        raise _state_lost(store, name, e) from None
    return ctx.notes


def _state_lost(store: Store, name: str, e: psycopg.Error) -> RotationError:
    message = (f"the state database failed ({_reason(e)}); any pending version stays and the next run "
               "finishes it")
    store.audit("rotate", name, outcome="failed", detail=message)
    return RotationError(name, "state database", message)


def rotate(store: Store, name: str, *, config: CredentialsConfig | None = None, force: bool = False) -> RotationResult:
    """Rotate `name` if due (or `force`), finishing any pending version first; idempotent."""
    try:
        return _rotate(store, name, config=config, force=force)
    except psycopg.Error as e:  # outside a step: reading the definition or the stages
        raise _state_lost(store, name, e) from None


def _rotate(store: Store, name: str, *, config: CredentialsConfig | None, force: bool) -> RotationResult:
    ctx = _context(store, name, config)
    d = ctx.definition
    result = RotationResult(name, d.kind, rotated=False, consumers=d.consumers)
    with store.rotation_lock(name):
        st = store.status(name)
        if not (force or st.due):
            if type(kind_for(d.kind)).reconcile is not Kind.reconcile:  # only kinds with tidying to do
                _run(ctx, "reconcile")
            result.notes = ctx.notes
            result.version = st.current.version if st.current else None
            return result
        _check_env_template(ctx)
        result.resumed = st.pending is not None
        store.audit("rotate", name, st.pending.version if st.pending else None, "ok",
                    "started" + (f", resuming pending v{st.pending.version}" if st.pending else "")
                    + (" (forced)" if force and not st.due else ""))
        try:
            for step in STEPS:
                _run(ctx, step)
                result.steps.append(step)
        except RotationError:
            store.audit("rotate", name, outcome="failed", detail=f"stopped after {result.steps or 'no steps'}")
            raise
        st = store.status(name)
        result.rotated = True
        result.left_to_restart = tuple(ctx.left_to_restart)
        result.version = st.current.version
        result.notes = ctx.notes
        store.audit("rotate", name, result.version, "ok", "completed")
    return result


def set_value(store: Store, name: str, value: str) -> int:
    """Store a value supplied by the operator (a new bot token) as `current`; returns its version."""
    d = store.get_definition(name)
    kind = kind_for(d.kind)
    if not kind.settable:
        store.audit("write", name, outcome="denied", detail=f"{d.kind} values change only by rotation")
        raise CredentialError(f"{name} is a {d.kind} credential: its value changes only by rotation "
                              f"(`homelab-ops creds rotate {name}`)")
    if not value:
        raise CredentialError("an empty value was not stored")
    ctx = Context(store, d)
    try:
        payload = kind.payload_from_value(ctx, value)
    except CredentialError as e:
        store.audit("write", name, outcome="failed", detail=str(e))
        raise
    return store.put_current(name, payload, origin="set")
