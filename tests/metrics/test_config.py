"""The metrics snapshots and their rollup take their part of the settings (homelab_ops.metrics.config)."""

import dataclasses

import pytest

from homelab_ops.health.config import HealthConfig
from homelab_ops.metrics.config import MetricsConfig
from homelab_ops.settings import parse

TOKEN = "123456:AAplanted-bot-token-for-the-metrics-config"


def test_the_config_holds_what_the_snapshots_read_and_judges_with_the_sensors_numbers(tmp_path):
    s = parse({"timezone": "Europe/Lisbon", "docker": {"host": "unix:///run/planted/docker.sock"},
               "metrics": {"textfile_dir": str(tmp_path / "t"), "containers": ["n8n*"], "raw_retention_days": 9},
               "thresholds": {"temperature_warn_c": 66}, "notify": {"telegram": {"bot_token": TOKEN}}},
              "test.yaml")
    c = MetricsConfig.of(s)
    assert c.metrics.containers == ["n8n*"] and c.metrics.raw_retention_days == 9
    assert c.docker_host == "unix:///run/planted/docker.sock" and c.timezone == "Europe/Lisbon"
    assert c.thresholds == HealthConfig.of(s).thresholds and c.thresholds.temperature_warn_c == 66  # one judgement
    assert {f.name for f in dataclasses.fields(c)} == {"metrics", "thresholds", "docker_host", "timezone"}
    assert TOKEN not in repr(c)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.timezone = "UTC"
