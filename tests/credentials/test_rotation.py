"""Rotation end to end: a real PostgreSQL role on a password-checking cluster, IAM keys on moto,
interruptions at every step, and a Dagster run searched for any secret it might have leaked."""

from __future__ import annotations

import uuid

import boto3
import dagster as dg
import psycopg
import pytest
from psycopg import sql

from homelab_ops.credentials.errors import RotationBusy, RotationError
from homelab_ops.credentials.keys import load_keyring
from homelab_ops.credentials.policy import ALPHABETS, htpasswd_matches, make_definition
from homelab_ops.credentials.rotation import STEPS, rotate, run_step, set_value
from homelab_ops.credentials.store import open_store
from homelab_ops.defs.credentials.assets import credential_asset
from homelab_ops.defs.resources import HomelabSettings
from tests.conftest import ADMIN_DSN
from tests.pg_cluster import scram_pg  # noqa: F401 (a fixture)
from tests.credentials.test_store import (  # noqa: F401 (cred_settings and creds_state_db are fixtures)
    BOT_TOKEN,
    add_generated,
    cred_settings,
    creds_state_db,
)
from homelab_ops.credentials.config import CredentialsConfig

pytestmark = pytest.mark.services  # every test here reaches PostgreSQL


def new_role(cluster, password: str) -> str:
    role = f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    return role


def can_login(cluster, role: str, password: str) -> bool:
    try:
        with psycopg.connect(cluster.dsn(user=role, password=password)) as conn:
            return conn.execute("SELECT current_user").fetchone()[0] == role
    except psycopg.OperationalError as e:
        assert "password authentication failed" in str(e)
        return False


def pg_credential(store, cluster, role: str, name: str = "pg_app", **more) -> None:
    store.define(make_definition(name, "postgres-role", {"role": role, "dsn": cluster.dsn(), "period": "30d",
                                                         "consumers": ["n8n"], **more}))


# --------------------------------------------------------------------------- postgres-role


def test_postgres_role_rotation_changes_the_real_password(cred_settings, scram_pg):
    _, settings = cred_settings()
    first = "Initial-Password-1234"
    role = new_role(scram_pg, first)
    with open_store(CredentialsConfig.of(settings), "test") as store:
        pg_credential(store, scram_pg, role)
        result = rotate(store, "pg_app", config=CredentialsConfig.of(settings))
        assert result.rotated and result.steps == list(STEPS) and result.restart == ("n8n",)
        p1 = store.value("pg_app")
        assert can_login(scram_pg, role, p1) and not can_login(scram_pg, role, first)
        assert not rotate(store, "pg_app", config=CredentialsConfig.of(settings)).rotated  # not due again for 30 days
        rotate(store, "pg_app", config=CredentialsConfig.of(settings), force=True)
        p2 = store.value("pg_app")
        assert can_login(scram_pg, role, p2) and not can_login(scram_pg, role, p1)
        assert store.value("pg_app", stage="previous") == p1 and store.value("pg_app", "username") == role
    log = scram_pg.server_log()
    assert "ALTER ROLE" in log and "SCRAM-SHA-256$4096:" in log  # log_statement=all saw only the verifier
    for secret in (p1, p2):
        assert secret not in log


def test_interruption_after_alter_role_is_finished_by_the_next_run(cred_settings, scram_pg):
    _, settings = cred_settings()
    role = new_role(scram_pg, "Initial-Password-5678")
    with open_store(CredentialsConfig.of(settings), "test") as store:
        pg_credential(store, scram_pg, role)
        rotate(store, "pg_app", config=CredentialsConfig.of(settings))
        old = store.value("pg_app")
        run_step(store, "pg_app", "create", config=CredentialsConfig.of(settings))
        pending_version, pending = store.read("pg_app", "pending")
        pending = pending["value"]
        assert can_login(scram_pg, role, old)  # nothing outside the store has changed yet
        run_step(store, "pg_app", "set", config=CredentialsConfig.of(settings))
        # ...and the process dies here: the server has the new password, the store still says pending.
    assert can_login(scram_pg, role, pending) and not can_login(scram_pg, role, old)
    with open_store(CredentialsConfig.of(settings), "test") as store:
        st = store.status("pg_app")
        assert st.pending.version == pending_version and st.due
        result = rotate(store, "pg_app", config=CredentialsConfig.of(settings))  # the daily run, not forced
        assert result.rotated and result.resumed and result.version == pending_version
        assert store.value("pg_app") == pending and store.status("pg_app").pending is None
    assert can_login(scram_pg, role, pending)


def test_state_database_lost_midway_then_the_next_run_completes(cred_settings, scram_pg):
    _, settings = cred_settings()
    role = new_role(scram_pg, "Initial-Password-9012")
    with open_store(CredentialsConfig.of(settings), "test") as store:
        pg_credential(store, scram_pg, role)
        run_step(store, "pg_app", "create", config=CredentialsConfig.of(settings))
        run_step(store, "pg_app", "set", config=CredentialsConfig.of(settings))
        pending = store.read("pg_app", "pending")[1]["value"]
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (store.conn.info.backend_pid,))
        with pytest.raises(RotationError, match="state database failed.*next run finishes it") as e:
            rotate(store, "pg_app", config=CredentialsConfig.of(settings))
        assert pending not in str(e.value) and e.value.__cause__ is None and e.value.__suppress_context__
    with open_store(CredentialsConfig.of(settings), "test") as store:
        # the failure was still audited, over a fresh connection
        assert any(a.action == "rotate" and a.outcome == "failed" for a in store.audit_rows("pg_app"))
        result = rotate(store, "pg_app", config=CredentialsConfig.of(settings))
        assert result.rotated and result.resumed and store.value("pg_app") == pending
    assert can_login(scram_pg, role, pending)


def test_failed_login_test_puts_the_current_password_back(cred_settings, scram_pg):
    _, settings = cred_settings()
    role = new_role(scram_pg, "Initial-Password-3456")
    with open_store(CredentialsConfig.of(settings), "test") as store:
        pg_credential(store, scram_pg, role)
        rotate(store, "pg_app", config=CredentialsConfig.of(settings))
        current = store.value("pg_app")
        with psycopg.connect(scram_pg.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
        with pytest.raises(RotationError, match="step 'test'.*current password was put back") as e:
            rotate(store, "pg_app", config=CredentialsConfig.of(settings), force=True)
        pending = store.read("pg_app", "pending")[1]["value"]
        assert pending not in str(e.value) and current not in str(e.value)
        with psycopg.connect(scram_pg.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
        assert can_login(scram_pg, role, current) and not can_login(scram_pg, role, pending)
        assert store.value("pg_app") == current  # no lockout: the store and the server agree
        assert rotate(store, "pg_app", config=CredentialsConfig.of(settings)).resumed  # and the next run finishes it
    assert can_login(scram_pg, role, pending)


# --------------------------------------------------------------------------- generated, manual


@pytest.mark.parametrize("crash_after", ["create", "set", "test", "restart"])
def test_generated_rotation_interrupted_after_any_step_completes_once(cred_settings, crash_after):
    _, settings = cred_settings()
    with open_store(CredentialsConfig.of(settings), "test") as store:
        add_generated(store)
        rotate(store, "grafana_admin", force=True)
        for step in STEPS[:STEPS.index(crash_after) + 1]:
            run_step(store, "grafana_admin", step)
        pending = store.read("grafana_admin", "pending")[1]["value"]
    with open_store(CredentialsConfig.of(settings), "test") as store:
        result = rotate(store, "grafana_admin")
        assert result.rotated and result.resumed and result.version == 2
        assert store.value("grafana_admin") == pending
        assert [v.version for v in store.versions("grafana_admin")] == [1, 2]
        assert not rotate(store, "grafana_admin").rotated


def test_two_rotations_of_one_credential_never_run_at_once(cred_settings):
    _, settings = cred_settings()
    with open_store(CredentialsConfig.of(settings), "daily run") as first, open_store(CredentialsConfig.of(settings), "operator") as second:
        add_generated(first)
        with first.rotation_lock("grafana_admin"):
            with pytest.raises(RotationBusy, match="being rotated by another process"):
                rotate(second, "grafana_admin", force=True)
        assert rotate(second, "grafana_admin", force=True).rotated
        assert any(a.actor == "operator" and a.outcome == "denied" for a in second.audit_rows("grafana_admin"))


def test_generated_secret_follows_its_policy_and_htpasswd_verifies(cred_settings):
    _, settings = cred_settings()
    with open_store(CredentialsConfig.of(settings), "test") as store:
        add_generated(store, "traefik_admin", length=48, alphabet="symbols", htpasswd_user="admin", bcrypt_rounds=4)
        rotate(store, "traefik_admin")
        value, line = store.value("traefik_admin"), store.value("traefik_admin", "htpasswd")
    assert len(value) == 48 and set(value) <= set(ALPHABETS["symbols"])
    assert line.startswith("admin:$2y$04$") and htpasswd_matches(line, value)
    assert not htpasswd_matches(line, value + "x")


# --------------------------------------------------------------------------- s3-access-key


def test_s3_access_key_rotation_against_iam(cred_settings, s3_server):
    _, settings = cred_settings()
    user = f"backup-{uuid.uuid4().hex[:6]}"
    iam = boto3.client("iam", endpoint_url=s3_server, region_name="us-east-1")
    iam.create_user(UserName=user)
    original = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]  # in use, not yet managed

    def identity(key_id: str, secret: str) -> str:
        sts = boto3.client("sts", endpoint_url=s3_server, region_name="us-east-1",
                           aws_access_key_id=key_id, aws_secret_access_key=secret)
        return sts.get_caller_identity()["Arn"]

    def keys() -> set[str]:
        return {k["AccessKeyId"] for k in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]}

    with open_store(CredentialsConfig.of(settings), "test") as store:
        store.define(make_definition("b2_backup", "s3-access-key", {
            "user": user, "endpoint_url": s3_server, "period": "30d", "consumers": ["backup"]}))
        rotate(store, "b2_backup")
        k1 = store.read("b2_backup")[1]
        assert identity(k1["access_key_id"], k1["value"]).endswith(f":user/{user}")
        assert keys() == {original, k1["access_key_id"]}  # a key it does not know is left alone...
        result = rotate(store, "b2_backup", force=True)
        k2 = store.read("b2_backup")[1]
        # ...until IAM's two-key limit needs the room; the old managed key goes once the new one is current.
        assert keys() == {k2["access_key_id"]}
        assert identity(k2["access_key_id"], k2["value"]).endswith(f":user/{user}")
        assert not identity(k1["access_key_id"], k1["value"]).endswith(f":user/{user}")
        assert any(k1["access_key_id"] in n for n in result.notes)
        assert store.read("b2_backup", "previous")[1]["access_key_id"] == k1["access_key_id"]


# --------------------------------------------------------------------------- Dagster


def test_rotation_run_leaks_no_secret_to_events_metadata_or_output(cred_settings, scram_pg, capfd, tmp_path,
                                                                   dagster_instance):
    role = new_role(scram_pg, "Initial-Password-7890")
    env_template = tmp_path / "env.template"
    env_template.write_text('DB_PASSWORD={{ cred("pg_app") }}\nTELEGRAM_BOT_TOKEN={{ cred("telegram_bot") }}\n')
    path, settings = cred_settings({
        "env_template": str(env_template), "env_file": str(tmp_path / "deploy.env"),
        "managed": {
            "pg_app": {"kind": "postgres-role", "role": role, "dsn": scram_pg.dsn(), "period": "30d",
                       "consumers": ["n8n", "grafana"]},
            "telegram_bot": {"kind": "manual", "period": "90d", "consumers": ["n8n"]},
        }})
    with open_store(CredentialsConfig.of(settings), "test") as store:
        set_value(store, "telegram_bot", BOT_TOKEN)
        rotate(store, "pg_app", config=CredentialsConfig.of(settings))
        first = store.value("pg_app")
        # the password is 31 days old (due), the bot token a year (overdue: only a warning can help)
        store.conn.execute("UPDATE homelab_ops.credential_version SET promoted_at = now() - interval '31 days'"
                           " WHERE credential = 'pg_app'")
        store.conn.execute("UPDATE homelab_ops.credential_version SET promoted_at = now() - interval '1 year'"
                           " WHERE credential = 'telegram_bot'")
        definitions = {d.name: d for d in store.definitions()}
    capfd.readouterr()
    result = dg.materialize(
        [credential_asset(definitions["pg_app"]), credential_asset(definitions["telegram_bot"])],
        resources={"homelab": HomelabSettings(config_path=str(path))},
        instance=dagster_instance, tags={"dagster/max_runtime": "600"}, raise_on_error=False)
    event_text = "\n".join(dg.serialize_value(r) for r in dagster_instance.all_logs(result.run_id))
    out, err = capfd.readouterr()
    assert result.success
    with open_store(CredentialsConfig.of(settings), "test") as store:
        second = store.value("pg_app")
        audit = store.audit_rows()
    assert first != second
    assert can_login(scram_pg, role, second) and not can_login(scram_pg, role, first)

    mats = {m.asset_key.path[-1]: m for m in (e.event_specific_data.materialization
                                              for e in result.get_asset_materialization_events())}
    meta = mats["pg_app"].metadata
    assert meta["rotated"].value is True and meta["consumers_to_restart"].value == "- n8n\n- grafana"
    assert meta["stages"].value == "current v2, previous v1" and meta["age_days"].value < 0.01
    assert (tmp_path / "deploy.env").read_text() == f"DB_PASSWORD={second}\nTELEGRAM_BOT_TOKEN={BOT_TOKEN}\n"
    checks = {c.asset_key.path[-1]: (c.passed, c.severity) for c in result.get_asset_check_evaluations()}
    assert checks == {"telegram_bot": (False, dg.AssetCheckSeverity.WARN),
                      "pg_app": (True, dg.AssetCheckSeverity.WARN)}
    assert mats["telegram_bot"].metadata["age_days"].value > 364
    assert mats["telegram_bot"].metadata["rotated"].value is False

    metadata_text = "\n".join(f"{k}={v.value!r}" for m in mats.values() for k, v in m.metadata.items())
    secrets = {"old password": first, "new password": second,
               "bot token": BOT_TOKEN, "admin password": scram_pg.password,
               "master key": load_keyring(settings.credentials.key_file).serialize().decode().strip()}
    for where, text in (("event log", event_text), ("stdout", out), ("stderr", err),
                        ("metadata", metadata_text), ("audit", "\n".join(map(repr, audit)))):
        for label, secret in secrets.items():
            assert secret not in text, f"{label} found in {where}"
    assert "STEP_SUCCESS" in event_text and "rotated pg_app to v2" in event_text  # the search saw the run
    assert any(a.actor == f"dagster-run:{result.run_id}" and a.action == "promote" for a in audit)


# --------------------------------------------------------------------------- Grafana's reader role


def _panel_sql(raw: str) -> str:
    """A dashboard's SQL with Grafana's macros and variables replaced as Grafana would."""
    import re
    raw = re.sub(r"\$__timeFilter\(([^)]+)\)", r"\1 BETWEEN now() - interval '7 days' AND now()", raw)
    raw = re.sub(r"\$__time(From|To)\(\)", "now()", raw)
    return raw.replace("$container_metric", "cpu_percent")


def test_grafana_reader_role_reads_only_its_tables_and_runs_every_state_sql_panel(cred_settings, scram_pg):
    """Created and rotated as a postgres-role credential with select_tables: every SQL panel of the
    shipped dashboard that reads the state database runs as it; the credential store and writes don't."""
    import json
    from pathlib import Path

    from homelab_ops.deploy.render import GRAFANA_TABLES
    from homelab_ops.state import migrate

    state = f"state_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(scram_pg.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(state)))
    with psycopg.connect(scram_pg.dsn(state), autocommit=True) as conn:
        migrate(conn)
    _, settings = cred_settings()
    role = f"grafana_ro_{uuid.uuid4().hex[:6]}"
    with open_store(CredentialsConfig.of(settings), "test") as store:
        pg_credential(store, scram_pg, role, name="grafana_db", dbname=state, consumers=["grafana"],
                      select_tables=",".join(GRAFANA_TABLES))
        result = rotate(store, "grafana_db", config=CredentialsConfig.of(settings), force=True)
        assert result.rotated and result.consumers == ("grafana",)
        password = store.value("grafana_db", "value", purpose="test")
    board = json.loads((Path(__file__).parents[2] / "deploy/grafana/dashboards/homelab.json").read_text())

    def panels(p):
        for x in p.get("panels", []):
            yield x
            yield from panels(x)

    state_sql = [t["rawSql"] for p in panels(board) for t in p.get("targets", [])
                 if t.get("rawSql") and t["datasource"]["uid"] == "${state}"]
    assert len(state_sql) >= 12
    with psycopg.connect(scram_pg.dsn(state, user=role, password=password), autocommit=True) as conn:
        assert conn.execute("SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles "
                            "WHERE rolname = current_user").fetchone() == (False,)
        for raw in state_sql:
            conn.execute(_panel_sql(raw)).fetchall()  # permission denied or a bad column fails here
        for forbidden in ("SELECT * FROM homelab_ops.credential_version",
                          "SELECT * FROM homelab_ops.credential_audit",
                          "INSERT INTO homelab_ops.host_metrics (taken_at, metric, labels, value) "
                          "VALUES (now(), 'x', '{}', 1)",
                          "CREATE TABLE public.grafana_was_here (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)
    # A second rotation keeps it working (grants re-applied, password changed).
    with open_store(CredentialsConfig.of(settings), "test") as store:
        rotate(store, "grafana_db", config=CredentialsConfig.of(settings), force=True)
        new = store.value("grafana_db", "value", purpose="test")
    assert new != password and can_login(scram_pg, role, new) and not can_login(scram_pg, role, password)


def test_rotating_the_role_homelab_ops_connects_as_is_refused_before_anything_changes(cred_settings, scram_pg):
    from pydantic import SecretStr

    first = "Initial-Password-1234"
    role = new_role(scram_pg, first)
    _, settings = cred_settings()
    # The settings homelab-ops runs with name this role in state.dsn (the store itself stays where it is).
    own = settings.model_copy(update={"state": settings.state.model_copy(
        update={"dsn": SecretStr(scram_pg.dsn(user=role, password=first))})})
    with open_store(CredentialsConfig.of(settings), "test") as store:
        pg_credential(store, scram_pg, role, name="own_login")
        with pytest.raises(RotationError, match=r"refused: homelab-ops itself connects as .* \(state\.dsn\)"):
            rotate(store, "own_login", config=CredentialsConfig.of(own), force=True)
        assert store.status("own_login").pending is None
    assert can_login(scram_pg, role, first)


# --------------------------------------------------------------------------- consumers restarted


def _consumer(docker_client, cluster, role: str, password: str, name: str) -> str:
    """A compose-style consumer (labelled as compose labels its containers) that logs in to `cluster`
    as `role` with PGPASSWORD from its environment; healthy only while that login works."""
    from tests.docker_images import psql_image

    return docker_client.api.create_container(
        psql_image(docker_client), command=["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
        name=name, environment={"PGHOST": "127.0.0.1", "PGPORT": str(cluster.port), "PGUSER": role,
                                "PGDATABASE": "postgres", "PGPASSWORD": password, "KEEP": "unchanged"},
        labels={"com.docker.compose.project": "lab", "com.docker.compose.service": "app"},
        healthcheck={"test": ["CMD", "psql", "-tAc", "SELECT 1"], "interval": 500_000_000,
                     "timeout": 3_000_000_000, "retries": 2},
        host_config=docker_client.api.create_host_config(network_mode="host"))["Id"]


@pytest.mark.docker
def test_rotation_recreates_its_consumer_with_the_new_password_before_finishing(
        cred_settings, scram_pg, docker_client, tmp_path):
    """The `restart` step, on the real Engine and a password-checking PostgreSQL: the consumer is
    recreated with the pending password (its other variables, labels and name kept) and must log in
    before `finish`. A template that hands it the wrong field makes it fail: the rotation stops before
    `finish` naming the consumer, the role gets its current password back and the consumer is rolled
    back, healthy again (nobody locked out); once the template is mended the next run resumes the
    pending version and completes."""
    from homelab_ops.deploy.engine import wait_healthy
    from tests.conftest import DOCKER_HOST

    first = "Initial-Password-7890"
    role = new_role(scram_pg, first)
    name = f"lab-app-{uuid.uuid4().hex[:6]}"
    template = tmp_path / "env.template"
    template.write_text('# consumers of pg_app\nPGPASSWORD={{ cred("pg_app") }}\n')
    _, settings = cred_settings({"restart_consumers": True, "env_template": str(template)},
                                docker={"host": DOCKER_HOST}, monitoring={"health": {"wait": "20s"}})
    cid = _consumer(docker_client, scram_pg, role, first, name)

    def consumer() -> tuple[dict, str]:
        info = docker_client.api.inspect_container(name)
        return info, next(e for e in info["Config"]["Env"] if e.startswith("PGPASSWORD=")).split("=", 1)[1]

    try:
        docker_client.api.start(cid)
        assert wait_healthy(docker_client, cid, 30).ok
        with open_store(CredentialsConfig.of(settings), "test") as store:
            pg_credential(store, scram_pg, role, consumers=["app"])
            result = rotate(store, "pg_app", config=CredentialsConfig.of(settings))
            assert result.rotated and result.restart == ()
            assert "consumer app: recreated with the new value, healthy" in result.notes
            p1 = store.value("pg_app")
            info, password = consumer()
            assert info["Id"] != cid and password == p1 and "KEEP=unchanged" in info["Config"]["Env"]
            assert info["Config"]["Labels"]["com.docker.compose.service"] == "app"
            assert info["State"]["Health"]["Status"] == "healthy"

            template.write_text('PGPASSWORD={{ cred("pg_app", "username") }}\n')  # the wrong field
            with pytest.raises(RotationError, match="step 'restart'.*consumer app: the new container did not "
                                                    "turn healthy.*current password was put back; rolled back"
                                                    ".*healthy again") as e:
                rotate(store, "pg_app", config=CredentialsConfig.of(settings), force=True)
            pending = store.read("pg_app", "pending")[1]["value"]
            assert pending not in str(e.value) and p1 not in str(e.value)
            assert store.value("pg_app") == p1  # not finished
            again, password = consumer()
            assert again["Id"] == info["Id"] and password == p1  # rolled back, and it works: nobody locked out
            assert can_login(scram_pg, role, p1) and wait_healthy(docker_client, again["Id"], 30).ok

            template.write_text('PGPASSWORD={{ cred("pg_app") }}\n')  # mended
            result = rotate(store, "pg_app", config=CredentialsConfig.of(settings))
            assert result.resumed and result.rotated and store.value("pg_app") == pending
        info, password = consumer()
        assert password == pending and can_login(scram_pg, role, pending)
        assert info["State"]["Health"]["Status"] == "healthy"
        assert not [c for c in docker_client.api.containers(all=True) if c["Names"][0].startswith(f"/{name}-")]
    finally:
        for c in docker_client.api.containers(all=True, filters={"name": name}):
            docker_client.api.remove_container(c["Id"], force=True)
