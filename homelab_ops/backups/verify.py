"""Prove a backup restores to exactly what its manifest says, somewhere disposable.

A sha256 proves the file is the one written; only a restore proves it can be read back.
How a backup is restored and compared is its source's (homelab_ops.backups.sources): for
PostgreSQL, a scratch database whose tables are counted (`count(*)`, never the planner's
estimate) and checksummed the same way the manifest was taken, so a lost or changed row
shows up by name; for Redis, a scratch redis-server. The scratch copy is always removed.

Every copy gets read: each night the copy checked is the newest backup in the store
(local or an S3 target) read longest ago, so with N stores each is restored every N
nights. The outcome is recorded per copy, as `<stem>.verified.json` in the store
whose copy was read, naming that store: a copy never read has no record of its own
and shows as unverified, whatever another store's copy proved. The records travel
with the backups, so they survive the host (a new SD card still sees them).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING


from homelab_ops import units
from homelab_ops.backups import sources
from homelab_ops.backups.catalog import VERIFIED_SUFFIX, Backup, read_listing, time_of
from homelab_ops.backups.restore import (Located, ManifestError, RestoreError, load_identity, local_copy,
                                        read_manifest)
from homelab_ops.backups.stores import Store, StoreError, s3_errors, read_json, stores_for
from homelab_ops.files import free_space, write_atomic
from homelab_ops.state import connect
from homelab_ops.backups.config import BackupsConfig

if TYPE_CHECKING:  # settings imports the backup sources: a runtime import would be a cycle
    from homelab_ops.settings import BackupSettings, EncryptionSettings

VERIFIED_FORMAT = 2
# Only RESTORED proves a backup: it counts for the blocking check, freshness, retention's
# protection and the metrics. INTEGRITY_ONLY (the sha256 matched, nothing was restored because
# this host has no age identity) is a warning; UNVERIFIED is a copy that was never read.
RESTORED, INTEGRITY_ONLY, FAILED = "restored", "integrity-only", "failed"
UNVERIFIED, UNREADABLE = "unverified", "unreadable"
_LEGACY = {"passed": RESTORED, "sha256-only": INTEGRITY_ONLY}  # format 1 records
# A source that restores into files does it in `<local_dir>/.verify-<...>` (where the free space was
# checked); the recovery sweep removes one a killed run left.
SCRATCH_DIR_PREFIX = ".verify-"
FIX_INTEGRITY_ONLY = ("run `homelab-ops backups init` on this host to create a verification identity and add "
                      "its recipient to backups.encryption.age_recipients, so new backups can be restored here")


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


def space_problem(free: dict[str, int], needed: int, *, dump_size: int, factor: float) -> str | None:
    """The first place with less free space than `needed`, worded for the owner; None when all fit."""
    for where, avail in free.items():
        if avail < needed:
            return (f"not enough free disk space to verify: {where} has {units.size(avail)} free, verification "
                    f"needs {units.size(needed)} ({factor:g} x the {units.size(dump_size)} dump, "
                    "backups.verify_min_free_factor); free some space or lower the factor")
    return None


def pick_older(backups: list[Backup], rng: random.Random) -> Backup | None:
    """A uniformly random backup other than the newest (bit rot hides in old ones)."""
    older = backups[:-1]
    return rng.choice(older) if older else None


OVERDUE = timedelta(days=6)  # a store not read for this long is read tonight, newest backup or not


def rotation(last_read: dict[str, datetime | None], holds_newest: set[str] | None = None,
             now: datetime | None = None) -> list[str]:
    """Stores in the order to try tonight: never-read ones first (in configured order), then the one
    read longest ago. Verifying the first moves it to the back, so N stores are each read every N nights.

    A store that does not hold the newest backup yet (its off-site copy still owed) waits behind those
    that do, so tonight's backup is the one restored, until it is OVERDUE: then it is read anyway."""
    never = datetime.min.replace(tzinfo=timezone.utc)

    def key(label: str):
        t = last_read[label]
        due = t is None or (now is not None and now - t >= OVERDUE)
        behind = holds_newest is not None and label not in holds_newest and not due
        return behind, t or never

    return sorted(last_read, key=key)


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
    restored: bool  # False for integrity-only and for failures before the restore
    mode: str = "restore"  # "sha256" when this host has no key for an encrypted backup
    scratch_database: str | None = None
    tables: list[TableCheck] = field(default_factory=list)
    recorded_in: list[str] = field(default_factory=list)
    record_errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.outcome == RESTORED

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
            "store": self.store,
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


def last_read(store: Store, database: str, backups: list[Backup]) -> datetime | None:
    """When this store's copy was last verified, from its newest record (None: never)."""
    for b in reversed(backups):
        rec = copy_record(store, database, b)
        if rec and rec["outcome"] != UNREADABLE:
            try:
                return datetime.fromisoformat(rec["verified_at"])
            except (KeyError, TypeError, ValueError):
                return None
    return None


def tonights_store(backups: BackupSettings, database: str) -> tuple[Store, list[str], list[Backup]]:
    """The store whose newest backup is verified now (see `rotation`), the stores skipped because
    they could not be listed or hold no backup, and the chosen store's backups (a listing on a slow
    uplink is a request or several: the night's verifications reuse this one). Raises VerifyError
    when no store has a backup."""
    local, remotes = stores_for(backups)
    by_label, listed, seen, newest, skipped = {}, {}, {}, {}, []
    for store in [local, *remotes]:
        try:
            found = listing(store, database).backups
        except VerifyError as e:
            skipped.append(str(e))
            continue
        if not found:
            skipped.append(f"{store.label}: no complete backup of {database}")
            continue
        by_label[store.label], listed[store.label] = store, found
        seen[store.label] = last_read(store, database, found)
        newest[store.label] = found[-1].stem
    if not seen:
        raise VerifyError(f"no complete backup of {database!r} to verify in any store: " + "; ".join(skipped))
    top = max(newest.values())
    holding = {label for label, stem in newest.items() if stem == top}
    label = rotation(seen, holding, datetime.now(timezone.utc))[0]
    return by_label[label], skipped, listed[label]


def identity_missing(encryption: EncryptionSettings) -> str | None:
    """Why this host cannot decrypt, or None when it has an identity file."""
    ident = encryption.identity_file
    if not ident:
        return "backups.encryption.identity_file is not set on this host"
    if not Path(ident).exists():
        return f"the identity file {ident} (backups.encryption.identity_file) is not on this host"
    return None


def _free_space(config: BackupsConfig) -> dict[str, int]:
    """Free bytes where the download lands and where PostgreSQL keeps the scratch database.

    The data directory counts only when this host can see it (PostgreSQL on the
    same machine, not in a container); one filesystem is counted once.
    """
    places = []
    root = Path(config.backups.local_dir).resolve()
    while not root.exists():
        root = root.parent
    places.append(root)
    try:
        with connect(config.postgres.dsn.get_secret_value()) as conn:
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


def verify_backup(config: BackupsConfig, database: str, *, stem: str | None = None, store: Store | None = None,
                  backups: list[Backup] | None = None, free_space=_free_space) -> Verification:
    """Verify the newest backup of `database` (or the one named by `stem`) and record the result.
    `backups` is `store`'s listing when the caller has it (`tonights_store` returns it).

    Raises VerifyError when verification cannot run; a damaged or different
    backup is not an exception but a `failed` outcome, recorded like a pass.
    """
    if store is None:
        store, _, backups = tonights_store(config.backups, database)
    if backups is None:
        backups = listing(store, database).backups
    if stem is not None:
        backups = [b for b in backups if b.stem == stem]
    if not backups:
        which = f"backup {stem}" if stem else "complete backup"
        raise VerifyError(f"no {which} of {database!r} in {store.label} to verify")
    backup = backups[-1]
    try:
        manifest, damaged = read_manifest(store, database, backup), None
    except ManifestError as e:  # this copy's manifest is damaged: a failed copy, recorded as such
        manifest, damaged = {}, str(e)
    except StoreError as e:
        raise VerifyError(str(e)) from None
    dump_size = backup.sizes.get(backup.dump) or int(manifest.get("size", 0))
    factor = config.backups.verify_min_free_factor
    needed = int(dump_size * factor)
    problem = space_problem(free_space(config), needed, dump_size=dump_size, factor=factor)
    if problem:
        raise VerifyError(f"{database} backup {backup.stem}: {problem}")

    no_key = identity_missing(config.backups.encryption) if backup.encrypted else None
    if backup.encrypted and not no_key:
        try:
            load_identity(config.backups.encryption)  # a broken key file is the host's problem, not the backup's
        except RestoreError as e:
            raise VerifyError(str(e)) from None
    started = time.monotonic()
    result = Verification(
        database=database, stem=backup.stem, dump=backup.dump, store=store.label,
        source_uri=store.uri(database, backup.dump), outcome=FAILED, message="",
        verified_at=datetime.now(timezone.utc), duration_s=0.0, encrypted=backup.encrypted,
        sha256_ok=False, restored=False, mode="sha256" if no_key else "restore",
    )
    if damaged:
        result.message = config.redact(damaged)
        _record(config, store, result)
        return result
    try:
        source = sources.for_manifest(manifest)
    except ValueError as e:
        raise VerifyError(f"{database} backup {backup.stem}: {e}") from None
    loc = Located(store, database, backup, manifest)
    try:
        with local_copy(config.backups, loc) as path:
            result.sha256_ok = True
            if no_key:
                result.outcome = INTEGRITY_ONLY
                result.message = (f"integrity only: the sha256 of the encrypted file matched, but the restore was "
                                  f"NOT tested ({no_key}); to fix it, {FIX_INTEGRITY_ONLY}")
            else:
                source.verify_restore(config, path, manifest, result)
    except RestoreError as e:  # local_copy: the sha256 differs from the manifest's
        result.message = config.redact(str(e))
    except (StoreError, *s3_errors(), OSError) as e:  # the store or the disk, not the backup
        raise VerifyError(config.redact(f"{database} backup {backup.stem}: {e}")) from None
    result.duration_s = time.monotonic() - started
    result.verified_at = datetime.now(timezone.utc)
    _record(config, store, result)
    return result


def _record(config: BackupsConfig, store: Store, result: Verification) -> None:
    """Write `<stem>.verified.json` beside the copy that was read, and nowhere else."""
    name = result.stem + VERIFIED_SUFFIX
    try:
        store.put_bytes(result.database, name, json.dumps(result.record(), indent=2).encode())
        result.recorded_in.append(store.uri(result.database, name))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            result.record_errors.append(config.redact(f"{store.label}: {e}"))
            return
        path = Path(store.uri(result.database, name))  # write_atomic removed its partial file
        result.record_errors.append(f"disk full: the verification record {path} of {result.database} could not be "
                                    f"written; {free_space(path.parent)} free in {path.parent}")
    except (StoreError, *s3_errors()) as e:
        result.record_errors.append(config.redact(f"{store.label}: {e}"))


def copy_record(store: Store, database: str, backup: Backup) -> dict | None:
    """The verification record of `store`'s own copy of `backup`, with its outcome normalised; None when
    this copy was never read. The one reader of `<stem>.verified.json`: a record another store's copy
    left here (copied along with the backup) is not this copy's."""
    if not backup.verified:
        return None
    try:
        rec = read_json(store, database, backup.verified)
        if not isinstance(rec, dict):
            raise ValueError("not an object")
    except (StoreError, *s3_errors(), OSError, ValueError):
        return {"outcome": UNREADABLE}
    if rec.get("format", 1) < 2:  # one record written to every store, naming the copy read
        if rec.get("verified_copy") != store.uri(database, backup.dump):
            return None
    elif rec.get("store") != store.label:
        return None
    return {**rec, "outcome": _LEGACY.get(rec.get("outcome"), rec.get("outcome") or UNREADABLE)}


def copy_outcome(store: Store, database: str, backup: Backup) -> str:
    rec = copy_record(store, database, backup)
    return rec["outcome"] if rec else UNVERIFIED


def recorded_outcomes(stores: list[Store], database: str, listings: dict[str, list[Backup]] | None = None,
                      ) -> list[tuple[str, str, str]]:
    """(stem, store, outcome) of every recorded copy, newest stem first, reading each store only down to its
    newest restored copy: what is older cannot change retention's or freshness's answer, and on S3 every
    read is a request. `listings` (store label -> backups) saves listing again."""
    out = []
    for store in stores:
        backups = (listings or {}).get(store.label)
        if backups is None:
            backups = listing(store, database).backups
        for b in reversed(backups):
            outcome = copy_outcome(store, database, b)
            if outcome != UNVERIFIED:
                out.append((b.stem, store.label, outcome))
            if outcome == RESTORED:
                break
    return sorted(out, key=lambda r: r[0], reverse=True)


def newest_restored(outcomes: list[tuple[str, str, str]]) -> str | None:
    """The newest stem any of whose copies was restored."""
    return next((stem for stem, _, outcome in outcomes if outcome == RESTORED), None)


def newest_failed(outcomes: list[tuple[str, str, str]]) -> tuple[str, str] | None:
    """(stem, store) when the newest recorded backup has a copy that failed: retention then prunes nothing."""
    if not outcomes:
        return None
    newest = outcomes[0][0]
    return next(((stem, label) for stem, label, o in outcomes if stem == newest and o == FAILED), None)


def newest_verified(backups: BackupSettings, database: str, *, now: datetime | None = None,
                    stores: list[Store] | None = None,
                    within_hours: float | None = None) -> tuple[Backup | None, str | None]:
    """The newest backup within `within_hours` (default backups.max_age_hours) with a restored copy in
    any store, and that store."""
    if stores is None:
        local, remotes = stores_for(backups)
        stores = [local, *remotes]
    now = now or datetime.now(timezone.utc)
    window = now - timedelta(hours=backups.max_age_hours if within_hours is None else within_hours)
    recent, listed = {}, []
    for s in stores:  # a store that is down proves nothing either way; the others still count
        try:
            recent[s.label] = [b for b in listing(s, database).backups if b.time >= window]
            listed.append(s)
        except VerifyError:
            continue
    outcomes = recorded_outcomes(listed, database, recent)
    stem = newest_restored(outcomes)
    if stem is None:
        return None, None
    label = next(lbl for st, lbl, o in outcomes if st == stem and o == RESTORED)
    return next(b for b in recent[label] if b.stem == stem), label


FRESHNESS_METRIC = "homelab_backup_last_success_timestamp_seconds"


def publish_freshness(textfile_dir: str, result: Verification) -> Path:
    """The restored backup's time for node_exporter's textfile collector, one file per database:
    Prometheus's BackupStale alert then needs no access to the backups themselves."""
    before = published_freshness(textfile_dir, result.database)
    if before and before > time_of(result.stem):  # an older copy restored tonight: the newest stays
        return Path(textfile_dir) / f"homelab_backup_{result.database}.prom"
    labels = result.database.replace("\\", "\\\\").replace('"', '\\"')
    text = (f"# HELP {FRESHNESS_METRIC} Start time of the newest backup whose restore verification passed.\n"
            f"# TYPE {FRESHNESS_METRIC} gauge\n"
            f'{FRESHNESS_METRIC}{{database="{labels}"}} {time_of(result.stem).timestamp():.0f}\n')
    return write_atomic(Path(textfile_dir) / f"homelab_backup_{result.database}.prom", text.encode(),
                        mode=0o644)  # node_exporter, another user, reads it


def published_freshness(textfile_dir: str, database: str) -> datetime | None:
    """The newest restored backup's time as `publish_freshness` left it (no store is read: the health
    sensor asks every minute)."""
    path = Path(textfile_dir) / f"homelab_backup_{database}.prom"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(FRESHNESS_METRIC + "{"):
            try:
                return datetime.fromtimestamp(float(line.rsplit(" ", 1)[1]), timezone.utc)
            except ValueError:
                return None
    return None


def host_identity(path: Path) -> tuple[str, bool]:
    """The recipient of the host's verification identity at `path`, creating it (0600, age-keygen's
    format) when missing; returns (recipient, created). Never overwrites a key."""
    import pyrage

    if path.exists():
        keys = [ln.strip() for ln in path.read_text().splitlines() if ln.strip().startswith("AGE-SECRET-KEY-")]
        if not keys:
            raise VerifyError(f"{path} exists but holds no AGE-SECRET-KEY- line; move it away or choose another path")
        return str(pyrage.x25519.Identity.from_str(keys[0]).to_public()), False
    ident = pyrage.x25519.Identity.generate()
    recipient = str(ident.to_public())
    text = (f"# created: {datetime.now(timezone.utc).isoformat(timespec='seconds')} by homelab-ops backups init\n"
            f"# the host's verification identity: restores this host's backups, stays on this host\n"
            f"# public key: {recipient}\n{ident}\n")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, text.encode(), mode=0o600, overwrite=False)
    return recipient, True
