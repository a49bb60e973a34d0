"""The Pi-only figures in Prometheus text format, for node_exporter's textfile collector.

node_exporter has no collector for the firmware's throttling word or the rpi_volt
alarm, so every snapshot leaves them in `<textfile_dir>/homelab_pi.prom`. The file is
replaced with tmp + rename: the collector must never read a half-written file.
"""

from __future__ import annotations

import os
from pathlib import Path

from homelab_ops.files import write_atomic
from homelab_ops.metrics.collect import Sample

FILENAME = "homelab_pi.prom"

HELP = {
    "homelab_pi_throttled": "Raspberry Pi firmware throttling flag (vcgencmd get_throttled), now or since boot.",
    "homelab_pi_throttled_word": "Raw vcgencmd get_throttled word.",
    "homelab_pi_under_voltage_alarm": "rpi_volt hwmon in0_lcrit_alarm: 1 once under-voltage was seen since boot.",
    "homelab_sensor_present": "1 when the host has the sensor, 0 when it lacks it (not a Pi).",
    "homelab_pi_snapshot_timestamp_seconds": "When homelab-ops last wrote this file.",
    "homelab_health_tick_timestamp_seconds": "When homelab-ops' health sensor last evaluated its checks.",
    "homelab_health_check_state": "A health check's state at the last tick: 0 ok, 1 warn, 2 fail, 3 unknown.",
}
SNAPSHOT_STAMP = "homelab_pi_snapshot_timestamp_seconds"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    return repr(float(v)) if v == v else "NaN"


def render(samples: list[Sample], taken_at_epoch: float, stamp: str = SNAPSHOT_STAMP) -> str:
    """Exposition text: HELP/TYPE once per metric, samples sorted, absent values left out; `stamp`
    carries when the file was written (Prometheus' rules tell a stale writer by it)."""
    by_metric: dict[str, list[Sample]] = {}
    for s in samples:
        if s.value is not None:
            by_metric.setdefault(s.metric, []).append(s)
    by_metric[stamp] = [Sample(stamp, {}, taken_at_epoch)]
    lines: list[str] = []
    for metric in sorted(by_metric):
        lines.append(f"# HELP {metric} {HELP.get(metric, metric)}")
        lines.append(f"# TYPE {metric} gauge")
        for s in sorted(by_metric[metric], key=lambda s: sorted(s.labels.items())):
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items()))
            lines.append(f"{metric}{{{labels}}} {_number(s.value)}" if labels else f"{metric} {_number(s.value)}")
    return "\n".join(lines) + "\n"


def write_atomically(directory: str | os.PathLike, text: str, filename: str = FILENAME) -> Path:
    """Write `text` to directory/filename; the temporary name does not end in .prom, so
    node_exporter never collects half a file. Mode 0644: node_exporter runs as another user."""
    return write_atomic(Path(directory) / filename, text.encode(), mode=0o644)
