"""The checks' I/O edges against real things: PostgreSQL, the test Docker Engine, HTTP, files.

A check that cannot run answers `unknown`; nothing here may raise into the sensor.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from homelab_ops.backups.catalog import stem_for
from homelab_ops.health import evaluate as ev
from homelab_ops.health.checks import FAIL, OK, STATES, UNKNOWN, WARN
from homelab_ops.health.config import HealthConfig
from tests.conftest import ADMIN_DSN, DOCKER_HOST, dsn_for, free_port

IMAGE = "homelab-ops-health-test:busybox"


def now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture
def settings_for(write_settings, state_db):
    def make(**data):
        data.setdefault("state", {"dsn": dsn_for(state_db)})
        data.setdefault("docker", {"host": DOCKER_HOST})
        return write_settings(data)[1]

    return make


# --------------------------------------------------------------------------- services


def test_postgres_reachable_and_not(settings_for):
    assert ev.check_postgres(HealthConfig.of(settings_for()), now())[0].state == OK
    dead = settings_for(postgres={"dsn": f"postgresql://postgres:Sekr1tPw@127.0.0.1:{free_port()}/postgres"})
    r = ev.check_postgres(HealthConfig.of(dead), now())[0]
    assert r.state == FAIL and "not reachable" in r.reason and "Sekr1tPw" not in r.reason


class _N8n(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        code = _N8n.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, *a):
        pass


def test_n8n_healthz(settings_for):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _N8n)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        s = settings_for(n8n={"dsn": ADMIN_DSN, "url": url})
        assert ev.check_n8n(HealthConfig.of(s), now())[0].state == OK
        _N8n.status = 503
        r = ev.check_n8n(HealthConfig.of(s), now())[0]
        assert r.state == FAIL and "503" in r.reason
    finally:
        _N8n.status = 200
        server.shutdown()
        server.server_close()
    assert ev.check_n8n(HealthConfig.of(s), now())[0].state == FAIL  # nothing listens any more
    assert ev.check_n8n(HealthConfig.of(settings_for(n8n={"dsn": ADMIN_DSN})), now())[0].state == UNKNOWN
    assert ev.check_n8n(HealthConfig.of(settings_for()), now()) == []  # no n8n configured: no n8n check


# --------------------------------------------------------------------------- backups, rollups, credentials


def _backup(folder: Path, t: datetime) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem_for(t)
    (folder / f"{stem}.dump.zst").write_bytes(b"x")
    (folder / f"{stem}.manifest.json").write_text("{}")
    return stem


def test_backup_age_reads_the_newest_restored_backup_verification_published(settings_for, tmp_path):
    from types import SimpleNamespace

    from homelab_ops.backups.verify import publish_freshness

    s = settings_for(postgres={"dsn": ADMIN_DSN, "databases": ["n8n", "photos", "empty"]},
                     backups={"local_dir": str(tmp_path / "b"), "max_age_hours": 26})
    t = now()
    old = _backup(tmp_path / "b" / "n8n", t - timedelta(hours=30))
    restored = _backup(tmp_path / "b" / "n8n", t - timedelta(hours=3))
    _backup(tmp_path / "b" / "n8n", t - timedelta(hours=1))  # newer, not restored (yet)
    publish_freshness(s.metrics.textfile_dir, SimpleNamespace(database="n8n", stem=restored))
    # an older copy restored later: no step back
    publish_freshness(s.metrics.textfile_dir, SimpleNamespace(database="n8n", stem=old))
    publish_freshness(s.metrics.textfile_dir, SimpleNamespace(database="photos", stem=_backup(tmp_path / "b" / "photos",
                                                                        t - timedelta(hours=40))))
    _backup(tmp_path / "b" / "photos", t - timedelta(hours=2))
    by = {r.name: r for r in ev.check_backups(HealthConfig.of(s), t)}
    assert by["backup_age:n8n"].state == OK and "3.0h" in by["backup_age:n8n"].reason
    assert by["backup_age:photos"].state == FAIL and "40.0h" in by["backup_age:photos"].reason
    assert by["backup_age:empty"].state == FAIL and "no backup at all" in by["backup_age:empty"].reason
    assert all(r.remedy == "nightly_backup" for r in by.values())


def test_n8n_failure_rate_from_the_rollup_table(settings_for):
    s = settings_for(n8n={"dsn": ADMIN_DSN, "failure_rate_warn": 0.2})
    today = now().astimezone(s.tz).date()
    from homelab_ops.notify.chats import state_connection

    with state_connection(s.state, s.postgres) as conn:  # migrated: the rollup table exists
        conn.execute("DELETE FROM homelab_ops.n8n_execution_daily")
        conn.cursor().executemany("INSERT INTO homelab_ops.n8n_execution_daily (day, workflow_id, workflow_name, status,"
                         " executions) VALUES (%s, %s, %s, %s, %s)",
                         [(today, "w1", "Invoices", "success", 6), (today, "w1", "Invoices", "error", 3),
                          (today - timedelta(days=1), "w1", "Invoices", "error", 100)])
    r = ev.check_n8n_failures(HealthConfig.of(s), now())[0]
    assert r.state == WARN and "Invoices" in r.reason and "3 of 9" in r.reason


def test_credentials_overdue_from_the_credential_store(settings_for):
    s = settings_for(credentials={"managed": {"bot_token": {"kind": "manual", "period": "30d"}}})
    r = ev.check_credentials(HealthConfig.of(s), now())[0]
    assert r.state == WARN and "bot_token (never set)" in r.reason


# --------------------------------------------------------------------------- logs


def test_postgres_auth_failures_from_a_log_file(settings_for, tmp_path):
    log = tmp_path / "postgresql-15-main.log"
    t = now()
    lines = [f"{(t - timedelta(minutes=i)).strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]} UTC [1{i}] x@y FATAL:  "
             f"password authentication failed for user \"mallory\"" for i in range(12)]
    lines.append(f"{(t - timedelta(hours=3)).strftime('%Y-%m-%d %H:%M:%S')} UTC [9] FATAL:  role \"old\" does not exist")
    log.write_text("\n".join(lines) + "\n")
    s = settings_for(health={"postgres_log": str(tmp_path / "postgresql-*-main.log")})
    r = ev.check_pg_auth(HealthConfig.of(s), t)[0]
    assert r.state == WARN and r.reason.startswith("12 failed") and "'mallory' 12" in r.reason
    missing = settings_for(health={"postgres_log": str(tmp_path / "nope-*.log")})
    r = ev.check_pg_auth(HealthConfig.of(missing), t)[0]
    assert r.state == UNKNOWN and "no file matches" in r.reason
    assert "not configured" in ev.check_pg_auth(HealthConfig.of(settings_for()), t)[0].reason


def test_traefik_denied_from_an_access_log_file(settings_for, tmp_path):
    t = now()
    log = tmp_path / "access.log"
    entries = [json.dumps({"ClientHost": "203.0.113.5", "DownstreamStatus": 401,
                           "StartUTC": (t - timedelta(seconds=i)).isoformat().replace("+00:00", "Z")})
               for i in range(120)]
    log.write_text("\n".join(entries) + "\n")
    s = settings_for(health={"traefik_access_log": str(log)})
    r = ev.check_http_denied(HealthConfig.of(s), t)[0]
    assert r.state == FAIL and "120 answers 401/403" in r.reason and "203.0.113.5 (120)" in r.reason


# --------------------------------------------------------------------------- Docker


@pytest.fixture(scope="module")
def busybox_image(docker_client):
    """A one-binary image made with `docker import` (no registry here): busybox and its applets."""
    try:
        docker_client.images.get(IMAGE)
        return IMAGE
    except Exception:
        pass
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add("/usr/bin/busybox", arcname="bin/busybox")
        for applet in ("sh", "sleep", "false", "true", "echo"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    repo, tag = IMAGE.split(":")
    docker_client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)
    return IMAGE


@pytest.fixture
def containers(docker_client, busybox_image):
    made = []

    def run(name: str, command: list[str], **kw):
        c = docker_client.containers.run(busybox_image, command, name=f"{name}-{uuid.uuid4().hex[:6]}",
                                         detach=True, network_mode="none", **kw)
        made.append(c)
        return c

    yield run
    for c in made:
        c.remove(force=True)


def _wait(predicate, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.25)
    return False


@pytest.mark.docker
def test_containers_judged_from_the_docker_engine(settings_for, containers):
    sick = containers("grafana-hc", ["sleep", "300"],
                      healthcheck={"test": ["CMD", "false"], "interval": 200_000_000, "timeout": 1_000_000_000,
                                   "retries": 1, "start_period": 0})
    crashed = containers("worker", ["sh", "-c", "exit 3"])
    done = containers("oneshot", ["true"])
    s = settings_for(health={"container_stacks": {"grafana-*": "monitoring"}})

    def states():
        return {r.name: r for r in ev.check_containers(HealthConfig.of(s), now())}

    assert _wait(lambda: states().get(f"container:{sick.name}", None) is not None
                 and states()[f"container:{sick.name}"].state == FAIL)
    assert _wait(lambda: states()[f"container:{crashed.name}"].state == WARN)
    by = states()
    assert by["docker"].state == OK
    assert "unhealthy" in by[f"container:{sick.name}"].reason
    assert by[f"container:{sick.name}"].remedy == "redeploy_monitoring"
    assert "exited with code 3" in by[f"container:{crashed.name}"].reason
    assert _wait(lambda: states()[f"container:{done.name}"].state == OK)
    ignored = settings_for(health={"ignore_containers": ["worker-*", "oneshot-*", "grafana-hc-*"]})
    assert not any(r.name.startswith(("container:worker", "container:oneshot", "container:grafana-hc"))
                   for r in ev.check_containers(HealthConfig.of(ignored), now()))


@pytest.mark.docker
def test_postgres_auth_failures_from_a_containers_log(settings_for, containers):
    line = 'FATAL:  password authentication failed for user \\"mallory\\"'
    c = containers("pg", ["sh", "-c", f'for i in 1 2 3 4 5 6 7 8 9 10 11; do echo "{line}"; done; sleep 300'])
    s = settings_for(health={"postgres_container": c.name})
    assert _wait(lambda: ev.check_pg_auth(HealthConfig.of(s), now())[0].reason.startswith("11 failed"))
    r = ev.check_pg_auth(HealthConfig.of(s), now())[0]
    assert r.state == WARN  # Docker's timestamps date the lines that carry none
    missing = settings_for(health={"postgres_container": "no-such-container"})
    assert ev.check_pg_auth(HealthConfig.of(missing), now())[0].state == UNKNOWN


def test_no_docker_is_unknown_not_a_crash(settings_for, tmp_path):
    s = settings_for(docker={"host": f"unix://{tmp_path}/docker.sock"},
                     health={"traefik_container": "traefik"})
    [r] = ev.check_containers(HealthConfig.of(s), now())
    assert (r.name, r.state) == ("docker", UNKNOWN) and "cannot reach Docker" in r.reason
    r = ev.check_http_denied(HealthConfig.of(s), now())[0]
    assert r.state == UNKNOWN and "cannot reach Docker" in r.reason


# --------------------------------------------------------------------------- all together


def test_run_checks_never_raises_and_bounds_time(settings_for, tmp_path):
    s = settings_for(postgres={"dsn": ADMIN_DSN, "databases": ["n8n"]}, backups={"local_dir": str(tmp_path)},
                     metrics={"sys_root": str(tmp_path / "sys")})
    results = ev.run_checks(HealthConfig.of(s))
    names = [r.name for r in results]
    assert len(names) == len(set(names)) and all(r.state in STATES for r in results)
    by = {r.name: r for r in results}
    assert by["postgres"].state == OK and by["docker"].state == OK
    assert by["cpu_temperature"].state == UNKNOWN  # no thermal zone under the empty sys root
    assert any(n.startswith("disk_free:") for n in names)

    def hangs(config, t):
        time.sleep(3)
        return []

    def breaks(config, t):
        raise RuntimeError("password=hunter2 exploded")

    start = time.monotonic()
    got = ev.run_checks(HealthConfig.of(s), groups=[(hangs, ("slow",)), (breaks, ("broken",))], timeout=0.5)
    assert time.monotonic() - start < 2
    assert [(r.name, r.state) for r in got] == [("slow", UNKNOWN), ("broken", UNKNOWN)]
    assert "no answer within 0.5s" in got[0].reason and "exploded" in got[1].reason
