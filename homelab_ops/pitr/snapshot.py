"""The nightly dump's snapshot, taken from a temporary logical replication slot.

`CREATE_REPLICATION_SLOT ... TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')` exports
a snapshot that is exactly the database's state at the slot's consistent point: every
transaction whose commit record lies before that WAL position is in it, none after.
Recording the position in the dump's manifest is what lets verification replay the
WAL archive to exactly that point and compare row by row. `pg_export_snapshot()`
gives no such position, so it remains the fallback without `wal_level=logical`.

The exported snapshot stays valid while the replication connection is open and idle;
the slot is temporary, so closing the connection (or a crash) drops it.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import make_conninfo

from homelab_ops.pitr import wal


class SnapshotError(RuntimeError):
    """The slot could not be created; the message says what the server needs."""


@dataclass(frozen=True)
class SlotSnapshot:
    snapshot: str  # for `SET TRANSACTION SNAPSHOT` and `pg_dump --snapshot`
    consistent_lsn: str  # the WAL position the snapshot is exactly the state at
    slot: str

    def manifest(self) -> dict:
        """What the dump's manifest records about its snapshot."""
        return {"snapshot_source": "logical_slot", "consistent_point_lsn": self.consistent_lsn}


def wal_level(conn: psycopg.Connection) -> str:
    return conn.execute("SHOW wal_level").fetchone()[0]


SLOT_TIMEOUT = 120.0  # seconds to wait for the slot; it waits for transactions running when it is created


@contextlib.contextmanager
def slot_snapshot(database_dsn: str, timeout: float | None = None) -> Iterator[SlotSnapshot]:
    """Yield the snapshot of a temporary logical slot in the DSN's database; drop it on exit.

    Replication connections speak only the simple query protocol, hence the raw libpq call.
    The role needs REPLICATION (or superuser), and the server wal_level=logical. Creating the
    slot waits until every transaction running at that moment has ended: a session left idle
    in a transaction would hold it forever, so it is cancelled after `timeout`.
    """
    name = f"homelab_ops_dump_{secrets.token_hex(6)}"
    timeout = SLOT_TIMEOUT if timeout is None else timeout
    try:
        conn = psycopg.connect(make_conninfo(database_dsn, replication="database"), autocommit=True,
                               connect_timeout=10)
    except psycopg.Error as e:
        raise SnapshotError(f"cannot open a replication connection for the dump's snapshot: {e}") from None
    try:
        timer = threading.Timer(timeout, conn.cancel_safe)
        timer.daemon = True
        timer.start()
        try:
            res = conn.pgconn.exec_(
                f"CREATE_REPLICATION_SLOT {name} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')".encode())
        finally:
            timer.cancel()
        if res.status != psycopg.pq.ExecStatus.TUPLES_OK:
            msg = (res.error_message or b"").decode(errors="replace").strip()
            if "cancel" in msg:
                msg = (f"still waiting after {timeout:.0f} s for transactions that were running when it was "
                       "created to end (a session idle in a transaction?)")
            raise SnapshotError(f"cannot create the temporary replication slot for the dump's snapshot: {msg}")
        cols = {res.fname(i).decode(): i for i in range(res.nfields)}
        lsn = res.get_value(0, cols["consistent_point"]).decode()
        snap = res.get_value(0, cols["snapshot_name"]).decode()
        wal.parse_lsn(lsn)
        yield SlotSnapshot(snap, lsn, name)
    finally:
        conn.close()


@contextlib.contextmanager
def dump_snapshot(src: psycopg.Connection, database_dsn: str) -> Iterator[dict]:
    """The snapshot the nightly dump reads, set on `src` (a REPEATABLE READ connection, no
    statement run yet in its transaction). Yields the manifest's snapshot fields, with
    `snapshot` for `pg_dump --snapshot`.

    With wal_level=logical: a temporary logical slot's exported snapshot and its consistent
    point. Otherwise `pg_export_snapshot()` in `src`, as before, with no position.
    """
    with psycopg.connect(database_dsn, connect_timeout=10, autocommit=True) as probe:
        level = wal_level(probe)
    with contextlib.ExitStack() as stack:
        s, why = None, None
        if level == "logical":
            try:
                s = stack.enter_context(slot_snapshot(database_dsn))
            except SnapshotError as e:  # the backup itself must not fail for want of the exact position
                why = str(e)
        if s is None:
            snapshot = src.execute("SELECT pg_export_snapshot()").fetchone()[0]
            yield {"snapshot": snapshot, "snapshot_source": "pg_export_snapshot", "wal_level": level,
                   **({"slot_error": why} if why else {})}
            return
        src.execute(f"SET TRANSACTION SNAPSHOT '{s.snapshot}'")
        yield {"snapshot": s.snapshot, "wal_level": level, **s.manifest()}
