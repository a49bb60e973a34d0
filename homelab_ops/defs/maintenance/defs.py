"""The maintenance domain: the weekly job that gives disk space back (fstrim, container log sizes,
Dagster's old runs)."""

import dagster as dg

from homelab_ops.defs.maintenance.assets import dagster_run_retention, disk_hygiene
from homelab_ops.settings import current


@dg.definitions
def defs() -> dg.Definitions:
    settings = current()
    hygiene_job = dg.define_asset_job(
        "disk_hygiene_job",
        selection=dg.AssetSelection.assets(disk_hygiene, dagster_run_retention),
        executor_def=dg.in_process_executor,  # one process: a step per process costs seconds on a Pi
        tags={"dagster/max_runtime": "3600"},
        description="fstrim and container log sizes; delete Dagster's finished runs older than "
                    "disk_hygiene.run_retention, keeping each job's newest run and every run that holds "
                    "an asset's latest materialization.",
    )
    schedule = dg.ScheduleDefinition(
        name="disk_hygiene_schedule", job=hygiene_job, cron_schedule="0 4 * * 6",
        execution_timezone=settings.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Saturdays 04:00, when nothing else runs.")
    return dg.Definitions(assets=[disk_hygiene, dagster_run_retention], jobs=[hygiene_job], schedules=[schedule])
