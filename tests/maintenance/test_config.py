"""Disk hygiene and Dagster's run retention take their part of the settings (homelab_ops.maintenance.config)."""

import dataclasses

import pytest

from homelab_ops.maintenance.config import MaintenanceConfig
from homelab_ops.settings import parse


def test_the_config_holds_the_disk_hygiene_section_and_the_docker_host():
    s = parse({"docker": {"host": "unix:///run/planted/docker.sock"},
               "disk_hygiene": {"fstrim_mounts": ["/srv"], "run_retention": "14d"},
               "notify": {"telegram": {"bot_token": "123456:AAplanted-token-maintenance"}}}, "test.yaml")
    c = MaintenanceConfig.of(s)
    assert c.disk_hygiene.fstrim_mounts == ["/srv"] and c.disk_hygiene.run_retention.seconds == 14 * 86400
    assert c.docker_host == "unix:///run/planted/docker.sock"
    assert {f.name for f in dataclasses.fields(c)} == {"disk_hygiene", "docker_host"}
    assert "planted-token" not in repr(c)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.docker_host = "tcp://elsewhere:2375"
