"""container_metrics: docker stats JSON -> rows and checks (pure, no services), then the asset against real
busybox containers on the test Docker Engine and the real PostgreSQL, and the daily rollup over its table."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import dagster as dg
import psycopg
import pytest

from homelab_ops.defs.metrics.assets import container_metrics, host_metrics_daily_asset
from homelab_ops.defs.resources import resources_for
from homelab_ops.metrics import containers as cm
from homelab_ops.health.checks import Thresholds
from homelab_ops.metrics.thresholds import ERROR, WARN
from homelab_ops.settings import SettingsError, parse
from homelab_ops.state import open_state

from tests import docker_images
from tests.conftest import DOCKER_HOST, dsn_for

MiB = 2**20


# ---------------------------------------------------------------- pure: stats JSON -> numbers


def cpu(total: int, system: int | None, online: int = 2, percpu: int = 2) -> dict:
    out = {"cpu_usage": {"total_usage": total, "percpu_usage": [total // percpu] * percpu},
           "online_cpus": online, "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}
    if system is not None:
        out["system_cpu_usage"] = system
    return out


def test_cpu_percent_is_the_counter_increase_over_wall_time_since_the_previous_snapshot():
    start = {"container_start_time_seconds": 1_700_000_000.123456}
    before = {"container_cpu_usage_seconds_total": 100.0, **start}
    # 450 s of CPU in a 900 s interval: half a core on average (docker's scale, 100 = one core)
    assert cm.cpu_percent_since({"container_cpu_usage_seconds_total": 550.0, **start}, before, 900) \
        == pytest.approx(50.0)
    assert cm.cpu_percent_since({"container_cpu_usage_seconds_total": 1900.0, **start}, before, 900) \
        == pytest.approx(200.0)  # two cores busy
    assert cm.cpu_percent_since({"container_cpu_usage_seconds_total": 100.0, **start}, before, 900) == 0.0  # idle
    # first snapshot of it (or no previous counter): no figure, absent rather than 0
    assert cm.cpu_percent_since({"container_cpu_usage_seconds_total": 5.0}, None, 900) is None
    assert cm.cpu_percent_since({"container_cpu_usage_seconds_total": 5.0}, {"homelab_container_state": 1}, 900) \
        is None
    # the counter went down: restarted (or recreated under the same name), its cgroup counts from zero
    assert cm.cpu_percent_since({"container_cpu_usage_seconds_total": 20.0}, before, 900) is None
    # restarted and already past the old count: the start time tells
    restarted = {"container_cpu_usage_seconds_total": 150.0, "container_start_time_seconds": 1_700_000_800.0}
    assert cm.cpu_percent_since(restarted, before, 900) is None
    # no counter now (stats unreadable), or no time between
    assert cm.cpu_percent_since({}, before, 900) is None
    assert cm.cpu_percent_since({"container_cpu_usage_seconds_total": 550.0, **start}, before, 0) is None
    # both stats samples' times known (container_last_seen, the daemon's `read`): their distance, not elapsed_s
    seen = {"container_cpu_usage_seconds_total": 100.0, "container_last_seen": 1_700_001_000.0, **start}
    now = {"container_cpu_usage_seconds_total": 101.0, "container_last_seen": 1_700_001_002.0, **start}
    assert cm.cpu_percent_since(now, seen, 2.9) == pytest.approx(50.0)  # 1 s of CPU in 2 s between samples
    assert cm.cpu_percent_since(now, before, 900) == pytest.approx(1.0 / 900 * 100)  # previous has none
    assert cm.cpu_percent_since(now, {**seen, "container_last_seen": 1_700_001_002.0}, 2.9) is None


def test_add_cpu_percent_against_the_previous_snapshot():
    t0 = datetime(2025, 11, 25, 12, 0, tzinfo=timezone.utc)
    t1 = t0 + timedelta(minutes=15)

    def running(name, cpu_seconds, started="2025-11-25T10:00:00Z", status="running"):
        stats = {**RUNNING_STATS, "cpu_stats": cpu(int(cpu_seconds * 1e9), 0)}
        return cm.reading(inspect_json(name, status=status, started=started), stats)

    busy, fresh, back = running("busy", 190.0), running("fresh", 3.0), running("back", 1.0, "2025-11-25T12:10:00Z")
    stopped = cm.reading(inspect_json("stopped", status="exited"))
    readings = [busy, fresh, back, stopped]
    first = {c.name: dict(c.samples) for c in readings if c.name != "fresh"}
    first["busy"]["container_cpu_usage_seconds_total"] = 100.0  # 90 s of CPU in 900 s: 10%
    first["busy"]["container_last_seen"] -= 900  # the previous stats sample, 900 s before this one
    first["back"]["container_cpu_usage_seconds_total"] = 500.0
    assert cm.add_cpu_percent(readings, t1, t0, first) == 1
    assert busy.samples["homelab_container_cpu_percent"] == pytest.approx(10.0)
    assert all("homelab_container_cpu_percent" not in c.samples for c in (fresh, back, stopped))
    # first snapshot of all: nobody gets one
    assert cm.add_cpu_percent(readings, t1, None, {}) == 0
    assert all("homelab_container_cpu_percent" not in c.samples for c in readings)
    # the one-shot stats give no CPU % of their own, whatever precpu_stats holds
    assert "homelab_container_cpu_percent" not in cm.stats_samples(RUNNING_STATS)


V1_MEMORY = {"usage": 100 * MiB, "limit": 200 * MiB, "failcnt": 7,
             "stats": {"total_inactive_file": 30 * MiB, "inactive_file": 1 * MiB, "total_cache": 40 * MiB,
                       "cache": 2 * MiB, "hierarchical_memory_limit": 200 * MiB}}
V2_MEMORY = {"usage": 100 * MiB, "limit": 400 * MiB, "failcnt": 2,
             "stats": {"inactive_file": 25 * MiB, "file": 35 * MiB, "anon": 60 * MiB}}


def test_memory_usage_minus_inactive_cache_as_docker_on_cgroup_v1_and_v2():
    assert cm.is_cgroup_v1(V1_MEMORY) and not cm.is_cgroup_v1(V2_MEMORY)
    assert cm.memory_working_set(V1_MEMORY) == 70 * MiB  # total_inactive_file on v1, not inactive_file
    assert cm.memory_working_set(V2_MEMORY) == 75 * MiB
    assert cm.memory_working_set({"usage": 10, "stats": {"inactive_file": 20}}) == 10  # never below zero
    assert cm.memory_working_set({"stats": {}}) is None
    assert (cm.memory_cache(V1_MEMORY), cm.memory_cache(V2_MEMORY)) == (40 * MiB, 35 * MiB)
    v1 = cm.stats_samples({"memory_stats": V1_MEMORY})
    assert v1["container_memory_usage_bytes"] == 100 * MiB  # cAdvisor's usage: page cache included
    assert v1["homelab_container_memory_percent"] == pytest.approx(35.0)  # 70 of 200
    # v1 failcnt counts limit hits; v2's is memory.events `oom`: two names, never mixed
    assert v1["container_memory_failcnt"] == 7 and "container_oom_events_total" not in v1
    v2 = cm.stats_samples({"memory_stats": V2_MEMORY})
    assert v2["container_oom_events_total"] == 2 and "container_memory_failcnt" not in v2
    no_events = {k: v for k, v in V2_MEMORY.items() if k != "failcnt"}  # omitempty: 0 events
    assert cm.stats_samples({"memory_stats": no_events})["container_oom_events_total"] == 0


def test_block_and_network_io_are_summed_as_docker_stats():
    v1 = {"io_service_bytes_recursive": [
        {"major": 8, "minor": 0, "op": "Read", "value": 100}, {"major": 8, "minor": 0, "op": "Write", "value": 10},
        {"major": 8, "minor": 0, "op": "Sync", "value": 999}, {"major": 8, "minor": 0, "op": "Total", "value": 110},
        {"major": 8, "minor": 16, "op": "Read", "value": 1}]}
    assert cm.block_io(v1) == (101, 10)
    assert cm.block_io({"io_service_bytes_recursive": [{"op": "read", "value": 5}, {"op": "write", "value": 6}]}) \
        == (5, 6)  # cgroup v2's lower-case ops
    assert cm.block_io({"io_service_bytes_recursive": []}) == (0, 0)  # no I/O yet (docker shows 0B / 0B)
    assert cm.block_io({"io_service_bytes_recursive": None}) == (0, 0)
    assert cm.block_io(None) is None
    nets = {"eth0": {"rx_bytes": 1000, "tx_bytes": 50, "rx_errors": 1}, "eth1": {"rx_bytes": 24, "tx_bytes": 6}}
    assert cm.network_totals(nets) == {"rx_bytes": 1024, "tx_bytes": 56}
    assert cm.network_totals(None) is None  # network none or host: no figure of its own, not zero


def inspect_json(name="svc", status="running", health=None, streak=0, restarts=0, oom=False, exit_code=0,
                 memory=0, started="2025-11-25T19:55:17.138449211Z") -> dict:
    state = {"Status": status, "Running": status in ("running", "paused", "restarting"), "OOMKilled": oom,
             "ExitCode": exit_code, "StartedAt": started, "FinishedAt": "0001-01-01T00:00:00Z"}
    if health:
        state["Health"] = {"Status": health, "FailingStreak": streak, "Log": []}
    return {"Name": f"/{name}", "State": state, "RestartCount": restarts, "HostConfig": {"Memory": memory}}


def rd(name: str, **kw) -> cm.ContainerReading:
    return cm.reading(inspect_json(name, **kw))


RUNNING_STATS = {"read": "2025-11-25T19:55:21.163773106Z",
                 "cpu_stats": cpu(2_200_000_000, 12_000_000_000), "precpu_stats": cpu(2_000_000_000, 10_000_000_000),
                 "memory_stats": V1_MEMORY, "networks": {"eth0": {"rx_bytes": 10, "tx_bytes": 20}},
                 "blkio_stats": {"io_service_bytes_recursive": []}}


def test_reading_of_a_running_container_with_cadvisor_names():
    r = cm.reading(inspect_json(health="unhealthy", streak=3, restarts=2, memory=200 * MiB), RUNNING_STATS)
    s = r.samples
    assert r.name == "svc" and r.running and r.health == "unhealthy"
    assert s["homelab_container_health"] == 2 and s["homelab_container_state"] == 1
    assert s["container_spec_memory_limit_bytes"] == 200 * MiB
    assert s["container_cpu_usage_seconds_total"] == pytest.approx(2.2)
    assert s["container_last_seen"] == pytest.approx(cm.docker_time(RUNNING_STATS["read"]))
    assert "homelab_container_cpu_percent" not in s  # needs the previous snapshot: add_cpu_percent
    assert s["container_memory_working_set_bytes"] == 70 * MiB
    assert (s["container_network_receive_bytes_total"], s["container_network_transmit_bytes_total"]) == (10, 20)
    assert (s["container_fs_reads_bytes_total"], s["container_fs_writes_bytes_total"]) == (0, 0)
    assert s["homelab_container_restart_count"] == 2 and s["homelab_container_oom_killed"] == 0
    assert s["container_start_time_seconds"] == pytest.approx(
        datetime(2025, 11, 25, 19, 55, 17, 138449, tzinfo=timezone.utc).timestamp())
    assert "homelab_container_exit_code" not in s
    assert {cm.reading(inspect_json(health=h)).samples["homelab_container_health"]
            for h in ("healthy", "starting", "unhealthy")} == {0, 1, 2}
    assert "homelab_container_health" not in cm.reading(inspect_json()).samples  # no healthcheck


def test_stopped_container_has_state_but_no_stats():
    info = inspect_json(status="exited", health="unhealthy", oom=True, exit_code=137, memory=8 * MiB, restarts=1)
    zeroed = {"read": "0001-01-01T00:00:00Z", "cpu_stats": {}, "memory_stats": {}}  # what the daemon answers
    r = cm.reading(info, zeroed)
    assert not r.running and r.health is None  # a stopped container's last health is history, not state
    started = r.samples.pop("container_start_time_seconds")
    assert started == pytest.approx(cm.docker_time("2025-11-25T19:55:17.138449211Z"))
    assert r.samples == {
        "homelab_container_state": 5, "homelab_container_running": 0, "homelab_container_restart_count": 1,
        "homelab_container_oom_killed": 1, "container_spec_memory_limit_bytes": 8 * MiB,
        "homelab_container_exit_code": 137}
    never = cm.reading(inspect_json(status="created", started="0001-01-01T00:00:00Z"))
    assert "container_start_time_seconds" not in never.samples and never.samples["homelab_container_state"] == 0


def test_docker_time_and_rows():
    assert cm.docker_time("2025-01-01T00:00:00.123456789Z") == pytest.approx(1735689600.123456)
    assert cm.docker_time("2025-01-01T01:00:00+01:00") == 1735689600
    assert cm.docker_time("0001-01-01T00:00:00Z") is None and cm.docker_time("") is None
    snap = cm.ContainerSnapshot(datetime.now(timezone.utc), [rd("b"), rd("a")])
    rows = snap.rows()
    assert [r[0] for r in rows] == sorted(r[0] for r in rows) and {r[0] for r in rows} == {"a", "b"}


# ---------------------------------------------------------------- pure: checks


def limits(**over) -> Thresholds:
    return Thresholds.defaults(**over)


def by_check(outcomes):
    return {o.check: o for o in outcomes}


def test_health_check():
    ok = cm.check_health([rd("a", health="healthy"), rd("b", health="starting")])
    assert ok.passed and ok.description == "1 healthy, 1 starting"
    sick = cm.check_health([rd("a", health="unhealthy"), rd("b", health="healthy", streak=2)])
    assert (sick.passed, sick.severity, sick.description) == (False, ERROR, "unhealthy: a")
    flaky = cm.check_health([rd("b", health="healthy", streak=2)])
    assert (flaky.passed, flaky.severity) == (False, WARN) and "b (2 failed probes)" in flaky.description
    none = cm.check_health([rd("a"), rd("x", status="exited", health="unhealthy")])
    assert none.passed and "no running container has a healthcheck" in none.description


def test_restart_increase_against_the_previous_snapshot():
    assert cm.restart_increase(5, 3.0) == 2
    assert cm.restart_increase(2, 5.0) == 2  # reset by a manual start, then two restarts
    assert cm.restart_increase(0, 5.0) == 0  # recreated under the same name
    assert cm.restart_increase(4, None) == 4  # first seen: the count itself
    readings = [rd("steady", restarts=9), rd("loop", restarts=7), rd("new", restarts=1),
                rd("flap", status="restarting", restarts=3)]
    previous = {"steady": {"homelab_container_restart_count": 9.0}, "loop": {"homelab_container_restart_count": 3.0},
                "flap": {"homelab_container_restart_count": 3.0}}
    o = cm.check_restarts(readings, previous, 1, 5)
    assert (o.passed, o.severity) == (False, WARN)
    assert o.description.startswith("restarted: loop 4x since the previous snapshot")
    assert "new 1x in total (first snapshot of it)" in o.description and "flap 1x" in o.description
    assert "steady" not in o.description
    assert cm.check_restarts(readings, previous, 1, 4).severity == ERROR
    quiet = cm.check_restarts([rd("steady", restarts=9)], previous, 1, 3)
    assert quiet.passed and quiet.description == "no container restarting"


def test_oom_check():
    down, back = rd("down", status="exited", oom=True, exit_code=137), rd("back", oom=True)
    o = cm.check_oom_kills([down, back], {})
    assert (o.passed, o.severity) == (False, ERROR) and o.description.startswith("OOM-killed and down: down")
    o = cm.check_oom_kills([back], {})
    assert (o.passed, o.severity) == (False, WARN) and "running again: back" in o.description
    v2 = cm.reading(inspect_json("v2"), {**RUNNING_STATS, "memory_stats": V2_MEMORY})
    assert cm.check_oom_kills([v2], {"v2": {"container_oom_events_total": 2.0}}).passed
    o = cm.check_oom_kills([v2], {"v2": {"container_oom_events_total": 1.0}})
    assert (o.passed, o.severity) == (False, WARN) and "v2 (1 new)" in o.description
    # v1's failcnt (limit hits) is recorded, never judged as an OOM
    v1 = cm.reading(inspect_json("v1"), RUNNING_STATS)
    assert cm.check_oom_kills([v1], {"v1": {"container_memory_failcnt": 0.0}}).passed


def test_memory_limit_check():
    def at(name, pct, limit=200 * MiB, status="running"):
        mem = {**V1_MEMORY, "usage": int(limit * pct / 100) + 30 * MiB}  # + total_inactive_file
        return cm.reading(inspect_json(name, status=status, memory=limit), {**RUNNING_STATS, "memory_stats": mem})

    o = cm.check_memory_limit([at("fine", 50), at("high", 92)], 90, 97)
    assert (o.passed, o.severity) == (False, WARN) and o.description == "near the memory limit: high 92.0%"
    assert cm.check_memory_limit([at("fine", 50), at("full", 98)], 90, 97).severity == ERROR
    unlimited = at("x", 99, limit=0)
    assert cm.check_memory_limit([unlimited], 90, 97).passed  # the host's memory_available judges those
    assert cm.check_memory_limit([at("fine", 50)], 90, 97).description == "highest: fine at 50.0% of its limit"
    outcomes = cm.evaluate([at("fine", 50)], {}, limits())
    assert [o.check for o in outcomes] == list(cm.CHECKS) and all(o.passed for o in outcomes)


def test_settings_know_the_container_thresholds_and_patterns():
    s = parse({"thresholds": {"container_memory_warn_pct": 80}, "metrics": {"containers": ["n8n*"]}}, "t.yaml")
    t = Thresholds.from_settings(s)
    assert t.container_memory_warn_pct == 80 and t.container_restart_increase_fail == 3
    m = s.metrics
    assert m.containers == ["n8n*"] and cm.selected("n8n-worker", m.containers) and not cm.selected("x", m.containers)
    assert cm.selected("anything", None)
    with pytest.raises(SettingsError, match="unknown threshold container_restart_count"):
        parse({"thresholds": {"container_restart_count": 1}}, "t.yaml")


# ---------------------------------------------------------------- the asset on the real Engine


def _wait(what: str, predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def busy_engine(docker_client):
    """Four busybox containers with a unique prefix: memory-limited `sleep` holding 24 MiB of /dev/shm on a
    network of its own, a CPU loop under a 0.5-CPU quota whose healthcheck always fails, one stopped
    after `true`, and one OOM-killed twice (restart on-failure:1). Removed afterwards, network too."""
    prefix = f"ctm-{uuid.uuid4().hex[:6]}"
    image = docker_images.busybox_image(docker_client)
    api = docker_client.api
    network = docker_client.networks.create(f"{prefix}-net", driver="bridge")
    made = []

    def run(suffix, command, **kw):
        c = docker_client.containers.run(image, command, name=f"{prefix}-{suffix}", detach=True, **kw)
        made.append(c)
        return c.name

    try:
        names = {
            "mem": run("mem", ["sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=24 2>/dev/null; "
                                           "exec sleep 600"], mem_limit="32m", memswap_limit="32m",
                       network=network.name),
            "sick": run("sick", ["sh", "-c", "while :; do :; done"], nano_cpus=500_000_000,
                        healthcheck={"test": ["CMD", "false"], "interval": 500_000_000, "timeout": 1_000_000_000,
                                     "retries": 1}),
            "stopped": run("stopped", ["true"]),
            "oom": run("oom", ["sh", "-c", 'x=a; while :; do x="$x$x"; done'], mem_limit="8m", memswap_limit="8m",
                       restart_policy={"Name": "on-failure", "MaximumRetryCount": 1}),
        }
        state = (lambda n: api.inspect_container(names[n])["State"])
        _wait("the stopped container to exit", lambda: state("stopped")["Status"] == "exited")
        _wait("the OOM container to die twice", lambda: state("oom")["Status"] == "exited"
              and api.inspect_container(names["oom"])["RestartCount"] == 1)
        _wait("the sick container to turn unhealthy",
              lambda: state("sick").get("Health", {}).get("Status") == "unhealthy")
        _wait("the memory container to fill /dev/shm", lambda: (api.stats(names["mem"], stream=False, one_shot=True)
                                                               ["memory_stats"].get("usage", 0)) >= 24 * MiB)
        yield prefix, names
    finally:
        for c in made:
            c.remove(force=True)
        network.remove()


def test_container_metrics_against_real_containers(busy_engine, write_settings, fresh_state_db, dagster_instance):
    prefix, names = busy_engine
    path, settings = write_settings({
        "state": {"dsn": dsn_for(fresh_state_db)}, "docker": {"host": DOCKER_HOST},
        "metrics": {"containers": [f"{prefix}-*"]},  # the Engine is shared with other tests' containers
        "thresholds": {"container_memory_warn_pct": 60, "container_memory_fail_pct": 95}})
    resources = resources_for(str(path))

    started = time.perf_counter()
    result = dg.materialize([container_metrics], resources=resources, instance=dagster_instance)
    wall = time.perf_counter() - started
    assert result.success
    meta = result.asset_materializations_for_node("container_metrics")[0].metadata
    assert (meta["containers"].value, meta["running"].value, meta["stopped"].value) == (4, 2, 2)
    print(f"\ncontainer_metrics: docker {meta['docker_ms'].value} ms, asset {meta['duration_ms'].value} ms, "
          f"materialize {wall:.2f} s")
    assert meta["docker_ms"].value < 2000  # one-shot stats: no wait for the collector's second tick

    with psycopg.connect(settings.state.dsn.get_secret_value()) as c:
        rows = c.execute("SELECT taken_at, container, metric, value FROM homelab_ops.container_metrics").fetchall()
    assert len({r[0] for r in rows}) == 1  # one snapshot, one instant
    got = {(r[1], r[2]): r[3] for r in rows}
    metrics_of = (lambda key: {m for (c, m) in got if c == names[key]})
    assert {c for c, _ in got} == set(names.values())

    mem = names["mem"]
    assert got[(mem, "container_spec_memory_limit_bytes")] == 32 * MiB  # the limit set
    assert 24 * MiB <= got[(mem, "container_memory_working_set_bytes")] <= 32 * MiB  # /dev/shm is not reclaimable
    assert got[(mem, "container_memory_usage_bytes")] >= got[(mem, "container_memory_working_set_bytes")]
    assert 60 < got[(mem, "homelab_container_memory_percent")] < 95
    assert (mem, "container_network_receive_bytes_total") in got  # on a bridge network of its own
    assert (mem, "container_fs_writes_bytes_total") in got and (mem, "container_memory_failcnt") in got  # cgroup v1
    assert (mem, "homelab_container_health") not in got  # no healthcheck

    sick = names["sick"]
    assert got[(sick, "homelab_container_health")] == 2  # 0 healthy, 1 starting, 2 unhealthy
    assert (sick, "container_network_receive_bytes_total") not in got  # --bridge=none: no network of its own
    assert (sick, "homelab_container_cpu_percent") not in got  # first snapshot: no previous counter, no rate
    assert got[(sick, "container_cpu_cfs_throttled_seconds_total")] > 0

    stopped = names["stopped"]
    assert (got[(stopped, "homelab_container_running")], got[(stopped, "homelab_container_state")]) == (0, 5)
    assert got[(stopped, "homelab_container_exit_code")] == 0
    stats_metrics = {"container_cpu_usage_seconds_total", "container_last_seen", "container_memory_usage_bytes",
                     "container_memory_working_set_bytes"}
    assert not metrics_of("stopped") & stats_metrics and stats_metrics <= metrics_of("mem")

    oom = names["oom"]
    assert (got[(oom, "homelab_container_oom_killed")], got[(oom, "homelab_container_exit_code")]) == (1, 137)
    assert got[(oom, "homelab_container_restart_count")] == 1
    assert got[(oom, "container_spec_memory_limit_bytes")] == 8 * MiB

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == set(cm.CHECKS)
    assert (checks["container_health"].passed, checks["container_health"].severity) == \
        (False, dg.AssetCheckSeverity.ERROR)
    assert checks["container_health"].description == f"unhealthy: {sick}"
    assert (checks["container_memory_limit"].passed, checks["container_memory_limit"].severity) == \
        (False, dg.AssetCheckSeverity.WARN)
    assert checks["container_memory_limit"].description.startswith(f"near the memory limit: {mem} ")
    assert (checks["container_oom_kills"].passed, checks["container_oom_kills"].severity) == \
        (False, dg.AssetCheckSeverity.ERROR)
    assert checks["container_oom_kills"].description.startswith(f"OOM-killed and down: {oom}")
    # first snapshot: the count itself, 1 restart >= warn 1 < error 3
    assert (checks["container_restarts"].passed, checks["container_restarts"].severity) == \
        (False, dg.AssetCheckSeverity.WARN)
    assert f"{oom} 1x in total" in checks["container_restarts"].description

    # A second snapshot judges restarts against the first: none since.
    again = dg.materialize([container_metrics], resources=resources, instance=dagster_instance)
    checks = {e.check_name: e for e in again.get_asset_check_evaluations()}
    assert checks["container_restarts"].passed, checks["container_restarts"].description
    assert not checks["container_oom_kills"].passed  # State.OOMKilled stays until the next exit
    meta = again.asset_materializations_for_node("container_metrics")[0].metadata
    assert meta["previous_snapshot"].value != "none"
    print(f"container_metrics (second): docker {meta['docker_ms'].value} ms, asset {meta['duration_ms'].value} ms")
    assert meta["docker_ms"].value < 2000

    # ... and CPU % from the counters of the first: the mean over the time between the two
    with psycopg.connect(settings.state.dsn.get_secret_value()) as c:
        second = {(r[0], r[1]): r[2] for r in c.execute(
            "SELECT container, metric, value FROM homelab_ops.container_metrics"
            " WHERE taken_at = (SELECT max(taken_at) FROM homelab_ops.container_metrics)")}
    assert 5 < second[(sick, "homelab_container_cpu_percent")] <= 60  # a busy loop under a 0.5-CPU quota
    assert 0 <= second[(mem, "homelab_container_cpu_percent")] < 5  # sleeping
    assert (stopped, "homelab_container_cpu_percent") not in second and \
        (oom, "homelab_container_cpu_percent") not in second
    print(f"container_metrics (second): CPU % {sick} {second[(sick, 'homelab_container_cpu_percent')]:.1f}, "
          f"{mem} {second[(mem, 'homelab_container_cpu_percent')]:.2f}")


def test_no_docker_daemon_fails_container_metrics_not_the_host_snapshot(write_settings, fresh_state_db, tmp_path,
                                                                        dagster_instance):
    from homelab_ops.defs.metrics.defs import defs as metrics_defs

    nowhere = f"unix://{tmp_path}/no-docker.sock"
    path, _ = write_settings({"state": {"dsn": dsn_for(fresh_state_db)}, "docker": {"host": nowhere},
                              "metrics": {"textfile_dir": str(tmp_path / "tf")}})
    d = dg.Definitions.merge(metrics_defs() if callable(metrics_defs) else metrics_defs,
                             dg.Definitions(resources=resources_for(str(path))))
    job = d.resolve_job_def("host_metrics_snapshot")  # the scheduled job runs both snapshots
    result = job.execute_in_process(instance=dagster_instance, raise_on_error=False)
    assert not result.success
    assert result.asset_materializations_for_node("host_metrics")  # recorded regardless
    assert not result.asset_materializations_for_node("container_metrics")
    failure = next(e for e in result.all_events if e.is_step_failure and e.step_key == "container_metrics")
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith(f"no Docker daemon answers at {nowhere} (docker.host)")


def test_daily_rollup_and_retention_cover_container_metrics(write_settings, fresh_state_db):
    path, settings = write_settings({"state": {"dsn": dsn_for(fresh_state_db)}, "timezone": "UTC"})
    day = (datetime.now(timezone.utc) - timedelta(days=1)).date()
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc)
    old = datetime.now(timezone.utc) - timedelta(days=15)
    with open_state(settings.state, settings.postgres) as c:
        with c.cursor() as cur:
            cur.executemany("INSERT INTO homelab_ops.container_metrics VALUES (%s, %s, %s, %s)", [
                (noon, "n8n", "container_memory_working_set_bytes", 100.0),
                (noon + timedelta(minutes=15), "n8n", "container_memory_working_set_bytes", 300.0),
                (noon, "redis", "container_memory_working_set_bytes", 50.0),
                (old, "n8n", "container_memory_working_set_bytes", 1.0)])
        c.commit()
    rollup = host_metrics_daily_asset(settings.metrics, settings.timezone)
    result = dg.materialize([rollup], partition_key=day.isoformat(),
                            resources=resources_for(str(path)))
    assert result.success
    with psycopg.connect(settings.state.dsn.get_secret_value()) as c:
        daily = {lb["container"]: (n, lo, mean, hi) for lb, n, lo, mean, hi in c.execute(
            "SELECT labels, samples, min, mean, max FROM homelab_ops.host_metrics_daily"
            " WHERE day = %s AND metric = 'container_memory_working_set_bytes'", (day,))}
        left = c.execute("SELECT count(*), min(taken_at) FROM homelab_ops.container_metrics").fetchone()
    assert daily == {"n8n": (2, 100.0, 200.0, 300.0), "redis": (1, 50.0, 50.0, 50.0)}
    assert left[0] == 3 and left[1] == noon  # the 15-day-old row is past the 14-day retention
