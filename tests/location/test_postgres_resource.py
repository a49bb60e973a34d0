"""PostgresResource: the UI shows where each database is and where its password comes from, never a
value; a step's connection is the resource's fields over the settings file's DSN (the one source)."""

from __future__ import annotations

import pytest
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value
from psycopg.conninfo import conninfo_to_dict

from homelab_ops.defs.resources import PostgresResource, password_source, resources_for
from homelab_ops.settings import SettingsError
from tests.location.test_definitions import load_from

STATE_PW = "state-pw-Planted-7f3c"  # read by the settings file from the environment
N8N_PW = "n8n-pw-Planted-91aa"  # written in the settings file
ADMIN_PW = "admin-pw-Planted-4e2d"
BOT = "123456:bot-token-Planted-0c8e"


def planted(write_settings, monkeypatch):
    monkeypatch.setenv("HOMELAB_TEST_STATE_PW", STATE_PW)
    return write_settings({
        "postgres": {"dsn": f"postgresql://postgres:{ADMIN_PW}@127.0.0.1:5432/postgres", "databases": ["n8n"]},
        "state": {"dsn": "postgresql://homelab:${HOMELAB_TEST_STATE_PW}@db.lan:5433/homelab?sslmode=prefer"},
        "n8n": {"dsn": f"host=127.0.0.1 dbname=n8n user=n8n password={N8N_PW}"},
        "notify": {"telegram": {"bot_token": BOT}},
    })


def configured(snap: RepositorySnap, name: str) -> dict[str, str]:
    """A resource's configured values as the web UI receives them (JSON-encoded strings)."""
    res = next(r for r in snap.resources if r.name == name)
    return {k: v.strip('"') for k, v in res.configured_values.items() if isinstance(v, str)}


def test_the_ui_shows_each_database_and_its_password_source_without_a_value(write_settings, monkeypatch):
    path, _ = planted(write_settings, monkeypatch)
    snap = RepositorySnap.from_def(load_from(path, monkeypatch).get_repository_def())
    text = serialize_value(snap)  # everything the webserver gets from the code location
    for secret in (STATE_PW, N8N_PW, ADMIN_PW, BOT):
        assert secret not in text
    state = configured(snap, "state_database")
    assert {k: state[k] for k in ("setting", "host", "port", "dbname", "user", "created_via")} == {
        "setting": "state.dsn", "host": "db.lan", "port": "5433", "dbname": "homelab", "user": "homelab",
        "created_via": "postgres.dsn"}
    assert state["password"] == "environment variable HOMELAB_TEST_STATE_PW"
    n8n = configured(snap, "n8n_database")
    assert (n8n["dbname"], n8n["user"], n8n["password"]) == ("n8n", "n8n", "written in the settings file")


def test_a_step_connects_with_the_fields_over_the_files_dsn(write_settings, monkeypatch):
    """The fields are the connection, not a display: change one and the step goes there; the password
    and the other libpq options still come from the file."""
    path, settings = planted(write_settings, monkeypatch)
    assert "${HOMELAB_TEST_STATE_PW}" in settings.templates["state.dsn"] and "templates" not in repr(settings)
    state = resources_for(str(path))["state_database"]
    info = conninfo_to_dict(state.conninfo().get_secret_value())
    assert (info["host"], info["port"], info["dbname"], info["password"], info["sslmode"]) == (
        "db.lan", "5433", "homelab", STATE_PW, "prefer")
    moved = state.model_copy(update={"host": "other.lan", "dbname": "elsewhere"})
    moved_info = conninfo_to_dict(moved.conninfo().get_secret_value())
    assert (moved_info["host"], moved_info["dbname"], moved_info["password"]) == ("other.lan", "elsewhere", STATE_PW)


def test_without_n8n_there_is_no_n8n_database(write_settings):
    path, _ = write_settings({})
    assert set(resources_for(str(path))) == {"homelab", "state_database"}


@pytest.mark.parametrize(("dsn", "template", "env", "said"), [
    ("postgresql://u@h/db", None, {}, "none in the DSN (trust, peer, PGPASSWORD or ~/.pgpass)"),
    ("postgresql://u:s3cret@h/db", None, {}, "written in the settings file"),
    ("postgresql://u:s3cret@h/db", "postgresql://u:${PW}@h/db", {"PW": "s3cret"}, "environment variable PW"),
    ("host=h password=s3cret", "host=h password=${PW}", {"PW": "s3cret"}, "environment variable PW"),
    ("postgresql://u:s3cret@h/db", "${DSN}", {"DSN": "postgresql://u:s3cret@h/db"}, "environment variable DSN"),
    # another variable in the DSN, even one whose value equals the password: the password is the file's
    ("postgresql://postgres:postgres@postgres/db", "postgresql://postgres:postgres@${HOST}/db",
     {"HOST": "postgres"}, "written in the settings file"),
    ("postgresql://u:s3cret@h/db", "postgresql://u:${PW:-s3cret}@h/db", {},
     "written in the settings file (the default of ${PW}, which is not set)"),
    ("postgresql://u:p%40ss@h/db", "postgresql://u:${PW}@h/db", {"PW": "p%40ss"}, "environment variable PW"),
])
def test_password_source_says_where_not_what(dsn, template, env, said):
    assert password_source(dsn, template, env) == said


def test_a_dsn_libpq_cannot_read_loads_and_shows_none_of_its_text(write_settings):
    """The location still loads (the steps that connect fail, as before); psycopg's parse error would
    quote part of the password."""
    path, _ = write_settings({"state": {"dsn": "host=db password=ab cd-Planted"}})
    state = resources_for(str(path))["state_database"]
    assert "Planted" not in state.model_dump_json() and "ab" not in state.password
    assert state.password == "unknown: state.dsn is not a connection string libpq reads"


def test_a_missing_section_is_named(write_settings):
    path, _ = write_settings({})
    with pytest.raises(SettingsError, match="n8n.dsn is not set"):
        PostgresResource(setting="n8n.dsn", config_path=str(path)).conninfo()


def test_resources_page_lists_the_databases(write_settings, monkeypatch):
    path, _ = planted(write_settings, monkeypatch)
    d = load_from(path, monkeypatch)
    assert {"homelab", "state_database", "n8n_database", "docker", "alert_channels"} <= set(
        d.get_repository_def().get_top_level_resources())
