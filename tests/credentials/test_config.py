"""The credential store and its rotations take their part of the settings (homelab_ops.credentials.config)."""

import dataclasses

import pytest

from homelab_ops.credentials.config import CredentialsConfig
from homelab_ops.settings import parse


def _settings(tmp_path):
    return parse({"postgres": {"dsn": "postgresql://postgres:planted-pg-pw@127.0.0.1:1/postgres"},
                  "state": {"dsn": "postgresql://homelab:planted-state-pw@127.0.0.1:1/homelab"},
                  "credentials": {"key_file": str(tmp_path / "master.key"), "restart_consumers": True},
                  "docker": {"host": "unix:///run/planted/docker.sock", "name_prefix": "lab-"},
                  "monitoring": {"health": {"wait": "95s"}},
                  "notify": {"telegram": {"bot_token": "123456:planted-bot-token"}}}, "test.yaml")


def test_the_config_holds_the_stores_sections_and_nothing_else(tmp_path):
    c = CredentialsConfig.of(_settings(tmp_path))
    assert c.credentials.key_file == str(tmp_path / "master.key") and c.credentials.restart_consumers
    assert c.docker.host == "unix:///run/planted/docker.sock" and c.docker.name_prefix == "lab-"
    assert c.consumer_wait_seconds == 95
    assert {f.name for f in dataclasses.fields(c)} == {"credentials", "state", "postgres", "docker",
                                                       "consumer_wait_seconds"}
    assert not hasattr(c, "notify") and not hasattr(c, "backups")
    for planted in ("planted-pg-pw", "planted-state-pw", "planted-bot-token"):
        assert planted not in repr(c)  # the DSNs stay SecretStr; the bot token is not there at all
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.consumer_wait_seconds = 1
