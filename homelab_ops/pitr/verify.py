"""Prove every night that the WAL chain replays to exactly the nightly dump's state.

With `wal_level=logical` the dump's snapshot came from a temporary logical slot and
its manifest records the slot's consistent point. The newest base backup before that
point is restored into a temporary cluster, replayed to exactly that WAL position
(`recovery_target_lsn`, not inclusive: the snapshot holds every commit before the
point, none at or after it), and every table's row count and checksum is compared
with the manifest: the archive is proven to reproduce the dump to the row.

Without such a position (wal_level below logical) the archive is replayed to its
end instead: the chain is checked for gaps (timelines included), `pg_amcheck` checks
the result, and the verdict says that this is not an exact comparison and how to
make it one.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from homelab_ops.backups import postgresql as pg
from homelab_ops.backups.catalog import read_listing
from homelab_ops.backups.names import WAL_FOLDER
from homelab_ops.backups.restore import RestoreError
from homelab_ops.backups.stores import LocalStore, StoreError, read_json
from homelab_ops.backups.sources.postgresql import compare
from homelab_ops.errors import first_line
from homelab_ops.files import write_atomic
from homelab_ops.pitr import plan, wal
from homelab_ops.pitr.base import BaseBackupError
from homelab_ops.pitr.config import PitrConfig
from homelab_ops.pitr.receive import pitr_dsn, slot_state
from homelab_ops.pitr.recover import RecoverError, recovered

EXACT, TO_END = "exact", "replay-to-end"
NOT_EXACT_HOW = ("this is not an exact comparison: the nightly dump recorded no WAL position. Set "
                 "wal_level = logical on the server (ALTER SYSTEM SET wal_level = 'logical'; then restart "
                 "PostgreSQL): the next nightly dump then takes its snapshot from a temporary logical "
                 "replication slot, and verification replays to exactly that point and compares every table")


@dataclass
class PitrVerification:
    cluster: str
    database: str
    backup: str | None  # the nightly dump's stem compared with
    mode: str  # EXACT or TO_END
    passed: bool
    message: str
    target_lsn: str | None = None
    base_backup: str | None = None
    replay_lsn: str | None = None
    stop_reason: str | None = None
    last_commit: str | None = None  # the newest transaction the replay reached (its commit time)
    tables: list[dict] = field(default_factory=list)
    duration_s: float = 0.0
    checked_at: str = ""


def verified_path(config: PitrConfig) -> Path:
    return Path(config.backups.local_dir) / WAL_FOLDER / f"{config.pitr.cluster}.verified.json"


def read_verified(config: PitrConfig) -> dict:
    try:
        return json.loads(verified_path(config).read_text())
    except (OSError, ValueError):
        return {}


def _record(config: PitrConfig, result: PitrVerification) -> None:
    data = read_verified(config)
    data[result.database] = asdict(result)
    write_atomic(verified_path(config), json.dumps(data, indent=2).encode())


def _wait_archived(config: PitrConfig, lsn: int, timeout: float = 120.0) -> None:
    """Make sure the archive holds WAL past `lsn` (a record must start there for replay to stop)."""
    dsn = pitr_dsn(config)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        current = wal.parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
        if current <= lsn:
            current = wal.parse_lsn(conn.execute(
                "SELECT pg_create_restore_point('homelab-ops verify')::text").fetchone()[0])
            current = wal.parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
    deadline = time.monotonic() + timeout
    while True:
        state = slot_state(dsn, config.pitr.slot_name)
        flushed = state.get("flushed_lsn")
        if flushed and wal.parse_lsn(flushed) >= current:
            return
        if time.monotonic() > deadline:
            raise RecoverError(f"the WAL receiver has not archived up to {wal.format_lsn(current)} within "
                               f"{timeout:.0f} s (slot {config.pitr.slot_name}: "
                               f"{'active' if state.get('active') else 'not connected'}, flushed {flushed})")
        time.sleep(0.5)


def _amcheck(config: PitrConfig, rec, database: str) -> str | None:
    args = [pg.tool("pg_amcheck", config.postgres.pg_bin_dir), f"--host={rec.socket_dir}", f"--port={rec.port}",
            f"--username={rec.user}", f"--database={database}", "--install-missing", "--no-password"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=config.backups.timeout.seconds)
    if proc.returncode != 0:
        return (proc.stdout.strip() or proc.stderr.strip())[-1500:] or f"exit {proc.returncode}"
    return None


def verify_database(config: PitrConfig, database: str) -> PitrVerification:
    """Verify the WAL chain against the newest local nightly dump of `database`; records the result."""
    start = time.monotonic()
    result = PitrVerification(config.pitr.cluster, database, None, TO_END, False, "")
    try:
        store = LocalStore(config.backups.local_dir)
        backups = read_listing(store.list(database)).backups
        manifest = read_json(store, database, backups[-1].manifest) if backups else None
        if manifest is None:
            raise RecoverError(f"no nightly dump of {database!r} to compare with in {store.root}")
        result.backup = backups[-1].stem
        lsn = manifest.get("consistent_point_lsn")
        if lsn:
            result.mode, result.target_lsn = EXACT, lsn
            _wait_archived(config, wal.parse_lsn(lsn))
            target = plan.Target("lsn", wal.parse_lsn(lsn), inclusive=False)
        else:
            target = plan.Target(plan.LATEST)
        with recovered(config, target) as rec:
            result.base_backup, result.replay_lsn = rec.base.stem, rec.replay_lsn
            result.stop_reason, result.last_commit = rec.stop_reason, rec.last_commit
            if result.mode == EXACT:
                with psycopg.connect(rec.dsn(database)) as conn:
                    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                    checks = compare(manifest.get("tables", []), pg.table_stats(conn))
                result.tables = [asdict(c) for c in checks]
                bad = [c.table for c in checks if not c.ok]
                result.passed = not bad
                result.message = (
                    f"the WAL chain from base backup {rec.base.stem} replays to exactly the state of dump "
                    f"{result.backup} at {lsn}: {len(checks)} tables, every row count and checksum equal"
                    if not bad else
                    f"replay to {lsn} from base backup {rec.base.stem} differs from dump {result.backup} in "
                    f"{len(bad)} table(s): {', '.join(bad[:10])}")
            else:
                problem = _amcheck(config, rec, database)
                result.passed = problem is None
                result.message = (f"the WAL chain from base backup {rec.base.stem} replays without a gap to "
                                  f"{rec.replay_lsn}; pg_amcheck found "
                                  + (f"a problem: {problem}" if problem else "nothing wrong")
                                  + f"; {NOT_EXACT_HOW}")
    except (RecoverError, plan.PlanError, BaseBackupError, RestoreError, StoreError, pg.SourceError,
            psycopg.Error, wal.WalError) as e:
        result.passed = False
        result.message = f"WAL chain verification of {database} failed: {first_line(e, 2000)}"
    result.duration_s = round(time.monotonic() - start, 3)
    result.checked_at = datetime.now(timezone.utc).isoformat()
    _record(config, result)
    return result
