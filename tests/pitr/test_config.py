"""PITR takes its part of the settings, not the whole file (homelab_ops.pitr.config)."""

import dataclasses
from datetime import datetime, timezone

import pytest

from homelab_ops.health.config import HealthConfig
from homelab_ops.pitr.config import PitrConfig
from homelab_ops.pitr.health import check_pitr, pitr_results
from homelab_ops.settings import parse


def _settings(tmp_path, **pitr):
    return parse({"timezone": "America/New_York",
                  "postgres": {"dsn": "postgresql://postgres@127.0.0.1:1/postgres", "databases": ["shop"]},
                  "backups": {"local_dir": str(tmp_path / "b"), "max_age_hours": 30},
                  "metrics": {"textfile_dir": str(tmp_path / "t")},
                  "notify": {"telegram": {"bot_token": "123:planted-token"}},
                  "pitr": pitr}, "test.yaml")


def test_the_config_holds_pitrs_sections_and_nothing_else(tmp_path):
    s = _settings(tmp_path, enabled=True, cluster="pi")
    c = PitrConfig.of(s)
    assert c.pitr.cluster == "pi" and c.backups.max_age_hours == 30
    assert c.postgres.databases == ["shop"] and c.textfile_dir == str(tmp_path / "t")
    assert str(c.tz) == "America/New_York"
    assert {f.name for f in dataclasses.fields(c)} == {"pitr", "backups", "postgres", "timezone", "textfile_dir"}
    assert not hasattr(c, "notify") and "planted-token" not in repr(c)  # SecretStr stays masked
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.timezone = "UTC"


def test_the_health_group_gives_pitr_its_part(tmp_path):
    now = datetime.now(timezone.utc)
    assert check_pitr(HealthConfig.of(_settings(tmp_path)), now) == []  # pitr off: no checks
    s = _settings(tmp_path, enabled=True, cluster="pi")
    # No receiver ever ran and the server is not there: the judgement names the cluster and fails,
    # through the health sensor's group and through PITR's own config alike.
    by_door = {r.name: r.state for r in check_pitr(HealthConfig.of(s), now)}
    direct = {r.name: r.state for r in pitr_results(PitrConfig.of(s), now)}
    assert by_door == direct and by_door["pitr_receiver:pi"] == "fail", by_door
