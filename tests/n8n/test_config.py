"""n8n's rollup and the workflow secrets scan take their part of the settings (homelab_ops.n8n.config)."""

import dataclasses

import pytest

from homelab_ops.health.config import HealthConfig
from homelab_ops.n8n.config import N8nConfig
from homelab_ops.settings import parse

N8N_PW = "Pl4nted-n8n-db-password"


def test_the_config_holds_n8ns_section_the_zone_and_the_one_set_of_thresholds():
    s = parse({"timezone": "America/Chicago",
               "n8n": {"dsn": f"postgresql://n8n:{N8N_PW}@127.0.0.1:1/n8n", "table_prefix": "x_",
                       "failure_rate_warn": 0.3}}, "test.yaml")
    c = N8nConfig.of(s)
    assert c.n8n.table_prefix == "x_" and c.timezone == "America/Chicago"
    assert c.thresholds == HealthConfig.of(s).thresholds and c.thresholds.n8n_failure_rate_warn == 0.3
    assert {f.name for f in dataclasses.fields(c)} == {"n8n", "thresholds", "timezone"}
    assert N8N_PW not in repr(c)
    assert N8nConfig.of(parse({}, "empty.yaml")).n8n is None  # no n8n section: nothing of n8n's runs
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.timezone = "UTC"
