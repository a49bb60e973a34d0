"""The credential store against the real PostgreSQL: encryption at rest, stages, audit, keys, .env files.

Each test gets its own state database and key file. `make_settings` and the
`cred_settings` fixture are imported by the other credentials test modules.
"""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
import yaml
from click.testing import CliRunner
from psycopg import sql

from homelab_ops.cli import main
from homelab_ops.credentials import overdue
from homelab_ops.credentials.envfile import render, render_env_file
from homelab_ops.credentials.errors import CredentialError, MasterKeyError, RotationError, UnknownCredential
from homelab_ops.credentials.keys import ENV_VAR, InvalidToken, Keyring, load_keyring, new_key, write_key_file
from homelab_ops.credentials.policy import make_definition
from homelab_ops.credentials.rotation import rotate, set_value
from homelab_ops.credentials.store import init_store, open_store, rekey
from homelab_ops.settings import SettingsError, load
from tests.conftest import ADMIN_DSN, drop_database, dsn_for
from homelab_ops.credentials.config import CredentialsConfig

pytestmark = pytest.mark.services  # every test here reaches PostgreSQL

BOT_TOKEN = "7712345678:AAHx-botTokenForTestsOnly_ZZ9yyXXwwVVuu"


def make_settings(tmp_path: Path, state_db: str, credentials: dict | None = None, **more) -> tuple[Path, object]:
    data = {
        "postgres": {"dsn": ADMIN_DSN, "databases": ["n8n"]},
        "state": {"dsn": dsn_for(state_db)},
        "backups": {"local_dir": str(tmp_path / "backups")},
        # no consumer runs in Docker here: tests that restart one turn this back on
        "credentials": {"key_file": str(tmp_path / "keys" / "master.key"), "restart_consumers": False,
                        **(credentials or {})},
        **more,
    }
    path = tmp_path / f"homelab-{len(list(tmp_path.glob('homelab-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, load(path)


@pytest.fixture(scope="module")
def creds_state_db():
    """One state database per module; each test starts from an empty schema (cheaper than a database each)."""
    name = f"creds_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    drop_database(name)


def empty_state(state_db: str) -> str:
    with psycopg.connect(dsn_for(state_db), autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS homelab_ops CASCADE")
    return state_db


@pytest.fixture
def cred_settings(creds_state_db, tmp_path, monkeypatch):
    """Factory: settings on an empty state database with an initialised store (key file 0600)."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    state_db = empty_state(creds_state_db)

    def make(credentials: dict | None = None, **more):
        path, settings = make_settings(tmp_path, state_db, credentials, **more)
        init_store(CredentialsConfig.of(settings), "test")
        return path, settings

    make.state_db = state_db
    return make


def all_rows_text(state_db: str) -> str:
    """Every row of the store's tables, as PostgreSQL prints them."""
    out = subprocess.run(["pg_dump", "--data-only", "--schema=homelab_ops", dsn_for(state_db)],
                         capture_output=True, text=True, check=True).stdout
    assert "credential_version" in out and "credential_audit" in out
    return out


def add_generated(store, name="grafana_admin", **opts):
    store.define(make_definition(name, "generated", {"period": "30d", "consumers": ["grafana"], **opts}))


# --------------------------------------------------------------------------- keys


def test_init_creates_a_0600_key_file_and_never_overwrites_it(cred_settings):
    _, settings = cred_settings()
    key_file = Path(settings.credentials.key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    before = key_file.read_bytes()
    path, kid, created = init_store(CredentialsConfig.of(settings), "test")
    assert (path, created) == (key_file, False) and key_file.read_bytes() == before
    with pytest.raises(MasterKeyError, match="not overwriting"):
        write_key_file(key_file, Keyring([new_key()], "x"), replace=False)
    assert key_file.read_bytes() == before


def test_key_file_with_wider_mode_is_refused(cred_settings):
    _, settings = cred_settings()
    key_file = Path(settings.credentials.key_file)
    key_file.chmod(0o640)
    with pytest.raises(MasterKeyError, match=r"mode 0640; it must be 0600") as e:
        open_store(CredentialsConfig.of(settings), "test").__enter__()
    assert key_file.read_text().splitlines()[-1] not in str(e.value)


def test_master_key_from_the_environment(creds_state_db, tmp_path, monkeypatch):
    key = new_key().decode()
    monkeypatch.setenv(ENV_VAR, key)
    _, settings = make_settings(tmp_path, empty_state(creds_state_db))
    path, kid, created = init_store(CredentialsConfig.of(settings), "test")
    assert path is None and not created and not Path(settings.credentials.key_file).exists()
    with open_store(CredentialsConfig.of(settings), "test") as store:
        store.define(make_definition("tg", "manual", {"period": "90d"}))
        set_value(store, "tg", BOT_TOKEN)
    assert load_keyring("/nonexistent", env={ENV_VAR: key}).ids == store.keyring.ids
    with open_store(CredentialsConfig.of(settings), "test") as store:
        assert store.value("tg") == BOT_TOKEN


def test_wrong_master_key_is_refused_and_nothing_is_overwritten(cred_settings, tmp_path):
    path, settings = cred_settings()
    with open_store(CredentialsConfig.of(settings), "test") as store:
        add_generated(store)
        rotate(store, "grafana_admin", force=True)
        rows_before = store.conn.execute(
            "SELECT credential, version, stage, ciphertext FROM homelab_ops.credential_version ORDER BY 1, 2").fetchall()
        check_before = store.conn.execute("SELECT token FROM homelab_ops.credential_keycheck").fetchone()
    other = tmp_path / "other.key"
    write_key_file(other, Keyring([new_key()], str(other)), replace=False)
    _, wrong = make_settings(tmp_path, cred_settings.state_db, {"key_file": str(other)})
    with pytest.raises(MasterKeyError, match="wrong master key.*Nothing was changed"):
        with open_store(CredentialsConfig.of(wrong), "intruder"):
            pass
    with open_store(CredentialsConfig.of(settings), "test") as store:
        assert store.conn.execute(
            "SELECT credential, version, stage, ciphertext FROM homelab_ops.credential_version ORDER BY 1, 2"
        ).fetchall() == rows_before
        assert store.conn.execute("SELECT token FROM homelab_ops.credential_keycheck").fetchone() == check_before
        denied = [a for a in store.audit_rows() if a.outcome == "denied"]
        assert denied and denied[-1].actor == "intruder" and denied[-1].action == "open"
        assert len(store.value("grafana_admin")) == 32


# --------------------------------------------------------------------------- at rest and audit


def test_values_are_encrypted_at_rest_and_every_access_is_audited(cred_settings):
    _, settings = cred_settings()
    with open_store(CredentialsConfig.of(settings), "cli:tester") as store:
        add_generated(store, htpasswd_user="admin", bcrypt_rounds=4)
        store.define(make_definition("telegram_bot", "manual", {"period": "90d", "consumers": ["n8n"]}))
        set_value(store, "telegram_bot", BOT_TOKEN)
        rotate(store, "grafana_admin", force=True)
        rotate(store, "grafana_admin", force=True)
        values = [BOT_TOKEN, store.value("grafana_admin"), store.value("grafana_admin", stage="previous"),
                  store.value("grafana_admin", "htpasswd")]
        store.value("telegram_bot")
        with pytest.raises(CredentialError):
            store.value("telegram_bot", stage="pending")
        with pytest.raises(UnknownCredential):
            store.value("nope")
        audit = store.audit_rows()
    dump = all_rows_text(cred_settings.state_db)
    for v in values:
        assert v not in dump
    assert "$2y$" not in dump  # not even the bcrypt hash
    reads = [(a.credential, a.outcome, a.detail) for a in audit if a.action == "read"]
    assert ("telegram_bot", "ok", "current") in reads and ("telegram_bot", "failed", "pending: no pending version") in reads
    assert ("grafana_admin", "ok", "previous") in reads
    assert any(a.action == "lookup" and a.credential == "nope" and a.outcome == "failed" for a in audit)
    writes = [a for a in audit if a.action == "write"]
    assert {a.credential for a in writes} == {"telegram_bot", "grafana_admin"}
    assert all(a.version for a in writes) and all(a.actor == "cli:tester" for a in audit if a.credential)
    assert [a.action for a in audit if a.credential == "grafana_admin"].count("promote") == 2


def test_audit_trail_is_append_only_in_the_database(cred_settings):
    _, settings = cred_settings()
    with psycopg.connect(dsn_for(cred_settings.state_db), autocommit=True) as conn:
        n = conn.execute("SELECT count(*) FROM homelab_ops.credential_audit").fetchone()[0]
        assert n > 0
        for stmt in ("UPDATE homelab_ops.credential_audit SET detail = 'x'",
                     "DELETE FROM homelab_ops.credential_audit",
                     "TRUNCATE homelab_ops.credential_audit"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(stmt)
        assert conn.execute("SELECT count(*) FROM homelab_ops.credential_audit").fetchone()[0] == n
        # The role that owns it (the application role) holds INSERT and SELECT only.
        privs = {r[0] for r in conn.execute(
            "SELECT a.privilege_type FROM pg_class c, aclexplode(c.relacl) a"
            " WHERE c.oid = 'homelab_ops.credential_audit'::regclass AND a.grantee = c.relowner")}
        assert {"INSERT", "SELECT"} <= privs and not privs & {"UPDATE", "DELETE", "TRUNCATE"}


# --------------------------------------------------------------------------- stages, rekey


def test_versions_move_through_pending_current_previous(cred_settings):
    _, settings = cred_settings()
    with open_store(CredentialsConfig.of(settings), "test") as store:
        add_generated(store)
        seen = []
        for _ in range(3):
            rotate(store, "grafana_admin", force=True)
            seen.append(store.value("grafana_admin"))
        st = store.status("grafana_admin")
        assert (st.current.version, st.previous.version, st.pending) == (3, 2, None)
        assert store.value("grafana_admin", stage="previous") == seen[1]
        v1 = store.conn.execute("SELECT stage, ciphertext, retired_at FROM homelab_ops.credential_version"
                                " WHERE credential = 'grafana_admin' AND version = 1").fetchone()
        assert v1[0] is None and v1[1] is None and v1[2] is not None  # retired values are not kept
        assert len(set(seen)) == 3


def test_rekey_reencrypts_every_value_and_leaves_only_the_new_key(cred_settings):
    _, settings = cred_settings({"managed": {"pg_app": {"kind": "postgres-role", "role": "app",
                                                          "dsn": "postgresql://admin:AdminPw-Secret-42@db/x"}}})
    key_file = Path(settings.credentials.key_file)
    old = load_keyring(key_file)
    with open_store(CredentialsConfig.of(settings), "test") as store:
        add_generated(store)
        rotate(store, "grafana_admin", force=True)
        value = store.value("grafana_admin")
        tokens = [r[0] for r in store.conn.execute(
            "SELECT ciphertext FROM homelab_ops.credential_version WHERE ciphertext IS NOT NULL")]
        new_id = rekey(store, key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_keyring(key_file).ids == [new_id]
    with open_store(CredentialsConfig.of(settings), "test") as store:
        assert store.value("grafana_admin") == value
        assert store.get_definition("pg_app").secret_params["dsn"].endswith("AdminPw-Secret-42@db/x")
        for (token,) in store.conn.execute("SELECT ciphertext FROM homelab_ops.credential_version"
                                           " WHERE ciphertext IS NOT NULL UNION ALL"
                                           " SELECT secret_params FROM homelab_ops.credential"
                                           " WHERE secret_params IS NOT NULL"):
            assert token not in tokens
            with pytest.raises(InvalidToken):
                old.decrypt(token)
        assert any(a.action == "rekey" and a.outcome == "ok" for a in store.audit_rows())


def test_rekey_that_fails_midway_changes_nothing_and_either_key_opens(cred_settings):
    _, settings = cred_settings()
    key_file = Path(settings.credentials.key_file)
    with open_store(CredentialsConfig.of(settings), "test") as store:
        add_generated(store)
        add_generated(store, "webhook_secret")
        rotate(store, "grafana_admin", force=True)
        rotate(store, "webhook_secret", force=True)
        value = store.value("grafana_admin")
        # A value no key opens (written by someone else) makes the re-encryption fail halfway.
        store.conn.execute("UPDATE homelab_ops.credential_version SET ciphertext = %s"
                           " WHERE credential = 'webhook_secret'", (Keyring([new_key()], "x").encrypt(b"x"),))
        before = store.conn.execute("SELECT credential, ciphertext FROM homelab_ops.credential_version"
                                    " ORDER BY 1").fetchall()
        with pytest.raises(MasterKeyError, match="nothing re-encrypted"):
            rekey(store, key_file)
        assert store.conn.execute("SELECT credential, ciphertext FROM homelab_ops.credential_version"
                                  " ORDER BY 1").fetchall() == before
    assert len(load_keyring(key_file).ids) == 2  # new and old: whichever state the store is in, it opens
    with open_store(CredentialsConfig.of(settings), "test") as store:
        assert store.value("grafana_admin") == value


# --------------------------------------------------------------------------- bad input


def test_bad_input_gets_a_clear_error(cred_settings, tmp_path):
    _, settings = cred_settings()
    with pytest.raises(CredentialError, match="unknown kind 'vault'"):
        make_definition("x", "vault", {})
    with pytest.raises(CredentialError, match="x.period: '30 days' is not a duration like 90s, 15m"):
        make_definition("x", "manual", {"period": "30 days"})
    with pytest.raises(CredentialError, match="x.period: 0d is zero"):
        make_definition("x", "manual", {"period": "0d"})
    with pytest.raises(CredentialError, match="x.period: 30 has no unit: write 30s"):
        make_definition("x", "manual", {"period": "30"})
    with pytest.raises(CredentialError, match="option 'role' does not apply to a manual"):
        make_definition("x", "manual", {"role": "app"})
    with pytest.raises(CredentialError, match="a postgres-role credential needs `role`"):
        make_definition("x", "postgres-role", {})
    with pytest.raises(CredentialError, match="not a credential name"):
        make_definition("Bad Name", "manual", {})
    with pytest.raises(SettingsError, match=r"credentials\.managed\.tg\.period"):
        make_settings(tmp_path, cred_settings.state_db, {"managed": {"tg": {"kind": "manual", "period": "3x"}}})
    with pytest.raises(SettingsError, match=r"credentials\.managed\.tg\.kind"):
        make_settings(tmp_path, cred_settings.state_db, {"managed": {"tg": {"kind": "vault"}}})
    with open_store(CredentialsConfig.of(settings), "test") as store:
        store.define(make_definition("tg", "manual", {"period": "90d", "pattern": r"\d+:[\w-]{30,}"}))
        store.define(make_definition("pg", "postgres-role", {"role": "app"}))
        with pytest.raises(UnknownCredential, match="no credential named 'nope'"):
            rotate(store, "nope")
        with pytest.raises(CredentialError, match="manual credential.*creds set tg"):
            rotate(store, "tg")
        with pytest.raises(CredentialError, match="does not match tg's pattern") as e:
            set_value(store, "tg", "not-a-token")
        assert "not-a-token" not in str(e.value)
        with pytest.raises(CredentialError, match="changes only by rotation"):
            set_value(store, "pg", "hunter2hunter2")
        with pytest.raises(CredentialError, match="already exists"):
            store.define(make_definition("tg", "manual", {}))
        assert store.status("tg").current is None


def test_a_template_the_rotation_cannot_render_stops_it_before_any_step(cred_settings, tmp_path):
    """Checked first, not after `finish`: a new password with a .env that still holds the old one
    would lock the consumers out at their next restart."""
    template = tmp_path / "env.template"
    template.write_text('GF_SECURITY_ADMIN_PASSWORD={{ cred "grafana_admin" }}\n')  # the form before #15
    _, settings = cred_settings({"env_template": str(template), "env_file": str(tmp_path / ".env")})
    with open_store(CredentialsConfig.of(settings), "test") as store:
        add_generated(store)
        first = rotate(store, "grafana_admin", force=True).version  # no settings: no template read
        steps = len([r for r in store.audit_rows() if r.action.startswith("step:")])
        with pytest.raises(RotationError, match=r"step 'env template'.*env\.template: .*line 1: write "
                                                r'\{\{ cred\("grafana_admin"\) \}\}'):
            rotate(store, "grafana_admin", config=CredentialsConfig.of(settings), force=True)
        status = store.status("grafana_admin")
        assert status.current.version == first and status.pending is None
        assert len([r for r in store.audit_rows() if r.action.startswith("step:")]) == steps  # none ran
        last = store.audit_rows()[-1]
        assert (last.action, last.outcome) == ("rotate", "failed") and "env.template" in last.detail
        template.write_text('GF_SECURITY_ADMIN_PASSWORD={{ cred("grafana_admin") }}\n')  # mended
        assert rotate(store, "grafana_admin", config=CredentialsConfig.of(settings), force=True).version == first + 1
    assert (tmp_path / ".env").exists() is False  # render-env is the service's job, not rotate()'s


# --------------------------------------------------------------------------- consumers and overdue


def test_render_env_writes_current_values_quoted_and_0600(cred_settings, tmp_path):
    _, settings = cred_settings()
    template = tmp_path / "services.env.template"
    template.write_text('# Grafana and Traefik\nGF_SECURITY_ADMIN_PASSWORD={{ cred("grafana_admin") }}\n'
                        'TRAEFIK_USERS={{ cred("grafana_admin", "htpasswd") }}\n'
                        'TELEGRAM_BOT_TOKEN={{cred("telegram_bot")}}\nPLAIN=unchanged\n')
    out = tmp_path / "deploy" / ".env"
    with open_store(CredentialsConfig.of(settings), "test") as store:
        add_generated(store, htpasswd_user="admin", bcrypt_rounds=4)
        store.define(make_definition("telegram_bot", "manual", {}))
        set_value(store, "telegram_bot", BOT_TOKEN)
        rotate(store, "grafana_admin", force=True)
        names = render_env_file(store, template, out)
        password, htpasswd = store.value("grafana_admin"), store.value("grafana_admin", "htpasswd")
        # The form before Jinja2 (#15) is refused with the text to write, before any value is read.
        old = tmp_path / "old.env.template"
        old.write_text('# kept\nGF_SECURITY_ADMIN_PASSWORD={{ cred("grafana_admin") }}\n'
                       'TELEGRAM_BOT_TOKEN={{ cred "telegram_bot" }}\n')
        reads = len([r for r in store.audit_rows() if r.action == "read"])
        with pytest.raises(CredentialError, match=r'old\.env\.template: .*line 3: write \{\{ cred\("telegram_bot"\) '
                                                  r'\}\} instead of \{\{ cred "telegram_bot" \}\}'):
            render_env_file(store, old, tmp_path / "old.env")
        assert len([r for r in store.audit_rows() if r.action == "read"]) == reads
        assert not (tmp_path / "old.env").exists()
    assert names == ["grafana_admin", "telegram_bot"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().splitlines() == [
        "# Grafana and Traefik", f"GF_SECURITY_ADMIN_PASSWORD={password}",
        f"TRAEFIK_USERS='{htpasswd}'",  # single quotes keep compose from expanding the $
        f"TELEGRAM_BOT_TOKEN={BOT_TOKEN}", "PLAIN=unchanged"]
    with pytest.raises(CredentialError, match=r'line 1: \{\{ env "HOME" \}\} is not a \{\{ cred\("name"\) \}\}'):
        render("X={{ env \"HOME\" }}\n", lambda n, f: "")


def test_overdue_lists_what_is_past_its_period_without_the_master_key(cred_settings, monkeypatch):
    _, settings = cred_settings({"managed": {"telegram_bot": {"kind": "manual", "period": "90d"},
                                             "never_set": {"kind": "manual", "period": "7d"}}})
    with open_store(CredentialsConfig.of(settings), "test") as store:
        set_value(store, "telegram_bot", BOT_TOKEN)
        add_generated(store)
        rotate(store, "grafana_admin", force=True)
    Path(settings.credentials.key_file).unlink()  # alerting runs without the key
    now = datetime.now(timezone.utc)
    assert [o.name for o in overdue(CredentialsConfig.of(settings))] == ["never_set"]
    later = overdue(CredentialsConfig.of(settings), now=now + timedelta(days=91))
    assert [o.name for o in later] == ["never_set", "telegram_bot", "grafana_admin"]
    tg = later[1]
    assert tg.kind == "manual" and tg.period_seconds == 90 * 86400 and tg.age_seconds > 90 * 86400
    assert later[0].age_seconds is None


# --------------------------------------------------------------------------- CLI


def test_cli_round_trip_prints_a_value_only_for_get(cred_settings, tmp_path):
    path, settings = cred_settings()
    run = CliRunner().invoke
    env = {"HOMELAB_CONFIG": str(path)}
    assert run(main, ["creds", "add", "telegram_bot", "--kind", "manual", "--period", "90d",
                      "--consumer", "n8n"], env=env).exit_code == 0
    r = run(main, ["creds", "set", "telegram_bot"], input=BOT_TOKEN + "\n", env=env)
    assert r.exit_code == 0 and "v1" in r.output and BOT_TOKEN not in r.output
    assert run(main, ["creds", "add", "hook", "--kind", "generated", "--length", "40",
                      "--alphabet", "urlsafe"], env=env).exit_code == 0
    r = run(main, ["creds", "rotate", "hook"], env=env)
    assert r.exit_code == 0, r.output
    outputs = [run(main, ["creds", *args], env=env) for args in (["list"], ["history", "telegram_bot"],
                                                                   ["history", "hook"])]
    with open_store(CredentialsConfig.of(settings), "test") as store:
        hook = store.value("hook")
    for r in outputs:
        assert r.exit_code == 0 and BOT_TOKEN not in r.output and hook not in r.output
    assert "telegram_bot  manual" in outputs[0].output
    r = run(main, ["creds", "get", "telegram_bot"], env=env)
    assert r.exit_code == 0 and r.output == BOT_TOKEN + "\n"
    for args, message in ((["get", "nope"], "no credential named 'nope'"),
                          (["add", "x", "--kind", "manual", "--period", "soon"], "'soon' is not a duration"),
                          (["rotate", "telegram_bot"], "manual credential")):
        r = run(main, ["creds", *args], env=env)
        assert r.exit_code == 1 and message in r.output
    r = run(main, ["creds", "add", "x", "--kind", "vault"], env=env)
    assert r.exit_code == 2 and "'vault' is not one of" in r.output  # the choices are the registered kinds
    r = run(main, ["creds", "rekey"], env=env)
    assert r.exit_code == 0 and os.stat(settings.credentials.key_file).st_mode & 0o777 == 0o600
    assert run(main, ["creds", "get", "telegram_bot"], env=env).output == BOT_TOKEN + "\n"
