"""Which job a failing check starts: the remedy table, and the plan for one tick.

Jobs are named, not imported: the sensor is built with whatever jobs the code location
has, and a remedy whose job is missing is skipped with a log line (the deploy and
tuning jobs arrive with their own domains).
"""

from __future__ import annotations

from dataclasses import dataclass

from homelab_ops.health import checks as c
from homelab_ops.health.machine import Memory, Policy, mark_remedied, remedy_key

FREE_DISK_JOB = "free_disk_space"  # defined by the health defs over disk_hygiene + backup_retention/*


@dataclass(frozen=True)
class Remedy:
    jobs: tuple[str, ...]  # every one of these that exists is requested
    on: frozenset[str]  # states that start it
    why: str


REMEDIES: dict[str, Remedy] = {
    c.FREE_DISK: Remedy((FREE_DISK_JOB,), frozenset({c.WARN, c.FAIL}),
                        "backup retention and disk hygiene free space"),
    c.NIGHTLY_BACKUP: Remedy(("nightly_backup",), frozenset({c.FAIL}), "a fresh backup, verified"),
    c.REDEPLOY_MONITORING: Remedy(("deploy_monitoring",), frozenset({c.FAIL}), "redeploy the monitoring stack"),
    c.REDEPLOY_TRAEFIK: Remedy(("deploy_traefik",), frozenset({c.FAIL}), "redeploy Traefik"),
    c.TUNE_MONITORING: Remedy(("tune_monitoring",), frozenset({c.WARN, c.FAIL}),
                              "lighter monitoring settings cool the CPU"),
}


def enabled(check: str, switches: dict[str, bool]) -> bool:
    """health.remedies: the check's own name first (`disk_free:/boot`), then its family."""
    if check in switches:
        return switches[check]
    return switches.get(check.split(":", 1)[0], True)


@dataclass(frozen=True)
class Planned:
    check: str
    job: str
    run_key: str


@dataclass(frozen=True)
class Skipped:
    check: str
    why: str


def plan(memories: dict[str, Memory], results: list[c.CheckResult], now: float, policy: Policy,
         switches: dict[str, bool], available_jobs: set[str]) -> tuple[list[Planned], list[Skipped]]:
    """Run requests for this tick; marks the memories of checks whose remedy starts."""
    planned: list[Planned] = []
    skipped: list[Skipped] = []
    for r in results:
        remedy = REMEDIES.get(r.remedy or "")
        mem = memories.get(r.name)
        if remedy is None or mem is None:
            continue
        key = remedy_key(mem, r, now, policy, remedy.on)
        if key is None:
            continue
        if not enabled(r.name, switches):
            skipped.append(Skipped(r.name, f"remedy switched off (health.remedies) for {r.name}"))
            mark_remedied(mem, now)  # once per episode, also for the log line
            continue
        jobs = [j for j in remedy.jobs if j in available_jobs]
        missing = [j for j in remedy.jobs if j not in available_jobs]
        if missing:
            skipped.append(Skipped(r.name, f"remedy job {', '.join(missing)} for {r.name} is not in this code "
                                           "location; skipped"))
        if not jobs:
            mark_remedied(mem, now)
            continue
        for job in jobs:
            planned.append(Planned(r.name, job, f"{key}:{job}"))
        mark_remedied(mem, now)
    return planned, skipped
