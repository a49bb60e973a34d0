"""Container metrics: a snapshot of every container from the Docker Engine API, and its checks.

Pure functions turn `docker inspect` and `docker stats` JSON into (metric, value) pairs and
judge them; `take_snapshot` is the only I/O (docker-py). Names are cAdvisor's where cAdvisor
has the figure, `homelab_container_*` where it has none, so Grafana queries read alike.

CPU % is the average over the interval between two snapshots: the increase of the cumulative
`container_cpu_usage_seconds_total` since the previous snapshot over the wall time between the
two stats samples (`container_last_seen`, the daemon's `read`; else between the snapshots'
`taken_at`), x 100 (100 = one core, as `docker stats`). `add_cpu_percent` fills it in from the
stored previous snapshot (store.py). So the Engine is asked for one sample per container
(`stats?stream=false&one-shot=true`, API >= 1.41): the daemon answers at its collector's next
tick (0-1 s; it ticks once a second for every subscriber at once), where `stream=false` alone
waits for a second tick to fill precpu_stats (1-2.3 s). Every running container is asked
concurrently.
"""

from __future__ import annotations

import fnmatch
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from homelab_ops.docker_host import connect
from homelab_ops.errors import first_line
from homelab_ops.metrics.thresholds import ERROR, WARN, Outcome

# Docker's State.Status, in lifecycle order; homelab_container_state stores the code.
STATE_CODES = {"created": 0, "running": 1, "paused": 2, "restarting": 3, "removing": 4, "exited": 5, "dead": 6}
# homelab_container_health: recorded for running containers that have a healthcheck.
HEALTH_CODES = {"healthy": 0, "starting": 1, "unhealthy": 2}

MAX_WORKERS = 16  # concurrent inspect + one-shot stats requests (each waits on the daemon, not on the CPU)


# --------------------------------------------------------------------------- stats JSON -> numbers


CPU_SECONDS = "container_cpu_usage_seconds_total"
CPU_PERCENT = "homelab_container_cpu_percent"
START_TIME = "container_start_time_seconds"
LAST_SEEN = "container_last_seen"  # epoch seconds of the stats sample (the daemon's `read`)


def cpu_percent_since(current: dict[str, float], previous: dict[str, float] | None,
                      elapsed_s: float) -> float | None:
    """Mean CPU % of one container between two snapshots; 100 is one core.

    (Δ container_cpu_usage_seconds_total / Δ wall seconds) x 100, as `docker stats` scales it. The
    wall time is between the two stats samples (`container_last_seen`, the daemon's `read`) when both
    have one, else `elapsed_s` (between the snapshots' taken_at). None (no figure, not 0) without a
    previous reading of the counter, when the counter went down or the container started again in
    between (its cgroup, so its counter, is new), or with no time between.
    """
    previous = previous or {}
    now, before = current.get(CPU_SECONDS), previous.get(CPU_SECONDS)
    if now is None or before is None or now < before:
        return None
    started, started_before = current.get(START_TIME), previous.get(START_TIME)
    if started is not None and started_before is not None and abs(started - started_before) > 1e-3:
        return None  # restarted since: the counter began again from zero
    seen, seen_before = current.get(LAST_SEEN), previous.get(LAST_SEEN)
    if seen is not None and seen_before is not None:
        elapsed_s = seen - seen_before
    if elapsed_s <= 0:
        return None
    return (now - before) / elapsed_s * 100.0


def add_cpu_percent(containers: list[ContainerReading], taken_at: datetime, previous_at: datetime | None,
                    previous: dict[str, dict[str, float]]) -> int:
    """Set homelab_container_cpu_percent on every reading that has one against the previous snapshot
    (`previous_at`, {container: {metric: value}}); returns how many got one."""
    elapsed = (taken_at - previous_at).total_seconds() if previous_at is not None else 0.0
    n = 0
    for c in containers:
        c.samples.pop(CPU_PERCENT, None)
        pct = cpu_percent_since(c.samples, previous.get(c.name), elapsed) if c.running else None
        if pct is not None:
            c.samples[CPU_PERCENT] = pct
            n += 1
    return n


def is_cgroup_v1(memory_stats: dict) -> bool:
    """cgroup v1 reports hierarchical `total_*` figures; v2 has none (docker's CLI tells them apart so)."""
    return "total_inactive_file" in (memory_stats.get("stats") or {})


def memory_working_set(memory_stats: dict) -> float | None:
    """`docker stats`' MEM USAGE: usage minus inactive page cache (total_inactive_file on v1, inactive_file on v2).

    The same figure is cAdvisor's working set: what the kernel cannot reclaim before it OOM-kills.
    """
    usage = memory_stats.get("usage")
    if usage is None:
        return None
    raw = memory_stats.get("stats") or {}
    inactive = raw.get("total_inactive_file") if is_cgroup_v1(memory_stats) else raw.get("inactive_file")
    if inactive is not None and inactive < usage:
        return float(usage - inactive)
    return float(usage)


def memory_cache(memory_stats: dict) -> float | None:
    raw = memory_stats.get("stats") or {}
    value = raw.get("total_cache") if is_cgroup_v1(memory_stats) else raw.get("file")
    return None if value is None else float(value)


def block_io(blkio_stats: dict | None) -> tuple[float, float] | None:
    """Bytes read and written, summed over devices, as `docker stats`' BLOCK I/O (op Read*/Write*)."""
    if not blkio_stats:
        return None
    read = write = 0.0
    for entry in blkio_stats.get("io_service_bytes_recursive") or []:
        op = (entry.get("op") or "")[:1].lower()
        if op == "r":
            read += entry.get("value", 0)
        elif op == "w":
            write += entry.get("value", 0)
    return read, write


def network_totals(networks: dict | None) -> dict[str, float] | None:
    """Receive/transmit bytes summed over interfaces; None without a network of its own (none, host)."""
    if not networks:
        return None
    out = {"rx_bytes": 0.0, "tx_bytes": 0.0}
    for iface in networks.values():
        for key in out:
            out[key] += iface.get(key, 0)
    return out


def has_sample(stats: dict | None) -> bool:
    """A stopped container's stats come back zeroed, with `read` at Go's zero time."""
    return bool(stats) and not str(stats.get("read", "")).startswith("0001-")


def stats_samples(stats: dict) -> dict[str, float]:
    """Everything a running container's stats give, by metric name."""
    out: dict[str, float] = {}
    read = docker_time(stats.get("read"))
    if read is not None:
        out[LAST_SEEN] = read
    cpu = stats.get("cpu_stats") or {}
    total = (cpu.get("cpu_usage") or {}).get("total_usage")
    if total is not None:
        out[CPU_SECONDS] = total / 1e9
    throttling = cpu.get("throttling_data") or {}
    if throttling.get("periods"):  # only under a CPU quota, as cAdvisor
        out["container_cpu_cfs_throttled_seconds_total"] = throttling.get("throttled_time", 0) / 1e9
    mem = stats.get("memory_stats") or {}
    if mem.get("usage") is not None:
        out["container_memory_usage_bytes"] = float(mem["usage"])  # cAdvisor's: page cache included
        out["container_memory_working_set_bytes"] = memory_working_set(mem)
        if mem.get("limit"):
            out["homelab_container_memory_percent"] = 100.0 * memory_working_set(mem) / mem["limit"]
    cache = memory_cache(mem)
    if cache is not None:
        out["container_memory_cache"] = cache
    if is_cgroup_v1(mem):
        # v1 memory.failcnt: times usage hit the limit (reclaim usually follows, not a kill)
        out["container_memory_failcnt"] = float(mem.get("failcnt", 0))
    elif mem.get("usage") is not None:
        # v2: the daemon fills failcnt from memory.events `oom` (omitted when 0)
        out["container_oom_events_total"] = float(mem.get("failcnt", 0))
    net = network_totals(stats.get("networks"))
    if net is not None:
        out["container_network_receive_bytes_total"] = net["rx_bytes"]
        out["container_network_transmit_bytes_total"] = net["tx_bytes"]
    bio = block_io(stats.get("blkio_stats"))
    if bio is not None:
        out["container_fs_reads_bytes_total"], out["container_fs_writes_bytes_total"] = bio
    return out


_DOCKER_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def docker_time(text: str | None) -> float | None:
    """Epoch seconds of a Docker timestamp (nanosecond RFC 3339); None for Go's zero time."""
    m = _DOCKER_TIME.match(text or "")
    if not m or m.group(1).startswith("0001-"):
        return None
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(f"{m.group(1)}.{frac}{zone}").timestamp()


# --------------------------------------------------------------------------- one container


@dataclass
class ContainerReading:
    name: str
    status: str  # Docker's State.Status
    health: str | None  # healthy, starting, unhealthy; None without a healthcheck or not running
    failing_streak: int
    restart_count: int
    oom_killed: bool
    exit_code: int
    memory_limit: float  # HostConfig.Memory in bytes, 0 = no limit
    samples: dict[str, float] = field(default_factory=dict)
    stats_error: str | None = None  # running, but its stats could not be read

    @property
    def running(self) -> bool:
        return self.status in ("running", "paused")


def reading(info: dict, stats: dict | None = None, stats_error: str | None = None) -> ContainerReading:
    """`docker inspect` (and, when running, `docker stats`) of one container -> its reading."""
    state = info.get("State") or {}
    status = state.get("Status") or "unknown"
    limit = float((info.get("HostConfig") or {}).get("Memory") or 0)
    health_obj = state.get("Health") or {}
    running = status in ("running", "paused")
    health = health_obj.get("Status") if running and health_obj.get("Status") in HEALTH_CODES else None
    r = ContainerReading(
        name=(info.get("Name") or "").lstrip("/"), status=status, health=health,
        failing_streak=int(health_obj.get("FailingStreak") or 0) if health else 0,
        restart_count=int(info.get("RestartCount") or 0), oom_killed=bool(state.get("OOMKilled")),
        exit_code=int(state.get("ExitCode") or 0), memory_limit=limit, stats_error=stats_error)
    s = r.samples
    s["homelab_container_state"] = float(STATE_CODES.get(status, -1))
    s["homelab_container_running"] = 1.0 if running else 0.0
    s["homelab_container_restart_count"] = float(r.restart_count)
    s["homelab_container_oom_killed"] = 1.0 if r.oom_killed else 0.0
    s["container_spec_memory_limit_bytes"] = limit  # 0 without a limit, as cAdvisor
    started = docker_time(state.get("StartedAt"))
    if started is not None:
        s["container_start_time_seconds"] = started
    if status in ("exited", "dead"):
        s["homelab_container_exit_code"] = float(r.exit_code)
    if health is not None:
        s["homelab_container_health"] = float(HEALTH_CODES[health])
    if running and has_sample(stats):
        s.update(stats_samples(stats))
    return r


@dataclass
class ContainerSnapshot:
    taken_at: datetime
    containers: list[ContainerReading]
    api_version: str = ""
    docker_ms: int = 0  # time spent asking the Engine

    def rows(self) -> list[tuple[str, str, float]]:
        """(container, metric, value) in a stable order."""
        return [(c.name, m, v) for c in sorted(self.containers, key=lambda c: c.name)
                for m, v in sorted(c.samples.items()) if v is not None]


def selected(name: str, patterns: list[str] | None) -> bool:
    return patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns)


# --------------------------------------------------------------------------- checks

CHECKS = ("container_health", "container_restarts", "container_oom_kills", "container_memory_limit")
# The health sensor's container check judges state, health, OOM kills and restarts every minute and
# alerts on them; these asset checks show the same conditions per snapshot. Only the memory limit is
# seen here alone, so only it is alerted by asset_check_alert.
ALERTED_BY_HEALTH = frozenset(CHECKS) - {"container_memory_limit"}

CHECK_DESCRIPTIONS = {
    "container_health": "No running container is unhealthy by its own healthcheck (ERROR); a healthy or starting "
                        "one whose last probes failed warns (WARN).",
    "container_restarts": "Restarts since the previous snapshot (RestartCount's increase; the count itself for a "
                          "container first seen) below container_restart_increase_warn (WARN) / "
                          "container_restart_increase_error (ERROR); a container restarting now counts as one.",
    "container_oom_kills": "No container whose last exit was an OOM kill (State.OOMKilled): ERROR while it is down, "
                           "WARN once it runs again; WARN on new cgroup v2 OOM events.",
    "container_memory_limit": "Every running container with a memory limit uses less than container_memory_warn_pct "
                              "(WARN) / container_memory_error_pct (ERROR) of it (working set, as docker stats).",
}


def _level(value: float, warn: float, error: float) -> str | None:
    return ERROR if value >= error else WARN if value >= warn else None


def _names(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_health(containers: list[ContainerReading]) -> Outcome:
    judged = [c for c in containers if c.health is not None]
    meta = {"with_healthcheck": len(judged),
            "unhealthy": ", ".join(c.name for c in judged if c.health == "unhealthy") or "none",
            "starting": ", ".join(c.name for c in judged if c.health == "starting") or "none"}
    if not judged:
        return Outcome("container_health", True, WARN, "no running container has a healthcheck", meta)
    sick = sorted(c.name for c in judged if c.health == "unhealthy")
    if sick:
        return Outcome("container_health", False, ERROR, f"unhealthy: {_names(sick)}", meta)
    failing = sorted(f"{c.name} ({c.failing_streak} failed probes)" for c in judged if c.failing_streak > 0)
    if failing:
        return Outcome("container_health", False, WARN, f"healthcheck failing, not yet unhealthy: {_names(failing)}",
                       meta)
    starting = sum(c.health == "starting" for c in judged)
    return Outcome("container_health", True, WARN,
                   f"{len(judged) - starting} healthy" + (f", {starting} starting" if starting else ""), meta)


def restart_increase(current: int, previous: float | None) -> int:
    """Restarts since the previous snapshot; a count that went down was reset (manual start, recreate)."""
    if previous is None:
        return current
    return current - int(previous) if current >= previous else current


def check_restarts(containers: list[ContainerReading], previous: dict[str, dict[str, float]],
                   warn: float, error: float) -> Outcome:
    found: dict[str, tuple[int, str]] = {}
    for c in containers:
        prev = previous.get(c.name, {}).get("homelab_container_restart_count")
        n = restart_increase(c.restart_count, prev)
        if c.status == "restarting":
            n = max(n, 1)
        if n:
            since = "since the previous snapshot" if prev is not None else "in total (first snapshot of it)"
            found[c.name] = (n, f"{c.name} {n}x {since}" + (", restarting now" if c.status == "restarting" else ""))
    meta = {"restarted": ", ".join(f"{k}={n}" for k, (n, _) in sorted(found.items())) or "none",
            "previous_snapshot": bool(previous), "warn": warn, "error": error}
    levels = {name: _level(n, warn, error) for name, (n, _) in found.items()}
    bad = sorted((name for name, lv in levels.items() if lv), key=lambda k: -found[k][0])
    if not bad:
        below = f" ({_names([found[k][1] for k in sorted(found)])}, below {warn:g})" if found else ""
        return Outcome("container_restarts", True, WARN, f"no container restarting{below}", meta)
    level = ERROR if ERROR in levels.values() else WARN
    return Outcome("container_restarts", False, level, f"restarted: {_names([found[k][1] for k in bad])}", meta)


def check_oom_kills(containers: list[ContainerReading], previous: dict[str, dict[str, float]]) -> Outcome:
    down = sorted(c.name for c in containers if c.oom_killed and not c.running)
    back = sorted(c.name for c in containers if c.oom_killed and c.running)
    events = []
    for c in containers:
        now = c.samples.get("container_oom_events_total")
        before = previous.get(c.name, {}).get("container_oom_events_total")
        if now is not None and before is not None and now > before:
            events.append(f"{c.name} ({now - before:.0f} new)")
    meta = {"oom_killed_down": ", ".join(down) or "none", "oom_killed_running_again": ", ".join(back) or "none",
            "new_oom_events": ", ".join(events) or "none"}
    if down:
        return Outcome("container_oom_kills", False, ERROR,
                       f"OOM-killed and down: {_names(down)} (raise its memory limit or find the leak)", meta)
    if back or events:
        parts = ([f"last exit was an OOM kill, running again: {_names(back)}"] if back else []) + \
                ([f"OOM events since the previous snapshot: {_names(events)}"] if events else [])
        return Outcome("container_oom_kills", False, WARN, "; ".join(parts), meta)
    return Outcome("container_oom_kills", True, WARN, "no OOM kills", meta)


def check_memory_limit(containers: list[ContainerReading], warn_pct: float, error_pct: float) -> Outcome:
    pct = {c.name: 100.0 * c.samples["container_memory_working_set_bytes"] / c.memory_limit
           for c in containers
           if c.running and c.memory_limit > 0 and "container_memory_working_set_bytes" in c.samples}
    meta = {f"pct {name}": round(p, 1) for name, p in sorted(pct.items())}
    if not pct:
        return Outcome("container_memory_limit", True, WARN, "no running container with a memory limit", meta)
    levels = {name: _level(p, warn_pct, error_pct) for name, p in pct.items()}
    bad = sorted((n for n, lv in levels.items() if lv), key=lambda n: -pct[n])
    if not bad:
        top = max(pct, key=pct.get)
        return Outcome("container_memory_limit", True, WARN, f"highest: {top} at {pct[top]:.1f}% of its limit", meta)
    level = ERROR if ERROR in levels.values() else WARN
    return Outcome("container_memory_limit", False, level,
                   f"near the memory limit: {_names([f'{n} {pct[n]:.1f}%' for n in bad])}", meta)


def evaluate(containers: list[ContainerReading], previous: dict[str, dict[str, float]], th) -> list[Outcome]:
    """Every check, in CHECKS order; `previous` is the prior snapshot ({container: {metric: value}});
    `th` the one set of thresholds (homelab_ops.health.checks.Thresholds)."""
    return [
        check_health(containers),
        check_restarts(containers, previous, th.container_restart_increase_warn, th.container_restart_increase_fail),
        check_oom_kills(containers, previous),
        check_memory_limit(containers, th.container_memory_warn_pct, th.container_memory_fail_pct),
    ]


# --------------------------------------------------------------------------- the Engine (I/O)


class DockerUnavailable(RuntimeError):
    """No Docker daemon answers at docker.host."""


def _short(e: BaseException) -> str:
    return first_line(e, 300)


def take_snapshot(host: str, *, patterns: list[str] | None = None, timeout: float = 30,
                  now: datetime | None = None) -> ContainerSnapshot:
    """Inspect every container (matching `patterns`) and read the running ones' stats, concurrently.

    One stats sample each (one-shot): no CPU % here, `add_cpu_percent` derives it from the previous snapshot.
    """
    import requests
    from docker.errors import DockerException, NotFound

    taken_at = now or datetime.now(timezone.utc)
    started = time.perf_counter()
    unreachable = (DockerException, requests.exceptions.RequestException, OSError)
    try:
        # Without an explicit version the client asks the daemon for it: the reachability test.
        client = connect(host, 10, max_pool_size=MAX_WORKERS)
    except unreachable as e:
        raise DockerUnavailable(f"no Docker daemon answers at {host} (docker.host): {_short(e)}") from None
    try:
        api = client.api
        try:
            summaries = api.containers(all=True)
        except unreachable as e:
            raise DockerUnavailable(f"the Docker daemon at {host} (docker.host) did not list its containers: "
                                    f"{_short(e)}") from None
        api.timeout = timeout
        names = sorted({(s.get("Names") or ["/" + s["Id"][:12]])[0].lstrip("/") for s in summaries})

        def read_one(name: str) -> ContainerReading | None:
            try:
                info = api.inspect_container(name)
            except NotFound:
                return None  # removed since the listing
            except unreachable as e:
                return ContainerReading(name, "unknown", None, 0, 0, False, 0, 0.0, stats_error=_short(e))
            if (info.get("State") or {}).get("Status") not in ("running", "paused"):
                return reading(info)
            try:
                return reading(info, api.stats(name, stream=False, one_shot=True))
            except unreachable as e:
                return reading(info, stats_error=_short(e))

        names = [n for n in names if selected(n, patterns)]
        with ThreadPoolExecutor(max(1, min(MAX_WORKERS, len(names))), thread_name_prefix="docker-stats") as pool:
            readings = [r for r in pool.map(read_one, names) if r is not None]
        return ContainerSnapshot(taken_at, readings, api.api_version, round((time.perf_counter() - started) * 1000))
    finally:
        client.close()
