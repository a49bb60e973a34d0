"""The code location as the web UI and the daemon see it."""

from __future__ import annotations

import dagster as dg

from homelab_ops.backups.config import BackupsConfig
from homelab_ops.definitions import defs as lazy_defs


def load() -> dg.Definitions:
    return lazy_defs() if callable(lazy_defs) else lazy_defs


def load_from(path, monkeypatch) -> dg.Definitions:
    """The location as the daemon builds it from the settings file at `path`, in this process:
    each domain reads the file named by HOMELAB_CONFIG, parsed once per path."""
    monkeypatch.setenv("HOMELAB_CONFIG", str(path))
    return load()


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
    demo = dg.AssetKey(["backups", "homelab_demo_n8n_backup"])  # the embedded defaults back up make demo's database
    assert demo in specs
    assert specs[demo].group_name == "backups"
    assert "postgres" in specs[demo].kinds
    nightly = d.resolve_job_def("nightly_backup")
    selected = {k for k in nightly.asset_layer.selected_asset_keys}
    assert {demo, dg.AssetKey("n8n_workflows"), dg.AssetKey("backup_globals")} <= selected


def test_all_databases_means_every_non_template_database(new_db, write_settings):
    from homelab_ops.backups.sources import backed_up

    db = new_db("every")
    _, settings = write_settings({"postgres": {"dsn": "postgresql://postgres@127.0.0.1:5432/postgres",
                                               "databases": "all"}})
    names = backed_up(BackupsConfig.of(settings))
    assert db in names and "postgres" in names
    assert "template0" not in names and "template1" not in names


def test_all_databases_with_the_server_down_falls_back_to_the_backed_up_ones(write_settings, monkeypatch,
                                                                            caplog):
    """The location still loads, and with it the health sensor that reports the outage."""
    from pathlib import Path

    from homelab_ops.backups.sources import backed_up
    from tests.conftest import free_port

    path, settings = write_settings({"postgres": {"dsn": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
                                                  "databases": "all"}})
    root = Path(settings.backups.local_dir)
    for folder in ("app", "n8n", "_globals", "n8n_workflows", "lost+found", "empty"):
        (root / folder).mkdir(parents=True)
    for folder in ("app", "n8n", "_globals", "lost+found"):  # a complete backup: dump and manifest
        (root / folder / "20261101T030000Z.dump.zst").write_bytes(b"x")
        (root / folder / "20261101T030000Z.manifest.json").write_text("{}")
    # Not the roles or the exports, not a folder without a backup, not a name that cannot be a key.
    assert backed_up(BackupsConfig.of(settings)) == ["app", "n8n"]

    d = load_from(path, monkeypatch)
    assert sorted(k.to_user_string() for k in d.resolve_all_asset_keys() if k.path[0] == "backups") == [
        "backups/app_backup", "backups/n8n_backup"]
    assert "health_sensor" in {s.name for s in d.sensors}
    assert "did not answer" in caplog.text


def test_dagster_validates_the_module_and_the_workspace():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "HOMELAB_CONFIG"}
    # The workspace loads the module (`-m homelab_ops.definitions`, which the settings-error test runs).
    proc = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                          capture_output=True, text=True, cwd=root, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_the_location_loads_from_an_installed_package_with_no_pyproject_above_it(tmp_path, write_settings):
    """The image installs homelab_ops into site-packages (`uv sync --no-editable`): no pyproject.toml
    or dg.toml is found above it there, so nothing may depend on [tool.dg] to find the defs folder."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import homelab_ops

    site = tmp_path / "site-packages"
    shutil.copytree(Path(homelab_ops.__file__).parent, site / "homelab_ops",
                    ignore=shutil.ignore_patterns("__pycache__"))
    path, _ = write_settings({})
    probe = ("import homelab_ops, homelab_ops.definitions as m; print(homelab_ops.__file__); "
             "print(len(m.defs().resolve_all_job_defs()) > 10)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "HOMELAB_CONFIG": str(path), "PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [str(site / "homelab_ops" / "__init__.py"), "True"]


def test_ad_hoc_materializations_run_in_one_process():
    d = load()
    assert d.executor is dg.in_process_executor
    assert d.resolve_implicit_global_asset_job_def().executor_def is dg.in_process_executor


def test_with_pitr_and_s3_the_archive_goes_off_site_hourly_and_with_offsite_sync(write_settings, monkeypatch):
    """`offsite/_pitr_offsite` runs on pitr.offsite_cron, after each base backup, and in the owner's catch-up job."""
    path, _ = write_settings({"postgres": {"databases": ["app"]},
                              "backups": {"s3": [{"bucket": "pi", "endpoint_url": "http://127.0.0.1:9"}]},
                              "pitr": {"enabled": True, "offsite_cron": "5 * * * *"}})
    d = load_from(path, monkeypatch)
    assert not any(s.name.startswith("job_heartbeat") for s in d.sensors), "no notify.heartbeat"

    def keys(job: str) -> list[str]:
        return sorted(k.to_user_string() for k in d.resolve_job_def(job).asset_layer.selected_asset_keys)

    assert keys("offsite_sync") == ["offsite/_globals_offsite", "offsite/_pitr_offsite", "offsite/app_offsite"]
    assert keys("base_backup") == ["base_backups/main_base_backup", "offsite/_pitr_offsite"]
    assert keys("pitr_offsite") == ["offsite/_pitr_offsite"]
    assert d.get_schedule_def("pitr_offsite_schedule").cron_schedule == "5 * * * *"


def test_job_heartbeat_sensors_exist_only_when_a_job_has_a_monitor(write_settings, monkeypatch):
    """Three run-status sensors tick every 30 s in the daemon; without notify.heartbeat they would
    do nothing but cost the Pi's CPU."""
    path, _ = write_settings({"notify": {"heartbeat": {"nightly_backup": "http://127.0.0.1:9/ping/abc"}}})
    d = load_from(path, monkeypatch)
    assert sorted(s.name for s in d.sensors if s.name.startswith("job_heartbeat")) == [
        "job_heartbeat_fail", "job_heartbeat_start", "job_heartbeat_success"]


def test_every_box_in_the_lineage_graph_has_its_own_title(write_settings, monkeypatch):
    """The graph titles a box with the key's last part alone: with every kind of backed-up thing
    configured (two databases, n8n, a Redis source, S3, PITR) no two boxes may read the same, and a
    database's steps read as what they are."""
    import collections

    from tests.conftest import free_port

    path, _ = write_settings({"postgres": {"databases": ["app", "n8n"]},
                              "n8n": {"dsn": "postgresql://n8n@127.0.0.1:9/n8n"},
                              "backups": {"s3": [{"bucket": "pi", "endpoint_url": "http://127.0.0.1:9"}],
                                          "sources": [{"type": "redis", "name": "cache", "port": free_port()}]},
                              "pitr": {"enabled": True}})
    keys = load_from(path, monkeypatch).resolve_all_asset_keys()
    titles = collections.defaultdict(list)
    for k in keys:
        titles[k.path[-1]].append(k.to_user_string())
    assert {t: ks for t, ks in titles.items() if len(ks) > 1} == {}
    for thing in ("app", "n8n", "cache"):
        assert {f"{thing}_backup", f"{thing}_verification", f"{thing}_retention", f"{thing}_offsite"} <= set(titles)
    assert {"main_base_backup", "main_pitr_verification", "_pitr_offsite", "n8n_workflows_retention"} <= set(titles)
