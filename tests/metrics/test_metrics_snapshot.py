"""The snapshot against a fake /sys and /proc tree and a fake `vcgencmd`, the real host, and the
real PostgreSQL: what host_metrics records, writes for node_exporter and judges; the daily rollup."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import psycopg
import pytest

from homelab_ops.defs.metrics.assets import host_metrics, host_metrics_daily_asset
from homelab_ops.defs.resources import resources_for
from homelab_ops.metrics.collect import take_snapshot
from homelab_ops.metrics.daily import labels_key
from homelab_ops.state import open_state

from tests.conftest import dsn_for

MEMINFO = """\
MemTotal:        8245360 kB
MemFree:          312000 kB
MemAvailable:     824536 kB
Buffers:          120000 kB
Cached:          2400000 kB
SwapCached:            0 kB
Active:          3000000 kB
Inactive:        2000000 kB
Shmem:             50000 kB
Slab:             300000 kB
SReclaimable:     200000 kB
SwapTotal:       2097148 kB
SwapFree:        1048574 kB
"""


@pytest.fixture
def fake_pi(tmp_path, monkeypatch):
    """A Raspberry Pi 5 as /sys, /proc and vcgencmd see it: 72.5 °C, throttled=0x50005, rpi_volt alarm set."""
    sys_root, proc_root, bin_dir = tmp_path / "sys", tmp_path / "proc", tmp_path / "bin"
    files = {
        sys_root / "class/thermal/thermal_zone0/temp": "72500",
        sys_root / "class/thermal/thermal_zone0/type": "cpu-thermal",
        sys_root / "class/hwmon/hwmon0/name": "cpu_thermal",
        sys_root / "class/hwmon/hwmon1/name": "rpi_volt",
        sys_root / "class/hwmon/hwmon1/in0_lcrit_alarm": "1",
        proc_root / "meminfo": MEMINFO,
        proc_root / "stat": "cpu  1000 20 300 50000 100 5 7 0 0 0\ncpu0 1000 20 300 50000 100 5 7 0 0 0\n"
                            "btime 1764000000\n",
        proc_root / "vmstat": "pswpin 10\npswpout 20\n",
        proc_root / "loadavg": "0.52 0.41 0.30 2/345 6789\n",
        proc_root / "uptime": "123456.78 400000.00\n",
        proc_root / "filesystems": "nodev\tproc\n\text4\n",
        proc_root / "self/mounts": f"proc /proc proc rw 0 0\n/dev/nvme0n1p2 / ext4 rw 0 0\n"
                                   f"/dev/sda1 {tmp_path} ext4 rw 0 0\n",
    }
    for cpu, khz in ((0, 2400000), (1, 1500000)):
        base = sys_root / f"devices/system/cpu/cpu{cpu}/cpufreq"
        files[base / "scaling_cur_freq"] = str(khz)
        files[base / "scaling_max_freq"] = "2400000"
        files[base / "scaling_min_freq"] = "1500000"
        files[base / "scaling_governor"] = "ondemand"
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    bin_dir.mkdir()
    vcgencmd = bin_dir / "vcgencmd"
    vcgencmd.write_text(textwrap.dedent("""\
        #!/bin/sh
        [ "$1" = get_throttled ] || exit 2
        echo "throttled=${FAKE_THROTTLED:-0x50005}"
        """))
    vcgencmd.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return {"sys_root": str(sys_root), "proc_root": str(proc_root), "tmp": tmp_path}


def settings_for(write_settings, fresh_state_db, metrics, name="homelab.yaml", **extra):
    return write_settings({"state": {"dsn": dsn_for(fresh_state_db)}, "metrics": metrics, **extra}, name=name)


def test_snapshot_reads_the_fake_pi_exactly(fake_pi, write_settings, fresh_state_db):
    _, settings = settings_for(write_settings, fresh_state_db, {
        "sys_root": fake_pi["sys_root"], "proc_root": fake_pi["proc_root"]})
    snap = take_snapshot(settings.metrics, cpu_window=0)
    v = snap.value
    assert v("node_thermal_zone_temp", type="cpu-thermal", zone="0") == 72.5
    assert v("node_cpu_scaling_frequency_hertz", cpu="0") == 2.4e9
    assert v("node_cpu_scaling_frequency_hertz", cpu="1") == 1.5e9
    assert v("node_cpu_scaling_frequency_min_hertz", cpu="1") == 1.5e9
    assert v("node_cpu_scaling_governor", cpu="0", governor="ondemand") == 1.0
    assert v("homelab_pi_throttled_word") == 0x50005
    assert v("homelab_pi_throttled", flag="under_voltage", when="now") == 1.0
    assert v("homelab_pi_throttled", flag="throttled", when="since_boot") == 1.0
    assert v("homelab_pi_throttled", flag="arm_frequency_capped", when="now") == 0.0
    assert v("homelab_pi_under_voltage_alarm") == 1.0
    assert v("node_memory_MemTotal_bytes") == 8245360 * 1024
    assert v("node_memory_MemAvailable_bytes") == 824536 * 1024
    assert v("node_memory_MemFree_bytes") == 312000 * 1024
    assert v("node_memory_SwapTotal_bytes") == 2097148 * 1024
    assert v("node_memory_SwapFree_bytes") == 1048574 * 1024
    assert v("node_load1") == 0.52 and v("node_load15") == 0.30
    assert v("homelab_uptime_seconds") == 123456.78
    assert v("node_boot_time_seconds") == 1764000000
    assert v("node_cpu_seconds_total", mode="idle") == 500.0  # USER_HZ ticks / 100
    assert v("homelab_cpu_busy_ratio") is None  # the fake /proc/stat does not move
    mounts = {smp.labels["mountpoint"]: smp.labels for smp in snap.values("node_filesystem_avail_bytes")}
    assert mounts["/"]["device"] == "/dev/nvme0n1p2"
    assert mounts[str(fake_pi["tmp"])] == {"mountpoint": str(fake_pi["tmp"]), "device": "/dev/sda1", "fstype": "ext4"}
    st = os.statvfs(fake_pi["tmp"])
    assert v("node_filesystem_size_bytes", mountpoint=str(fake_pi["tmp"])) == st.f_blocks * st.f_frsize
    assert snap.absent == {}
    assert {smp.labels["sensor"]: smp.value for smp in snap.values("homelab_sensor_present")} == {
        "thermal": 1.0, "cpufreq": 1.0, "rpi_volt": 1.0, "vcgencmd": 1.0}


def test_host_metrics_asset_stores_writes_the_textfile_and_judges(fake_pi, write_settings, fresh_state_db):
    textfile_dir = fake_pi["tmp"] / "node_exporter"
    path, settings = settings_for(write_settings, fresh_state_db, {
        "sys_root": fake_pi["sys_root"], "proc_root": fake_pi["proc_root"], "textfile_dir": str(textfile_dir),
        "mounts": [str(fake_pi["tmp"])]}, thresholds={"disk_free_warn_pct": 101, "disk_free_fail_pct": 0})
    result = dg.materialize([host_metrics], resources=resources_for(str(path)))
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert (checks["temperature"].passed, checks["temperature"].severity) == (False, dg.AssetCheckSeverity.WARN)
    assert "72.5" in checks["temperature"].description
    assert (checks["throttled_now"].passed, checks["throttled_now"].severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert not checks["under_voltage_since_boot"].passed
    assert "under-voltage since boot" in checks["under_voltage_since_boot"].description
    assert (checks["disk_free"].passed, checks["disk_free"].severity) == (False, dg.AssetCheckSeverity.WARN)
    assert str(fake_pi["tmp"]) in checks["disk_free"].description
    assert (checks["memory_available"].passed, checks["memory_available"].severity) == (False, dg.AssetCheckSeverity.WARN)

    with psycopg.connect(settings.state.dsn.get_secret_value()) as c:
        rows = c.execute("SELECT taken_at, metric, labels, value FROM homelab_ops.host_metrics").fetchall()
    assert len({r[0] for r in rows}) == 1  # one snapshot, one instant
    got = {(m, labels_key(lb)): val for _, m, lb, val in rows}
    assert got[("node_thermal_zone_temp", '{"type":"cpu-thermal","zone":"0"}')] == 72.5
    assert got[("homelab_pi_throttled", '{"flag":"under_voltage","when":"since_boot"}')] == 1.0
    assert got[("node_memory_MemAvailable_bytes", "{}")] == 824536 * 1024
    assert ("homelab_cpu_busy_ratio", "{}") in got
    assert {m for m, _ in got if m.startswith("node_filesystem")} == {
        "node_filesystem_size_bytes", "node_filesystem_free_bytes", "node_filesystem_avail_bytes"}

    prom = (textfile_dir / "homelab_pi.prom").read_text().splitlines()
    assert 'homelab_pi_throttled{flag="under_voltage",when="now"} 1.0' in prom
    assert 'homelab_pi_throttled{flag="soft_temperature_limit",when="since_boot"} 0.0' in prom
    assert "homelab_pi_under_voltage_alarm 1.0" in prom
    assert f"homelab_pi_throttled_word {float(0x50005)}" in prom
    assert not any(line.startswith("node_") for line in prom)  # node_exporter's own figures stay out
    assert os.listdir(textfile_dir) == ["homelab_pi.prom"]


def test_a_host_without_pi_sensors_records_them_absent_and_passes(tmp_path, write_settings, fresh_state_db, monkeypatch):
    (tmp_path / "emptysys").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))  # no vcgencmd anywhere
    textfile_dir = tmp_path / "tf"
    path, settings = settings_for(write_settings, fresh_state_db, {
        "sys_root": str(tmp_path / "emptysys"), "textfile_dir": str(textfile_dir)})
    result = dg.materialize([host_metrics], resources=resources_for(str(path)))
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    for name in ("temperature", "throttled_now", "under_voltage_since_boot"):
        assert checks[name].passed and "absent" in checks[name].description
    with psycopg.connect(settings.state.dsn.get_secret_value()) as c:
        present = dict(c.execute("SELECT labels->>'sensor', value FROM homelab_ops.host_metrics"
                                 " WHERE metric = 'homelab_sensor_present'").fetchall())
        pi_rows = c.execute("SELECT count(*) FROM homelab_ops.host_metrics WHERE metric LIKE 'homelab_pi_%'").fetchone()[0]
    assert present == {"thermal": 0.0, "cpufreq": 0.0, "rpi_volt": 0.0, "vcgencmd": 0.0}
    assert pi_rows == 0
    prom = (textfile_dir / "homelab_pi.prom").read_text()
    assert 'homelab_sensor_present{sensor="vcgencmd"} 0.0' in prom and "homelab_pi_throttled{" not in prom


def test_a_pi_read_through_the_firmware_sysfs_file_says_so_in_the_textfile(tmp_path, write_settings, fresh_state_db,
                                                                           monkeypatch):
    """A Pi 5 in a container: /sys mounted read-only, no vcgencmd. The throttling word comes from the
    firmware's sysfs file, and node_exporter's textfile says that sensor is present."""
    sys_root = tmp_path / "sys"
    fw = sys_root / "devices/platform/soc@107c000000/soc@107c000000:firmware"
    fw.mkdir(parents=True)
    (fw / "get_throttled").write_text("50005\n")
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    textfile_dir = tmp_path / "tf"
    path, settings = settings_for(write_settings, fresh_state_db, {
        "sys_root": str(sys_root), "textfile_dir": str(textfile_dir)})
    result = dg.materialize([host_metrics], resources=resources_for(str(path)))
    assert result.success
    prom = (textfile_dir / "homelab_pi.prom").read_text()
    assert 'homelab_sensor_present{sensor="get_throttled"} 1.0' in prom, prom
    assert 'homelab_pi_throttled{flag="under_voltage",when="now"} 1.0' in prom, prom


def test_a_failing_vcgencmd_is_absent_not_an_error(fake_pi, write_settings, fresh_state_db, tmp_path):
    (Path(fake_pi["tmp"]) / "bin" / "vcgencmd").write_text("#!/bin/sh\necho 'VCHI initialization failed' >&2\nexit 1\n")
    _, settings = settings_for(write_settings, fresh_state_db, {"sys_root": fake_pi["sys_root"],
                                                          "proc_root": fake_pi["proc_root"]})
    snap = take_snapshot(settings.metrics, cpu_window=0)
    assert "VCHI initialization failed" in snap.absent["vcgencmd"]
    assert snap.value("homelab_sensor_present", sensor="vcgencmd") == 0.0
    assert snap.value("homelab_pi_under_voltage_alarm") == 1.0  # the hwmon still reads


def test_snapshot_of_the_real_host(write_settings, fresh_state_db):
    """The real /sys, /proc and whatever vcgencmd this machine has: present sensors read, missing ones absent."""
    _, settings = settings_for(write_settings, fresh_state_db, {})
    snap = take_snapshot(settings.metrics)
    assert snap.value("node_memory_MemTotal_bytes") > 0
    assert snap.value("node_filesystem_size_bytes", mountpoint="/") > 0
    assert snap.value("homelab_uptime_seconds") > 0 and snap.value("node_load1") is not None
    assert 0.0 <= snap.value("homelab_cpu_busy_ratio") <= 1.0
    has_zones = any(Path("/sys/class/thermal").glob("thermal_zone*/temp"))
    assert (snap.value("homelab_sensor_present", sensor="thermal") == 1.0) is has_zones
    if shutil.which("vcgencmd") is None:
        assert "vcgencmd" in snap.absent
    else:
        assert "vcgencmd" in snap.absent or snap.value("homelab_pi_throttled_word") is not None


def test_daily_rollup_over_dst_reruns_identically_and_applies_retention(write_settings, fresh_state_db):
    tz = ZoneInfo("Europe/Berlin")
    path, settings = settings_for(write_settings, fresh_state_db, {"raw_retention_days": 14},
                                  timezone="Europe/Berlin")
    day = date(2025, 10, 26)  # 25 hours in Berlin

    raw = []
    # every 15 minutes in UTC from an hour before the day to an hour after it (the repeated hour too)
    t = datetime(2025, 10, 25, 23, 0, tzinfo=tz).astimezone(timezone.utc)
    i = 0
    while t < datetime(2025, 10, 27, 1, 0, tzinfo=tz).astimezone(timezone.utc):
        raw.append((t, "node_thermal_zone_temp", '{"type": "cpu-thermal", "zone": "0"}', 40.0 + i % 7))
        raw.append((t, "node_load1", "{}", None if i % 5 == 0 else i / 10))
        t += timedelta(minutes=15)
        i += 1
    recent = datetime.now(timezone.utc) - timedelta(days=1)
    old = datetime.now(timezone.utc) - timedelta(days=15)
    raw += [(recent, "node_load1", "{}", 1.0), (old, "node_load1", "{}", 2.0)]
    with open_state(settings.state, settings.postgres) as c:
        with c.cursor() as cur:
            cur.executemany("INSERT INTO homelab_ops.host_metrics VALUES (%s, %s, %s, %s)", raw)
        c.commit()

    # Independent computation: a sample belongs to the day its instant falls on in Berlin.
    expected = {}
    for taken, metric, labels, value in raw:
        if taken.astimezone(tz).date() == day:
            expected.setdefault((metric, labels_key(json.loads(labels))), []).append(value)
    assert len(expected[("node_thermal_zone_temp", '{"type":"cpu-thermal","zone":"0"}')]) == 100  # 25 h x 4

    asset = host_metrics_daily_asset(settings.metrics, settings.timezone)
    resources = resources_for(str(path))
    assert dg.materialize([asset], partition_key="2025-10-26", resources=resources).success

    def stored():
        with psycopg.connect(settings.state.dsn.get_secret_value()) as c:
            return c.execute("SELECT metric, labels, samples, min, mean, max FROM homelab_ops.host_metrics_daily"
                             " WHERE day = %s ORDER BY metric, labels::text", (day,)).fetchall()

    first = stored()
    got = {(m, labels_key(lb)): (n, lo, mean, hi) for m, lb, n, lo, mean, hi in first}
    assert set(got) == set(expected)
    for key, values in expected.items():
        vals = [v for v in values if v is not None]
        n, lo, mean, hi = got[key]
        assert (n, lo, hi) == (len(vals), min(vals), max(vals))
        assert mean == pytest.approx(sum(vals) / len(vals))
    with psycopg.connect(settings.state.dsn.get_secret_value()) as c:
        left = c.execute("SELECT min(taken_at) FROM homelab_ops.host_metrics").fetchone()[0]
        assert left > datetime.now(timezone.utc) - timedelta(days=14)  # 15-day-old raw row pruned
        assert c.execute("SELECT count(*) FROM homelab_ops.host_metrics WHERE taken_at = %s",
                         (recent,)).fetchone()[0] == 1
    # 2025-10-26 is long past retention now: its raw rows are gone, the stored rollup is kept as it was.
    result = dg.materialize([asset], partition_key="2025-10-26", resources=resources)
    assert result.asset_materializations_for_node("host_metrics_daily")[0].metadata["kept_stored"].value is True
    assert stored() == first
