"""Every panel of deploy/grafana/dashboards/homelab.json runs against the real tables it reads:
the state database (host, n8n, containers) and Dagster's PostgreSQL run storage (backups)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from homelab_ops.metrics.collect import Snapshot
from homelab_ops.metrics.store import write_snapshot
from homelab_ops.settings import parse
from homelab_ops.state import open_state

from tests.conftest import ADMIN_DSN, drop_database, dsn_for

pytestmark = pytest.mark.services  # every test here reaches PostgreSQL

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/homelab.json"


def panels() -> list[dict]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def runnable(sql: str) -> str:
    """Grafana's macros and variables replaced by what Grafana would send."""
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", r"\1 BETWEEN '2000-01-01' AND '2100-01-01'", sql)
    return sql.replace("$container_metric", "memory_usage_bytes")


@pytest.fixture
def state_dsn():
    name = f"dash_state_{uuid.uuid4().hex[:8]}"
    settings = parse({"postgres": {"dsn": ADMIN_DSN}, "state": {"dsn": dsn_for(name)}}, "test")
    try:
        yield _fill(settings)
    finally:
        drop_database(name)


def _fill(settings) -> str:
    now = datetime.now(timezone.utc)
    with open_state(settings.state, settings.postgres) as c:
        for k in range(2):
            snap = Snapshot(taken_at=now - timedelta(minutes=15 * k))
            snap.add("node_thermal_zone_temp", 55.0 + k, type="cpu-thermal", zone="0")
            snap.add("homelab_pi_throttled", 0.0, flag="under_voltage", when="now")
            snap.add("homelab_pi_under_voltage_alarm", 0.0)
            snap.add("homelab_cpu_busy_ratio", 0.2)
            snap.add("node_load1", 0.5)
            snap.add("node_memory_MemTotal_bytes", 8e9)
            snap.add("node_memory_MemAvailable_bytes", 4e9)
            snap.add("node_memory_SwapTotal_bytes", 2e9)
            snap.add("node_memory_SwapFree_bytes", 1e9)
            snap.add("node_filesystem_size_bytes", 100e9, mountpoint="/", device="/dev/nvme0n1p2", fstype="ext4")
            snap.add("node_filesystem_avail_bytes", 40e9, mountpoint="/", device="/dev/nvme0n1p2", fstype="ext4")
            snap.add("node_cpu_scaling_frequency_hertz", 2.4e9, cpu="0")
            snap.add("homelab_uptime_seconds", 3600.0)
            snap.add("homelab_sensor_present", 1.0, sensor="vcgencmd")
            write_snapshot(c, snap)
        today = date.today()
        c.execute("INSERT INTO homelab_ops.host_metrics_daily VALUES (%s, 'node_thermal_zone_temp',"
                  " '{\"zone\": \"0\"}', 96, 40, 50, 60)", (today,))
        c.execute("INSERT INTO homelab_ops.n8n_execution_daily VALUES (%s, 'w1', 'Uptime monitor', 'success', 90,"
                  " 400, 900, 1200), (%s, 'w1', 'Uptime monitor', 'error', 10, 300, 800, 900)", (today, today))
        c.execute("INSERT INTO homelab_ops.container_metrics VALUES (now(), 'n8n', 'memory_usage_bytes', 3e8)")
        c.commit()
    return settings.state.dsn.get_secret_value()


@pytest.fixture
def dagster_dsn():
    """Dagster's PostgreSQL run storage with backup materializations, as on a Pi that upgraded: one
    under the key's old name (`backups/n8n`), then one under today's (`backups/n8n_backup`); and a
    database whose own name ends in `_backup`, whose old key (`backups/app_backup`) reads like today's
    key of a database `app`: the folder of the dump tells them apart."""
    name = f"dash_dagster_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')

    def made(key: list[str], folder: str, size: int) -> dg.AssetsDefinition:
        @dg.asset(key=key)
        def _backup():
            return dg.MaterializeResult(metadata={
                "path": dg.MetadataValue.path(f"/srv/homelab/backups/{folder}/20261101T030000Z.dump.zst"),
                "size_bytes": dg.MetadataValue.int(size)})
        return _backup

    made_before = [made(["backups", "n8n"], "n8n", 120000), made(["backups", "app_backup"], "app_backup", 700)]
    made_after = [made(["backups", "n8n_backup"], "n8n", 123456), made(["backups", "app_backup_backup"], "app_backup", 777)]

    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    db = {"hostname": info.get("host", "127.0.0.1"), "port": int(info.get("port", 5432)),
          "username": info.get("user", "postgres"), "password": info.get("password", ""), "db_name": name,
          "scheme": "postgresql+psycopg2"}  # SQLAlchemy 2.1 would pick psycopg 3, which Dagster's NOTIFY breaks on
    try:
        with dg.DagsterInstance.local_temp(overrides={"storage": {"postgres": {"postgres_db": db}}}) as inst:
            for asset in (*made_before, *made_after):
                assert dg.materialize([asset], instance=inst).success
        yield dsn_for(name)
    finally:
        drop_database(name)


def test_dashboard_is_provisionable_json():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "homelab-ops" and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in board["panels"] if p["type"] == "row")
    for section in ("Host", "n8n", "Backups", "Containers"):
        assert section in titles
    assert {v["name"] for v in board["templating"]["list"]} >= {"state", "dagster", "container_metric"}


def test_every_panel_query_runs_and_returns_rows(state_dsn, dagster_dsn):
    for p in panels():
        uid = p["datasource"]["uid"]
        dsn = dagster_dsn if uid == "${dagster}" else state_dsn
        assert uid in ("${state}", "${dagster}"), p["title"]
        with psycopg.connect(dsn) as c:
            for t in p["targets"]:
                rows = c.execute(runnable(t["rawSql"])).fetchall()
                assert rows, f"panel {p['title']!r} returned no rows"
                if p["title"] == "Backup size":  # one series per database across the rename, by time
                    assert [r[1:] for r in rows] == [("n8n", 120000), ("app_backup", 700), ("n8n", 123456),
                                                     ("app_backup", 777)]
                if p["title"] == "Last backup per database":
                    assert [r[0] for r in rows] == ["app_backup", "n8n"]
