"""Restore verification by n8n itself: the backup restored, n8n run on it, every workflow loaded
and every credential decrypted with the key saved in the backup set.

The manifest comparison proves the rows came back; only n8n proves they are usable:
that its migrations run on them, that each workflow loads with its nodes intact, and
that the saved key opens every credential. The scratch copy is deactivated before n8n
touches it and only CLI commands that never activate are run (no server): a Telegram
trigger activated there would re-point the owner's bot at a database about to be dropped.

Decrypted values exist only in memory and in a 0600 file inside a private folder that is
deleted when n8n's export has been read; what is kept is counts, names and keyed hashes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import psycopg

from homelab_ops.backups import postgresql as pg
from homelab_ops.backups.catalog import read_listing
from homelab_ops.backups.config import BackupsConfig
from homelab_ops.backups.restore import Located, RestoreError, restore, stores_named
from homelab_ops.backups.stores import Store, StoreError, read_json, stores_for
from homelab_ops.errors import first_line
from homelab_ops.n8n import backup_set, compare, keys
from homelab_ops.n8n.runner import N8nCli, N8nRunError
from homelab_ops.n8n.workflows import export_workflows, use_schema

if TYPE_CHECKING:
    from homelab_ops.settings import BackupSettings

SCRATCH_PREFIX = "homelab_n8n_"
RECORD_SUFFIX = ".n8n-verified.json"


class N8nVerifyError(RuntimeError):
    """Verification by n8n could not run (no backup, store down); not a verdict on the backup."""


def applies(config: BackupsConfig, database: str) -> bool:
    """n8n-level verification runs for n8n's database when `n8n.verify_with` is set."""
    return (config.n8n is not None and config.n8n.verify_with is not None
            and backup_set.n8n_database(config.n8n) == database)


def scratch_name(tag: str) -> str:
    return f"{SCRATCH_PREFIX}{tag}_{uuid.uuid4().hex[:8]}"


@dataclass
class Baseline:
    """What the restored database holds, read before n8n runs on it."""

    workflows: dict[str, dict]
    credentials: list[dict]  # id, name, type
    expected_hashes: dict[str, str | None]  # keyed hash of an independent decryption, None: failed
    webhooks: int


def read_baseline(dsn: str, key: str, schema: str, prefix: str) -> Baseline:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        use_schema(conn, schema)
        workflows = compare.digests(export_workflows(conn, prefix))
        rows = conn.execute(f'SELECT id, name, type, data FROM "{prefix}credentials_entity" ORDER BY id').fetchall()
        hooks = conn.execute(f'SELECT count(*) FROM "{prefix}webhook_entity"').fetchone()[0]
    creds, hashes = [], {}
    for cid, name, ctype, data in rows:
        creds.append({"id": cid, "name": name, "type": ctype})
        try:
            hashes[cid] = keys.value_hash(key, keys.decrypt_credential(key, data))
        except ValueError:
            hashes[cid] = None
    return Baseline(workflows, creds, hashes, hooks)


def deactivate_all(dsn: str, schema: str, prefix: str) -> int:
    """Every workflow of the scratch copy inactive, before any n8n sees it; returns how many were active."""
    table = f'"{schema}"."{prefix}workflow_entity"'
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        cols = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (schema, f"{prefix}workflow_entity")).fetchall()}
        sets = ["active = false"] + (['"activeVersionId" = NULL'] if "activeVersionId" in cols else [])
        cur = conn.execute(f"UPDATE {table} SET {', '.join(sets)} WHERE active")
        return cur.rowcount


def load_with_n8n(cli: N8nCli, ids: list[str]) -> list[dict]:
    """Every workflow as n8n exports it. When n8n fails on `--all`, one call each, so the workflow
    it cannot load is named (it is then missing from the result); when it fails on each, the
    failure is n8n's own (migrations, the database) and is raised."""
    try:
        return cli.export_workflows()
    except N8nRunError as whole:
        out, errors = [], 0
        for wid in ids:
            try:
                out += cli.export_workflow(wid)
            except (N8nRunError, ValueError):
                errors += 1
        if ids and errors == len(ids):
            raise whole
        return out


def decrypt_with_n8n(cli: N8nCli, key: str, stored: list[dict]) -> dict[str, str | None]:
    """Keyed hash of every credential as n8n decrypts it; None for those it cannot.

    One call for all; when n8n refuses (one bad credential stops `--all`), one call each, so
    the failing ones are named."""
    out: dict[str, str | None] = {}
    try:
        items = cli.export_credentials_decrypted()
    except N8nRunError:
        items = None
    if items is not None:
        for c in items:
            data = c.get("data")
            out[str(c.get("id"))] = keys.value_hash(key, data) if isinstance(data, dict) else None
        return out
    for c in stored:
        try:
            got = cli.export_credential_decrypted(str(c["id"]))
            data = got[0].get("data") if got else None
            out[str(c["id"])] = keys.value_hash(key, data) if isinstance(data, dict) else None
        except (N8nRunError, ValueError):
            out[str(c["id"])] = None
    return out


def run_n8n_on(config: BackupsConfig, scratch: str, key: str, *, version: str | None = None,
               executable: str | None = None, expected_workflows: dict[str, dict] | None = None,
               by_parameters: bool = False) -> compare.Verdict:
    """Deactivate, run n8n's CLI (its migrations run first), compare with the restored rows."""
    s = config.n8n
    dsn = pg.database_dsn(config.postgres.dsn.get_secret_value(), scratch)
    base = read_baseline(dsn, key, s.db_schema, s.table_prefix)
    deactivate_all(dsn, s.db_schema, s.table_prefix)
    cli = N8nCli(config, database=scratch, key=key, version=version, executable=executable)
    verdict = compare.Verdict()
    try:
        loaded = compare.digests(load_with_n8n(cli, list(expected_workflows or base.workflows)))
        decrypted = decrypt_with_n8n(cli, key, base.credentials)
    except (N8nRunError, ValueError) as e:
        verdict.problems.append(f"n8n could not run on the restored database: {e}")
        return verdict
    verdict.workflows = compare.compare_workflows(expected_workflows if expected_workflows is not None
                                                  else base.workflows, loaded, by_parameters=by_parameters)
    verdict.credentials = compare.compare_credentials(base.credentials, base.expected_hashes, decrypted)
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        hooks = conn.execute(f'SELECT count(*) FROM "{s.db_schema}"."{s.table_prefix}webhook_entity"').fetchone()[0]
    if hooks > base.webhooks:
        verdict.problems.append(f"n8n registered {hooks - base.webhooks} webhooks on the scratch copy")
    return verdict


@dataclass
class N8nVerification:
    database: str
    stem: str
    store: str
    version: str
    mode: str
    key_fingerprint: str | None
    verdict: compare.Verdict = field(default_factory=compare.Verdict)
    duration_s: float = 0.0
    verified_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    @property
    def message(self) -> str:
        return self.verdict.summary()

    def record(self) -> dict:
        v = self.verdict
        return {
            "backup": self.stem, "store": self.store, "n8n_version": self.version, "mode": self.mode,
            "key_fingerprint": self.key_fingerprint, "passed": self.passed, "message": self.message,
            "workflows": len(v.workflows), "credentials": len(v.credentials),
            "credentials_decrypted": sum(1 for c in v.credentials if c.decrypted),
            "failed_workflows": [w.workflow for w in v.failed_workflows],
            "failed_credentials": [c.credential for c in v.failed_credentials],
            "duration_s": round(self.duration_s, 3), "verified_at": self.verified_at.isoformat(),
        }


def _store(config: BackupsConfig, source: str | None) -> Store:
    """`auto`: the first S3 target's copy when there is one (what a disaster restores); else the
    store named as `backups restore --from` names them."""
    if source in (None, "auto"):
        local, remotes = stores_for(config.backups)
        return remotes[0] if remotes else local
    try:
        return stores_named(config.backups, source)[0]
    except RestoreError as e:
        raise N8nVerifyError(str(e)) from None


def locate_set(config: BackupsConfig, database: str, store: Store, stem: str | None, *, exact: bool = False) -> Located:
    """The newest complete backup at or before `stem` (a backup id), or exactly `stem` with `exact`:
    verification must judge the backup it was asked about, not an older copy a target still holds."""
    try:
        backups = read_listing(store.list(database)).backups
    except StoreError as e:
        raise N8nVerifyError(str(e)) from None
    if stem is not None:
        backups = [b for b in backups if (b.stem == stem if exact else b.stem <= stem)] if len(stem) == 16 else []
    if not backups:
        raise N8nVerifyError(f"no complete backup of {database!r} in {store.label}"
                             + ((" with id " if exact else " at or before ") + stem if stem else ""))
    b = backups[-1]
    return Located(store, database, b, read_json(store, database, b.manifest))


def verify_with_n8n(config: BackupsConfig, database: str, *, stem: str | None = None, source: str | None = None,
                    exact: bool = False, keep_scratch: bool = False) -> N8nVerification:
    """Restore backup `stem` (default: the newest; the first S3 target's copy when configured) into a
    scratch database, run n8n on it with the set's key, compare; the scratch database is dropped."""
    started = time.monotonic()
    store = _store(config, source)
    loc = locate_set(config, database, store, stem, exact=exact)
    s = config.n8n
    result = N8nVerification(database, loc.backup.stem, store.label, s.version, s.verify_with or "command", None)
    redact = config.redactor()
    try:
        extras = backup_set.read_extras(store, database, loc.backup.stem)
    except (StoreError, OSError, ValueError) as e:
        raise N8nVerifyError(f"cannot read {loc.backup.stem}{backup_set.META_SUFFIX}: {first_line(e)}") from None
    if extras is None:
        result.verdict.problems.append(f"backup {loc.backup.stem} has no {backup_set.META_SUFFIX}: n8n's key and "
                                       "binary data were not saved with it")
        result.duration_s = time.monotonic() - started
        return result
    try:
        recorded = result.key_fingerprint = backup_set.recorded_fingerprint(store, database, extras)
        key = backup_set.open_key(config.backups, store, database, extras)
    except (keys.KeyError_, RestoreError, StoreError, OSError) as e:
        result.verdict.problems.append(redact(f"the backup's key cannot be used: {e}"))
        result.duration_s = time.monotonic() - started
        return result
    try:
        configured = keys.read_key(config)
    except keys.KeyError_ as e:
        configured = None
        result.verdict.problems.append(f"the configured key could not be read: {e}")
    if configured is not None and configured.fingerprint != recorded:
        result.verdict.problems.append(
            f"key fingerprint mismatch: backup {loc.backup.stem} was saved with key {recorded}, "
            f"{configured.source} is {configured.fingerprint}; n8n started with either would not decrypt "
            "the other's credentials")
    scratch = scratch_name("verify")
    admin = config.postgres.dsn.get_secret_value()
    try:
        try:
            restore(config, loc, scratch, keep_owners=False)
        except RestoreError as e:
            result.verdict.problems.append(redact(f"the backup does not restore: {e}"))
            return result
        v = run_n8n_on(config, scratch, key)
        v.problems[:0] = result.verdict.problems
        result.verdict = v
    finally:
        del key
        if not keep_scratch:
            pg.drop_database(admin, scratch)
        result.duration_s = time.monotonic() - started
    return result


def record_result(backups: BackupSettings, result: N8nVerification) -> list[str]:
    """`<stem>.n8n-verified.json` in every store holding the backup (counts and names, no value);
    returns the errors. The upgrade check skips backups whose record says n8n failed on them."""
    import json

    body = json.dumps(result.record(), indent=2).encode()
    local, remotes = stores_for(backups)
    errors = []
    for store in [local, *remotes]:
        try:
            if result.stem + ".manifest.json" in store.list(result.database):
                store.put_bytes(result.database, result.stem + RECORD_SUFFIX, body)
        except (StoreError, OSError) as e:
            errors.append(f"{store.label}: {first_line(e)}")
    return errors


def n8n_failed(store: Store, database: str, stem: str) -> bool:
    """Did verification by n8n record a failure for backup `stem`? (No record: not known to fail.)"""
    import json

    name = stem + RECORD_SUFFIX
    try:
        if name not in store.list(database):
            return False
        with store.open_read(database, name) as f:
            return not json.loads(f.read()).get("passed", False)
    except (StoreError, OSError, ValueError):
        return False
