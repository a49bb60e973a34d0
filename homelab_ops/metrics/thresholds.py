"""Judge a snapshot against the settings' thresholds: pure functions over samples.

Each check gives pass, WARN or ERROR with a sentence a person can act on. A sensor
the host lacks passes with a description saying so: a laptop running the demo is not
a Pi with a failing power supply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from homelab_ops.metrics.collect import Sample

WARN, ERROR = "WARN", "ERROR"

CHECKS = ("temperature", "throttled_now", "under_voltage_since_boot", "disk_free", "memory_available")

CHECK_DESCRIPTIONS = {
    "temperature": "Hottest thermal zone below temperature_warn_c (WARN) / temperature_error_c (ERROR).",
    "throttled_now": "Firmware reports no under-voltage or throttling now (ERROR), no frequency cap or "
                     "soft temperature limit now (WARN).",
    "under_voltage_since_boot": "No under-voltage since boot (vcgencmd bit 16 or the rpi_volt alarm): WARN, "
                                "the power supply or cable is marginal.",
    "disk_free": "Every reported mount has at least disk_free_warn_pct (WARN) / disk_free_error_pct (ERROR) "
                 "of its size available.",
    "memory_available": "MemAvailable is at least memory_available_warn_pct (WARN) / "
                        "memory_available_error_pct (ERROR) of MemTotal.",
}


@dataclass(frozen=True)
class Outcome:
    check: str
    passed: bool
    severity: str  # what a failure means; WARN for passing results
    description: str
    metadata: dict = field(default_factory=dict)


def _of(samples: list[Sample], metric: str) -> list[Sample]:
    return [s for s in samples if s.metric == metric and s.value is not None]


def _level(value: float, warn: float, error: float, *, higher_is_worse: bool) -> str | None:
    if higher_is_worse:
        return ERROR if value >= error else WARN if value >= warn else None
    return ERROR if value < error else WARN if value < warn else None


def check_temperature(samples: list[Sample], warn: float, error: float) -> Outcome:
    zones = _of(samples, "node_thermal_zone_temp")
    if not zones:
        return Outcome("temperature", True, WARN, "no thermal sensor on this host (absent, not judged)",
                       {"absent": True})
    hottest = max(zones, key=lambda s: s.value)
    level = _level(hottest.value, warn, error, higher_is_worse=True)
    meta = {"celsius": round(hottest.value, 1), "zone": hottest.labels.get("type", ""),
            "warn_c": warn, "error_c": error}
    if level is None:
        return Outcome("temperature", True, WARN, f"{hottest.value:.1f} °C", meta)
    limit = error if level == ERROR else warn
    return Outcome("temperature", False, level,
                   f"{hottest.labels.get('type', 'thermal zone')} at {hottest.value:.1f} °C, at or above {limit:g} °C",
                   meta)


def _flags(samples: list[Sample], when: str) -> dict[str, bool] | None:
    got = {s.labels["flag"]: s.value >= 1 for s in _of(samples, "homelab_pi_throttled")
           if s.labels.get("when") == when}
    return got or None


def check_throttled_now(samples: list[Sample]) -> Outcome:
    now = _flags(samples, "now")
    if now is None:
        return Outcome("throttled_now", True, WARN, "no vcgencmd reading on this host (absent, not judged)",
                       {"absent": True})
    on = sorted(k for k, v in now.items() if v)
    meta = {"flags_now": ", ".join(on) or "none"}
    if now.get("under_voltage") or now.get("throttled"):
        return Outcome("throttled_now", False, ERROR, f"the firmware reports {', '.join(on)} now", meta)
    if on:
        return Outcome("throttled_now", False, WARN, f"the firmware reports {', '.join(on)} now", meta)
    return Outcome("throttled_now", True, WARN, "not throttled", meta)


def check_under_voltage_since_boot(samples: list[Sample]) -> Outcome:
    since = _flags(samples, "since_boot")
    alarm = _of(samples, "homelab_pi_under_voltage_alarm")
    if since is None and not alarm:
        return Outcome("under_voltage_since_boot", True, WARN,
                       "no vcgencmd or rpi_volt reading on this host (absent, not judged)", {"absent": True})
    seen_bit = bool(since and since.get("under_voltage"))
    seen_alarm = bool(alarm and alarm[0].value >= 1)
    meta = {"vcgencmd_bit": seen_bit if since is not None else "absent",
            "rpi_volt_alarm": seen_alarm if alarm else "absent"}
    if seen_bit or seen_alarm:
        source = " and ".join(x for x, on in (("vcgencmd", seen_bit), ("the rpi_volt alarm", seen_alarm)) if on)
        return Outcome("under_voltage_since_boot", False, WARN,
                       f"under-voltage since boot ({source}): check the power supply and cable", meta)
    return Outcome("under_voltage_since_boot", True, WARN, "no under-voltage since boot", meta)


def check_disk_free(samples: list[Sample], warn_pct: float, error_pct: float) -> Outcome:
    size = {s.labels["mountpoint"]: s.value for s in _of(samples, "node_filesystem_size_bytes")}
    avail = {s.labels["mountpoint"]: s.value for s in _of(samples, "node_filesystem_avail_bytes")}
    pct = {mp: 100.0 * avail[mp] / size[mp] for mp in size if mp in avail and size[mp] > 0}
    if not pct:
        return Outcome("disk_free", True, WARN, "no filesystem reading (absent, not judged)", {"absent": True})
    meta = {f"free_pct {mp}": round(p, 1) for mp, p in sorted(pct.items())}
    bad = {mp: (p, _level(p, warn_pct, error_pct, higher_is_worse=False)) for mp, p in pct.items()}
    bad = {mp: v for mp, v in bad.items() if v[1]}
    if not bad:
        worst = min(pct, key=pct.get)
        return Outcome("disk_free", True, WARN, f"lowest: {worst} {pct[worst]:.1f}% free", meta)
    level = ERROR if any(lv == ERROR for _, lv in bad.values()) else WARN
    named = ", ".join(f"{mp} {p:.1f}% free" for mp, (p, _) in sorted(bad.items(), key=lambda kv: kv[1][0]))
    return Outcome("disk_free", False, level, f"low disk space: {named}", meta)


def check_memory_available(samples: list[Sample], warn_pct: float, error_pct: float) -> Outcome:
    total = _of(samples, "node_memory_MemTotal_bytes")
    avail = _of(samples, "node_memory_MemAvailable_bytes")
    if not total or not avail or total[0].value <= 0:
        return Outcome("memory_available", True, WARN, "no memory reading (absent, not judged)", {"absent": True})
    pct = 100.0 * avail[0].value / total[0].value
    meta = {"available_pct": round(pct, 1), "available_mib": round(avail[0].value / 2**20)}
    level = _level(pct, warn_pct, error_pct, higher_is_worse=False)
    if level is None:
        return Outcome("memory_available", True, WARN, f"{pct:.1f}% available", meta)
    return Outcome("memory_available", False, level,
                   f"only {pct:.1f}% of memory available ({avail[0].value / 2**20:.0f} MiB)", meta)


def evaluate(samples: list[Sample], threshold) -> list[Outcome]:
    """Every check, in CHECKS order; `threshold(key)` gives a number (MetricsSettings.threshold)."""
    return [
        check_temperature(samples, threshold("temperature_warn_c"), threshold("temperature_error_c")),
        check_throttled_now(samples),
        check_under_voltage_since_boot(samples),
        check_disk_free(samples, threshold("disk_free_warn_pct"), threshold("disk_free_error_pct")),
        check_memory_available(samples, threshold("memory_available_warn_pct"),
                               threshold("memory_available_error_pct")),
    ]
