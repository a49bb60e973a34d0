"""The host_metrics asset checks: the health checks' judgement of the same snapshot, shown in the UI.

Nothing is judged here. `homelab_ops.health.checks` judges every host signal once, against the
one `thresholds:` vocabulary; this module groups its results into the five asset checks and
maps ok / warn / fail onto Dagster's passed, WARN and ERROR. The health sensor, not
asset_check_alert, tells the owner about them (`ALERTED_BY`), so one condition is one message.
A sensor the host lacks passes with a description saying so: a laptop running the demo is not
a Pi with a failing power supply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from homelab_ops.health.checks import FAIL, OK, UNKNOWN, CheckResult, Thresholds, worst

WARN, ERROR = "WARN", "ERROR"
ALERTED_BY = "health_sensor"  # asset check metadata: who alerts on this condition

# asset check -> the health check family that judges it
CHECK_FAMILIES = {
    "temperature": "cpu_temperature",
    "throttled_now": "throttled_now",
    "under_voltage_since_boot": "under_voltage_since_boot",
    "disk_free": "disk_free",
    "memory_available": "memory_available",
}
CHECKS = tuple(CHECK_FAMILIES)

CHECK_DESCRIPTIONS = {
    "temperature": "The CPU's thermal zone (else the hottest) below thresholds.temperature_warn_c (WARN) / "
                   "temperature_fail_c (ERROR). Judged by the health check cpu_temperature.",
    "throttled_now": "Firmware reports no under-voltage or throttling now (ERROR), no frequency cap or "
                     "soft temperature limit now (WARN). Judged by the health check throttled_now.",
    "under_voltage_since_boot": "No under-voltage since boot (vcgencmd bit 16 or the rpi_volt alarm): WARN, "
                                "the power supply or cable is marginal.",
    "disk_free": "Every reported mount has at least thresholds.disk_free_warn_pct (WARN) / disk_free_fail_pct "
                 "(ERROR) of its size available. Judged per mount by the health check disk_free.",
    "memory_available": "MemAvailable is at least thresholds.memory_available_warn_pct (WARN) / "
                        "memory_available_fail_pct (ERROR) of MemTotal.",
}


@dataclass(frozen=True)
class Outcome:
    check: str
    passed: bool
    severity: str  # what a failure means; WARN for passing results
    description: str
    metadata: dict = field(default_factory=dict)


def outcome_of(check: str, results: list[CheckResult]) -> Outcome:
    """One asset check from the health results of its family (disk_free: one per mount, the worst counts)."""
    judged = [r for r in results if r.state != UNKNOWN]
    if not judged:
        why = results[0].reason if results else "no reading"
        return Outcome(check, True, WARN, f"{why} (absent, not judged)", {"absent": True})
    state = worst(r.state for r in judged)
    shown = [r for r in judged if r.state == state] if state != OK else judged
    description = "; ".join(r.reason for r in shown)
    meta = {"state": state, "judged_by": f"health check {CHECK_FAMILIES[check]}"}
    if state == OK:
        return Outcome(check, True, WARN, description, meta)
    return Outcome(check, False, ERROR if state == FAIL else WARN, description, meta)


def evaluate(samples, th: Thresholds) -> list[Outcome]:
    """Every asset check, in CHECKS order, from the health checks' judgement of `samples`."""
    from homelab_ops.health.evaluate import host_results

    results = host_results(samples, th)
    return [outcome_of(check, [r for r in results if r.family == family])
            for check, family in CHECK_FAMILIES.items()]
