"""One condition, one message: the CPU at 85 °C (a fake sysfs) fails the host_metrics asset check with
ERROR severity and the health check cpu_temperature; of the two alerting sensors only health_sensor
tells the owner, once, over the fake Bot API. Real Dagster instance, real asset, real sensors."""

from __future__ import annotations

import time
import warnings

import dagster as dg
import pytest

from homelab_ops.defs.health.resources import AlertChannels
from homelab_ops.defs.health.sensors import build_asset_check_sensor, build_health_sensor
from homelab_ops.defs.metrics.assets import host_metrics
from homelab_ops.defs.resources import resources_for
from homelab_ops.health.evaluate import GROUPS, check_host, run_checks
from homelab_ops.notify import chats as ch
from tests.conftest import dsn_for
from tests.fake_telegram import TOKEN, FakeTelegram
from tests.metrics.test_metrics_snapshot import MEMINFO

OWNER = 7


@pytest.fixture
def hot_pi(tmp_path):
    sys_root, proc_root = tmp_path / "sys", tmp_path / "proc"
    for path, text in {
        sys_root / "class/thermal/thermal_zone0/temp": "85000",
        sys_root / "class/thermal/thermal_zone0/type": "cpu-thermal",
        proc_root / "meminfo": MEMINFO,
        proc_root / "stat": "cpu  1000 20 300 50000 100 5 7 0 0 0\nbtime 1764000000\n",
        proc_root / "loadavg": "0.52 0.41 0.30 2/345 6789\n",
        proc_root / "uptime": "123456.78 400000.00\n",
        proc_root / "filesystems": "\text4\n",
        proc_root / "self/mounts": f"/dev/sda1 {tmp_path} ext4 rw 0 0\n",
    }.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {"sys_root": str(sys_root), "proc_root": str(proc_root), "mounts": [str(tmp_path)],
            "textfile_dir": str(tmp_path / "textfile"), "vcgencmd": str(tmp_path / "no-vcgencmd")}


def owner_listening(path, settings) -> dict:
    """The owner's chat approved for warnings, and the resources both alerting sensors read."""
    with ch.state_connection(settings.state, settings.postgres) as conn:
        ch.add(conn, OWNER, "owner", "warn")
    return {**resources_for(str(path)),
            "alert_channels": AlertChannels(telegram_bot_token=TOKEN, backoff_s=0.01, redact_credentials=False)}


def tick_both(checks, health, instance, defs, resources, ticks: int = 3) -> None:
    """Three ticks of each alerting sensor, as the daemon runs them: still one message."""
    cursors: dict[str, str | None] = {"health_sensor": None, "asset_check_alert": None}
    for _ in range(ticks):
        for sensor in (checks, health):
            ctx = dg.build_sensor_context(instance=instance, cursor=cursors[sensor.name], definitions=defs,
                                          resources=resources)
            cursors[sensor.name] = sensor.evaluate_tick(ctx).cursor


def test_one_hot_cpu_is_one_message(hot_pi, write_settings, fresh_state_db):
    telegram = FakeTelegram().start()
    try:
        path, settings = write_settings({"state": {"dsn": dsn_for(fresh_state_db)}, "metrics": hot_pi,
                                         "notify": {"telegram": {"api_base": telegram.url}}})
        resources = owner_listening(path, settings)
        host_group = [g for g in GROUPS if g[0] is check_host]
        health = build_health_sensor([], evaluate=lambda s: run_checks(s, groups=host_group))
        checks = build_asset_check_sensor()
        defs = dg.Definitions(assets=[host_metrics], sensors=[health, checks], resources=resources)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with dg.instance_for_test() as instance:
                result = dg.materialize([host_metrics], resources=resources, instance=instance)
                evaluation = {e.check_name: e for e in result.get_asset_check_evaluations()}["temperature"]
                # The condition is there for both paths: an ERROR asset check and a failing health check.
                assert (evaluation.passed, evaluation.severity) == (False, dg.AssetCheckSeverity.ERROR)
                assert "cpu-thermal at 85.0 °C" in evaluation.description

                tick_both(checks, health, instance, defs, resources)
        about_heat = [t for t in telegram.texts_to(OWNER) if "85.0 °C" in t]
        assert len(about_heat) == 1, telegram.texts_to(OWNER)
        assert "cpu_temperature" in about_heat[0]
    finally:
        telegram.stop()


def test_a_missing_and_a_stale_backup_are_one_message_each(write_settings, fresh_state_db, tmp_path):
    """A database never backed up, and one whose newest restored backup is 30 hours old: the freshness
    check fails (ERROR) in the UI and backup_age fails in the health sensor, judged by the same function
    against the same number and saying the same; only health_sensor tells, once for each."""
    from homelab_ops.backups.config import BackupsConfig
    from homelab_ops.backups.verify import FRESHNESS_METRIC
    from homelab_ops.defs.backups.verification import freshness_check
    from homelab_ops.health.evaluate import check_backups

    telegram = FakeTelegram().start()
    try:
        db, stale = "never_backed_up", "restored_long_ago"
        textfile = tmp_path / "textfile"
        textfile.mkdir()
        # As verification published it 30 h ago; the copy it restored has since left every store.
        (textfile / f"homelab_backup_{stale}.prom").write_text(
            f'{FRESHNESS_METRIC}{{database="{stale}"}} {time.time() - 30 * 3600:.0f}\n')
        path, settings = write_settings({"state": {"dsn": dsn_for(fresh_state_db)},
                                         "postgres": {"databases": [db, stale]},
                                         "metrics": {"textfile_dir": str(textfile)},
                                         "notify": {"telegram": {"api_base": telegram.url}}})
        resources = owner_listening(path, settings)
        fresh = [freshness_check(name, BackupsConfig.of(settings)) for name in (db, stale)]
        job = dg.define_asset_job("backup_freshness", selection=dg.AssetSelection.checks(*fresh))
        health = build_health_sensor([], evaluate=lambda s: run_checks(
            s, groups=[g for g in GROUPS if g[0] is check_backups]))
        checks = build_asset_check_sensor()
        defs = dg.Definitions(asset_checks=fresh, jobs=[job], sensors=[health, checks], resources=resources)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with dg.instance_for_test() as instance:
                result = defs.resolve_job_def("backup_freshness").execute_in_process(instance=instance)
                shown = {e.asset_key.path[-1]: e for e in result.get_asset_check_evaluations()}
                assert {(e.passed, e.severity) for e in shown.values()} == {(False, dg.AssetCheckSeverity.ERROR)}
                assert shown[f"{db}_verification"].description == f"{db}: no backup at all"
                assert shown[f"{stale}_verification"].description == f"{stale}: newest verified backup is 30.0h old (limit 26h)"
                tick_both(checks, health, instance, defs, resources)
        for name in (db, stale):
            about = [t for t in telegram.texts_to(OWNER) if name in t]
            assert len(about) == 1, telegram.texts_to(OWNER)
            assert f"backup_age:{name}" in about[0] and shown[f"{name}_verification"].description in about[0]
    finally:
        telegram.stop()
