"""The credential store in PostgreSQL: definitions, encrypted versions with stages, the audit trail.

Every access to a value writes an audit row (who, what, which version, the
outcome; never the value). Each value is encrypted together with its name and
version, so a ciphertext copied onto another row fails to open instead of
silently answering for the wrong credential.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from homelab_ops.credentials import policy
from homelab_ops.credentials.errors import CredentialError, MasterKeyError, RotationBusy, UnknownCredential
from homelab_ops.credentials.keys import InvalidToken, Keyring, key_id, load_keyring, new_key, write_key_file
from homelab_ops.credentials.policy import Definition
from homelab_ops.errors import first_line
from homelab_ops.state import SCHEMA, connect, open_state
from homelab_ops.credentials.config import CredentialsConfig

if TYPE_CHECKING:
    from homelab_ops.settings import CredentialsSettings

log = logging.getLogger(__name__)

_KEYCHECK_TEXT = b"homelab-ops credential store v1"
S = SCHEMA


def cli_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class VersionInfo:
    version: int
    stage: str | None
    origin: str
    created_by: str
    created_at: datetime
    promoted_at: datetime | None
    retired_at: datetime | None


@dataclass(frozen=True)
class Status:
    """Where a credential stands: its versions by stage and its age. No values."""

    definition: Definition
    current: VersionInfo | None
    pending: VersionInfo | None
    previous: VersionInfo | None
    now: datetime

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def current_since(self) -> datetime | None:
        return self.current.promoted_at if self.current else None

    @property
    def age_seconds(self) -> float | None:
        return policy.age_seconds(self.now, self.current_since)

    @property
    def overdue(self) -> bool:
        return policy.is_overdue(self.now, self.current_since, self.definition.period_seconds)

    @property
    def due(self) -> bool:
        return policy.is_due(self.now, self.current_since, self.definition.period_seconds, self.pending is not None)

    @property
    def stages(self) -> str:
        parts = [f"{s} v{v.version}" for s, v in
                 (("current", self.current), ("pending", self.pending), ("previous", self.previous)) if v]
        return ", ".join(parts) or "no value"


@dataclass(frozen=True)
class CredentialAge:
    """How old one credential's current value is against its period. `age_seconds` is None when it
    was never set (which counts as overdue)."""

    name: str
    kind: str
    period: str
    period_seconds: float
    age_seconds: float | None
    current_version: int | None
    current_since: datetime | None
    overdue: bool


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    actor: str
    action: str
    credential: str | None
    version: int | None
    outcome: str
    detail: str


def payload_field(name: str, payload: dict, field: str) -> str:
    """One field of a credential's decrypted payload; a missing one is named with those it has."""
    if field not in payload:
        raise CredentialError(f"{name} has no field {field!r} (it has: {', '.join(sorted(payload))})")
    return str(payload[field])


class Store:
    """One connection (autocommit; multi-statement changes use explicit transactions) and the keyring."""

    def __init__(self, conn: psycopg.Connection, keyring: Keyring, actor: str, *, dsn: str | None = None):
        self.conn = conn
        self.keyring = keyring
        self.actor = actor
        self._dsn = dsn  # for writing a failure's audit row when `conn` itself broke

    # ------------------------------------------------------------------ audit

    def audit(self, action: str, credential: str | None = None, version: int | None = None,
              outcome: str = "ok", detail: str = "") -> None:
        """Append one audit row; if the store's connection is gone, try a fresh one before giving up."""
        row = (self.actor, action, credential, version, outcome, detail[:500])
        q = (f"INSERT INTO {S}.credential_audit (actor, action, credential, version, outcome, detail)"
             " VALUES (%s, %s, %s, %s, %s, %s)")
        try:
            self.conn.execute(q, row)
            return
        except psycopg.Error as e:
            failed_tx = self.conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            if not (isinstance(e, psycopg.OperationalError) or self.conn.broken or self.conn.closed or failed_tx):
                raise
        if self._dsn:
            try:
                with connect(self._dsn, autocommit=True, connect_timeout=5) as c:
                    c.execute(q, row)
                    return
            except psycopg.Error:
                pass
        log.warning("could not write the audit row for %s %s (%s): the state database is unreachable",
                    action, credential, outcome)

    def audit_rows(self, name: str | None = None, limit: int = 1000) -> list[AuditRow]:
        where, args = ("WHERE credential = %s", [name]) if name else ("", [])
        rows = self.conn.execute(
            f"SELECT id, at, actor, action, credential, version, outcome, detail FROM {S}.credential_audit"
            f" {where} ORDER BY id DESC LIMIT %s", [*args, limit]).fetchall()
        return [AuditRow(*r) for r in reversed(rows)]

    # ------------------------------------------------------------ encryption

    def _seal(self, name: str, version: int, payload: dict) -> bytes:
        doc = {"credential": name, "version": version, "payload": payload}
        return self.keyring.encrypt(json.dumps(doc, separators=(",", ":")).encode())

    def _open(self, name: str, version: int, token: bytes) -> dict:
        try:
            doc = json.loads(self.keyring.decrypt(token))
        except InvalidToken:
            raise MasterKeyError(f"the master key ({self.keyring.source}) does not open {name} v{version}") from None
        if doc.get("credential") != name or doc.get("version") != version:
            raise CredentialError(f"the stored value of {name} v{version} belongs to another row: "
                                  "the table has been tampered with")
        return doc["payload"]

    def _seal_params(self, name: str, secret: dict) -> bytes | None:
        return self._seal(name, 0, secret) if secret else None

    def _open_params(self, name: str, token) -> dict:
        return self._open(name, 0, bytes(token)) if token is not None else {}

    def verify_key(self) -> None:
        """Refuse a wrong master key before anything is read or written under it."""
        row = self.conn.execute(f"SELECT token, key_id FROM {S}.credential_keycheck").fetchone()
        if row is None:
            sample = self.conn.execute(
                f"SELECT ciphertext FROM {S}.credential_version WHERE ciphertext IS NOT NULL LIMIT 1").fetchone()
            if sample:
                try:
                    self.keyring.decrypt(sample[0])
                except InvalidToken:
                    self._wrong_key("(no key check recorded)")
            token = self.keyring.encrypt(_KEYCHECK_TEXT)
            self.conn.execute(f"INSERT INTO {S}.credential_keycheck (token, key_id) VALUES (%s, %s)"
                              " ON CONFLICT DO NOTHING", (token, self.keyring.primary_id))
            return self.verify_key()
        token, stored_id = row
        try:
            ok = self.keyring.decrypt(token) == _KEYCHECK_TEXT
        except InvalidToken:
            ok = False
        if not ok:
            self._wrong_key(stored_id)

    def _wrong_key(self, stored_id: str) -> None:
        msg = (f"wrong master key: the key from {self.keyring.source} (id {', '.join(self.keyring.ids)}) "
               f"does not open this credential store (written with key id {stored_id}). Nothing was changed.")
        self.audit("open", outcome="denied", detail=msg)
        raise MasterKeyError(msg)

    # ------------------------------------------------------------ definitions

    def _definition_from_row(self, r: dict) -> Definition:
        return Definition(r["name"], r["kind"], r["period"], tuple(r["consumers"]), r["description"],
                          dict(r["params"]), self._open_params(r["name"], r["secret_params"]), r["source"])

    def define(self, d: Definition, *, replace: bool = False) -> bool:
        """Register a credential; `replace` updates an existing one (settings sync). True if anything changed."""
        with self.conn.transaction():
            existing = self.conn.cursor(row_factory=dict_row).execute(
                f"SELECT * FROM {S}.credential WHERE name = %s FOR UPDATE", (d.name,)).fetchone()
            if existing is not None:
                if not replace:
                    where = "the settings file" if existing["source"] == "settings" else "the store"
                    raise CredentialError(f"a credential named {d.name!r} already exists (defined in {where})")
                if self._definition_from_row(existing) == d:
                    return False
            self.conn.execute(
                f"INSERT INTO {S}.credential (name, kind, period, params, secret_params, consumers, description, source)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind,"
                " period = EXCLUDED.period, params = EXCLUDED.params, secret_params = EXCLUDED.secret_params,"
                " consumers = EXCLUDED.consumers, description = EXCLUDED.description, source = EXCLUDED.source,"
                " updated_at = now()",
                (d.name, d.kind, d.period, Jsonb(dict(d.params)), self._seal_params(d.name, dict(d.secret_params)),
                 list(d.consumers), d.description, d.source))
            self.audit("define", d.name, detail=f"{'updated' if existing else 'added'} {d.kind}, period {d.period}, "
                                                 f"from {d.source}")
        return True

    def sync_settings(self, credentials: CredentialsSettings) -> None:
        """Make the registry agree with the settings file's `credentials.managed`."""
        for name, entry in credentials.managed.items():
            self.define(policy.definition_from_settings(name, entry), replace=True)

    def get_definition(self, name: str) -> Definition:
        r = self.conn.cursor(row_factory=dict_row).execute(
            f"SELECT * FROM {S}.credential WHERE name = %s", (name,)).fetchone()
        if r is None:
            self.audit("lookup", name, outcome="failed", detail="unknown credential")
            raise UnknownCredential(name)
        return self._definition_from_row(r)

    def definitions(self) -> list[Definition]:
        rows = self.conn.cursor(row_factory=dict_row).execute(
            f"SELECT * FROM {S}.credential ORDER BY name").fetchall()
        return [self._definition_from_row(r) for r in rows]

    # --------------------------------------------------------------- versions

    def versions(self, name: str) -> list[VersionInfo]:
        rows = self.conn.execute(
            f"SELECT version, stage, origin, created_by, created_at, promoted_at, retired_at"
            f" FROM {S}.credential_version WHERE credential = %s ORDER BY version", (name,)).fetchall()
        return [VersionInfo(*r) for r in rows]

    def status(self, name: str, now: datetime | None = None) -> Status:
        d = self.get_definition(name)
        by_stage = {v.stage: v for v in self.versions(name) if v.stage}
        return Status(d, by_stage.get("current"), by_stage.get("pending"), by_stage.get("previous"), now or _now())

    def read(self, name: str, stage: str = "current", *, purpose: str = "") -> tuple[int, dict]:
        """(version, payload) of the version at `stage`; audited whatever the outcome."""
        if stage not in policy.STAGES:
            raise CredentialError(f"unknown stage {stage!r}: use one of {', '.join(policy.STAGES)}")
        self.get_definition(name)
        row = self.conn.execute(
            f"SELECT version, ciphertext FROM {S}.credential_version WHERE credential = %s AND stage = %s",
            (name, stage)).fetchone()
        detail = f"{stage}{' for ' + purpose if purpose else ''}"
        if row is None:
            self.audit("read", name, outcome="failed", detail=f"{detail}: no {stage} version")
            raise CredentialError(f"{name} has no {stage} version"
                                  + (" yet (rotate it, or `homelab-ops creds set` it)" if stage == "current" else ""))
        version, token = row
        try:
            payload = self._open(name, version, token)
        except CredentialError as e:
            self.audit("read", name, version, "failed", f"{detail}: {e}")
            raise
        self.audit("read", name, version, "ok", detail)
        return version, payload

    def value(self, name: str, field: str = "value", stage: str = "current", *, purpose: str = "") -> str:
        _, payload = self.read(name, stage, purpose=purpose)
        return payload_field(name, payload, field)

    def _lock_versions(self, name: str) -> dict[str, int]:
        self.conn.execute(f"SELECT 1 FROM {S}.credential WHERE name = %s FOR UPDATE", (name,))
        return {stage: v for v, stage in self.conn.execute(
            f"SELECT version, stage FROM {S}.credential_version WHERE credential = %s AND stage IS NOT NULL",
            (name,))}

    def _next_version(self, name: str) -> int:
        return self.conn.execute(f"SELECT coalesce(max(version), 0) + 1 FROM {S}.credential_version"
                                 " WHERE credential = %s", (name,)).fetchone()[0]

    def put_pending(self, name: str, payload: dict, *, origin: str = "rotation") -> int:
        """Store a new value as `pending`, committed before anything outside the store changes."""
        self.get_definition(name)
        try:
            with self.conn.transaction():
                stages = self._lock_versions(name)
                if "pending" in stages:
                    raise CredentialError(f"{name} already has a pending version (v{stages['pending']})")
                version = self._next_version(name)
                self.conn.execute(
                    f"INSERT INTO {S}.credential_version (credential, version, stage, ciphertext, origin, created_by)"
                    " VALUES (%s, %s, 'pending', %s, %s, %s)",
                    (name, version, self._seal(name, version, payload), origin, self.actor))
                self.audit("write", name, version, "ok", "stored as pending")
        except CredentialError as e:
            self.audit("write", name, None, "failed", str(e))
            raise
        return version

    def _retire(self, name: str, version: int) -> None:
        self.conn.execute(f"UPDATE {S}.credential_version SET stage = NULL, ciphertext = NULL, retired_at = now()"
                          " WHERE credential = %s AND version = %s", (name, version))

    def discard_pending(self, name: str, reason: str) -> None:
        with self.conn.transaction():
            stages = self._lock_versions(name)
            if "pending" in stages:
                self._retire(name, stages["pending"])
                self.audit("discard", name, stages["pending"], "ok", reason)

    def promote(self, name: str, version: int) -> bool:
        """pending -> current, current -> previous, previous retired. Idempotent: False if already done."""
        with self.conn.transaction():
            stages = self._lock_versions(name)
            if stages.get("current") == version:
                return False
            if stages.get("pending") != version:
                raise CredentialError(f"{name} v{version} is not the pending version; nothing promoted")
            self._shift(name, stages)
            self.conn.execute(f"UPDATE {S}.credential_version SET stage = 'current', promoted_at = now()"
                              " WHERE credential = %s AND version = %s", (name, version))
            self.audit("promote", name, version, "ok", "pending -> current")
        return True

    def _shift(self, name: str, stages: dict[str, int]) -> None:
        if "previous" in stages:
            self._retire(name, stages["previous"])
        if "current" in stages:
            self.conn.execute(f"UPDATE {S}.credential_version SET stage = 'previous'"
                              " WHERE credential = %s AND version = %s", (name, stages["current"]))

    def put_current(self, name: str, payload: dict, *, origin: str = "set") -> int:
        """Store a value no rotation produced (a manual secret) straight as `current`."""
        with self.conn.transaction():
            stages = self._lock_versions(name)
            if "pending" in stages:
                self._retire(name, stages["pending"])
            self._shift(name, stages)
            version = self._next_version(name)
            self.conn.execute(
                f"INSERT INTO {S}.credential_version"
                " (credential, version, stage, ciphertext, origin, created_by, promoted_at)"
                " VALUES (%s, %s, 'current', %s, %s, %s, now())",
                (name, version, self._seal(name, version, payload), origin, self.actor))
            self.audit("write", name, version, "ok", f"stored as current ({origin})")
        return version

    # ------------------------------------------------------------------ locks

    @contextlib.contextmanager
    def rotation_lock(self, name: str) -> Iterator[None]:
        """One rotation per credential at a time, across processes (a session advisory lock)."""
        key = f"homelab_ops.credential:{name}"
        got = self.conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()[0]
        if not got:
            self.audit("rotate", name, outcome="denied", detail="another rotation holds the lock")
            raise RotationBusy(f"{name} is being rotated by another process right now")
        try:
            yield
        finally:
            with contextlib.suppress(psycopg.Error):
                if not self.conn.closed:
                    self.conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


# ---------------------------------------------------------------------------
# Opening the store, rekeying, overdue state
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def open_store(config: CredentialsConfig, actor: str, *, keyring: Keyring | None = None) -> Iterator[Store]:
    """The store with the master key checked and the settings' credentials registered."""
    keyring = keyring or load_keyring(config.credentials.key_file)
    try:
        conn = open_state(config.state, config.postgres)
    except psycopg.OperationalError as e:
        raise CredentialError(f"cannot reach the state database: {first_line(e)}") from None
    try:
        conn.autocommit = True
        store = Store(conn, keyring, actor, dsn=config.state.dsn.get_secret_value())
        store.verify_key()
        store.sync_settings(config.credentials)
        yield store
    except psycopg.Error as e:  # never a value in these: the store sends only ciphertext
        raise CredentialError(f"state database error: {first_line(e)}") from None
    finally:
        conn.close()


def init_store(config: CredentialsConfig, actor: str) -> tuple[Path | None, str, bool]:
    """Create the key file (unless the key comes from the environment) and the schema.

    Returns (key file or None, key id, whether a key file was created). An
    existing key file is never overwritten; a key that does not open an existing
    store is refused.
    """
    from homelab_ops.credentials.keys import ENV_VAR

    path = Path(config.credentials.key_file)
    created = False
    if not os.environ.get(ENV_VAR) and not path.exists():
        write_key_file(path, Keyring([new_key()], str(path)), replace=False)
        created = True
    with open_store(config, actor) as store:
        store.audit("init", detail=f"key id {store.keyring.primary_id}"
                                   + (f", key file {path} created" if created else ""))
        return (None if os.environ.get(ENV_VAR) else path), store.keyring.primary_id, created


def rekey(store: Store, target: str | os.PathLike) -> str:
    """Re-encrypt every value under a new master key, in one transaction; returns the new key id.

    The target key file first holds the new *and* the old keys, so a crash at any
    point leaves a file that opens the store; only after the commit is it
    rewritten with the new key alone.
    """
    target = Path(target)
    fresh = new_key()
    both = store.keyring.with_new_primary(fresh)
    write_key_file(target, both, replace=True)
    try:
        with store.conn.transaction():
            store.conn.execute(f"LOCK TABLE {S}.credential, {S}.credential_version, {S}.credential_keycheck"
                               " IN EXCLUSIVE MODE")
            rows = store.conn.execute(f"SELECT credential, version, ciphertext FROM {S}.credential_version"
                                      " WHERE ciphertext IS NOT NULL").fetchall()
            for name, version, token in rows:
                store.conn.execute(f"UPDATE {S}.credential_version SET ciphertext = %s"
                                   " WHERE credential = %s AND version = %s", (both.rotate(token), name, version))
            params = store.conn.execute(f"SELECT name, secret_params FROM {S}.credential"
                                        " WHERE secret_params IS NOT NULL").fetchall()
            for name, token in params:
                store.conn.execute(f"UPDATE {S}.credential SET secret_params = %s WHERE name = %s",
                                   (both.rotate(token), name))
            store.conn.execute(f"UPDATE {S}.credential_keycheck SET token = %s, key_id = %s, rekeyed_at = now()",
                               (both.encrypt(_KEYCHECK_TEXT), key_id(fresh)))
            store.audit("rekey", detail=f"{len(rows)} values and {len(params)} option sets re-encrypted, "
                                        f"key id {store.keyring.primary_id} -> {key_id(fresh)}")
    except InvalidToken:
        store.audit("rekey", outcome="failed", detail="a stored value does not open with the current key")
        raise MasterKeyError("a stored value does not open with the current master key; nothing re-encrypted "
                             f"({target} holds the new and the old key, either opens the store)") from None
    except psycopg.Error as e:
        store.audit("rekey", outcome="failed", detail=first_line(e))
        raise CredentialError(f"rekey failed, nothing re-encrypted: {first_line(e)} "
                              f"({target} holds the new and the old key, either opens the store)") from None
    store.keyring = Keyring([fresh], str(target))
    write_key_file(target, store.keyring, replace=True)
    return key_id(fresh)


def known_definitions(config: CredentialsConfig, *, timeout: int = 3) -> list[Definition]:
    """The settings' credentials plus those `creds add` registered, read without the master key.

    Used when the code location loads: a state database that is down or not yet
    created only hides the registered ones, it never stops the load.
    """
    found = {n: policy.definition_from_settings(n, e) for n, e in config.credentials.managed.items()}
    try:
        with connect(config.state.dsn.get_secret_value(), connect_timeout=timeout) as conn:
            if conn.execute("SELECT to_regclass(%s)", (f"{S}.credential",)).fetchone()[0] is not None:
                for name, kind, period, consumers, description, params in conn.execute(
                        f"SELECT name, kind, period, consumers, description, params FROM {S}.credential"):
                    if name not in found:
                        found[name] = Definition(name, kind, period, tuple(consumers), description, dict(params))
    except psycopg.Error as e:
        level = logging.INFO if "does not exist" in str(e) else logging.WARNING  # a fresh install has none yet
        log.log(level, "credential registry not read (%s); only the settings file's credentials get assets",
                first_line(e))
    return [found[n] for n in sorted(found)]


def ages(config: CredentialsConfig, now: datetime | None = None) -> list[CredentialAge]:
    """Every credential (the settings' and the store's) with the age of its current version; oldest
    first, never-set ones before all. Reads ages only: no master key, no audit rows."""
    now = now or _now()
    defs = {n: policy.definition_from_settings(n, e) for n, e in config.credentials.managed.items()}
    current: dict[str, tuple[int, datetime]] = {}
    with open_state(config.state, config.postgres) as conn:
        for name, kind, period, consumers, description, params in conn.execute(
                f"SELECT name, kind, period, consumers, description, params FROM {S}.credential"):
            defs.setdefault(name, Definition(name, kind, period, tuple(consumers), description, dict(params)))
        for name, version, since in conn.execute(
                f"SELECT credential, version, promoted_at FROM {S}.credential_version WHERE stage = 'current'"):
            current[name] = (version, since)
    out = []
    for d in defs.values():
        version, since = current.get(d.name, (None, None))
        out.append(CredentialAge(d.name, d.kind, d.period, d.period_seconds, policy.age_seconds(now, since),
                                 version, since, policy.is_overdue(now, since, d.period_seconds)))
    return sorted(out, key=lambda o: (o.age_seconds is not None, -(o.age_seconds or 0), o.name))


def overdue(config: CredentialsConfig, now: datetime | None = None) -> list[CredentialAge]:
    """The credentials past their period (or never set), for alerting; oldest first."""
    return [a for a in ages(config, now) if a.overdue]


__all__ = ["AuditRow", "CredentialAge", "ages", "Status", "Store", "VersionInfo", "cli_actor", "init_store", "known_definitions",
           "open_store", "overdue", "rekey"]
