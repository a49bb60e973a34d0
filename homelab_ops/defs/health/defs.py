"""The health domain: the alerting sensors, the disk-space remedy job and the alert channels.

Remedy jobs belong to other domains. The health sensor can only request jobs it names
as targets, and Dagster refuses a target that does not exist, so this module builds the
other folders' definitions first (ComponentLoadContext.build_defs, cached, so nothing is
built twice) and targets only the remedy jobs that are really there.
"""

import logging
import os
from pathlib import Path

import dagster as dg

from homelab_ops.defs.health.resources import AlertChannels
from homelab_ops.defs.health.sensors import (
    build_asset_check_sensor,
    build_digest,
    HEALTH_ASSET,
    build_health_sensor,
    build_job_heartbeat_sensors,
    build_run_failure_sensor,
    build_telegram_inbox_sensor,
)
from homelab_ops.health.remedies import FREE_DISK_JOB, REMEDIES
from homelab_ops.notify.dispatch import TOKEN_ENV
from homelab_ops.settings import current

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent


def _sibling_definitions(context) -> list[dg.Definitions]:
    """Definitions of every other module and folder under the defs root."""
    out = []
    for child in sorted(Path(context.defs_module_path).iterdir()):
        if child.name.startswith(("_", ".")) or child.resolve() == HERE:
            continue
        if not (child.is_dir() or child.suffix == ".py"):
            continue
        try:
            out.append(context.build_defs(child))
        except Exception as e:  # an empty folder has none; a broken one fails the load on its own
            log.info("health remedies: no definitions from %s (%s)", child.name, type(e).__name__)
    return out


def free_disk_job(asset_keys: list[dg.AssetKey]):
    """Backup retention and disk hygiene in one run, for a disk running out of space."""
    keys = [k for k in asset_keys if k == dg.AssetKey("disk_hygiene") or k.path[0] == "backup_retention"]
    if not keys:
        return None
    return dg.define_asset_job(
        FREE_DISK_JOB,
        selection=dg.AssetSelection.assets(*keys),
        executor_def=dg.in_process_executor,
        tags={"dagster/max_runtime": "3600"},
        description="Started by health_sensor when a disk runs low: backup retention and disk hygiene.",
    )


@dg.definitions
def defs(context: dg.ComponentLoadContext) -> dg.Definitions:
    settings = current()
    jobs: dict = {}
    keys: list[dg.AssetKey] = []
    for d in _sibling_definitions(context):
        for job in d.jobs or []:
            jobs.setdefault(job.name, job)
        for a in d.assets or []:
            if isinstance(a, dg.AssetsDefinition):
                keys += list(a.keys)
            elif hasattr(a, "key"):
                keys.append(a.key)
    own = []
    free = free_disk_job(keys)
    if free is not None:
        own.append(free)
        jobs[free.name] = free
    wanted = {j for r in REMEDIES.values() for j in r.jobs}
    targets = [jobs[n] for n in sorted(wanted) if n in jobs]
    missing = sorted(wanted - set(jobs))
    if missing:
        log.info("health remedies without a job in this code location (skipped until it exists): %s",
                 ", ".join(missing))
    channels = AlertChannels(telegram_bot_token=dg.EnvVar(TOKEN_ENV) if os.environ.get(TOKEN_ENV) else None)
    health = dg.AssetSpec(HEALTH_ASSET, group_name="health", kinds={"dagster"},
                          description="Every health check at a glance (check, state, since, reason, remedy), "
                                      "observed by health_sensor when a state changes and hourly; the history of "
                                      "its observations is the homelab's health history.")
    digest_jobs, digest_schedules = build_digest(settings.notify.digest_at, settings.timezone)
    return dg.Definitions(
        assets=[health],
        jobs=own + digest_jobs,
        schedules=digest_schedules,
        sensors=[
            # three run-status sensors ticking every 30 s in the Pi's daemon: only when a job has a monitor
            *(build_job_heartbeat_sensors() if settings.notify.heartbeat else []),
            build_health_sensor(targets, interval=int(settings.health.interval.seconds)),
            build_run_failure_sensor(),
            build_asset_check_sensor(),
            build_telegram_inbox_sensor(),
        ],
        resources={"alert_channels": channels},
    )
