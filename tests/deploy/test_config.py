"""The deploy and tune graphs take their part of the settings, not the whole file
(homelab_ops.deploy.config)."""

import dataclasses

import pytest

from homelab_ops.deploy.config import DeployConfig
from homelab_ops.health.checks import Thresholds
from homelab_ops.settings import parse

TOKEN = "123456:AAplanted-bot-token-for-the-deploy-config"
DSN_PASSWORD = "Pl4nted-state-pw"


def _settings(tmp_path):
    return parse({"timezone": "America/New_York",
                  # nothing listens on port 1: the store's values are not read, and nothing waits for them
                  "state": {"dsn": f"postgresql://homelab:{DSN_PASSWORD}@127.0.0.1:1/homelab"},
                  "postgres": {"dsn": "postgresql://postgres@127.0.0.1:1/postgres", "databases": ["shop"]},
                  "backups": {"local_dir": str(tmp_path / "b"), "max_age_hours": 30,
                              "encryption": {"age_recipients": ["age1" + "q" * 58]}},
                  "metrics": {"textfile_dir": str(tmp_path / "t")},
                  "health": {"interval": "2m"},
                  "notify": {"telegram": {"bot_token": TOKEN}},
                  "pitr": {"enabled": True, "cluster": "pi"},
                  "thresholds": {"temperature_warn_c": 66}}, "test.yaml")


def test_the_config_holds_what_a_deploy_reads(tmp_path):
    c = DeployConfig.of(_settings(tmp_path))
    assert c.pitr.cluster == "pi" and c.postgres.databases == ["shop"] and c.timezone == "America/New_York"
    assert c.backups_dir == str(tmp_path / "b") and c.textfile_dir == str(tmp_path / "t")
    assert c.age_recipients == ("age1" + "q" * 58,) and c.health_interval_s == 120
    # Prometheus' rules judge with the health sensor's numbers: one vocabulary, one set of values
    assert c.thresholds == Thresholds.from_settings(_settings(tmp_path))
    assert c.thresholds.temperature_warn_c == 66 and c.thresholds.backup_age_fail_hours == 30
    assert c.credentials.state.dsn.get_secret_value().endswith("@127.0.0.1:1/homelab")
    assert not hasattr(c, "notify") and not hasattr(c, "backups") and not hasattr(c, "n8n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.timezone = "UTC"


def test_its_repr_hides_the_secrets_and_its_redactor_masks_them(tmp_path):
    c = DeployConfig.of(_settings(tmp_path))
    assert TOKEN not in repr(c) and DSN_PASSWORD not in repr(c)
    text = c.redactor("placed-runner-token")(
        f"bot {TOKEN} state postgresql://homelab:{DSN_PASSWORD}@db/homelab runner placed-runner-token")
    assert TOKEN not in text and DSN_PASSWORD not in text and "placed-runner-token" not in text
    assert "postgresql://homelab:" in text  # the user and host stay readable
