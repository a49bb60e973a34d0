"""Read one snapshot of the host: sysfs, procfs, `vcgencmd`, psutil.

This is the I/O edge of the metrics domain. Roots are settings (`metrics.sys_root`,
`metrics.proc_root`) so tests can point them at a fake tree and a container can point
them at the host's bind-mounted /sys and /proc. A sensor the host lacks is recorded as
absent (a `homelab_sensor_present` sample of 0 and a reason), never raised: most
machines this runs on in tests are not a Pi.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil

from homelab_ops.metrics import throttling

PI_PREFIX = "homelab_pi_"  # the figures node_exporter has no collector for


@dataclass(frozen=True)
class Sample:
    metric: str
    labels: dict[str, str]
    value: float | None


@dataclass
class Snapshot:
    taken_at: datetime
    samples: list[Sample] = field(default_factory=list)
    absent: dict[str, str] = field(default_factory=dict)  # sensor -> why it has no reading

    def add(self, metric: str, value: float | None, **labels: str) -> None:
        self.samples.append(Sample(metric, {k: str(v) for k, v in labels.items()}, value))

    def values(self, metric: str) -> list[Sample]:
        return [s for s in self.samples if s.metric == metric]

    def value(self, metric: str, **labels: str) -> float | None:
        for s in self.samples:
            if s.metric == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        return None

    @property
    def pi_samples(self) -> list[Sample]:
        return [s for s in self.samples if s.metric.startswith(PI_PREFIX)]


# psutil reads /proc through one module-wide setting; snapshots swap it under a lock.
_procfs_lock = threading.Lock()


@contextlib.contextmanager
def _procfs(root: str):
    with _procfs_lock:
        old = psutil.PROCFS_PATH
        psutil.PROCFS_PATH = root
        try:
            yield
        finally:
            psutil.PROCFS_PATH = old


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _number(path: str | Path) -> float | None:
    text = _read(path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _sensor(snap: Snapshot, name: str, present: bool, why_absent: str = "") -> None:
    snap.add("homelab_sensor_present", 1.0 if present else 0.0, sensor=name)
    if not present:
        snap.absent[name] = why_absent


def read_thermal(snap: Snapshot, sys_root: str) -> None:
    """node_thermal_zone_temp in °C, one per /sys/class/thermal/thermal_zone*."""
    found = False
    for zone_dir in sorted(glob.glob(os.path.join(sys_root, "class/thermal/thermal_zone*"))):
        milli = _number(os.path.join(zone_dir, "temp"))
        if milli is None:
            continue
        zone = os.path.basename(zone_dir).removeprefix("thermal_zone")
        kind = _read(os.path.join(zone_dir, "type")) or "unknown"
        snap.add("node_thermal_zone_temp", milli / 1000.0, type=kind, zone=zone)
        found = True
    _sensor(snap, "thermal", found, "no readable thermal zone under class/thermal")


def read_cpufreq(snap: Snapshot, sys_root: str) -> None:
    """Per-CPU frequency (Hz) and governor from cpufreq, as node_exporter's cpufreq collector."""
    found = False
    for cpu_dir in sorted(glob.glob(os.path.join(sys_root, "devices/system/cpu/cpu[0-9]*"))):
        freq_dir = os.path.join(cpu_dir, "cpufreq")
        cpu = os.path.basename(cpu_dir).removeprefix("cpu")
        for fname, metric in (("scaling_cur_freq", "node_cpu_scaling_frequency_hertz"),
                              ("scaling_max_freq", "node_cpu_scaling_frequency_max_hertz"),
                              ("scaling_min_freq", "node_cpu_scaling_frequency_min_hertz")):
            khz = _number(os.path.join(freq_dir, fname))
            if khz is not None:
                snap.add(metric, khz * 1000.0, cpu=cpu)
                found = True
        governor = _read(os.path.join(freq_dir, "scaling_governor"))
        if governor:
            snap.add("node_cpu_scaling_governor", 1.0, cpu=cpu, governor=governor)
    _sensor(snap, "cpufreq", found, "no cpufreq under devices/system/cpu")


def read_rpi_volt(snap: Snapshot, sys_root: str) -> None:
    """The `rpi_volt` hwmon's under-voltage alarm (in0_lcrit_alarm): 1 once it tripped since boot."""
    for hw_dir in sorted(glob.glob(os.path.join(sys_root, "class/hwmon/hwmon*"))):
        if _read(os.path.join(hw_dir, "name")) != "rpi_volt":
            continue
        alarm = _number(os.path.join(hw_dir, "in0_lcrit_alarm"))
        if alarm is not None:
            snap.add("homelab_pi_under_voltage_alarm", float(alarm))
            _sensor(snap, "rpi_volt", True)
            return
    _sensor(snap, "rpi_volt", False, "no rpi_volt hwmon (not a Raspberry Pi)")


# The firmware driver's sysfs attribute (drivers/firmware/raspberrypi.c: `get_throttled`, the word
# in hex without 0x), on the firmware platform device: /sys/devices/platform/soc/soc:firmware on
# a Pi 4; on a Pi 5 the node sits under its own soc bus node, hence the patterns. It needs no
# /dev/vcio: a read-only /sys mount is enough in a container.
THROTTLED_SYSFS = ("devices/platform/soc/soc:firmware/get_throttled",
                   "devices/platform/*firmware*/get_throttled",
                   "devices/platform/*/*firmware*/get_throttled")


def throttled_sysfs_path(sys_root: str) -> str | None:
    for pattern in THROTTLED_SYSFS:
        found = sorted(glob.glob(os.path.join(sys_root, pattern)))
        if found:
            return found[0]
    return None


def read_throttled_sysfs(snap: Snapshot, sys_root: str) -> bool:
    """The throttling word from sysfs; False when this kernel has no such file (try vcgencmd)."""
    path = throttled_sysfs_path(sys_root)
    if path is None:
        return False
    raw = _read(path)
    try:
        word = int(raw, 16)
    except (TypeError, ValueError):
        _sensor(snap, "get_throttled", False, f"{path}: not a hex word ({raw!r})")
        return False
    snap.add("homelab_pi_throttled_word", float(word))
    for (flag, when), on in throttling.decode(word).items():
        snap.add("homelab_pi_throttled", 1.0 if on else 0.0, flag=flag, when=when)
    _sensor(snap, "get_throttled", True)
    return True


def read_vcgencmd(snap: Snapshot, command: str, timeout: float = 3.0) -> None:
    """`vcgencmd get_throttled`, decoded into one 0/1 sample per flag, now and since boot."""
    exe = shutil.which(command)
    if exe is None:
        _sensor(snap, "vcgencmd", False, f"{command} not on PATH (not a Raspberry Pi)")
        return
    try:
        proc = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise throttling.ThrottledOutputError(
                f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:120]}")
        word = throttling.parse_get_throttled(proc.stdout)
    except (OSError, subprocess.TimeoutExpired, throttling.ThrottledOutputError) as e:
        # A Pi whose firmware interface is not reachable (e.g. no /dev/vcio in a container)
        # has no reading; that is a gap in the series, not a failed snapshot.
        _sensor(snap, "vcgencmd", False, f"vcgencmd get_throttled failed: {e}")
        return
    snap.add("homelab_pi_throttled_word", float(word))
    for (flag, when), on in throttling.decode(word).items():
        snap.add("homelab_pi_throttled", 1.0 if on else 0.0, flag=flag, when=when)
    _sensor(snap, "vcgencmd", True)


def read_throttling(snap: Snapshot, sys_root: str, vcgencmd: str) -> str | None:
    """The throttling word from the firmware's sysfs file, else from vcgencmd; returns where it came
    from, None when neither answered (snap.absent says why, per source)."""
    if read_throttled_sysfs(snap, sys_root):
        return throttled_sysfs_path(sys_root)
    read_vcgencmd(snap, vcgencmd)
    return None if "vcgencmd" in snap.absent else "vcgencmd"


# node_exporter's modes of node_cpu_seconds_total; guest time is already inside user and nice.
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_busy_ratio(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Share of CPU time not idle or iowait between two /proc/stat readings (None: no time passed)."""
    total = sum(after.get(k, 0.0) - before.get(k, 0.0) for k in CPU_MODES)
    if total <= 0:
        return None
    idle = sum(after.get(k, 0.0) - before.get(k, 0.0) for k in ("idle", "iowait"))
    return min(1.0, max(0.0, 1.0 - idle / total))


def read_proc(snap: Snapshot, proc_root: str, cpu_window: float) -> None:
    """Memory, swap, CPU, load and uptime from procfs (psutil where it reads them)."""
    with _procfs(proc_root):
        before = psutil.cpu_times()._asdict()
        mem = psutil.virtual_memory()
        swap = psutil.swap_memory()
        boot = psutil.boot_time()
        time.sleep(cpu_window)
        after = psutil.cpu_times()._asdict()
    snap.add("node_memory_MemTotal_bytes", float(mem.total))
    snap.add("node_memory_MemAvailable_bytes", float(mem.available))
    snap.add("node_memory_MemFree_bytes", float(mem.free))
    snap.add("node_memory_Buffers_bytes", float(mem.buffers))
    snap.add("node_memory_SwapTotal_bytes", float(swap.total))
    snap.add("node_memory_SwapFree_bytes", float(swap.free))
    for mode in CPU_MODES:
        if mode in after:
            snap.add("node_cpu_seconds_total", float(after[mode]), mode=mode)
    snap.add("homelab_cpu_busy_ratio", cpu_busy_ratio(before, after))
    snap.add("node_boot_time_seconds", float(boot))
    load = (_read(os.path.join(proc_root, "loadavg")) or "").split()
    for i, name in enumerate(("node_load1", "node_load5", "node_load15")):
        snap.add(name, float(load[i]) if len(load) > i else None)
    uptime = (_read(os.path.join(proc_root, "uptime")) or "").split()
    snap.add("homelab_uptime_seconds", float(uptime[0]) if uptime else None)


def choose_mounts(partitions: list[tuple[str, str, str]], configured: list[str] | None) -> list[tuple[str, str, str]]:
    """(device, mountpoint, fstype) to report: the configured ones, else one per device plus `/`.

    Containers bind-mount single files (/etc/hosts) from the root device; a device is
    reported once, at its shortest mount point, and only directories count.
    """
    by_mount = {mp: (dev, mp, fs) for dev, mp, fs in partitions}
    if configured is not None:
        return [by_mount.get(mp, ("", mp, "")) for mp in configured]
    best: dict[str, tuple[str, str, str]] = {}
    for dev, mp, fs in partitions:
        if dev not in best or len(mp) < len(best[dev][1]):
            best[dev] = (dev, mp, fs)
    chosen = sorted(best.values(), key=lambda p: p[1])
    if "/" not in {p[1] for p in chosen}:
        chosen.insert(0, by_mount.get("/", ("rootfs", "/", "")))
    return chosen


def chosen_mounts(proc_root: str, configured: list[str] | None) -> list[tuple[str, str, str]]:
    """(device, mount point, fstype) of the mounts `metrics.mounts` names, else of every physical one."""
    with _procfs(proc_root):
        parts = [(p.device, p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=False)]
    return choose_mounts([p for p in parts if os.path.isdir(p[1])], configured)


def read_filesystems(snap: Snapshot, proc_root: str, configured: list[str] | None) -> None:
    """Size, free and available bytes per mount (statvfs, as node_exporter's filesystem collector)."""
    for dev, mp, fs in chosen_mounts(proc_root, configured):
        try:
            st = os.statvfs(mp)
        except OSError as e:
            snap.absent[f"filesystem:{mp}"] = str(e)
            continue
        labels = {"mountpoint": mp, "device": dev, "fstype": fs}
        snap.add("node_filesystem_size_bytes", float(st.f_blocks * st.f_frsize), **labels)
        snap.add("node_filesystem_free_bytes", float(st.f_bfree * st.f_frsize), **labels)
        snap.add("node_filesystem_avail_bytes", float(st.f_bavail * st.f_frsize), **labels)


def take_snapshot(metrics_settings, *, now: datetime | None = None, cpu_window: float = 0.25) -> Snapshot:
    """Everything the host_metrics asset records, at one instant."""
    snap = Snapshot(taken_at=now or datetime.now(timezone.utc))
    ms = metrics_settings
    read_thermal(snap, ms.sys_root)
    read_cpufreq(snap, ms.sys_root)
    read_rpi_volt(snap, ms.sys_root)
    read_throttling(snap, ms.sys_root, ms.vcgencmd)
    read_proc(snap, ms.proc_root, cpu_window)
    read_filesystems(snap, ms.proc_root, ms.mounts)
    return snap
