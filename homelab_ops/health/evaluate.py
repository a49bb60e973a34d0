"""Read the world and judge it: the I/O edge of the health checks.

Each group of checks reads what it needs (sysfs/procfs through homelab_ops.metrics, the
Docker Engine, PostgreSQL, n8n, the backup folder, the logs) and passes plain values to
`homelab_ops.health.checks`. Groups run in threads with one deadline, and anything a
group raises or does not finish in time becomes `unknown` for its checks: a sensor tick
always gets a full answer.
"""

from __future__ import annotations

import glob
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from homelab_ops.docker_host import connect
from homelab_ops.errors import typed_first_line
from homelab_ops.health import checks as c, plugins
from homelab_ops.health.checks import CheckResult, Thresholds
from homelab_ops.health.config import HealthConfig
from homelab_ops.pitr.health import check_pitr

log = logging.getLogger(__name__)

TAIL_BYTES = 4 << 20  # at most this much of a log file is read per tick


class Unavailable(Exception):
    """A check's input is not there (not configured, no file, no socket); its result is `unknown`."""


# --------------------------------------------------------------------------- host


def host_results(samples, th: Thresholds) -> list[CheckResult]:
    """Disk, temperature, throttling and memory from metric samples (homelab_ops.metrics.collect.Sample)."""
    zones: dict[str, float] = {}
    flags_now: dict[str, bool] = {}
    flags_boot: dict[str, bool] = {}
    alarm: bool | None = None
    size: dict[str, float] = {}
    avail: dict[str, float] = {}
    total = available = None
    for s in samples:
        if s.value is None:
            continue
        if s.metric == "node_thermal_zone_temp":
            kind = s.labels.get("type", "thermal")
            zones[kind] = max(zones.get(kind, s.value), s.value)
        elif s.metric == "homelab_pi_throttled":
            (flags_now if s.labels.get("when") == "now" else flags_boot)[s.labels.get("flag", "?")] = s.value >= 1
        elif s.metric == "homelab_pi_under_voltage_alarm":
            alarm = s.value >= 1
        elif s.metric == "node_filesystem_size_bytes":
            size[s.labels["mountpoint"]] = s.value
        elif s.metric == "node_filesystem_avail_bytes":
            avail[s.labels["mountpoint"]] = s.value
        elif s.metric == "node_memory_MemTotal_bytes":
            total = s.value
        elif s.metric == "node_memory_MemAvailable_bytes":
            available = s.value
    mounts = {mp: (size[mp], avail[mp]) for mp in size if mp in avail}
    return [
        *c.disk_free(mounts, th.disk_free_warn_pct, th.disk_free_fail_pct),
        c.cpu_temperature(zones, th.temperature_warn_c, th.temperature_fail_c),
        c.throttled_now(flags_now or None),
        c.under_voltage_since_boot(flags_boot.get("under_voltage") if flags_boot else None, alarm),
        c.memory_available(total, available, th.memory_available_warn_pct, th.memory_available_fail_pct),
    ]


def check_host(config: HealthConfig, now: datetime) -> list[CheckResult]:
    from homelab_ops.metrics.collect import take_snapshot

    snap = take_snapshot(config.metrics, now=now, cpu_window=0.0)
    results = host_results(snap.samples, config.thresholds)
    if not any(r.family == "disk_free" for r in results):
        results.append(c.unknown("disk_free", "no filesystem readable"))
    return results


# --------------------------------------------------------------------------- containers


def docker_client(docker_host: str):
    return connect(docker_host, 10)


def _docker_time(text: str | None) -> datetime | None:
    if not text or text.startswith("0001-"):
        return None
    return c._iso(text)


def reading_of(attrs: dict) -> c.ContainerReading:
    """A container's `docker inspect` document, reduced to what the container check judges."""
    st = attrs.get("State") or {}
    health = st.get("Health") or {}
    health_log = health.get("Log") or []
    return c.ContainerReading(
        name=(attrs.get("Name") or "").lstrip("/"),
        status=st.get("Status", "unknown"),
        health=health.get("Status"),
        health_output=(health_log[-1].get("Output") or "") if health_log else "",
        restart_count=int(attrs.get("RestartCount") or 0),
        oom_killed=bool(st.get("OOMKilled")),
        exit_code=int(st.get("ExitCode") or 0),
        started_at=_docker_time(st.get("StartedAt")),
        restart_policy=((attrs.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or "no",
        labels=(attrs.get("Config") or {}).get("Labels") or {},
    )


def check_containers(config: HealthConfig, now: datetime, client_factory=docker_client) -> list[CheckResult]:
    try:
        client = client_factory(config.docker_host)
        try:
            found = client.containers.list(all=True)
            readings = [reading_of(ctr.attrs) for ctr in found]
        finally:
            client.close()
    except Exception as e:  # docker.errors.DockerException, requests' ConnectionError, a missing socket
        return [c.unknown("docker", f"cannot reach Docker at {config.docker_host}: {typed_first_line(e)}")]
    return c.containers(readings, now, config.thresholds.container_restarts_warn, config.health.container_stacks,
                        config.health.ignore_containers)


# --------------------------------------------------------------------------- services


def check_postgres(config: HealthConfig, now: datetime) -> list[CheckResult]:
    import psycopg

    start = time.monotonic()
    try:
        with psycopg.connect(config.postgres_dsn.get_secret_value(), connect_timeout=5,
                             application_name="homelab-ops health") as conn:
            conn.execute("SELECT 1").fetchone()
    except psycopg.Error as e:
        return [c.postgres_reachable(typed_first_line(e))]
    return [c.postgres_reachable(None, time.monotonic() - start)]


def check_n8n(config: HealthConfig, now: datetime) -> list[CheckResult]:
    if config.n8n is None:
        return []
    if not config.n8n.url:
        return [c.unknown("n8n", "n8n.url is not set, so /healthz is not asked")]
    url = config.n8n.url.rstrip("/") + "/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return [c.n8n_healthz(resp.status)]
    except urllib.error.HTTPError as e:
        return [c.n8n_healthz(e.code)]
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return [c.n8n_healthz(None, str(reason) or type(e).__name__)]


def check_backups(config: HealthConfig, now: datetime) -> list[CheckResult]:
    """The newest restored backup per database, as verification published it (every minute: no S3
    request), against the newest backup in the local folder."""
    from homelab_ops.backups import sources
    from homelab_ops.backups.catalog import read_listing
    from homelab_ops.backups.stores import LocalStore
    from homelab_ops.backups.verify import published_freshness

    store = LocalStore(config.backups.backups.local_dir)
    out = []
    # With PostgreSQL down (its own check says so) the folders with backups are judged, and the sources.
    for db in sources.backed_up(config.backups):
        listing = read_listing(store.list(db))
        newest = listing.backups[-1].time if listing.backups else None
        restored = published_freshness(config.metrics.textfile_dir, db)
        out.append(c.backup_age(db, restored, newest, now, config.thresholds.backup_age_fail_hours))
    return out


def check_credentials(config: HealthConfig, now: datetime) -> list[CheckResult]:
    try:
        from homelab_ops.credentials import overdue
    except ImportError:
        return [c.unknown("credentials_overdue", "the credential store is not installed")]
    items = overdue(config.credentials)
    return [c.credentials_overdue([(o.name, o.age_seconds, o.period_seconds) for o in items])]


def check_n8n_failures(config: HealthConfig, now: datetime) -> list[CheckResult]:
    """The newest day (today or yesterday, settings' zone) in homelab_ops.n8n_execution_daily."""
    if config.n8n is None:
        return []
    from homelab_ops.state import connect

    today = now.astimezone(config.tz).date()
    with connect(config.state_dsn.get_secret_value(), connect_timeout=5) as conn:
        if conn.execute("SELECT to_regclass('homelab_ops.n8n_execution_daily')").fetchone()[0] is None:
            return [c.unknown("n8n_failure_rate", "no n8n rollup table yet (n8n_execution_rollup has not run)")]
        rows = conn.execute(
            "SELECT day, workflow_id, max(workflow_name), status, sum(executions)::bigint"
            " FROM homelab_ops.n8n_execution_daily WHERE day BETWEEN %s AND %s"
            " GROUP BY day, workflow_id, status", (today - timedelta(days=1), today)).fetchall()
    return [n8n_failure_result(rows, config.thresholds)]


def n8n_failure_result(rows: list[tuple], th: Thresholds) -> CheckResult:
    """Rollup rows (day, workflow_id, workflow_name, status, executions) of the newest day, judged.

    Finished and failed are counted as the rollup's own report counts them (n8n.rollup.per_workflow).
    """
    from homelab_ops.n8n.rollup import RollupRow, per_workflow

    if not rows:
        return c.n8n_failure_rate(None, [], th.n8n_failure_rate_warn, th.n8n_failure_rate_fail)
    day: date = max(r[0] for r in rows)
    wfs = per_workflow([RollupRow(d, wid, name, status, int(n), None, None, None)
                        for d, wid, name, status, n in rows if d == day])
    return c.n8n_failure_rate(day.isoformat(), [(w.workflow_name, w.finished, w.failed) for w in wfs],
                              th.n8n_failure_rate_warn, th.n8n_failure_rate_fail, th.n8n_min_finished)


# --------------------------------------------------------------------------- logs


def tail_lines(path: str | Path, max_bytes: int = TAIL_BYTES) -> list[str]:
    """The last lines of a file, at most `max_bytes` of it (a partial first line is dropped)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        data = f.read()
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[1:] if size > max_bytes else lines


def newest_file(pattern: str) -> str:
    matches = [p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p)]
    if not matches:
        raise Unavailable(f"no file matches {pattern}")
    return max(matches, key=os.path.getmtime)


def container_log(docker_host: str, name: str, since: datetime,
                  client_factory=docker_client) -> list[tuple[datetime | None, str]]:
    """(Docker's timestamp, line) of a container's stdout and stderr since `since`."""
    try:
        client = client_factory(docker_host)
    except Exception as e:
        raise Unavailable(f"cannot reach Docker at {docker_host}: {typed_first_line(e)}") from None
    try:
        import docker.errors

        try:
            raw = client.containers.get(name).logs(since=int(since.timestamp()), timestamps=True,
                                                   stdout=True, stderr=True)
        except docker.errors.NotFound:
            raise Unavailable(f"no container named {name}") from None
        except docker.errors.DockerException as e:
            raise Unavailable(f"cannot read the logs of {name}: {typed_first_line(e)}") from None
    finally:
        client.close()
    out = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        stamp, _, text = line.partition(" ")
        out.append((c._iso(stamp), text))
    return out


def check_pg_auth(config: HealthConfig, now: datetime) -> list[CheckResult]:
    h, th = config.health, config.thresholds
    try:
        if h.postgres_log:
            lines = [(c.parse_pg_time(line, config.tz), line) for line in tail_lines(newest_file(h.postgres_log))]
        elif h.postgres_container:
            lines = [(c.parse_pg_time(text, config.tz) or t, text)
                     for t, text in container_log(config.docker_host, h.postgres_container, now - timedelta(hours=1))]
        else:
            raise Unavailable("not configured: set health.postgres_log (a file) or health.postgres_container")
    except (Unavailable, OSError) as e:
        return [c.unknown("postgres_auth_failures", f"PostgreSQL's log not readable: {e}")]
    count, users, untimed = c.pg_auth_failures(lines, now)
    return [c.postgres_auth_failures(count, users, untimed, th.pg_auth_failures_warn, th.pg_auth_failures_fail)]


def check_http_denied(config: HealthConfig, now: datetime) -> list[CheckResult]:
    h, th = config.health, config.thresholds
    window = th.http_denied_window_s
    try:
        if h.traefik_access_log:
            entries = [c.parse_access_line(line) for line in tail_lines(newest_file(h.traefik_access_log))]
        elif h.traefik_container:
            entries = []
            for t, text in container_log(config.docker_host, h.traefik_container, now - timedelta(seconds=window)):
                when, status, client = c.parse_access_line(text)
                entries.append((when or t, status, client))
        else:
            raise Unavailable("not configured: set health.traefik_access_log (a file) or health.traefik_container")
    except (Unavailable, OSError) as e:
        return [c.unknown("http_denied", f"Traefik's access log not readable: {e}")]
    count, clients = c.http_denied_counts(entries, now, window)
    return [c.http_denied(count, clients, window, th.http_denied_warn, th.http_denied_fail)]


# --------------------------------------------------------------------------- all of them

Group = Callable[..., list[CheckResult]]

# (function, the checks it answers for when it fails or times out)
GROUPS: list[tuple[Group, tuple[str, ...]]] = [
    (check_host, ("cpu_temperature", "throttled_now", "under_voltage_since_boot", "memory_available")),
    (check_containers, ("docker",)),
    (check_postgres, ("postgres",)),
    (check_n8n, ("n8n",)),
    (check_backups, ("backup_age",)),
    (check_credentials, ("credentials_overdue",)),
    (check_n8n_failures, ("n8n_failure_rate",)),
    (check_pg_auth, ("postgres_auth_failures",)),
    (check_http_denied, ("http_denied",)),
    (check_pitr, ("pitr_receiver", "pitr_lag", "pitr_slot_retention", "pitr_verified")),
    *plugins.groups(),  # one module each in homelab_ops/health/plugins
]


def run_checks(config: HealthConfig, *, now: datetime | None = None,
               groups: list[tuple[Group, tuple[str, ...]]] | None = None,
               timeout: float | None = None) -> list[CheckResult]:
    """Every check once; never raises. Results are unique by name, in group order."""
    now = now or datetime.now(timezone.utc)
    timeout = config.thresholds.check_timeout_s if timeout is None else timeout
    groups = GROUPS if groups is None else groups
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health-check")
    try:
        futures = [(pool.submit(fn, config, now), names) for fn, names in groups]
        wait([f for f, _ in futures], timeout=timeout)
        results: dict[str, CheckResult] = {}
        for (future, names), (fn, _) in zip(futures, groups):
            if not future.done():
                got = [c.unknown(n, f"no answer within {timeout:g}s") for n in names]
            else:
                try:
                    got = future.result()
                except Exception as e:
                    log.warning("health check %s raised %s", fn.__name__, type(e).__name__)
                    got = [c.unknown(n, f"the check failed: {typed_first_line(e)}") for n in names]
            for r in got:
                results.setdefault(r.name, r)
        return list(results.values())
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
