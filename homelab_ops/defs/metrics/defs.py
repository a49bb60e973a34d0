"""The metrics domain: the snapshot every `metrics.snapshot_every`, the daily rollup after midnight.

Container metrics (homelab_ops.container_metrics, created by 020_metrics.sql) join this
group as their own asset; this file only needs it appended to `assets` and a job.
"""

import dagster as dg

from homelab_ops.defs.metrics.assets import host_metrics, host_metrics_daily_asset
from homelab_ops.metrics.daily import cron_for
from homelab_ops.settings import SettingsError, current


@dg.definitions
def defs() -> dg.Definitions:
    settings = current()
    try:
        cron = cron_for(settings.metrics.snapshot_every_seconds)
    except ValueError as e:
        raise SettingsError(f"{settings.source}: {e}") from None
    daily = host_metrics_daily_asset(settings)
    snapshot_job = dg.define_asset_job(
        "host_metrics_snapshot",
        selection=[host_metrics],
        executor_def=dg.in_process_executor,  # one process: a step per process costs seconds on a Pi
        tags={"dagster/max_runtime": "300"},
        description="Take a host metrics snapshot and judge it against the thresholds.",
    )
    daily_job = dg.define_asset_job(
        "host_metrics_rollup",
        selection=[daily],
        partitions_def=daily.partitions_def,
        executor_def=dg.in_process_executor,
        tags={"dagster/max_runtime": "900"},
        description="Roll up one day of host metrics and delete raw snapshots past retention.",
    )
    return dg.Definitions(
        assets=[host_metrics, daily],
        jobs=[snapshot_job, daily_job],
        schedules=[
            dg.ScheduleDefinition(
                name="host_metrics_schedule",
                job=snapshot_job,
                cron_schedule=cron,
                execution_timezone=settings.timezone,
                default_status=dg.DefaultScheduleStatus.RUNNING,
                description=f"Every {settings.metrics.snapshot_every} (metrics.snapshot_every), from the first start.",
            ),
            dg.build_schedule_from_partitioned_job(
                daily_job,
                name="host_metrics_daily_schedule",
                hour_of_day=0,
                minute_of_hour=20,
                default_status=dg.DefaultScheduleStatus.RUNNING,
                description="00:20 in the settings' timezone: yesterday's rollup, after its last snapshot.",
            ),
        ],
    )
