"""Pure metrics logic, no services: throttling bits, thresholds, rollup maths, time, text format."""

from __future__ import annotations

import math
import os
import stat
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from homelab_ops.health.checks import Thresholds
from homelab_ops.metrics import daily, textfile, thresholds, throttling
from homelab_ops.metrics.collect import Sample, choose_mounts, cpu_busy_ratio
from homelab_ops.settings import SettingsError, parse


# ---------------------------------------------------------------- throttling


def test_decode_names_every_bit_now_and_since_boot():
    # 0x50005: under-voltage now (0), throttled now (2), under-voltage (16) and throttling (18) since boot.
    flags = throttling.decode(throttling.parse_get_throttled("throttled=0x50005\n"))
    assert flags == {
        ("under_voltage", "now"): True, ("under_voltage", "since_boot"): True,
        ("arm_frequency_capped", "now"): False, ("arm_frequency_capped", "since_boot"): False,
        ("throttled", "now"): True, ("throttled", "since_boot"): True,
        ("soft_temperature_limit", "now"): False, ("soft_temperature_limit", "since_boot"): False,
    }
    assert throttling.active(0x80008, "now") == ["soft_temperature_limit"]
    assert throttling.active(0x20000, "since_boot") == ["arm_frequency_capped"]
    assert throttling.active(0x0, "now") == [] and throttling.active(0x0, "since_boot") == []


def test_each_bit_maps_to_exactly_one_flag():
    for name, bit in throttling.FLAGS.items():
        assert throttling.active(1 << bit, "now") == [name]
        assert throttling.active(1 << (bit + 16), "since_boot") == [name]
        assert throttling.active(1 << bit, "since_boot") == []


def test_parse_get_throttled_rejects_other_output():
    assert throttling.parse_get_throttled("throttled=0x0") == 0
    with pytest.raises(throttling.ThrottledOutputError):
        throttling.parse_get_throttled("VCHI initialization failed")


# ---------------------------------------------------------------- thresholds


def s(metric, value, **labels):
    return Sample(metric, {k: str(v) for k, v in labels.items()}, value)


def th(**over) -> Thresholds:
    return Thresholds.defaults(**over)


def by_check(outcomes):
    return {o.check: o for o in outcomes}


@pytest.mark.parametrize("celsius, passed, severity", [(69.9, True, None), (70.0, False, "WARN"),
                                                        (79.9, False, "WARN"), (80.0, False, "ERROR")])
def test_the_temperature_check_shows_the_health_checks_judgement_of_the_cpu_zone(celsius, passed, severity):
    samples = [s("node_thermal_zone_temp", 95.0, type="gpu", zone="1"),  # hotter, but not the CPU's zone
               s("node_thermal_zone_temp", celsius, type="cpu-thermal", zone="0")]
    o = by_check(thresholds.evaluate(samples, th()))["temperature"]
    assert o.passed is passed and "cpu-thermal" in o.description
    assert o.metadata["judged_by"] == "health check cpu_temperature"
    if severity:
        assert o.severity == severity


def throttled(word):
    return [s("homelab_pi_throttled", float(on), flag=f, when=w) for (f, w), on in throttling.decode(word).items()]


@pytest.mark.parametrize("word, passed, severity", [
    (0x0, True, None), (0x50000, True, None),  # only since boot: not "now"
    (0x1, False, "ERROR"), (0x4, False, "ERROR"), (0x2, False, "WARN"), (0x8, False, "WARN")])
def test_throttled_now(word, passed, severity):
    o = by_check(thresholds.evaluate(throttled(word), th()))["throttled_now"]
    assert o.passed is passed
    if severity:
        assert o.severity == severity


def test_under_voltage_since_boot_from_either_source():
    def uv(samples):
        return by_check(thresholds.evaluate(samples, th()))["under_voltage_since_boot"]

    assert uv(throttled(0x0)).passed
    o = uv(throttled(0x10000))
    assert not o.passed and o.severity == "WARN" and "power supply" in o.description
    assert not uv([s("homelab_pi_under_voltage_alarm", 1.0)]).passed
    assert uv([s("homelab_pi_under_voltage_alarm", 0.0)]).passed


def test_absent_sensors_pass_and_say_so():
    memory = [s("node_memory_MemTotal_bytes", 100.0), s("node_memory_MemAvailable_bytes", 50.0)]
    for o in thresholds.evaluate(memory, th())[:3]:
        assert o.passed and "absent" in o.description and o.metadata["absent"] is True


def test_disk_free_names_the_worst_mounts_and_takes_the_worst_level():
    samples = []
    for mp, avail in (("/", 40.0), ("/mnt/backup", 10.0), ("/var/lib/docker", 3.0), ("/boot", 4.0)):
        samples += [s("node_filesystem_size_bytes", 100.0, mountpoint=mp), s("node_filesystem_avail_bytes", avail, mountpoint=mp)]
    o = by_check(thresholds.evaluate(samples, th()))["disk_free"]
    assert not o.passed and o.severity == "ERROR"
    assert o.description.startswith("/boot: 4.0% free") and "/var/lib/docker: 3.0% free" in o.description
    assert "/mnt/backup" not in o.description  # only the worst level is named
    o = by_check(thresholds.evaluate(samples[:4], th()))["disk_free"]
    assert not o.passed and o.severity == "WARN" and "/mnt/backup: 10.0% free" in o.description
    assert by_check(thresholds.evaluate(samples[:2], th()))["disk_free"].passed


@pytest.mark.parametrize("avail, passed, severity", [(15.0, True, None), (14.9, False, "WARN"), (4.9, False, "ERROR")])
def test_memory_available(avail, passed, severity):
    o = by_check(thresholds.evaluate(
        [s("node_memory_MemTotal_bytes", 100.0), s("node_memory_MemAvailable_bytes", avail)], th()))["memory_available"]
    assert o.passed is passed and (severity is None or o.severity == severity)


def test_one_thresholds_section_and_the_old_two_still_load(caplog):
    with pytest.raises(SettingsError, match="unknown threshold temp_warn"):
        parse({"thresholds": {"temp_warn": 60}}, "t.yaml")
    with pytest.raises(SettingsError, match="metrics.thresholds.temp_warn: unknown threshold"):
        parse({"metrics": {"thresholds": {"temp_warn": 60}}}, "t.yaml")
    t = Thresholds.from_settings(parse({"thresholds": {"temperature_warn_c": 65}}, "t.yaml"))
    assert (t.temperature_warn_c, t.temperature_fail_c) == (65, 80)
    with caplog.at_level("WARNING"):
        old = parse({"metrics": {"thresholds": {"temperature_error_c": 77, "disk_free_warn_pct": 20}},
                     "health": {"thresholds": {"disk_free_warn_pct": 25}},
                     "thresholds": {"memory_available_warn_pct": 30}}, "t.yaml")
    t = Thresholds.from_settings(old)
    assert (t.temperature_fail_c, t.disk_free_warn_pct, t.memory_available_warn_pct) == (77, 25, 30)
    assert "metrics.thresholds.temperature_error_c is deprecated: write thresholds.temperature_fail_c" in caplog.text


# ---------------------------------------------------------------- rollup maths and time


def test_rollup_min_mean_max_per_series():
    d = date(2025, 3, 30)
    rows = [("t", {"zone": "0", "type": "cpu"}, 50.0), ("t", {"type": "cpu", "zone": "0"}, 60.0),
            ("t", {"type": "cpu", "zone": "0"}, 58.0), ("t", {"zone": "1"}, 1.0),
            ("ratio", {}, None), ("ratio", {}, 0.25), ("gone", {}, None), ("nan", {}, float("nan"))]
    got = {(r.metric, daily.labels_key(r.labels)): r for r in daily.rollup(d, rows)}
    cpu = got[("t", '{"type":"cpu","zone":"0"}')]
    assert (cpu.samples, cpu.min, cpu.max) == (3, 50.0, 60.0) and math.isclose(cpu.mean, 56.0)
    assert got[("t", '{"zone":"1"}')].samples == 1
    assert (got[("ratio", "{}")].samples, got[("ratio", "{}")].mean) == (1, 0.25)
    assert got[("gone", "{}")] == daily.DailyRow(d, "gone", {}, 0, None, None, None)
    assert got[("nan", "{}")].samples == 0
    assert daily.rollup(d, []) == []


def test_day_bounds_follow_dst_in_the_time_zone():
    berlin = ZoneInfo("Europe/Berlin")
    for day, hours in ((date(2025, 3, 30), 23), (date(2025, 10, 26), 25), (date(2025, 10, 27), 24)):
        lo, hi = daily.day_bounds(day, "Europe/Berlin")
        assert hi - lo == timedelta(hours=hours)
        assert lo.astimezone(berlin).date() == day and (hi - timedelta(microseconds=1)).astimezone(berlin).date() == day
    # consecutive days tile time, also where midnight itself is skipped (Santiago, 2022-09-11 00:00 -> 01:00)
    _, hi = daily.day_bounds(date(2022, 9, 10), "America/Santiago")
    lo, _ = daily.day_bounds(date(2022, 9, 11), "America/Santiago")
    assert hi == lo == datetime(2022, 9, 11, 4, 0, tzinfo=timezone.utc)


def test_cron_for_snapshot_intervals():
    assert daily.cron_for(15 * 60) == "*/15 * * * *"
    assert daily.cron_for(60) == "* * * * *"
    assert daily.cron_for(3600) == "0 * * * *"
    assert daily.cron_for(6 * 3600) == "0 */6 * * *"
    for bad in (90, 7 * 60, 5 * 3600, 30):
        with pytest.raises(ValueError):
            daily.cron_for(bad)


def test_cpu_busy_ratio_ignores_guest_time():
    before = {"user": 100.0, "system": 50.0, "idle": 800.0, "iowait": 50.0, "guest": 10.0}
    after = {"user": 130.0, "system": 60.0, "idle": 850.0, "iowait": 60.0, "guest": 40.0}
    assert cpu_busy_ratio(before, after) == pytest.approx(40 / 100)
    assert cpu_busy_ratio(before, before) is None


def test_choose_mounts_one_per_device_and_always_root():
    parts = [("/dev/sda1", "/", "ext4"), ("/dev/sda1", "/etc/hosts", "ext4"), ("/dev/sdb1", "/mnt/backup", "ext4"),
             ("/dev/sdb1", "/mnt/backup/sub", "ext4")]
    assert choose_mounts(parts, None) == [("/dev/sda1", "/", "ext4"), ("/dev/sdb1", "/mnt/backup", "ext4")]
    assert choose_mounts([("/dev/sdb1", "/data", "xfs")], None)[0][1] == "/"
    assert choose_mounts(parts, ["/mnt/backup", "/srv"]) == [("/dev/sdb1", "/mnt/backup", "ext4"), ("", "/srv", "")]


# ---------------------------------------------------------------- textfile


def test_render_is_prometheus_text_with_help_and_type_once():
    text = textfile.render([
        Sample("homelab_pi_throttled", {"when": "now", "flag": "under_voltage"}, 1.0),
        Sample("homelab_pi_throttled", {"flag": "throttled", "when": "now"}, 0.0),
        Sample("homelab_pi_under_voltage_alarm", {}, None),  # absent: left out
        Sample("homelab_sensor_present", {"sensor": 'we"ird\\'}, 0.0),
    ], 1700000000.5)
    lines = text.splitlines()
    assert lines.count("# TYPE homelab_pi_throttled gauge") == 1
    assert 'homelab_pi_throttled{flag="throttled",when="now"} 0.0' in lines
    assert 'homelab_pi_throttled{flag="under_voltage",when="now"} 1.0' in lines
    assert 'homelab_sensor_present{sensor="we\\"ird\\\\"} 0.0' in lines
    assert "homelab_pi_snapshot_timestamp_seconds 1700000000.5" in lines
    assert "homelab_pi_under_voltage_alarm" not in text
    assert text.endswith("\n")


def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path):
    d = tmp_path / "textfile"
    textfile.write_atomically(d, "a 1\n")
    path = textfile.write_atomically(d, "a 2\n")
    assert path.read_text() == "a 2\n"
    assert os.listdir(d) == ["homelab_pi.prom"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
