"""The metrics domain: the snapshots every `metrics.snapshot_every`, the daily rollup after midnight.

host_metrics and container_metrics share one snapshot job (one run, one process on the Pi);
they are independent steps, so a Docker daemon that does not answer fails container_metrics
and the run while host_metrics is still recorded.
"""

import dagster as dg

from homelab_ops.defs.metrics.assets import container_metrics, host_metrics, host_metrics_daily_asset
from homelab_ops.metrics.daily import cron_for
from homelab_ops.settings import SettingsError, current


@dg.definitions
def defs() -> dg.Definitions:
    settings = current()
    try:
        cron = cron_for(settings.metrics.snapshot_every.seconds)
    except ValueError as e:
        raise SettingsError(f"{settings.source}: {e}") from None
    daily = host_metrics_daily_asset(settings.metrics, settings.timezone)
    snapshot_job = dg.define_asset_job(
        "host_metrics_snapshot",
        selection=[host_metrics, container_metrics],
        executor_def=dg.in_process_executor,  # one process: a step per process costs seconds on a Pi
        tags={"dagster/max_runtime": "300"},
        description="Take a host and a container metrics snapshot and judge them against the thresholds.",
    )
    daily_job = dg.define_asset_job(
        "host_metrics_rollup",
        selection=[daily],
        executor_def=dg.in_process_executor,
        tags={"dagster/max_runtime": "900"},
        description="Roll up one day of host and container metrics and delete raw snapshots past retention.",
    )
    return dg.Definitions(
        assets=[host_metrics, container_metrics, daily],
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
