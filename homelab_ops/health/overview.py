"""Health at a glance: the health sensor's memory as rows for the UI's `homelab_health` asset.

Pure. The sensor observes the asset only when a check's state changed (or once an hour, so
the table's age tells that the sensor still runs), not every minute: one observation a tick
would add 1,440 event-log rows a day for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from homelab_ops.health.checks import FAIL, OK, CheckResult, worst
from homelab_ops.health.machine import FLAPPING, Memory
from homelab_ops.metrics.collect import Sample

REFRESH_S = 3600.0
# Every tick also leaves the checks' states in node_exporter's textfile directory: Prometheus' rules
# for the conditions the sensor judges hold back while this stamp is fresh (deploy/templates/alerts.yml).
TEXTFILE = "homelab_health.prom"
TICK_METRIC = "homelab_health_tick_timestamp_seconds"
STATE_METRIC = "homelab_health_check_state"
STATE_VALUES = {OK: 0, "warn": 1, FAIL: 2, "unknown": 3}


def silent_after_s(interval_s: float) -> float:
    """How long without a tick before Prometheus speaks for the sensor: ten ticks, at least 10 minutes
    (a busy Pi misses a tick now and then)."""
    return max(600.0, 10 * interval_s)


def samples(results: list[CheckResult]) -> list[Sample]:
    return [Sample(STATE_METRIC, {"check": r.name}, STATE_VALUES.get(r.state, 3)) for r in results]


@dataclass(frozen=True)
class Row:
    check: str
    state: str  # ok / warn / fail / unknown, or flapping
    since: str  # when it entered that state, in the settings' timezone
    reason: str
    remedy: str  # the remedy job key, "" when none


def rows(memories: dict[str, Memory], results: list[CheckResult], tz: ZoneInfo) -> list[Row]:
    """One row per check reported this tick, worst first, then by name."""
    order = {FAIL: 0, "unknown": 1, "warn": 2, FLAPPING: 2, OK: 3}
    out = []
    for r in results:
        mem = memories.get(r.name)
        state = FLAPPING if mem is not None and mem.flapping else r.state
        since = datetime.fromtimestamp(mem.since, tz).strftime("%Y-%m-%d %H:%M") if mem else ""
        out.append(Row(r.name, state, since, r.reason, r.remedy or ""))
    return sorted(out, key=lambda row: (order.get(row.state, 1), row.check))


def overall(results: list[CheckResult]) -> str:
    """The homelab's state in one word: the worst check's."""
    return worst(r.state for r in results)


def signature(table: list[Row]) -> str:
    """What must change for a new observation: each check's state (not its reason, which may
    carry a reading that changes every tick)."""
    return ";".join(f"{row.check}={row.state}" for row in sorted(table, key=lambda r: r.check))


def due(previous_signature: str | None, previous_at: float | None, table: list[Row], now: float) -> bool:
    return (previous_signature != signature(table) or previous_at is None
            or now - previous_at >= REFRESH_S)


def summary(results: list[CheckResult]) -> str:
    """One line for a heartbeat's body: counts and the checks that are not ok."""
    bad = sorted(f"{r.name} ({r.state})" for r in results if r.state != OK)
    head = f"{len(results)} checks, {len(bad)} not ok"
    return head + (": " + ", ".join(bad[:20]) if bad else "")
