"""The dead man's switch and health at a glance: the health sensor pings a push monitor (a real HTTP
server on loopback) every tick and observes `homelab_health` when a check changes; per-job pings come
from run status sensors evaluated against a real Dagster instance."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from homelab_ops.defs.health.resources import AlertChannels
from homelab_ops.defs.health.sensors import HEALTH_ASSET, build_health_sensor, build_job_heartbeat_sensors
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.health.checks import FAIL, OK, WARN, CheckResult
from homelab_ops.notify.heartbeat import ping, ping_url

UUID = "5f3c1a9e-2b7d-4c11-9e0f-8a6b4d2c1e77"


class Monitor:
    """A push monitor: records (method, path, body) of every request; answers 200, or `status`."""

    def __init__(self):
        self.requests: list[tuple[str, str, bytes]] = []
        self.status = 200
        self.delay = 0.0  # seconds before answering: a monitor behind a slow uplink
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                monitor.requests.append(("POST", self.path, body))
                time.sleep(monitor.delay)
                self.send_response(monitor.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.requests]


@pytest.fixture(scope="module")
def monitor():
    m = Monitor()
    yield m
    m.server.shutdown()


def test_ping_urls_follow_each_monitors_api():
    hc = "https://hc-ping.com/" + UUID
    assert ping_url(hc, "success") == hc
    assert ping_url(hc, "fail") == hc + "/fail"
    assert ping_url(hc + "/", "start") == hc + "/start"
    kuma = "https://kuma.lan/api/push/AbC123?status=up&msg=OK&ping="
    assert ping_url(kuma, "fail", "disk_free:/ (fail)") == \
        "https://kuma.lan/api/push/AbC123?ping=&status=down&msg=disk_free%3A%2F+%28fail%29"
    assert ping_url(kuma, "success").endswith("status=up&msg=up")
    with pytest.raises(ValueError, match="unknown heartbeat event 'finish'"):
        ping_url(hc, "finish")


def _resources(write_settings, state_db, notify: dict):
    path, s = write_settings({"state": {"dsn": f"postgresql://postgres@127.0.0.1:5432/{state_db}"},
                              "notify": {"telegram": {"api_base": "http://127.0.0.1:9"}, **notify}})
    return s, {"homelab": HomelabSettings(config_path=str(path)),
               "alert_channels": AlertChannels(backoff_s=0.01, redact_credentials=False)}


def _tick(sensor, instance, resources, cursor):
    defs = dg.Definitions(sensors=[sensor], resources=resources)
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources)
    return sensor.evaluate_tick(ctx)


def test_a_slow_monitor_cannot_hold_the_ping_past_its_deadline():
    """The health sensor's tick must end inside Dagster's 60 s: the ping's own attempt is cut at the
    deadline, not only the waits between attempts."""
    slow = Monitor()
    slow.delay = 6.0
    try:
        started = time.monotonic()
        resp = ping(slow.url + "/" + UUID, "success", "ok", deadline=started + 0.5)
        took = time.monotonic() - started
        assert not resp.ok and took < 3.0, (resp, took)
        assert ping(slow.url + "/" + UUID, "success", deadline=time.monotonic() - 1).error.startswith("no time left to ping")
    finally:
        slow.server.shutdown()


def test_health_sensor_pings_every_tick_with_the_overall_state_and_shows_the_table(
        monitor, instance, write_settings, state_db):
    monitor.requests.clear()
    _, resources = _resources(write_settings, state_db, {"heartbeat_url": f"{monitor.url}/ping/{UUID}"})
    now = [1_790_000_000.0]
    results: list[CheckResult] = []
    sensor = build_health_sensor([], evaluate=lambda s: list(results), clock=lambda: now[0])

    results[:] = [CheckResult("disk_free:/", OK, "62% free"), CheckResult("temperature", OK, "51 °C")]
    data = _tick(sensor, instance, resources, None)
    assert monitor.paths() == [f"/ping/{UUID}"]
    assert b"2 checks, 0 not ok" in monitor.requests[-1][2]
    (obs,) = data.asset_events
    assert obs.asset_key == HEALTH_ASSET
    assert obs.metadata["state"].value == OK
    table = obs.metadata["checks"].value
    assert [r.data["check"] for r in table.records] == ["disk_free:/", "temperature"]

    now[0] += 60  # nothing changed: a ping, but no new observation
    data = _tick(sensor, instance, resources, data.cursor)
    assert monitor.paths()[-1] == f"/ping/{UUID}" and len(monitor.requests) == 2
    assert not data.asset_events

    now[0] += 60
    results[:] = [CheckResult("disk_free:/", WARN, "12% free", "free_disk"),
                  CheckResult("temperature", FAIL, "83 °C")]
    data = _tick(sensor, instance, resources, data.cursor)
    assert monitor.paths()[-1] == f"/ping/{UUID}/fail"
    assert b"temperature (fail)" in monitor.requests[-1][2]
    (obs,) = data.asset_events
    rows = [r.data for r in obs.metadata["checks"].value.records]
    assert [(r["check"], r["state"], r["remedy"]) for r in rows] == [
        ("temperature", FAIL, ""), ("disk_free:/", WARN, "free_disk")]
    assert obs.metadata["failing"].value == 1 and obs.metadata["not_ok"].value == 2

    now[0] += 60
    results[1] = CheckResult("temperature", OK, "60 °C")
    data = _tick(sensor, instance, resources, data.cursor)
    assert monitor.paths()[-1] == f"/ping/{UUID}"  # warn is not a failure for the monitor
    assert data.asset_events  # but the table changed

    now[0] += 3600  # unchanged for an hour: the table is observed again, so its age shows the sensor runs
    data = _tick(sensor, instance, resources, data.cursor)
    assert data.asset_events


def test_a_monitor_that_is_down_does_not_break_the_sensor(instance, write_settings, state_db):
    _, resources = _resources(write_settings, state_db, {"heartbeat_url": f"http://127.0.0.1:9/ping/{UUID}"})
    sensor = build_health_sensor([], evaluate=lambda s: [CheckResult("temperature", OK, "50 °C")])
    data = _tick(sensor, instance, resources, None)
    assert data.cursor and data.asset_events


def test_every_tick_leaves_the_checks_and_its_stamp_for_prometheus(instance, write_settings, state_db, tmp_path):
    """homelab_health.prom: Prometheus' rules for these conditions hold back while its stamp is fresh."""
    import subprocess

    s, resources = _resources(write_settings, state_db, {})
    results = [CheckResult("disk_free:/", WARN, "12% free"), CheckResult("cpu_temperature", FAIL, "83 °C"),
               CheckResult("docker", "unknown", "no socket")]
    sensor = build_health_sensor([], evaluate=lambda _: list(results), clock=lambda: 1_790_000_000.0)
    _tick(sensor, instance, resources, None)
    text = (Path(s.metrics.textfile_dir) / "homelab_health.prom").read_text()
    assert "homelab_health_tick_timestamp_seconds 1790000000.0" in text
    assert 'homelab_health_check_state{check="cpu_temperature"} 2.0' in text
    assert 'homelab_health_check_state{check="disk_free:/"} 1.0' in text
    assert 'homelab_health_check_state{check="docker"} 3.0' in text
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A textfile directory that cannot be written does not stop the sensor (Prometheus then speaks for it).
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    path, _ = write_settings({"state": {"dsn": f"postgresql://postgres@127.0.0.1:5432/{state_db}"},
                              "metrics": {"textfile_dir": str(blocked / "textfile")}}, name="blocked.yaml")
    data = _tick(sensor, instance, {**resources, "homelab": HomelabSettings(config_path=str(path))}, None)
    assert data.cursor


def test_job_heartbeats_ping_start_success_and_fail_for_the_configured_jobs(
        monitor, instance, write_settings, state_db):
    monitor.requests.clear()
    _, resources = _resources(write_settings, state_db,
                              {"heartbeat": {"nightly_backup": f"{monitor.url}/ping/{UUID}"}})
    sensors = {s.name: s for s in build_job_heartbeat_sensors()}
    assert set(sensors) == {"job_heartbeat_start", "job_heartbeat_success", "job_heartbeat_fail"}

    def run_of(job: str, status: dg.DagsterRunStatus) -> dg.DagsterRun:
        return dg.DagsterRun(job_name=job, run_id=f"{abs(hash((job, status))):032x}"[:32], status=status)

    def event_for(run: dg.DagsterRun, event_type: dg.DagsterEventType) -> dg.DagsterEvent:
        return dg.DagsterEvent(event_type.value, job_name=run.job_name)

    for name, status, etype in (("job_heartbeat_start", dg.DagsterRunStatus.STARTED, dg.DagsterEventType.RUN_START),
                                ("job_heartbeat_success", dg.DagsterRunStatus.SUCCESS,
                                 dg.DagsterEventType.RUN_SUCCESS),
                                ("job_heartbeat_fail", dg.DagsterRunStatus.FAILURE, dg.DagsterEventType.RUN_FAILURE)):
        for job in ("nightly_backup", "verify_backups"):
            run = run_of(job, status)
            ctx = dg.build_run_status_sensor_context(sensor_name=name, dagster_event=event_for(run, etype),
                                                     dagster_instance=instance, dagster_run=run,
                                                     resources=resources)
            sensors[name](ctx)
    assert monitor.paths() == [f"/ping/{UUID}/start", f"/ping/{UUID}", f"/ping/{UUID}/fail"]
    assert b"nightly_backup run" in monitor.requests[0][2]
