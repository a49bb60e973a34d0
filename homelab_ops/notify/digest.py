"""The daily digest: one Telegram message a day that says the homelab is fine, and why.

Alerts say what broke; silence then means "fine" or "the alerting died". A short daily
summary (setting `notify.digest_at`, default off) makes the good news visible: backups
restored, the disk's runway, credential ages, yesterday's n8n failures.

`compose` and `days_until_full` are pure; `gather` reads the stores, the state database and
the metrics history, and reports what it could not read instead of failing the digest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING

from homelab_ops import units
from homelab_ops.notify.alert import Alert

if TYPE_CHECKING:
    from homelab_ops.health.config import HealthConfig

FORECAST_DAYS = 7  # the metrics history a disk forecast is fitted on
FORECAST_MIN_SAMPLES = 12


@dataclass(frozen=True)
class BackupLine:
    database: str
    newest: datetime | None  # newest complete backup in any store
    restored: datetime | None  # newest backup a verification restored
    restored_from: str | None  # the store that copy was read from


@dataclass(frozen=True)
class DiskLine:
    mount: str
    avail: float  # bytes
    size: float
    days_left: float | None  # None: not filling up (or too little history)


@dataclass(frozen=True)
class CredentialLine:
    name: str
    age_days: float | None  # None: never set
    period_days: float


@dataclass(frozen=True)
class WorkflowFailures:
    workflow: str
    failed: int
    total: int


@dataclass
class Facts:
    day: date  # the day the digest is for (today in the settings' zone)
    backups: list[BackupLine] = field(default_factory=list)
    disks: list[DiskLine] = field(default_factory=list)
    credentials: list[CredentialLine] = field(default_factory=list)
    n8n: list[WorkflowFailures] | None = None  # None: n8n not configured
    unread: list[str] = field(default_factory=list)  # sources that could not be read, and why


def days_until_full(samples: list[tuple[float, float]]) -> float | None:
    """Days until `avail` reaches 0 on a least-squares line through (unix time, available bytes);
    None when the disk is not filling up or there are too few samples to say."""
    if len(samples) < FORECAST_MIN_SAMPLES:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var == 0:
        return None
    slope = sum((t - mt) * (v - mv) for t, v in samples) / var  # bytes per second
    if slope >= 0:
        return None
    last_t, _ = max(samples)
    now_v = mv + slope * (last_t - mt)
    return max(0.0, now_v / -slope / 86400)


def compose(facts: Facts, now: datetime) -> Alert:
    """The digest as one alert (info severity: it goes to every approved chat, and never to a one-way
    channel unless its min_severity is info)."""
    lines: list[str] = []
    worst = "ok"

    lines.append("Backups")
    for b in facts.backups:
        if b.newest is None:
            lines.append(f"❌ {(b.database)}: no backup")
            worst = "bad"
        elif b.restored is None:
            lines.append(f"⚠️ {(b.database)}: newest {units.ago((now - b.newest).total_seconds())}, never restored")
            worst = "bad"
        else:
            lines.append(f"✅ {(b.database)}: newest {units.ago((now - b.newest).total_seconds())}, restored "
                         f"{units.ago((now - b.restored).total_seconds())} from {(b.restored_from or '?')}")
    if not facts.backups:
        lines.append("no databases configured")

    lines.append("Disks")
    for d in facts.disks:
        runway = "not filling up" if d.days_left is None else f"full in {d.days_left:.0f} days"
        mark = "⚠️" if d.days_left is not None and d.days_left < 14 else "•"
        worst = "bad" if mark == "⚠️" else worst
        lines.append(f"{mark} {(d.mount)}: {units.size(d.avail)} free of {units.size(d.size)}, {runway}")
    if not facts.disks:
        lines.append("no metrics history yet")

    if facts.credentials:
        lines.append("Credentials")
        for c in sorted(facts.credentials, key=lambda c: -(c.age_days or 1e9)):
            if c.age_days is None:
                lines.append(f"⚠️ {(c.name)}: never set")
                continue
            late = c.age_days > c.period_days
            lines.append(f"{'⚠️' if late else '•'} {(c.name)}: {c.age_days:.0f} days old "
                         f"(rotates every {c.period_days:.0f})")

    if facts.n8n is not None:
        failed = [w for w in facts.n8n if w.failed]
        lines.append(f"n8n yesterday: {sum(w.total for w in facts.n8n)} executions, "
                     f"{sum(w.failed for w in failed)} failed")
        for w in sorted(failed, key=lambda w: -w.failed)[:5]:
            lines.append(f"• {(w.workflow)}: {w.failed} of {w.total} failed")

    for why in facts.unread:
        lines.append(f"❔ {(why)}")
    title = f"📋 Homelab digest {facts.day.isoformat()}" + ("" if worst == "ok" else ": needs a look")
    return Alert("digest", f"daily_digest:{facts.day.isoformat()}", "digest", "info", title, "\n".join(lines))


def gather(config: HealthConfig, now: datetime | None = None) -> Facts:
    """Read what the digest reports. Each source that fails is named in `unread`, not raised.
    It reads what the health checks read (backups, the state database, n8n, credentials, the zone)."""
    from homelab_ops.backups.sources import backed_up
    from homelab_ops.backups.catalog import time_of
    from homelab_ops.backups.stores import stores_for
    from homelab_ops.backups.verify import RESTORED, VerifyError, listing, newest_restored, recorded_outcomes
    from homelab_ops.state import connect

    now = now or datetime.now(timezone.utc)
    facts = Facts(day=now.astimezone(config.tz).date())
    try:
        local, remotes = stores_for(config.backups.backups)
        stores = [local, *remotes]
        for db in backed_up(config.backups, warn=facts.unread.append):  # the server down, a name skipped
            listings, listed = {}, []
            for s in stores:  # as newest_verified: a store that is down proves nothing, the others count
                try:
                    listings[s.label] = listing(s, db).backups
                    listed.append(s)
                except VerifyError:
                    facts.unread.append(f"backups of {db} in {s.label}")
            newest = max((b.time for bs in listings.values() for b in bs), default=None)
            outcomes = recorded_outcomes(listed, db, listings)
            stem = newest_restored(outcomes)
            label = next((lbl for st, lbl, o in outcomes if st == stem and o == RESTORED), None) if stem else None
            facts.backups.append(BackupLine(db, newest, time_of(stem) if stem else None, label))
    except Exception as e:  # a store or the server down: say so in the digest
        facts.unread.append(f"backups: {type(e).__name__}")
    try:
        with connect(config.state_dsn.get_secret_value()) as conn:
            facts.disks = _disks(conn, now)
            if config.n8n is not None:
                facts.n8n = _n8n(conn, facts.day - timedelta(days=1))
    except Exception as e:
        facts.unread.append(f"state database: {type(e).__name__}")
    try:
        from homelab_ops.credentials.store import ages

        facts.credentials = [CredentialLine(a.name, a.age_seconds / 86400 if a.age_seconds is not None else None,
                                            a.period_seconds / 86400) for a in ages(config.credentials, now)]
    except Exception as e:
        facts.unread.append(f"credentials: {type(e).__name__}")
    return facts


def _disks(conn, now: datetime) -> list[DiskLine]:
    rows = conn.execute(
        "SELECT labels->>'mountpoint', metric, extract(epoch FROM taken_at), value FROM homelab_ops.host_metrics "
        "WHERE metric IN ('node_filesystem_avail_bytes', 'node_filesystem_size_bytes') AND taken_at > %s "
        "AND value IS NOT NULL ORDER BY taken_at", (now - timedelta(days=FORECAST_DAYS),)).fetchall()
    avail: dict[str, list[tuple[float, float]]] = {}
    size: dict[str, float] = {}
    for mount, metric, t, v in rows:
        if metric == "node_filesystem_size_bytes":
            size[mount] = v
        else:
            avail.setdefault(mount, []).append((float(t), v))
    return [DiskLine(m, s[-1][1], size.get(m, 0.0), days_until_full(s)) for m, s in sorted(avail.items())]


def _n8n(conn, day: date) -> list[WorkflowFailures]:
    rows = conn.execute(
        "SELECT coalesce(workflow_name, workflow_id), "
        "sum(executions) FILTER (WHERE status IN ('error', 'crashed')), sum(executions) "
        "FROM homelab_ops.n8n_execution_daily WHERE day = %s GROUP BY 1", (day,)).fetchall()
    return [WorkflowFailures(name, int(failed or 0), int(total)) for name, failed, total in rows]
