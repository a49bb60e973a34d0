"""The code location as the web UI and the daemon see it."""

from __future__ import annotations

import dagster as dg

from homelab_ops.definitions import defs as lazy_defs


def load() -> dg.Definitions:
    return lazy_defs() if callable(lazy_defs) else lazy_defs


def test_nightly_backup_runs_at_three_in_the_settings_zone_by_default():
    d = load()
    schedule = d.get_schedule_def("nightly_backup_schedule")
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.execution_timezone == "Europe/Berlin"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    job = d.resolve_job_def("nightly_backup")
    assert job.executor_def is dg.in_process_executor
    assert int(job.tags["dagster/max_runtime"]) > 0


def test_backup_assets_are_keyed_per_database_in_the_backups_group():
    d = load()
    specs = {s.key: s for s in d.resolve_all_asset_specs()}
    assert dg.AssetKey(["backups", "n8n"]) in specs
    assert specs[dg.AssetKey(["backups", "n8n"])].group_name == "backups"
    assert "postgres" in specs[dg.AssetKey(["backups", "n8n"])].kinds
    nightly = d.resolve_job_def("nightly_backup")
    selected = {k for k in nightly.asset_layer.selected_asset_keys}
    assert {dg.AssetKey(["backups", "n8n"]), dg.AssetKey("n8n_workflows"), dg.AssetKey("backup_globals")} <= selected
