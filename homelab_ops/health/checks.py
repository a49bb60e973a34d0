"""Each health check's judgement: plain readings in, ok / warn / fail / unknown and one line out.

No I/O here. `homelab_ops.health.evaluate` reads the host, Docker, PostgreSQL and the
logs and hands plain values to these functions, so every threshold is tested without
services. `unknown` is a state of its own: a check that cannot run says so instead of
passing silently or crashing the sensor.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from homelab_ops import units

OK, WARN, FAIL, UNKNOWN = "ok", "warn", "fail", "unknown"
STATES = (OK, WARN, FAIL, UNKNOWN)
_RANK = {OK: 0, UNKNOWN: 1, WARN: 2, FAIL: 3}

# Remedy keys (homelab_ops.health.remedies maps them to jobs).
FREE_DISK, NIGHTLY_BACKUP, REDEPLOY_MONITORING, REDEPLOY_TRAEFIK, TUNE_MONITORING = (
    "free_disk", "nightly_backup", "redeploy_monitoring", "redeploy_traefik", "tune_monitoring")


@dataclass(frozen=True)
class CheckResult:
    name: str  # `family` or `family:instance` (disk_free:/, container:grafana, backup_age:n8n)
    state: str
    reason: str  # one line, for a person
    remedy: str | None = None  # key of the remedy that fixes it, when there is one

    @property
    def family(self) -> str:
        return self.name.split(":", 1)[0]


def worst(states: Iterable[str]) -> str:
    return max(states, key=_RANK.__getitem__, default=OK)


def unknown(name: str, why: str) -> CheckResult:
    return CheckResult(name, UNKNOWN, why)


def level(value: float, warn: float, fail: float, *, higher_is_worse: bool) -> str:
    """ok, warn or fail for one reading against its two thresholds: the one comparison every check makes."""
    if higher_is_worse:
        return FAIL if value >= fail else WARN if value >= warn else OK
    return FAIL if value < fail else WARN if value < warn else OK


def below(state: str, warn_pct: float, fail_pct: float) -> str:
    """The threshold a free-share reading is under, for its message ("" when ok)."""
    return {FAIL: f" (below {fail_pct:g}%)", WARN: f" (below {warn_pct:g}%)"}.get(state, "")


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Thresholds:
    """The numbers every judgement reads (settings' `thresholds:`, defaults in THRESHOLD_DEFAULTS):
    the health checks here, the metrics asset checks and the rendered Prometheus rules."""

    disk_free_warn_pct: float
    disk_free_fail_pct: float
    temperature_warn_c: float
    temperature_fail_c: float
    memory_available_warn_pct: float
    memory_available_fail_pct: float
    container_memory_warn_pct: float
    container_memory_fail_pct: float
    container_restarts_warn: float
    container_restart_increase_warn: float
    container_restart_increase_fail: float
    backup_age_fail_hours: float
    n8n_failure_rate_warn: float
    n8n_failure_rate_fail: float
    n8n_min_finished: int
    pg_auth_failures_warn: float
    pg_auth_failures_fail: float
    http_denied_warn: float
    http_denied_fail: float
    http_denied_window_s: float
    check_timeout_s: float
    # homelab_ops.health.plugins' numbers, by key: a plug-in check reads them with `get`.
    extra: dict[str, float] = field(default_factory=dict)

    def get(self, key: str) -> float:
        return self.extra[key] if key in self.extra else getattr(self, key)

    @classmethod
    def defaults(cls, **over: float) -> Thresholds:
        """THRESHOLD_DEFAULTS, the derived two's own defaults (backups.max_age_hours, n8n's
        failure_rate_warn and failure_min_finished), then `over`: the numbers are written once."""
        from homelab_ops.settings import THRESHOLD_DEFAULTS, BackupSettings, N8nSettings

        values: dict[str, float] = {
            **THRESHOLD_DEFAULTS,
            "backup_age_fail_hours": BackupSettings.model_fields["max_age_hours"].default,
            "n8n_failure_rate_warn": N8nSettings.model_fields["failure_rate_warn"].default,
            "n8n_min_finished": N8nSettings.model_fields["failure_min_finished"].default,
            **over,
        }
        known = set(cls.__dataclass_fields__) - {"extra"}
        return cls(**{k: v for k, v in values.items() if k in known},
                   extra={k: v for k, v in values.items() if k not in known})

    @classmethod
    def from_settings(cls, settings) -> Thresholds:
        """`thresholds:`, else backups.max_age_hours / n8n.failure_rate_warn for the derived two, else the default."""
        over: dict[str, float] = {"backup_age_fail_hours": settings.backups.max_age_hours}
        if settings.n8n is not None:
            over["n8n_failure_rate_warn"] = settings.n8n.failure_rate_warn
            over["n8n_min_finished"] = settings.n8n.failure_min_finished
        return cls.defaults(**{**over, **settings.thresholds})


# --------------------------------------------------------------------------- host


def disk_free(mounts: dict[str, tuple[float, float]], warn_pct: float, fail_pct: float) -> list[CheckResult]:
    """One result per mount point; `mounts` maps it to (size bytes, available bytes)."""
    out = []
    for mp, (size, avail) in sorted(mounts.items()):
        name = f"disk_free:{mp}"
        if not size or size <= 0:
            out.append(unknown(name, f"{mp}: size unknown"))
            continue
        pct = 100.0 * avail / size
        state = level(pct, warn_pct, fail_pct, higher_is_worse=False)
        out.append(CheckResult(name, state, f"{mp}: {pct:.1f}% free, {units.size(avail)} of {units.size(size)}"
                                            f"{below(state, warn_pct, fail_pct)}", FREE_DISK))
    return out


def cpu_temperature(zones: dict[str, float], warn_c: float, fail_c: float) -> CheckResult:
    """The CPU's thermal zone (`cpu-thermal` on a Pi), else the hottest zone."""
    if not zones:
        return unknown("cpu_temperature", "no thermal sensor readable on this host")
    zone = "cpu-thermal" if "cpu-thermal" in zones else max(zones, key=zones.__getitem__)
    c = zones[zone]
    state = level(c, warn_c, fail_c, higher_is_worse=True)
    limit = {FAIL: f", at or above {fail_c:g} °C", WARN: f", at or above {warn_c:g} °C"}.get(state, "")
    return CheckResult("cpu_temperature", state, f"{zone} at {c:.1f} °C{limit}", TUNE_MONITORING)


_FLAG_WORDS = {"under_voltage": "under-voltage", "throttled": "throttled", "arm_frequency_capped":
               "frequency capped", "soft_temperature_limit": "soft temperature limit"}


def throttled_now(flags: dict[str, bool] | None) -> CheckResult:
    """vcgencmd's `now` bits: under-voltage or throttling fails, a frequency cap or soft limit warns."""
    if flags is None:
        return unknown("throttled_now", "no vcgencmd reading (not a Raspberry Pi, or no /dev/vcio)")
    on = [_FLAG_WORDS.get(k, k) for k, v in flags.items() if v]
    if flags.get("under_voltage") or flags.get("throttled"):
        return CheckResult("throttled_now", FAIL, f"firmware reports {', '.join(on)} now")
    if on:
        return CheckResult("throttled_now", WARN, f"firmware reports {', '.join(on)} now")
    return CheckResult("throttled_now", OK, "not throttled")


def under_voltage_since_boot(since_boot_flag: bool | None, rpi_volt_alarm: bool | None) -> CheckResult:
    """Bit 16 of get_throttled or the rpi_volt hwmon alarm: the supply or cable is marginal."""
    if since_boot_flag is None and rpi_volt_alarm is None:
        return unknown("under_voltage_since_boot", "no vcgencmd or rpi_volt reading on this host")
    if since_boot_flag or rpi_volt_alarm:
        return CheckResult("under_voltage_since_boot", WARN,
                           "under-voltage since boot: check the power supply (5V 5A) and its cable")
    return CheckResult("under_voltage_since_boot", OK, "no under-voltage since boot")


def memory_available(total: float | None, available: float | None, warn_pct: float,
                     fail_pct: float) -> CheckResult:
    if not total or available is None:
        return unknown("memory_available", "no memory reading")
    pct = 100.0 * available / total
    state = level(pct, warn_pct, fail_pct, higher_is_worse=False)
    return CheckResult("memory_available", state,
                       f"{pct:.1f}% of memory available ({units.size(available)} of {units.size(total)})")


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True)
class ContainerReading:
    """What `docker inspect` says about one container, reduced to what is judged."""

    name: str
    status: str  # created, running, restarting, paused, exited, dead
    health: str | None = None  # healthy, unhealthy, starting; None without a healthcheck
    health_output: str = ""  # the last healthcheck's output
    restart_count: int = 0
    oom_killed: bool = False
    exit_code: int = 0
    started_at: datetime | None = None
    restart_policy: str = "no"
    labels: dict[str, str] = field(default_factory=dict)


def container_stack(name: str, labels: dict[str, str], patterns: dict[str, str]) -> str | None:
    """monitoring | traefik | None: the label `homelab-ops.stack` first, then the name patterns."""
    label = labels.get("homelab-ops.stack") or labels.get("com.docker.compose.project")
    if label in ("monitoring", "traefik"):
        return label
    for pattern, stack in patterns.items():
        if fnmatch.fnmatchcase(name, pattern):
            return stack
    return None


def container(r: ContainerReading, now: datetime, restarts_warn: float,
              stacks: dict[str, str] | None = None) -> CheckResult:
    """Health, state, OOM kills and recent restarts of one container; the worst finding wins."""
    findings: list[tuple[str, str]] = []
    if r.oom_killed:
        findings.append((FAIL, "killed by the kernel's OOM killer"))
    if r.status == "running":
        if r.health == "unhealthy":
            out = r.health_output.strip().splitlines()
            findings.append((FAIL, "unhealthy" + (f": {out[-1][:200]}" if out else "")))
        recent = r.started_at is not None and now - r.started_at < timedelta(hours=1)
        if r.restart_count >= restarts_warn and recent:
            findings.append((WARN, f"restarted {r.restart_count} times, last {units.duration((now - r.started_at).total_seconds())} ago"))
    elif r.status == "restarting":
        findings.append((FAIL, f"restarting (restarted {r.restart_count} times)"))
    elif r.status == "dead":
        findings.append((FAIL, "dead"))
    elif r.status == "exited":
        if r.restart_policy in ("always", "unless-stopped"):
            findings.append((FAIL if r.exit_code else WARN, f"exited with code {r.exit_code} and is not restarting"))
        elif r.exit_code:
            findings.append((WARN, f"exited with code {r.exit_code}"))
    elif r.status in ("paused", "created"):
        findings.append((WARN, r.status))
    state = worst(s for s, _ in findings)
    if findings:
        reason = "; ".join(text for s, text in sorted(findings, key=lambda f: -_RANK[f[0]]))
    else:
        reason = {"running": "running" + (f", {r.health}" if r.health else ""),
                  "exited": f"exited with code {r.exit_code} (one-shot)"}.get(r.status, r.status)
    stack = container_stack(r.name, r.labels, stacks or {})
    remedy = {"monitoring": REDEPLOY_MONITORING, "traefik": REDEPLOY_TRAEFIK}.get(stack or "")
    return CheckResult(f"container:{r.name}", state, f"{r.name}: {reason}", remedy)


def containers(readings: list[ContainerReading], now: datetime, restarts_warn: float,
               stacks: dict[str, str] | None = None, ignore: list[str] = ()) -> list[CheckResult]:
    """One result per container not ignored, plus `docker` itself (reachable)."""
    kept = [r for r in readings if not any(fnmatch.fnmatchcase(r.name, p) for p in ignore)]
    out = [CheckResult("docker", OK, f"Docker answers; {len(kept)} containers judged")]
    return out + [container(r, now, restarts_warn, stacks) for r in sorted(kept, key=lambda r: r.name)]


# --------------------------------------------------------------------------- services


def postgres_reachable(error: str | None, seconds: float | None = None) -> CheckResult:
    if error:
        return CheckResult("postgres", FAIL, f"PostgreSQL not reachable: {error}")
    return CheckResult("postgres", OK, "PostgreSQL answers" + (f" in {seconds * 1000:.0f} ms" if seconds else ""))


def n8n_healthz(status: int | None, error: str | None = None) -> CheckResult:
    """n8n's /healthz answers 200 once its database is up; anything else is down."""
    if error:
        return CheckResult("n8n", FAIL, f"n8n /healthz not reachable: {error}")
    if status != 200:
        return CheckResult("n8n", FAIL, f"n8n /healthz answered HTTP {status}")
    return CheckResult("n8n", OK, "n8n /healthz answers 200")


def backup_age(database: str, newest_verified: datetime | None, newest_backup: datetime | None,
               now: datetime, fail_hours: float) -> CheckResult:
    """Age of the newest backup whose verification passed; none, or older than the limit, fails."""
    name = f"backup_age:{database}"
    if newest_verified is None:
        if newest_backup is None:
            return CheckResult(name, FAIL, f"{database}: no backup at all", NIGHTLY_BACKUP)
        age = units.duration((now - newest_backup).total_seconds())
        return CheckResult(name, FAIL, f"{database}: no verified backup (the newest, {age} old, is not verified: "
                                       "restored; an integrity-only check does not count)", NIGHTLY_BACKUP)
    hours = (now - newest_verified).total_seconds() / 3600
    if hours > fail_hours:
        return CheckResult(name, FAIL, f"{database}: newest verified backup is {hours:.1f}h old "
                                       f"(limit {fail_hours:g}h)", NIGHTLY_BACKUP)
    return CheckResult(name, OK, f"{database}: newest verified backup is {hours:.1f}h old", NIGHTLY_BACKUP)


def credentials_overdue(items: list[tuple[str, float | None, float]]) -> CheckResult:
    """(name, age seconds or None when never set, period seconds): overdue warns, twice over fails."""
    if not items:
        return CheckResult("credentials_overdue", OK, "no credential is overdue for rotation")
    parts, state = [], WARN
    for name, age, period in items:
        if age is None:
            parts.append(f"{name} (never set)")
            continue
        parts.append(f"{name} ({units.duration(age)} old, period {units.duration(period)})")
        if age > 2 * period:
            state = FAIL
    n = len(items)
    return CheckResult("credentials_overdue", state,
                       f"{n} credential{'s' if n != 1 else ''} overdue for rotation: {', '.join(parts[:8])}"
                       + (f" and {n - 8} more" if n > 8 else ""))


def failure_rates(workflows: list[tuple[str, int, int]], min_finished: int = 1) -> list[tuple[str, int, int, float]]:
    """(key, finished, failed) -> (key, finished, failed, rate) of the workflows with enough finished
    runs to judge, worst first: the one reading of an n8n workflow's failure rate."""
    judged = [(k, fin, bad, bad / fin) for k, fin, bad in workflows if fin >= min_finished and fin > 0]
    return sorted(judged, key=lambda w: (-w[3], -w[1]))


def failing_workflows(workflows: list[tuple[str, int, int]], warn: float,
                      min_finished: int = 1) -> list[tuple[str, int, int, float]]:
    """Those failing more than `warn` of their finished runs, worst first (the rollup's asset check
    names them; n8n_failure_rate judges the day by them)."""
    return [w for w in failure_rates(workflows, min_finished) if w[3] > warn]


def n8n_failure_rate(day: str | None, workflows: list[tuple[str, int, int]], warn: float, fail: float,
                     min_finished: int = 1) -> CheckResult:
    """(workflow name, finished, failed) for one day from the rollup; the worst workflow decides."""
    if day is None:
        return CheckResult("n8n_failure_rate", OK, "no n8n executions rolled up for today or yesterday")
    judged = failure_rates(workflows, min_finished)
    if not judged:
        return CheckResult("n8n_failure_rate", OK, f"{day}: no workflow with enough finished executions")
    name, fin, bad, rate = judged[0]
    over = failing_workflows(workflows, warn, min_finished)
    state = FAIL if rate > fail else WARN if over else OK
    if state == OK:
        return CheckResult("n8n_failure_rate", OK, f"{day}: highest failure rate {rate:.0%} ({name})")
    others = f" (+{len(over) - 1} more workflows above {warn:.0%})" if len(over) > 1 else ""
    return CheckResult("n8n_failure_rate", state,
                       f"{day}: workflow {name!r} failed {bad} of {fin} executions ({rate:.0%}){others}")


# --------------------------------------------------------------------------- security signals

_PG_AUTH = re.compile(
    r"FATAL:\s+(?:password authentication failed for user \"(?P<user>[^\"]*)\""
    r"|no pg_hba\.conf entry for host \"(?P<host>[^\"]*)\"(?:, user \"(?P<user2>[^\"]*)\")?"
    r"|role \"(?P<user3>[^\"]*)\" does not exist"
    r"|(?:Ident|peer|certificate|md5|scram) authentication failed for user \"(?P<user4>[^\"]*)\")")
_PG_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?)(?: ([A-Za-z][A-Za-z0-9+:-]*))?")


def parse_pg_time(line: str, tz: ZoneInfo) -> datetime | None:
    """The leading `%m`/`%t` timestamp of a PostgreSQL log line (UTC or the given zone)."""
    m = _PG_TIME.match(line)
    if not m:
        return None
    t = datetime.fromisoformat(m.group(1))
    zone = (m.group(2) or "").upper()
    return t.replace(tzinfo=timezone.utc if zone in ("UTC", "GMT") else tz)  # else: log_timezone is local


def pg_auth_failures(lines: Iterable[tuple[datetime | None, str]], now: datetime,
                     window: timedelta = timedelta(hours=1)) -> tuple[int, Counter, int]:
    """(failures within the window, failures per user, lines that had no timestamp)."""
    count, users, untimed = 0, Counter(), 0
    for t, text in lines:
        m = _PG_AUTH.search(text)
        if not m:
            continue
        if t is None:
            untimed += 1
            continue
        if now - window <= t <= now + timedelta(minutes=5):
            count += 1
            users[next((g for g in (m.group("user"), m.group("user2"), m.group("user3"), m.group("user4")) if g),
                       m.group("host") or "?")] += 1
    return count, users, untimed


def postgres_auth_failures(count: int, users: Counter, untimed: int, warn: float, fail: float) -> CheckResult:
    if count == 0 and untimed:
        return unknown("postgres_auth_failures", f"{untimed} failed authentications in the log, but its lines carry "
                                                 "no timestamp (log_line_prefix needs %m or %t)")
    state = FAIL if count >= fail else WARN if count >= warn else OK
    top = ", ".join(f"{u!r} {n}" for u, n in users.most_common(3))
    return CheckResult("postgres_auth_failures", state,
                       f"{count} failed PostgreSQL authentications in the last hour" + (f" (users: {top})" if top else ""))


_CLF = re.compile(r'^(?P<client>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "[^"]*" (?P<status>\d{3}) ')


def parse_access_line(line: str) -> tuple[datetime | None, int | None, str | None]:
    """(time, status, client) of a Traefik access log line, JSON or common log format."""
    line = line.strip()
    if line.startswith("{"):
        import json

        try:
            d = json.loads(line)
        except ValueError:
            return None, None, None
        status = d.get("DownstreamStatus") or d.get("OriginStatus")
        raw = d.get("StartUTC") or d.get("time") or d.get("StartLocal")
        t = _iso(raw) if isinstance(raw, str) else None
        client = d.get("ClientHost") or d.get("ClientAddr")
        return t, int(status) if isinstance(status, (int, float, str)) and str(status).isdigit() else None, client
    m = _CLF.match(line)
    if not m:
        return None, None, None
    try:
        t = datetime.strptime(m.group("time"), "%d/%b/%Y:%H:%M:%S %z")
    except ValueError:
        t = None
    return t, int(m.group("status")), m.group("client")


def _iso(text: str) -> datetime | None:
    """RFC 3339 with up to nanoseconds (Docker, Traefik) into an aware datetime."""
    m = re.match(r"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?", text)
    if not m:
        return None
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    zone = m.group(3) or "Z"
    zone = "+00:00" if zone == "Z" else zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
    return datetime.fromisoformat(f"{m.group(1).replace(' ', 'T')}.{frac}{zone}")


def http_denied_counts(entries: Iterable[tuple[datetime | None, int | None, str | None]], now: datetime,
                       window_s: float) -> tuple[int, Counter]:
    """401/403 answers within the window, and per client address."""
    count, clients = 0, Counter()
    start = now - timedelta(seconds=window_s)
    for t, status, client in entries:
        if status in (401, 403) and t is not None and start <= t <= now + timedelta(minutes=5):
            count += 1
            clients[client or "?"] += 1
    return count, clients


def http_denied(count: int, clients: Counter, window_s: float, warn: float, fail: float) -> CheckResult:
    state = FAIL if count >= fail else WARN if count >= warn else OK
    top = ", ".join(f"{c} ({n})" for c, n in clients.most_common(3))
    return CheckResult("http_denied", state, f"{count} answers 401/403 in Traefik's access log in the last "
                                             f"{units.duration(window_s)}" + (f"; top clients {top}" if top else ""))
