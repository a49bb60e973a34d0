"""host_metrics, container_metrics and host_metrics_daily in the state database: append, roll up, prune."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import psycopg

from homelab_ops.metrics import daily
from homelab_ops.metrics.collect import Snapshot
from homelab_ops.metrics.containers import ContainerSnapshot, add_cpu_percent

_ROLLUP_LOCK = 0x686D6431  # one daily rollup at a time: replace is delete + insert


def write_snapshot(conn: psycopg.Connection, snap: Snapshot) -> int:
    """Append every sample of `snap` in one transaction; returns the row count."""
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy("COPY homelab_ops.host_metrics (taken_at, metric, labels, value) FROM STDIN") as copy:
            for s in snap.samples:
                copy.write_row((snap.taken_at, s.metric, json.dumps(s.labels), s.value))
    return len(snap.samples)


def write_container_snapshot(conn: psycopg.Connection, snap: ContainerSnapshot,
                             previous_at: datetime | None, previous: dict) -> int:
    """Append every (container, metric, value) of `snap` at its one taken_at, in one transaction.

    First fills in each container's CPU % against the previous snapshot (`previous_container_values`;
    the stats are one sample each, so the rate needs the stored counter): `snap`'s readings get it too.
    """
    add_cpu_percent(snap.containers, snap.taken_at, previous_at, previous)
    rows = snap.rows()
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy("COPY homelab_ops.container_metrics (taken_at, container, metric, value) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((snap.taken_at, *row))
    return len(rows)


def previous_container_values(conn: psycopg.Connection, before: datetime) -> tuple[datetime | None, dict]:
    """The last container snapshot before `before`: (its taken_at, {container: {metric: value}})."""
    taken = conn.execute("SELECT max(taken_at) FROM homelab_ops.container_metrics WHERE taken_at < %s",
                         (before,)).fetchone()[0]
    out: dict[str, dict[str, float]] = {}
    if taken is not None:
        for container, metric, value in conn.execute(
                "SELECT container, metric, value FROM homelab_ops.container_metrics WHERE taken_at = %s", (taken,)):
            out.setdefault(container, {})[metric] = value
    return taken, out


@dataclass(frozen=True)
class DailyOutcome:
    day: date
    rows: list[daily.DailyRow]
    raw_samples: int
    kept_stored: bool  # True: raw snapshots were already pruned, the stored rollup stays
    pruned: int  # raw rows deleted by retention during this run


def roll_up_day(conn: psycopg.Connection, day: date, tz: str, *, retention_days: int,
                now: datetime) -> DailyOutcome:
    """Replace `day`'s rows in host_metrics_daily from the raw snapshots, then apply retention.

    A day whose start is past the retention horizon has lost raw rows; its stored
    rollup is kept rather than replaced by a partial one, so a backfill never
    degrades history.
    """
    start, end = daily.day_bounds(day, tz)
    cutoff = now - timedelta(days=retention_days)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ROLLUP_LOCK,))
        raw = conn.execute(
            "SELECT metric, labels, value FROM homelab_ops.host_metrics WHERE taken_at >= %s AND taken_at < %s",
            (start, end)).fetchall()
        # container_metrics rolls up into the same table, the container as a label.
        raw += [(metric, {"container": container}, value) for container, metric, value in conn.execute(
            "SELECT container, metric, value FROM homelab_ops.container_metrics WHERE taken_at >= %s AND taken_at < %s",
            (start, end))]
        stored = conn.execute("SELECT count(*) FROM homelab_ops.host_metrics_daily WHERE day = %s",
                              (day,)).fetchone()[0]
        kept = start < cutoff and stored > 0
        rows = _stored(conn, day) if kept else daily.rollup(day, raw)
        if not kept:
            conn.execute("DELETE FROM homelab_ops.host_metrics_daily WHERE day = %s", (day,))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO homelab_ops.host_metrics_daily (day, metric, labels, samples, min, mean, max)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(r.day, r.metric, json.dumps(r.labels), r.samples, r.min, r.mean, r.max) for r in rows])
        pruned = conn.execute("DELETE FROM homelab_ops.host_metrics WHERE taken_at < %s", (cutoff,)).rowcount
        pruned += conn.execute("DELETE FROM homelab_ops.container_metrics WHERE taken_at < %s", (cutoff,)).rowcount
    return DailyOutcome(day, rows, len(raw), kept, pruned)


def _stored(conn: psycopg.Connection, day: date) -> list[daily.DailyRow]:
    return [daily.DailyRow(*r) for r in conn.execute(
        "SELECT day, metric, labels, samples, min, mean, max FROM homelab_ops.host_metrics_daily"
        " WHERE day = %s ORDER BY metric, labels::text", (day,))]
