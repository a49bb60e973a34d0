"""Watch the WAL stream: is the receiver connected, how much would a restore lose now,
is the slot about to lose WAL, when was the chain last proven.

The judgements are pure functions over plain readings (`receiver`, `rpo`, `slot_retention`,
`verified_point`); `pitr_results` reads the server (pg_replication_slots, pg_stat_replication),
the receiver's heartbeat and the last verification, and writes the recovery point objective
for node_exporter's textfile collector (`homelab_pitr.prom`).

The signal is the server's WAL position against what the receiver has flushed, not the
age of the newest file: an idle server writes almost no WAL.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from homelab_ops.errors import typed_first_line
from homelab_ops import units
from homelab_ops.health.checks import FAIL, OK, WARN, CheckResult, unknown
from homelab_ops.pitr.config import PitrConfig

if TYPE_CHECKING:
    from homelab_ops.health.config import HealthConfig

METRICS_FILE = "homelab_pitr.prom"


def receiver(cluster: str, slot: dict | None, replication: dict | None) -> CheckResult:
    """The slot's `active` and the receiver's row in pg_stat_replication."""
    name = f"pitr_receiver:{cluster}"
    if slot is None or not slot.get("exists"):
        return CheckResult(name, FAIL, f"{cluster}: the replication slot does not exist: start `homelab-ops pitr "
                                       "receive` (it creates it)")
    if not slot.get("active"):
        return CheckResult(name, FAIL, f"{cluster}: no WAL receiver is connected to slot {slot.get('slot')}")
    state = (replication or {}).get("state")
    if state != "streaming":
        state = state or "not listed in pg_stat_replication"
        return CheckResult(name, WARN, f"{cluster}: the receiver is connected but {state}, not streaming")
    return CheckResult(name, OK, f"{cluster}: the receiver is streaming")


def rpo_seconds(slot: dict | None, heartbeat: dict | None, now: datetime) -> float | None:
    """How much time a restore would lose right now; None when it cannot be told.

    Caught up (connected and flushed up to the server's position): 0. Otherwise the time
    since the receiver last had everything the server had written (its heartbeat).
    """
    if slot and slot.get("exists") and slot.get("active") and slot.get("flushed_lsn") is not None:
        from homelab_ops.pitr import wal

        if wal.parse_lsn(slot["flushed_lsn"]) >= wal.parse_lsn(slot["server_lsn"]):
            return 0.0
    caught = (heartbeat or {}).get("caught_up_at")
    if not caught:
        return None
    return max(0.0, (now - datetime.fromisoformat(caught)).total_seconds())


def rpo(cluster: str, slot: dict | None, heartbeat: dict | None, now: datetime, max_lag_s: float) -> CheckResult:
    name = f"pitr_lag:{cluster}"
    seconds = rpo_seconds(slot, heartbeat, now)
    connected = bool(slot and slot.get("active"))
    behind = ""
    if slot and slot.get("flushed_lsn") and slot.get("server_lsn"):
        from homelab_ops.pitr import wal

        behind = f", {units.size(max(0, wal.parse_lsn(slot['server_lsn']) - wal.parse_lsn(slot['flushed_lsn'])))} behind"
    if seconds is None:
        if connected:
            return CheckResult(name, WARN, f"{cluster}: connected but behind the server{behind}, and no heartbeat "
                                           "says since when")
        return CheckResult(name, FAIL, f"{cluster}: no receiver is connected and none has ever reported "
                                       "(no heartbeat): WAL is not being archived")
    if seconds == 0:
        return CheckResult(name, OK, f"{cluster}: caught up with the server (RPO 0s)")
    what = "connected but behind" if connected else "not connected"
    text = f"{cluster}: {what} for {units.duration(seconds)}{behind} (pitr.max_lag {units.duration(max_lag_s)})"
    return CheckResult(name, FAIL if seconds > max_lag_s else WARN, text)


def slot_retention(cluster: str, slot: dict | None) -> CheckResult:
    """WAL the slot holds on the server against max_slot_wal_keep_size."""
    name = f"pitr_slot_retention:{cluster}"
    if not slot or not slot.get("exists"):
        return unknown(name, f"{cluster}: no replication slot")
    status, retained, keep = slot.get("wal_status"), slot.get("retained_bytes") or 0, slot.get("max_slot_wal_keep_size")
    if status in ("lost", "unreserved"):
        return CheckResult(name, FAIL, f"{cluster}: the slot's WAL is {status}: the server removed (or is about to "
                                       "remove) WAL the receiver never got; the chain has a gap, take a base backup")
    if keep in (None, "-1"):
        return CheckResult(name, WARN, f"{cluster}: the slot holds {units.size(retained)}; max_slot_wal_keep_size "
                                       "is unlimited, so a dead receiver can fill the server's disk")
    safe = slot.get("safe_wal_size")
    if safe is not None and safe < retained:  # less room left than already held
        return CheckResult(name, WARN, f"{cluster}: the slot holds {units.size(retained)}; only "
                                       f"{units.size(safe)} more before max_slot_wal_keep_size ({keep})")
    return CheckResult(name, OK, f"{cluster}: the slot holds {units.size(retained)} (limit {keep})")


def verified_point(cluster: str, results: dict, now: datetime, max_age_hours: float) -> CheckResult:
    """The newest recovery point the nightly verification proved, over the cluster's databases."""
    name = f"pitr_verified:{cluster}"
    if not results:
        return CheckResult(name, WARN, f"{cluster}: the WAL chain has not been verified yet")
    failed = [r for r in results.values() if not r.get("passed")]
    if failed:
        return CheckResult(name, FAIL, f"{cluster}: {failed[0]['message'][:300]}")
    newest = max(results.values(), key=lambda r: r.get("checked_at", ""))
    age = (now - datetime.fromisoformat(newest["checked_at"])).total_seconds()
    point = newest.get("target_lsn") or newest.get("replay_lsn")
    mode = "exactly" if newest.get("mode") == "exact" else "to its end, not exactly"
    text = f"{cluster}: replayed {mode} to {point} ({newest['database']}), {units.duration(age)} ago"
    return CheckResult(name, FAIL if age > max_age_hours * 3600 else OK, text)


# --------------------------------------------------------------------------- I/O


def _replication_row(dsn: str, pid) -> dict | None:
    import psycopg

    if pid is None:
        return None
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        row = conn.execute("SELECT state, flush_lsn::text FROM pg_stat_replication WHERE pid = %s", (pid,)).fetchone()
    return None if row is None else {"state": row[0], "flush_lsn": row[1]}


def read_slot(config: PitrConfig) -> tuple[dict, dict | None]:
    import psycopg

    from homelab_ops.pitr.receive import pitr_dsn, slot_state

    dsn = pitr_dsn(config)
    slot = slot_state(dsn, config.pitr.slot_name)
    slot["slot"] = config.pitr.slot_name
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                           (config.pitr.slot_name,)).fetchone()
    return slot, _replication_row(dsn, row[0] if row else None)


def write_metrics(textfile_dir: str, cluster: str, seconds: float | None, now: datetime) -> None:
    from homelab_ops.metrics.textfile import write_atomically

    lines = ["# HELP homelab_pitr_rpo_seconds How much a point-in-time restore would lose now (0: caught up).",
             "# TYPE homelab_pitr_rpo_seconds gauge"]
    if seconds is not None:
        lines.append(f'homelab_pitr_rpo_seconds{{cluster="{cluster}"}} {seconds!r}')
    lines += ["# HELP homelab_pitr_checked_timestamp_seconds When homelab-ops last judged the WAL stream.",
              "# TYPE homelab_pitr_checked_timestamp_seconds gauge",
              f'homelab_pitr_checked_timestamp_seconds{{cluster="{cluster}"}} {now.timestamp()!r}']
    write_atomically(textfile_dir, "\n".join(lines) + "\n", METRICS_FILE)


def pitr_results(config: PitrConfig, now: datetime | None = None) -> list[CheckResult]:
    """Every PITR check for the configured cluster; [] when pitr is disabled."""
    return pitr_judgement(config, now)[0]


def pitr_judgement(config: PitrConfig, now: datetime | None = None) -> tuple[list[CheckResult], float | None]:
    """Every PITR check and the current RPO (seconds a restore would lose; None: unknown), from one
    look at the server and the heartbeat; also written for node_exporter."""
    if not config.pitr.enabled:
        return [], None
    from homelab_ops.pitr.receive import read_status
    from homelab_ops.pitr.verify import read_verified

    now = now or datetime.now(timezone.utc)
    cluster = config.pitr.cluster
    beat = read_status(config)
    try:
        slot, repl = read_slot(config)
    except Exception as e:  # the server is down: only the heartbeat can tell how long
        slot, repl = None, None
        down = typed_first_line(e)
        out = [CheckResult(f"pitr_receiver:{cluster}", FAIL, f"{cluster}: cannot ask the server: {down}"),
               rpo(cluster, None, beat, now, config.pitr.max_lag.seconds),
               unknown(f"pitr_slot_retention:{cluster}", f"cannot ask the server: {down}")]
    else:
        out = [receiver(cluster, slot, repl), rpo(cluster, slot, beat, now, config.pitr.max_lag.seconds),
               slot_retention(cluster, slot)]
    out.append(verified_point(cluster, read_verified(config), now, config.backups.max_age_hours))
    seconds = rpo_seconds(slot, beat, now)
    try:
        write_metrics(config.textfile_dir, cluster, seconds, now)
    except OSError:
        pass
    return out, seconds


def check_pitr(config: HealthConfig, now: datetime) -> list[CheckResult]:
    """The health sensor's group (homelab_ops.health.evaluate.GROUPS)."""
    return pitr_results(config.pitr, now)
