"""Secrets planted in every secret field and URL of the settings never reach a store or an output.

One settings file holds a distinct planted value in every SecretStr and in the userinfo of URL
fields (backups.s3[].endpoint_url `http://user:pass@host`), in URL and key=value DSN forms. Then
every kind of failure the test can make happens through the real entry points (Dagster's
`asset materialize` on a SQLite instance with compute logs, the daemon running the location's
sensors on those failures, and the CLI): a backup whose S3 target
is down, a verification reading from that S3, n8n's export with bad credentials, a backup against
a dead server, `backups list`, `backups restore --from` the dead S3, `notify test` with Telegram and
the webhook down, `doctor`. Every file of Dagster's storage (the daemon's log among them), the
backups folder, a dump of the state database and all captured output are then searched for every
planted value.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from dagster import DagsterInstance
from pydantic import BaseModel, SecretStr

from homelab_ops.notify.redact import MASK, Redactor, settings_secrets
from homelab_ops.settings import Settings, parse
from tests.conftest import free_port
from tests.pg_cluster import PG_BIN, scram_pg  # noqa: F401  (module fixture)

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("homelab-ops"))


def plant(tag: str) -> str:
    return f"PLANT{tag}{uuid.uuid4().hex[:12]}"


def planted_settings(pg, tmp_path: Path) -> tuple[dict, dict[str, str]]:
    dead = free_port()
    p = {k: plant(k) for k in ("state", "n8n", "s3url", "tgbase", "tgtoken", "webhookq", "webhooktoken", "ntfytopic", "ntfytoken",
                               "managed", "managedurl", "grafana", "grafanadsn", "dagsterdsn", "am", "runner",
                               "cf", "htpasswd", "heartbeat", "jobbeat", "s3key", "s3secret", "pitr", "n8nkey", "redis",
                               "managedredis")}
    p["postgres"] = pg.password  # the admin's real password: the backups need it
    port = pg.port
    data = {
        "timezone": "UTC",
        "state": {"dsn": f"postgresql://state_u:{p['state']}@127.0.0.1:{pg.port}/homelab"},
        "postgres": {"dsn": f"postgresql://postgres:{p['postgres']}@127.0.0.1:{port}/postgres",
                     "databases": ["app"]},
        "backups": {"local_dir": str(tmp_path / "backups"), "timeout": "10m",
                    "s3": [{"bucket": "redact-b", "name": "nas",
                            "endpoint_url": f"http://AKREDACT:{p['s3url']}@127.0.0.1:{dead}",
                            "access_key_id": p["s3key"], "secret_access_key": p["s3secret"]}],
                    "sources": [{"type": "redis", "name": "cache", "port": dead, "password": p["redis"]}]},
        # key=value form, and a wrong password: bad credentials
        "n8n": {"dsn": f"host=127.0.0.1 port={pg.port} dbname=app user=n8n_u password={p['n8n']}",
                "encryption_key": p["n8nkey"]},
        "notify": {"telegram": {"api_base": f"http://tg:{p['tgbase']}@127.0.0.1:{dead}",
                                "bot_token": f"123456789:{p['tgtoken']}", "attempts": 1, "timeout": "2s",
                                "chats": [42]},
                   "channels": [{"type": "webhook", "url": f"http://127.0.0.1:{dead}/hook?token={p['webhookq']}",
                                 "token": p["webhooktoken"]},
                                {"type": "ntfy", "server": f"http://127.0.0.1:{dead}", "topic": p["ntfytopic"],
                                 "token": p["ntfytoken"], "min_severity": "info"}],
                   "heartbeat_url": f"http://127.0.0.1:{dead}/ping/{p['heartbeat']}",
                   "heartbeat": {"nightly_backup": f"http://127.0.0.1:{dead}/ping/{p['jobbeat']}"}},
        # on, with a dead replication server: the receiver's checks and offsite/_pitr_offsite fail and say so
        "pitr": {"enabled": True, "dsn": f"postgresql://replicator:{p['pitr']}@127.0.0.1:{dead}/postgres"},
        "credentials": {"key_file": str(tmp_path / "master.key"), "managed": {
            "pg": {"kind": "postgres-role", "role": "x", "period": "30d",
                   "dsn": f"postgresql://postgres:{p['managed']}@127.0.0.1:{dead}/postgres"},
            "s3": {"kind": "s3-access-key", "user": "u", "period": "30d",
                   "endpoint_url": f"http://AK2:{p['managedurl']}@127.0.0.1:{dead}"},
            "rd": {"kind": "redis-password", "username": "u", "period": "30d", "port": dead,
                   "admin_password": p["managedredis"]}}},
        "monitoring": {"services": {
            "grafana": {"admin_password": p["grafana"],
                        "postgres_dsn": f"postgresql://g:{p['grafanadsn']}@postgres/homelab",
                        "dagster_postgres_dsn": f"postgresql://d:{p['dagsterdsn']}@postgres/dagster"},
            "alertmanager": {"telegram_bot_token": p["am"]},
            "n8n_runner": {"auth_token": p["runner"]}}},
        "traefik": {"dns_env": {"CF_DNS_API_TOKEN": p["cf"]}, "basic_auth_users": [f"admin:{p['htpasswd']}"]},
        "metrics": {"textfile_dir": str(tmp_path / "textfile")},
    }
    return data, p


def _secret_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every SecretStr field the settings model declares (through sections, lists and dicts)."""
    import typing

    out = set()
    for name, field in model.model_fields.items():
        stack = [field.annotation]
        while stack:
            t = stack.pop()
            if t is SecretStr:
                out.add(prefix + name)
            elif isinstance(t, type) and issubclass(t, BaseModel):
                out |= _secret_fields(t, f"{prefix}{name}.")
            else:
                stack.extend(typing.get_args(t))
    return out


def test_every_secret_field_and_url_password_is_known_to_the_redactor(tmp_path):
    class _Pg:
        password, port = plant("postgres"), 5432

    data, planted = planted_settings(_Pg, tmp_path)
    settings = parse(data, "planted.yaml")
    found = settings_secrets(settings)
    for name, value in planted.items():
        assert any(value in f for f in found), name  # the bot token's plant is its part after the colon
    # The plants cover every SecretStr the model declares: a new secret field needs a plant here.
    fields = _secret_fields(Settings)
    assert fields == {
        "state.dsn", "postgres.dsn", "n8n.dsn", "backups.s3.access_key_id", "backups.s3.secret_access_key",
        "backups.sources.password",
        "n8n.encryption_key", "pitr.dsn", "credentials.managed.dsn", "credentials.managed.admin_password",
        "notify.telegram.bot_token",
        "notify.channels.url", "notify.channels.token", "notify.channels.topic", "notify.heartbeat_url", "notify.heartbeat",
        "monitoring.services.grafana.admin_password",
        "monitoring.services.grafana.postgres_dsn", "monitoring.services.grafana.dagster_postgres_dsn",
        "monitoring.services.alertmanager.telegram_bot_token", "monitoring.services.n8n_runner.auth_token",
        "traefik.dns_env", "traefik.basic_auth_users"}, fields
    assert settings.secrets() == found  # the old API is the same walk
    r = Redactor(found)
    assert r(f"Could not connect to http://AKREDACT:{planted['s3url']}@h/b") == f"Could not connect to http://AKREDACT:{MASK}@h/b"
    assert planted["n8n"] not in r(f"connection failed: password={planted['n8n']} host=x")


def _pg_setup(pg) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("CREATE ROLE n8n_u LOGIN PASSWORD 'the-right-one'")
        conn.execute("CREATE DATABASE app")
    with psycopg.connect(pg.dsn("app"), autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 300) g")


def _run(args: list[str], env: dict, outputs: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    outputs.append(f"$ {' '.join(args)}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _wait_for_sensor_ticks(home: Path, after: float, names: list[str], timeout: float = 300) -> None:
    """Until each sensor has finished a tick that started after `after` (the failures are older)."""
    from dagster._core.scheduler.instigation import TickStatus

    done = {TickStatus.SUCCESS, TickStatus.SKIPPED, TickStatus.FAILURE}
    deadline = time.monotonic() + timeout
    with DagsterInstance.from_config(str(home)) as instance:
        while True:
            states = {s.instigator_name: s for s in instance.all_instigator_state()}
            ticked = {n for n in names if n in states and any(
                t.status in done and t.timestamp > after
                for t in instance.get_ticks(states[n].instigator_origin_id, states[n].selector_id, limit=5))}
            if ticked == set(names):
                return
            assert time.monotonic() < deadline, f"sensors that never ticked: {sorted(set(names) - ticked)}"
            time.sleep(5)


def test_planted_secrets_reach_no_store_and_no_output_whatever_fails(scram_pg, tmp_path):
    _pg_setup(scram_pg)
    data, planted = planted_settings(scram_pg, tmp_path)
    with psycopg.connect(scram_pg.dsn(), autocommit=True) as conn:  # the state database, with its own login
        conn.execute(f"CREATE ROLE state_u LOGIN CREATEDB PASSWORD '{planted['state']}'")
        conn.execute("CREATE DATABASE homelab OWNER state_u")
    path = tmp_path / "homelab.yaml"
    path.write_text(yaml.safe_dump(data))
    dead_data = {**data, "postgres": {**data["postgres"],
                                      "dsn": data["postgres"]["dsn"].replace(f":{scram_pg.port}/",
                                                                             f":{free_port()}/")}}
    dead_path = tmp_path / "dead.yaml"
    dead_path.write_text(yaml.safe_dump(dead_data))
    home = tmp_path / "dagster"
    home.mkdir()
    env = {**os.environ, "HOMELAB_CONFIG": str(path), "DAGSTER_HOME": str(home),
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    outputs: list[str] = []
    # The daemon runs the location's sensors (health checks, run failure alerts, heartbeats) on these
    # failures, as on the Pi: its log is one of the stores searched.
    with DagsterInstance.from_config(str(home)):  # SQLite storage made once, before two processes open it
        pass
    daemon = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-m",
                               "homelab_ops.definitions"], cwd=ROOT, env=env, stdout=open(home / "daemon.log", "wb"),
                              stderr=subprocess.STDOUT)
    try:
        # A run status sensor's first tick only sets its cursor: wait for it, so the failures below are seen.
        _wait_for_sensor_ticks(home, 0, ["run_failure_alert"])
        materialize = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "homelab_ops.definitions",
                       "--select"]
        # S3 down (its URL holds a password), n8n with bad credentials, the roles dump, Redis down.
        failed = _run([*materialize, "backups/app_backup,backup_globals,n8n_workflows,backups/cache_backup"], env, outputs)
        assert failed.returncode != 0
        # Verification reads the S3 copy: down.
        _run([*materialize, "restore_verification/app_verification"], env, outputs)
        # A backup against a dead server.
        _run([*materialize, "backups/app_backup"], {**env, "HOMELAB_CONFIG": str(dead_path)}, outputs)
        # The PITR archive off-site (S3 down) and the stream's checks (replication server dead).
        _run([*materialize, "offsite/_pitr_offsite"], env, outputs)
        _run([CLI, "pitr", "offsite"], env, outputs)
        _run([CLI, "pitr", "status"], env, outputs)
        _run([CLI, "backups", "list"], env, outputs)
        _run([CLI, "backups", "restore", "app", "--into", "app_restored", "--from", "nas"], env, outputs)
        _run([CLI, "notify", "test"], env, outputs)
        _run([CLI, "doctor"], env, outputs)
        _run([CLI, "--config", str(dead_path), "backups", "prune", "--dry-run"], env, outputs)
        _wait_for_sensor_ticks(home, time.time(), ["health_sensor", "run_failure_alert"])
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
    assert "run_failure_alert" in (home / "daemon.log").read_text(errors="replace")

    text = "\n".join(outputs)
    # The failures happened, and named what failed: the test could have seen a leak.
    assert "nas" in text and "127.0.0.1" in text, text[-5000:]
    assert "redis-cli --rdb of cache failed" in text, text[-5000:]
    assert "pitr" in text and "offsite___pitr_offsite" in text, text[-5000:]
    assert any(p.name.endswith(".dump.zst") for p in (tmp_path / "backups" / "app").iterdir())

    state_dump = subprocess.run([str(PG_BIN / "pg_dump"), "--dbname", scram_pg.dsn("homelab")],
                                capture_output=True, text=True, timeout=300)
    assert state_dump.returncode == 0, state_dump.stderr
    stores = {"output": text.encode(), "state database": state_dump.stdout.encode()}
    for root in (home, tmp_path / "backups"):
        for f in root.rglob("*"):
            if f.is_file():
                stores[str(f.relative_to(tmp_path))] = f.read_bytes()
    assert any("compute_logs" in k and k.endswith(".err") for k in stores), sorted(stores)
    assert any(k.endswith(".db") for k in stores), sorted(stores)  # Dagster's SQLite event logs, runs
    leaks = {(name, where) for name, value in planted.items() for where, blob in stores.items()
             if value.encode() in blob}
    assert leaks == set(), sorted(leaks)
    # Something was there to redact (without the redactor, the S3 password is in the event log,
    # the compute logs and the output: checked by hand when this test was written).
    assert MASK.encode() in b"".join(stores.values())
