"""Prove a backup restores to exactly what its manifest says, in a scratch database.

A sha256 proves the file is the one written; only a restore proves pg_restore can
read it. The restored tables are counted (`count(*)`, never the planner's
estimate) and checksummed the same way the manifest was taken, so a lost or
changed row shows up by name. The scratch database is always dropped.

The copy checked is the off-site one when S3 is configured: that is the copy a
dead Pi leaves you with. The result is written beside the backup as
`<stem>.verified.json` in every store that holds it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path


from homelab_ops.backups import postgresql as pg
from homelab_ops.backups.catalog import VERIFIED_SUFFIX, Backup, read_listing, time_of
from homelab_ops.backups.restore import Located, RestoreError, load_identity, local_copy, pg_restore_file
from homelab_ops.backups.stores import Store, StoreError, s3_errors, read_json, stores_for
from homelab_ops.files import write_atomic
from homelab_ops.state import connect

VERIFIED_FORMAT = 1
SCRATCH_PREFIX = "homelab_verify_"
PASSED, FAILED, SHA256_ONLY = "passed", "failed", "sha256-only"
# An encrypted backup checked without its key is intact as written, though not proven
# restorable; retention and freshness count it, the result says which it was.
PASSING = frozenset({PASSED, SHA256_ONLY})


class VerifyError(RuntimeError):
    """Verification could not be carried out (no backup, no disk, store down); not a verdict."""


# --------------------------------------------------------------------------
# pure logic


@dataclass(frozen=True)
class TableCheck:
    """One table, as the manifest recorded it and as the restore produced it."""

    table: str
    expected_rows: int | None  # None: the table is not in the manifest
    restored_rows: int | None  # None: the restore has no such table
    checksum_match: bool

    @property
    def ok(self) -> bool:
        return self.expected_rows is not None and self.expected_rows == self.restored_rows and self.checksum_match


def compare(manifest_tables: list[dict], restored: list[pg.TableStat]) -> list[TableCheck]:
    """Every table on either side, by name; a table on one side only is a difference."""
    expected = {f"{t['schema']}.{t['table']}": (int(t["rows"]), str(t["checksum"])) for t in manifest_tables}
    actual = {s.name: (s.rows, s.checksum) for s in restored}
    out = []
    for name in sorted(expected.keys() | actual.keys()):
        e, a = expected.get(name), actual.get(name)
        out.append(TableCheck(name, e[0] if e else None, a[0] if a else None,
                              e is not None and a is not None and e[1] == a[1]))
    return out


def scratch_name(database: str, short_id: str) -> str:
    """`homelab_verify_<database>_<id>`, shortened to PostgreSQL's 63-byte identifier limit."""
    room = 63 - len(SCRATCH_PREFIX) - 1 - len(short_id.encode())
    db = database.encode()[:room].decode(errors="ignore")
    return f"{SCRATCH_PREFIX}{db}_{short_id}"


def space_problem(free: dict[str, int], needed: int, *, dump_size: int, factor: float) -> str | None:
    """The first place with less free space than `needed`, worded for the owner; None when all fit."""
    for where, avail in free.items():
        if avail < needed:
            return (f"not enough free disk space to verify: {where} has {_gib(avail)} free, verification "
                    f"needs {_gib(needed)} ({factor:g} x the {_gib(dump_size)} dump, "
                    "backups.verify_min_free_factor); free some space or lower the factor")
    return None


def pick_older(backups: list[Backup], rng: random.Random) -> Backup | None:
    """A uniformly random backup other than the newest (bit rot hides in old ones)."""
    older = backups[:-1]
    return rng.choice(older) if older else None


def newest_passing(outcomes: list[tuple[str, str | None]]) -> str | None:
    """The newest stem whose recorded outcome passed; `outcomes` is (stem, outcome), newest first."""
    return next((stem for stem, outcome in outcomes if outcome in PASSING), None)


def freshness(newest_verified: datetime | None, now: datetime, max_age_hours: float) -> tuple[bool, str]:
    """Is the newest verified backup young enough? Returns (passed, why)."""
    if newest_verified is None:
        return False, f"no backup verified in the last {max_age_hours:g} hours (backups.max_age_hours)"
    age = (now - newest_verified).total_seconds() / 3600
    if age > max_age_hours:
        return False, (f"the newest verified backup is {age:.1f} hours old, more than "
                       f"{max_age_hours:g} (backups.max_age_hours)")
    return True, f"the newest verified backup is {age:.1f} hours old"


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


# --------------------------------------------------------------------------
# results


@dataclass
class Verification:
    """What one verification found; `record()` is what goes into `<stem>.verified.json`."""

    database: str
    stem: str
    dump: str
    store: str
    source_uri: str
    outcome: str
    message: str
    verified_at: datetime
    duration_s: float
    encrypted: bool
    sha256_ok: bool
    restored: bool  # False for sha256-only and for failures before the restore
    mode: str = "restore"  # "sha256" when this host has no key for an encrypted backup
    scratch_database: str | None = None
    tables: list[TableCheck] = field(default_factory=list)
    recorded_in: list[str] = field(default_factory=list)
    record_errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.outcome in PASSING

    @property
    def mismatches(self) -> list[TableCheck]:
        return [t for t in self.tables if not t.ok]

    def record(self) -> dict:
        return {
            "format": VERIFIED_FORMAT,
            "database": self.database,
            "backup": self.stem,
            "dump": self.dump,
            "verified_at": self.verified_at.isoformat(),
            "outcome": self.outcome,
            "mode": self.mode,
            "message": self.message,
            "duration_s": round(self.duration_s, 3),
            "verified_copy": self.source_uri,
            "sha256_ok": self.sha256_ok,
            "table_count": len(self.tables),
            "row_count": sum(t.restored_rows or 0 for t in self.tables),
            "mismatches": [asdict(t) for t in self.mismatches],
        }


# --------------------------------------------------------------------------
# I/O


def verification_store(settings) -> Store:
    """The first S3 target when one is configured (the copy that must work), else the local folder."""
    local, remotes = stores_for(settings)
    return remotes[0] if remotes else local


def identity_missing(settings) -> str | None:
    """Why this host cannot decrypt, or None when it has an identity file."""
    ident = settings.backups.encryption.identity_file
    if not ident:
        return "backups.encryption.identity_file is not set on this host"
    if not Path(ident).exists():
        return f"the identity file {ident} (backups.encryption.identity_file) is not on this host"
    return None


def _redact(text: str, settings) -> str:
    for secret in settings.secrets():
        text = text.replace(secret, "***")
    return text


def _free_space(settings) -> dict[str, int]:
    """Free bytes where the download lands and where PostgreSQL keeps the scratch database.

    The data directory counts only when this host can see it (PostgreSQL on the
    same machine, not in a container); one filesystem is counted once.
    """
    places = []
    root = Path(settings.backups.local_dir).resolve()
    while not root.exists():
        root = root.parent
    places.append(root)
    try:
        with connect(settings.postgres.dsn.get_secret_value()) as conn:
            data_dir = Path(conn.execute("SHOW data_directory").fetchone()[0])
        if data_dir.exists():
            places.append(data_dir)
    except Exception:  # not superuser, or not readable from here: the local check stands
        pass
    out, seen = {}, set()
    for p in places:
        try:
            dev = os.stat(p).st_dev
        except OSError:
            continue
        if dev not in seen:
            seen.add(dev)
            out[str(p)] = shutil.disk_usage(p).free
    return out


def listing(store: Store, database: str):
    try:
        return read_listing(store.list(database))
    except StoreError as e:
        raise VerifyError(str(e)) from None


def verify_backup(settings, database: str, *, stem: str | None = None, store: Store | None = None,
                  free_space=_free_space) -> Verification:
    """Verify the newest backup of `database` (or the one named by `stem`) and record the result.

    Raises VerifyError when verification cannot run; a damaged or different
    backup is not an exception but a `failed` outcome, recorded like a pass.
    """
    store = store or verification_store(settings)
    backups = listing(store, database).backups
    if stem is not None:
        backups = [b for b in backups if b.stem == stem]
    if not backups:
        which = f"backup {stem}" if stem else "complete backup"
        raise VerifyError(f"no {which} of {database!r} in {store.label} to verify")
    backup = backups[-1]
    try:
        manifest = read_json(store, database, backup.manifest)
    except (StoreError, OSError, ValueError) as e:
        raise VerifyError(f"cannot read the manifest {backup.manifest} in {store.label}: {e}") from None
    dump_size = backup.sizes.get(backup.dump) or int(manifest.get("size", 0))
    factor = settings.backups.verify_min_free_factor
    needed = int(dump_size * factor)
    problem = space_problem(free_space(settings), needed, dump_size=dump_size, factor=factor)
    if problem:
        raise VerifyError(f"{database} backup {backup.stem}: {problem}")

    no_key = identity_missing(settings) if backup.encrypted else None
    if backup.encrypted and not no_key:
        try:
            load_identity(settings)  # a broken key file is the host's problem, not the backup's
        except RestoreError as e:
            raise VerifyError(str(e)) from None
    started = time.monotonic()
    result = Verification(
        database=database, stem=backup.stem, dump=backup.dump, store=store.label,
        source_uri=store.uri(database, backup.dump), outcome=FAILED, message="",
        verified_at=datetime.now(timezone.utc), duration_s=0.0, encrypted=backup.encrypted,
        sha256_ok=False, restored=False, mode="sha256" if no_key else "restore",
    )
    admin = settings.postgres.dsn.get_secret_value()
    loc = Located(store, database, backup, manifest)
    try:
        with local_copy(settings, loc) as path:
            result.sha256_ok = True
            if no_key:
                result.outcome = SHA256_ONLY
                result.message = (f"sha256 of the encrypted file checked only, the restore was NOT tested: "
                                  f"{no_key}")
            else:
                _restore_and_compare(settings, admin, path, manifest, result)
    except RestoreError as e:  # local_copy: the sha256 differs from the manifest's
        result.message = _redact(str(e), settings)
    except (StoreError, *s3_errors(), OSError) as e:  # the store or the disk, not the backup
        raise VerifyError(_redact(f"{database} backup {backup.stem}: {e}", settings)) from None
    result.duration_s = time.monotonic() - started
    result.verified_at = datetime.now(timezone.utc)
    _record(settings, store, result)
    return result


def _restore_and_compare(settings, admin: str, path: Path, manifest: dict, result: Verification) -> None:
    scratch = scratch_name(result.database, uuid.uuid4().hex[:8])
    result.scratch_database = scratch
    try:
        pg.create_database(admin, scratch)
    except Exception as e:
        raise VerifyError(_redact(f"cannot create the scratch database {scratch}: {e}", settings)) from None
    try:
        try:
            pg_restore_file(settings, path, pg.database_dsn(admin, scratch), encrypted=result.encrypted,
                            keep_owners=False)
        except RestoreError as e:
            result.message = _redact(f"the backup does not restore: {e}", settings)
            return
        result.restored = True
        with connect(pg.database_dsn(admin, scratch)) as conn:
            restored = pg.table_stats(conn)
        result.tables = compare(manifest.get("tables", []), restored)
        bad = result.mismatches
        if bad:
            names = ", ".join(t.table for t in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            result.message = f"{len(bad)} of {len(result.tables)} tables differ from the manifest: {names}"
        else:
            result.outcome = PASSED
            result.message = (f"restored and matched the manifest: {len(result.tables)} tables, "
                              f"{sum(t.restored_rows or 0 for t in result.tables)} rows")
    finally:
        pg.drop_database(admin, scratch)


def _record(settings, source: Store, result: Verification) -> None:
    """Write `<stem>.verified.json` in every store holding this backup (the same object in each)."""
    body = json.dumps(result.record(), indent=2).encode()
    local, remotes = stores_for(settings)
    name = result.stem + VERIFIED_SUFFIX
    for store in [local, *remotes]:
        try:
            same = store.label == source.label and type(store) is type(source)
            if same or any(b.stem == result.stem for b in listing(store, result.database).backups):
                store.put_bytes(result.database, name, body)
                result.recorded_in.append(store.uri(result.database, name))
        except (StoreError, VerifyError, OSError) as e:
            result.record_errors.append(_redact(f"{store.label}: {e}", settings))


def recorded_outcomes(store: Store, database: str, backups: list[Backup], *,
                      stop_at_passing: bool = True) -> list[tuple[str, str | None]]:
    """(stem, outcome) newest first, reading only backups that have a verified.json.

    Stops at the first passing one by default: what is older cannot change the answer,
    and on S3 every read is a request.
    """
    out: list[tuple[str, str | None]] = []
    for b in reversed(backups):
        outcome = None
        if b.verified:
            try:
                outcome = read_json(store, database, b.verified).get("outcome")
            except (StoreError, OSError, ValueError):
                outcome = "unreadable"
        out.append((b.stem, outcome))
        if stop_at_passing and outcome in PASSING:
            break
    return out


def newest_verified(settings, database: str, *, now: datetime | None = None,
                    store: Store | None = None) -> tuple[Backup | None, Store]:
    """The newest backup within `backups.max_age_hours` whose recorded verification passed."""
    store = store or verification_store(settings)
    now = now or datetime.now(timezone.utc)
    window = now - timedelta(hours=settings.backups.max_age_hours)
    recent = [b for b in listing(store, database).backups if b.time >= window]
    stem = newest_passing(recorded_outcomes(store, database, recent))
    return next((b for b in recent if b.stem == stem), None), store


FRESHNESS_METRIC = "homelab_backup_last_success_timestamp_seconds"


def publish_freshness(settings, result: Verification) -> Path:
    """The verified backup's time for node_exporter's textfile collector, one file per database:
    Prometheus's BackupStale alert then needs no access to the backups themselves."""
    labels = result.database.replace("\\", "\\\\").replace('"', '\\"')
    text = (f"# HELP {FRESHNESS_METRIC} Start time of the newest backup whose restore verification passed.\n"
            f"# TYPE {FRESHNESS_METRIC} gauge\n"
            f'{FRESHNESS_METRIC}{{database="{labels}"}} {time_of(result.stem).timestamp():.0f}\n')
    return write_atomic(Path(settings.metrics.textfile_dir) / f"homelab_backup_{result.database}.prom", text.encode())
