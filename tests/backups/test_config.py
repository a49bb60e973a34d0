"""Backups, their sources and n8n's backup set take their part of the settings (homelab_ops.backups.config)."""

import dataclasses

import pytest

from homelab_ops.backups.config import BackupsConfig
from homelab_ops.settings import parse

TOKEN = "123456:planted-bot-token"
S3_SECRET = "planted-s3-secret-key"


def _settings(tmp_path):
    return parse({"timezone": "America/New_York",
                  "postgres": {"dsn": "postgresql://postgres:planted-pg-pw@127.0.0.1:1/postgres",
                               "databases": ["shop", "n8n"]},
                  "backups": {"local_dir": str(tmp_path / "b"), "max_age_hours": 30,
                              "s3": [{"name": "b2", "bucket": "homelab", "access_key_id": "AKIA1",
                                      "secret_access_key": S3_SECRET}]},
                  "n8n": {"dsn": "postgresql://postgres@127.0.0.1:1/n8n", "container": "n8n"},
                  "docker": {"host": "unix:///run/planted/docker.sock"},
                  "notify": {"telegram": {"bot_token": TOKEN}}}, "test.yaml")


def test_the_config_holds_the_backups_sections_and_nothing_else(tmp_path):
    c = BackupsConfig.of(_settings(tmp_path))
    assert c.backups.max_age_hours == 30 and c.postgres.databases == ["shop", "n8n"]
    assert c.n8n.container == "n8n" and c.docker_host == "unix:///run/planted/docker.sock"
    assert str(c.tz) == "America/New_York"
    assert {f.name for f in dataclasses.fields(c)} == {"backups", "postgres", "n8n", "docker_host", "timezone",
                                                       "textfile_dir", "secrets"}
    assert c.textfile_dir == _settings(tmp_path).metrics.textfile_dir  # where a passed verification publishes
    assert not hasattr(c, "notify") and not hasattr(c, "credentials")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.timezone = "UTC"


def test_the_config_redacts_every_secret_of_the_settings_and_never_shows_them(tmp_path):
    """A backup's message is redacted as before (every secret of the file, the bot token
    included, though the config has no notify section); the repr shows none of them."""
    c = BackupsConfig.of(_settings(tmp_path))
    for secret in (TOKEN, S3_SECRET, "planted-pg-pw"):
        assert secret in c.secrets
        assert secret not in repr(c)
    said = c.redact(f"pg_restore: token {TOKEN}, key {S3_SECRET}, postgresql://postgres:planted-pg-pw@h/db")
    assert TOKEN not in said and S3_SECRET not in said and "planted-pg-pw" not in said, said
    assert "postgresql://postgres:" in said  # the DSN's host and user stay readable
    assert "a-key-from-a-backup" not in c.redactor("a-key-from-a-backup")("key a-key-from-a-backup")
