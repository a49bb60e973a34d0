"""n8n recoverable in full, proven by real n8n (from npm, scripts/n8n-install.sh): the key and binary
data saved with each backup, verification by n8n's own CLI, the whole-instance restore, the upgrade
check, the export imported for real, the lost-workflow tripwire, and no secret in any store."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import time
import uuid
from pathlib import Path

import dagster as dg
import psycopg
import pyrage
import pytest
from click.testing import CliRunner

from homelab_ops.backups import verify as bv
from homelab_ops.n8n.workflow_export import export_n8n_workflows
from homelab_ops.cli import main
from homelab_ops.defs.backups.assets import backup_asset
from homelab_ops.defs.n8n.workflows import n8n_workflows_asset
from homelab_ops.defs.backups.verification import verification_asset
from homelab_ops.defs.n8n.upgrade import n8n_upgrade_readiness
from homelab_ops.defs.n8n.verification import key_saved_check
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.n8n import backup_set, compare, keys
from homelab_ops.n8n import verification as nv
from homelab_ops.n8n.runner import N8nCli, db_env
from homelab_ops.settings import load
from homelab_ops.state import open_state
from dagster._serdes import serialize_value
from tests.conftest import ADMIN_DSN, dsn_for
from tests.fake_telegram import TOKEN, FakeTelegram
from homelab_ops.backups.config import BackupsConfig

ROOT = Path(__file__).resolve().parents[2]
NEW, OLD = "1.123.0", "1.122.5"  # 1.122.0 is not on the npm registry reachable here; 1.122.5 is its newest patch


def _install(version: str) -> str:
    """The session's n8n: installed once per machine into /var/cache/homelab-ops/n8n (idempotent)."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "n8n-install.sh"), version], capture_output=True,
                         text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def n8n_new() -> str:
    return _install(NEW)


@pytest.fixture(scope="session")
def n8n_old() -> str:
    return _install(OLD)


@pytest.fixture
def age_identity(tmp_path):
    ident = pyrage.x25519.Identity.generate()
    path = tmp_path / "backup.key"
    path.write_text(str(ident) + "\n")
    path.chmod(0o600)
    return str(ident.to_public()), str(path)


# Planted values: each must come back from a restore, and none may appear in any log or store.
KEY = "n8n-test-key-" + secrets.token_hex(16)
API_KEY = "planted-api-key-" + secrets.token_hex(12)
GMAIL_SECRET = "planted-gmail-secret-" + secrets.token_hex(12)
REFRESH = "planted-refresh-" + secrets.token_hex(12)


def credentials(telegram_url: str) -> list[dict]:
    return [
        {"id": "cTelegram0000001", "name": "Telegram bot", "type": "telegramApi",
         "data": {"accessToken": TOKEN, "baseUrl": telegram_url}},
        {"id": "cHeader000000001", "name": "Ollama API key", "type": "httpHeaderAuth",
         "data": {"name": "X-Api-Key", "value": API_KEY}},
        {"id": "cGmail0000000001", "name": "Gmail OAuth", "type": "gmailOAuth2",
         "data": {"clientId": "client-id-1", "clientSecret": GMAIL_SECRET,
                  "oauthTokenData": {"access_token": "planted-access", "refresh_token": REFRESH}}},
    ]


def workflows() -> list[dict]:
    trigger = {
        "id": "wfTelegram000001", "name": "Telegram inbox", "active": False, "versionId": str(uuid.UUID(int=11)),
        "nodes": [
            {"id": str(uuid.UUID(int=1)), "name": "Telegram Trigger", "type": "n8n-nodes-base.telegramTrigger",
             "typeVersion": 1.2, "position": [0, 0], "webhookId": str(uuid.UUID(int=2)),
             "parameters": {"updates": ["message"], "additionalFields": {}},
             "credentials": {"telegramApi": {"id": "cTelegram0000001", "name": "Telegram bot"}}},
            {"id": str(uuid.UUID(int=3)), "name": "Reply", "type": "n8n-nodes-base.noOp", "typeVersion": 1,
             "position": [200, 0], "parameters": {}},
        ],
        "connections": {"Telegram Trigger": {"main": [[{"node": "Reply", "type": "main", "index": 0}]]}},
        "settings": {"executionOrder": "v1"},
    }
    plain = {
        "id": "wfPlain000000001", "name": "Nightly summary", "active": False, "versionId": str(uuid.UUID(int=12)),
        "nodes": [{"id": str(uuid.UUID(int=4)), "name": "Start", "type": "n8n-nodes-base.manualTrigger",
                   "typeVersion": 1, "position": [0, 0], "parameters": {}},
                  {"id": str(uuid.UUID(int=5)), "name": "Wait", "type": "n8n-nodes-base.wait", "typeVersion": 1.1,
                   "position": [200, 0], "parameters": {"amount": 3}}],
        "connections": {"Start": {"main": [[{"node": "Wait", "type": "main", "index": 0}]]}},
        "settings": {"executionOrder": "v1"},
    }
    return [trigger, plain]


def settings_for(write_settings, db: str, n8n_bin: str, *, recipients: list[str] = (), identity: str | None = None,
                 key: str = KEY, version: str = NEW, telegram_url: str | None = None, docker_host: str | None = None,
                 **n8n):
    cache = str(Path(n8n_bin).parents[3])
    enc = {"age_recipients": list(recipients)}
    if identity:
        enc["identity_file"] = identity
    notify = {"telegram": {"api_base": telegram_url, "bot_token": TOKEN, "chats": [42]}} if telegram_url else {}
    return write_settings({
        "notify": notify,
        **({"docker": {"host": docker_host}} if docker_host else {}),
        "postgres": {"dsn": ADMIN_DSN, "databases": [db]},
        "backups": {"encryption": enc},
        "n8n": {"dsn": dsn_for(db), "encryption_key": key, "verify_with": "command",
                "command": cache + "/{version}/node_modules/.bin/n8n", "version": version, **n8n},
    })


def make_instance(settings, db: str, telegram_url: str, *, version: str = NEW, extra_workflows=()) -> N8nCli:
    """A real n8n instance's database: n8n's migrations, credentials from plain values through
    `n8n import:credentials`, workflows through `n8n import:workflow`, the Telegram one active."""
    cli = N8nCli(BackupsConfig.of(settings), database=db, key=KEY, version=version)
    cli.export_workflows()  # runs the migrations on the empty database
    cli.import_credentials(credentials(telegram_url))
    wfs = workflows() + list(extra_workflows)
    cli.import_workflows_dir({f"{w['id']}.json": json.dumps(w).encode() for w in wfs})
    with psycopg.connect(dsn_for(db), autocommit=True) as conn:
        conn.execute(f"UPDATE {settings.n8n.table_prefix}workflow_entity SET active = true "
                     "WHERE id = 'wfTelegram000001'")
    return cli


def resources(path) -> dict:
    return {"homelab": HomelabSettings(config_path=str(path))}


def nightly(settings, db: str, path, instance) -> dg.ExecuteInProcessResult:
    """The nightly path for one database: backup (with n8n's extras and the key check), verification."""
    config = BackupsConfig.of(settings)
    return dg.materialize([backup_asset(db, config), key_saved_check(settings.n8n), verification_asset(db, config)],
                          resources=resources(path), instance=instance, raise_on_error=False)


def decrypted_with_real_n8n(n8n_bin: str, database: str, user_folder: Path) -> dict[str, dict]:
    """`n8n export:credentials --decrypted` run by hand against `database` with the given user folder."""
    env_db, _ = db_env(ADMIN_DSN, database)
    out = user_folder / "creds.json"
    env = {"PATH": os.environ["PATH"], "HOME": str(user_folder), "N8N_USER_FOLDER": str(user_folder),
           "N8N_DIAGNOSTICS_ENABLED": "false", **env_db}
    proc = subprocess.run([n8n_bin, "export:credentials", "--all", "--decrypted", f"--output={out}"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    out.unlink()
    return {c["name"]: c["data"] for c in data}


@pytest.fixture(scope="module")
def nightly_done(n8n_new, tmp_path_factory, state_db):
    """One real n8n instance, backed up and verified by the nightly path, then restored with
    `homelab-ops n8n restore` (shared by the tests below: each n8n call costs seconds)."""
    tmp = tmp_path_factory.mktemp("n8nfull")
    telegram = FakeTelegram().start()
    ident = pyrage.x25519.Identity.generate()
    (tmp / "backup.key").write_text(str(ident) + "\n")
    src, into = f"n8nsrc_{uuid.uuid4().hex[:8]}", f"n8nnew_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{src}"')

    def write(key: str = KEY, name: str = "homelab.yaml"):
        cache = str(Path(n8n_new).parents[3])
        data = {"postgres": {"dsn": ADMIN_DSN, "databases": [src]}, "state": {"dsn": dsn_for(state_db)},
                "backups": {"local_dir": str(tmp / "backups"),
                            "encryption": {"age_recipients": [str(ident.to_public())],
                                           "identity_file": str(tmp / "backup.key")}},
                "metrics": {"textfile_dir": str(tmp / "textfile")},
                "notify": {"telegram": {"api_base": telegram.url, "bot_token": TOKEN, "chats": [42]}},
                "n8n": {"dsn": dsn_for(src), "encryption_key": key, "verify_with": "command",
                        "command": cache + "/{version}/node_modules/.bin/n8n", "version": NEW}}
        (tmp / name).write_text(__import__("yaml").safe_dump(data))
        return tmp / name, load(tmp / name)

    path, settings = write()
    with open_state(settings.state, settings.postgres):
        pass
    with dg.instance_for_test() as instance:
        make_instance(settings, src, telegram.url)
        config = BackupsConfig.of(settings)
        first = dg.materialize([n8n_workflows_asset(config)], resources=resources(path), instance=instance)
        result = nightly(settings, src, path, instance)
        # a workflow deleted by mistake: the tripwire's alert must name it, not any value
        with psycopg.connect(dsn_for(src), autocommit=True) as conn:
            conn.execute("DELETE FROM workflow_entity WHERE id = 'wfPlain000000001'")
        time.sleep(1.1)  # export folders are named by the second
        second = dg.materialize([n8n_workflows_asset(config)], resources=resources(path), instance=instance)
        out_dir = tmp / "restored" / ".n8n"
        restored = CliRunner().invoke(main, ["--config", str(path), "n8n", "restore", "--into", into,
                                             "--config-out", str(out_dir)])
        runs = [first.run_id, result.run_id, second.run_id]
        events = "\n".join(serialize_value(e) for r in runs for e in instance.all_logs(r))
        yield {"settings": settings, "path": path, "src": src, "into": into, "write": write, "out_dir": out_dir,
               "result": result, "tripwire": second, "restored": restored, "telegram": telegram,
               "events": events, "tmp": tmp, "state_db": state_db}
    telegram.stop()
    for db in (src, into):
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def test_nightly_backup_saves_the_key_encrypted_and_n8n_verifies_it(nightly_done):
    result, src, settings = nightly_done["result"], nightly_done["src"], nightly_done["settings"]
    assert result.success, result.all_events
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["n8n_key_saved"].passed, checks["n8n_key_saved"].description
    assert checks["matches_manifest"].passed, checks["matches_manifest"].description
    mats = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
    meta = mats[f"restore_verification/{src}_verification"].materialization.metadata
    assert meta["n8n_credentials_decrypted"].value == 3 and meta["n8n_workflows_loaded"].value == 2
    assert {r.data["credential"] for r in meta["n8n_credentials"].value.records} == {
        "Telegram bot", "Ollama API key", "Gmail OAuth"}
    folder = Path(settings.backups.local_dir) / src
    names = sorted(p.name for p in folder.iterdir())
    stem = names[0][:16]
    assert f"{stem}.n8n-key.age" in names and f"{stem}.n8n.json" in names
    assert stat.S_IMODE((folder / f"{stem}.n8n-key.age").stat().st_mode) == 0o600
    record = json.loads((folder / f"{stem}.n8n.json").read_text())
    assert record["key_fingerprint"] == keys.fingerprint(KEY) and record["key_check"]["decrypted"] == 3
    verified = json.loads((folder / f"{stem}.n8n-verified.json").read_text())
    assert verified["passed"] and verified["credentials_decrypted"] == 3 and verified["workflows"] == 2


def test_verification_never_activates_a_workflow(nightly_done):
    """The Telegram trigger is active in the source; the verification instance must not register it:
    no setWebhook reached the (fake) Bot API its credential points at, no webhook row appeared."""
    assert not [m for m, _, _ in nightly_done["telegram"].calls if m in ("setWebhook", "deleteWebhook")]
    with psycopg.connect(dsn_for(nightly_done["src"])) as conn:
        assert conn.execute("SELECT active FROM workflow_entity WHERE id = 'wfTelegram000001'").fetchone()[0]


def test_full_restore_decrypts_every_credential_to_its_original_value(nightly_done, n8n_new):
    run, out_dir, into = nightly_done["restored"], nightly_done["out_dir"], nightly_done["into"]
    assert run.exit_code == 0, run.output
    assert "docker run" in run.output and "chown -R 1000:1000" in run.output
    assert stat.S_IMODE((out_dir / "config").stat().st_mode) == 0o600
    # real n8n with nothing but the restored folder decrypts every credential to its original value
    got = decrypted_with_real_n8n(n8n_new, into, out_dir.parent)
    assert got == {c["name"]: c["data"] for c in credentials(nightly_done["telegram"].url)}
    # refuses to overwrite an existing database
    again = CliRunner().invoke(main, ["--config", str(nightly_done["path"]), "n8n", "restore", "--into", into,
                                      "--config-out", str(nightly_done["tmp"] / "other")])
    assert again.exit_code != 0 and "already exists" in again.output


def test_wrong_key_configured_fails_verification_naming_the_fingerprint_mismatch(nightly_done):
    wrong = "not-the-key-" + secrets.token_hex(8)
    _, settings2 = nightly_done["write"](key=wrong, name="wrong.yaml")
    r = nv.verify_with_n8n(BackupsConfig.of(settings2), nightly_done["src"])
    assert not r.passed
    assert "key fingerprint mismatch" in r.message and keys.fingerprint(wrong) in r.message
    assert wrong not in r.message and KEY not in r.message


def test_tripwire_names_the_lost_workflow_and_alerts_once(nightly_done):
    check = nightly_done["tripwire"].get_asset_check_evaluations()[0]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "Nightly summary" in check.description and "n8n import:workflow --input=" in check.description
    sent = [m["plain"] for m in nightly_done["telegram"].sent if "lost" in m["plain"]]
    assert len(sent) == 1 and "Nightly summary" in sent[0]


def test_no_secret_reaches_logs_metadata_state_or_alerts(nightly_done):
    planted = [KEY, API_KEY, GMAIL_SECRET, REFRESH, TOKEN]
    stores = {
        "event log (runs, metadata, check results)": nightly_done["events"],
        "CLI output": nightly_done["restored"].output,
        "alerts sent": json.dumps(nightly_done["telegram"].sent),
    }
    dump = subprocess.run(["pg_dump", "--data-only", dsn_for(nightly_done["state_db"])], capture_output=True,
                          text=True, check=True).stdout
    stores["state database"] = dump
    assert "lost since the last export" in dump  # the alert was recorded there
    folder = Path(nightly_done["settings"].backups.local_dir)
    for p in folder.rglob("*"):
        if p.is_file() and not p.name.endswith((".age", ".zst")) and "n8n_workflows" not in p.parts:
            stores[f"backup file {p.name}"] = p.read_text(errors="replace")
    for where, text in stores.items():
        for value in planted:
            assert value not in text, f"a planted secret reached the {where}"


def test_corrupt_credential_fails_n8n_verification_by_name_while_the_manifest_passes(
        n8n_new, new_db, write_settings, age_identity, telegram, dagster_instance):
    recipient, identity = age_identity
    src = new_db("n8ncorrupt")
    path, settings = settings_for(write_settings, src, n8n_new, recipients=[recipient], identity=identity)
    make_instance(settings, src, telegram.url)
    with psycopg.connect(dsn_for(src), autocommit=True) as conn:
        data = conn.execute("SELECT data FROM credentials_entity WHERE name = 'Gmail OAuth'").fetchone()[0]
        raw = bytearray(__import__("base64").b64decode(data))
        raw[40] ^= 0xFF  # one byte of the ciphertext's first block
        conn.execute("UPDATE credentials_entity SET data = %s WHERE name = 'Gmail OAuth'",
                     (__import__("base64").b64encode(bytes(raw)).decode(),))
    result = nightly(settings, src, path, dagster_instance)
    # the manifest alone passes: the backup holds exactly what the database held
    manifest_only = bv.verify_backup(BackupsConfig.of(settings), src)
    assert manifest_only.passed, manifest_only.message
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["matches_manifest"].passed
    assert "Gmail OAuth" in checks["matches_manifest"].description
    assert "Ollama API key" not in checks["matches_manifest"].description.split("credentials failed")[-1]
    assert not checks["n8n_key_saved"].passed and "Gmail OAuth" in checks["n8n_key_saved"].description


def test_an_instance_with_a_table_prefix_is_backed_up_and_verified_by_n8n(
        n8n_new, new_db, write_settings, age_identity, telegram, dagster_instance):
    """n8n with DB_TABLE_PREFIX (n8n.table_prefix): its tables are lab_workflow_entity and so on.
    The workflow export, the secrets scan, the key check, the nightly backup and the verification by
    n8n's own CLI read those tables (the verification found no workflow in the backup before)."""
    from homelab_ops.n8n.workflow_scan import scan_database
    recipient, identity = age_identity
    src = new_db("n8nprefix")
    path, settings = settings_for(write_settings, src, n8n_new, recipients=[recipient], identity=identity,
                                  table_prefix="lab_")
    make_instance(settings, src, telegram.url)
    with psycopg.connect(dsn_for(src), autocommit=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert "lab_workflow_entity" in tables and "workflow_entity" not in tables
    config = BackupsConfig.of(settings)
    exported = dg.materialize([n8n_workflows_asset(config)], resources=resources(path), instance=dagster_instance)
    assert exported.success
    assert len(list((Path(settings.backups.local_dir) / "n8n_workflows").glob("*/*.json"))) == len(workflows())
    assert scan_database(dsn_for(src), prefix="lab_")[1] == len(workflows())
    result = nightly(settings, src, path, dagster_instance)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["n8n_key_saved"].passed, checks["n8n_key_saved"].description
    assert checks["matches_manifest"].passed, checks["matches_manifest"].description
    assert "credentials" in checks["matches_manifest"].description


def test_without_age_recipients_the_key_is_never_written_and_a_warn_check_says_so(
        n8n_new, new_db, write_settings, dagster_instance, telegram):
    src = new_db("n8nplain")
    path, settings = settings_for(write_settings, src, n8n_new)
    with psycopg.connect(dsn_for(src), autocommit=True) as conn:  # credentials table only: no n8n needed
        conn.execute("CREATE TABLE credentials_entity (id varchar(36), name text, type text, data text)")
    config = BackupsConfig.of(settings)
    result = dg.materialize([backup_asset(src, config), key_saved_check(settings.n8n)], resources=resources(path),
                            instance=dagster_instance)
    check = result.get_asset_check_evaluations()[0]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "cannot be restored" in check.description and "age_recipients" in check.description
    folder = Path(settings.backups.local_dir) / src
    assert not any("key" in p.name for p in folder.iterdir())
    for p in folder.iterdir():
        assert KEY.encode() not in p.read_bytes()


@pytest.mark.docker
def test_verify_with_docker_runs_the_n8n_image_through_the_engine_and_puts_no_secret_in_a_container(
        n8n_new, new_db, write_settings, age_identity, telegram, dagster_instance, docker_client):
    """`n8n.verify_with: docker`, the Pi's way: n8nio/n8n:<n8n.version> (built here from the npm install,
    no registry) run through the Engine API on the host network against the scratch database. Every
    verification container is looked at while it runs: the key and the bot token are in none of their
    environments or command lines, no trigger is registered, and none is left afterwards."""
    import threading

    from tests.conftest import DOCKER_HOST
    from tests.docker_images import busybox_image, n8n_image

    n8n_image(docker_client, NEW, str(Path(n8n_new).parents[2]))
    # a container a killed verification left (the key file inside): removed once older than a call lasts
    from homelab_ops.n8n.runner import PURPOSE, _remove_leftovers
    left = docker_client.api.create_container(busybox_image(docker_client), ["true"], labels=PURPOSE)["Id"]
    _remove_leftovers(docker_client, timeout_s=900)
    assert docker_client.api.inspect_container(left)  # young: may be a parallel call's
    _remove_leftovers(docker_client, timeout_s=-300)
    assert not docker_client.api.containers(all=True, filters={"id": left})
    recipient, identity = age_identity
    src = new_db("n8ndocker")
    _, plain = settings_for(write_settings, src, n8n_new, recipients=[recipient], identity=identity)
    make_instance(plain, src, telegram.url)
    path, settings = settings_for(write_settings, src, n8n_new, recipients=[recipient], identity=identity,
                                  docker_host=DOCKER_HOST, verify_with="docker")
    seen: list[dict] = []
    events = docker_client.events(decode=True, filters={"type": "container", "event": "start",
                                                        "label": "homelab-ops.purpose=n8n-verification"})

    def watch():
        for ev in events:
            try:
                seen.append(docker_client.api.inspect_container(ev["id"]))
            except Exception:  # already gone: record what the event said
                seen.append({"Id": ev["id"], "Config": {}})

    threading.Thread(target=watch, daemon=True).start()
    try:
        result = nightly(settings, src, path, dagster_instance)
    finally:
        events.close()
    assert result.success, result.all_events
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["matches_manifest"].passed, checks["matches_manifest"].description
    meta = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}[
        f"restore_verification/{src}_verification"].materialization.metadata
    assert meta["n8n_credentials_decrypted"].value == 3 and meta["n8n_workflows_loaded"].value == 2
    assert seen, "no verification container was started through the Engine API"
    for info in seen:
        config = info["Config"]
        assert config.get("Image", f"n8nio/n8n:{NEW}") == f"n8nio/n8n:{NEW}"
        exposed = json.dumps([config.get("Env"), config.get("Cmd"), config.get("Entrypoint")])
        for planted in (KEY, API_KEY, GMAIL_SECRET, REFRESH, TOKEN):
            assert planted not in exposed
    assert not docker_client.containers.list(all=True, filters={"label": "homelab-ops.purpose=n8n-verification"})
    assert not [m for m, _, _ in telegram.calls if m in ("setWebhook", "deleteWebhook")]
