"""What a newcomer sees in the web UI: every definition explains itself, groups read as areas."""

from __future__ import annotations

import warnings

from homelab_ops.definitions import defs as lazy_defs

AREAS = {"backups", "credentials", "metrics", "n8n", "health", "deploy"}


def load():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lazy_defs()


def test_every_asset_has_a_description_an_area_and_what_it_touches():
    d = load()
    for spec in d.resolve_all_asset_specs():
        name = spec.key.to_user_string()
        assert spec.description and len(spec.description) > 40, name
        assert spec.group_name in AREAS, (name, spec.group_name)
        if name.startswith(("backups/", "restore_verification/", "n8n_")):
            assert "postgres" in spec.kinds or "n8n" in spec.kinds, name


def test_the_groups_are_the_homelabs_areas_and_deploy_has_a_box_per_service():
    from homelab_ops.settings import MonitoringServices

    specs = load().resolve_all_asset_specs()
    assert {s.group_name for s in specs} == AREAS
    services = {s.key.path[-1]: s for s in specs if s.group_name == "deploy"}
    assert set(services) == {*MonitoringServices.model_fields, "traefik"}
    assert "switched off" in services["n8n_runner"].description  # off by default, and its box says so
    assert "pitr.enabled is false" in services["wal_receiver"].description
    assert "switched off" not in services["prometheus"].description


def test_every_job_schedule_and_sensor_has_a_description():
    d = load()
    jobs = [j for j in d.resolve_all_job_defs() if not j.name.startswith("__")]
    assert {"nightly_backup", "verify_backups", "rotate_credentials", "deploy_monitoring", "deploy_traefik",
            "tune_monitoring"} <= {j.name for j in jobs}
    for item in [*jobs, *d.schedules, *d.sensors]:
        assert item.description and len(item.description) > 20, item.name
