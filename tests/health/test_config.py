"""The health checks take their part of the settings, not the whole file (homelab_ops.health.config)."""

import dataclasses
import inspect

import pytest

from homelab_ops.deploy.config import DeployConfig
from homelab_ops.health.config import HealthConfig
from homelab_ops.health.evaluate import GROUPS
from homelab_ops.settings import parse

TOKEN = "123456:AAplanted-bot-token-for-the-health-config"
S3_SECRET = "Pl4nted-s3-secret-for-health"


def _settings(tmp_path):
    return parse({"timezone": "America/New_York",
                  "postgres": {"dsn": "postgresql://postgres@127.0.0.1:1/postgres", "databases": ["shop"]},
                  "backups": {"local_dir": str(tmp_path / "b"), "max_age_hours": 30,
                              "s3": [{"bucket": "b", "access_key_id": "AKIAPLANTED", "secret_access_key": S3_SECRET}]},
                  "metrics": {"textfile_dir": str(tmp_path / "t")},
                  "health": {"postgres_log": "/var/log/postgresql/*.log"},
                  "notify": {"telegram": {"bot_token": TOKEN}},
                  "pitr": {"enabled": True, "cluster": "pi"},
                  "thresholds": {"temperature_warn_c": 66}}, "test.yaml")


def test_the_config_holds_what_the_checks_read_and_no_notify(tmp_path):
    s = _settings(tmp_path)
    c = HealthConfig.of(s)
    assert c.health.postgres_log == "/var/log/postgresql/*.log" and c.metrics.textfile_dir == str(tmp_path / "t")
    assert c.thresholds.temperature_warn_c == 66 and c.thresholds.backup_age_fail_hours == 30
    assert c.backups.postgres.databases == ["shop"] and c.pitr.pitr.cluster == "pi"
    assert str(c.tz) == "America/New_York" and c.n8n is None  # no n8n section: its checks are not run
    assert not hasattr(c, "notify")  # a check judges; the sensor tells
    # one judgement: the sensor and Prometheus' rules read the same numbers
    assert c.thresholds == DeployConfig.of(s).thresholds
    assert TOKEN not in repr(c) and S3_SECRET not in repr(c)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.timezone = "UTC"


def test_every_group_and_plug_in_takes_the_config_and_the_time():
    """A group written against the old (settings, th, now) shape fails here, not on a Pi's tick."""
    for fn, names in GROUPS:
        params = list(inspect.signature(fn).parameters)
        assert params[:2] == ["config", "now"], (fn.__module__, fn.__name__, params)
