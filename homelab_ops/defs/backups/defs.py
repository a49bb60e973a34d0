"""The backups domain: assets per database, the nightly job and its schedule."""


import dagster as dg

from homelab_ops.defs.backups.assets import backup_asset, databases, globals_asset
from homelab_ops.defs.backups.n8n_workflows import n8n_workflows_asset
from homelab_ops.settings import current

# Everything the night's backup run touches; later stages (verification, retention)
# are selected by their key prefixes so they join the job as they are added.
NIGHTLY_SELECTION = (
    dg.AssetSelection.key_prefixes(["backups"], ["restore_verification"], ["backup_retention"])
    | dg.AssetSelection.assets("backup_globals", "n8n_workflows")
)


@dg.definitions
def defs() -> dg.Definitions:
    settings = current()
    assets = [backup_asset(db, settings) for db in databases(settings)] + [globals_asset(settings)]
    if settings.n8n is not None:
        assets.append(n8n_workflows_asset(settings))
    max_runtime = int(settings.backups.timeout_seconds * 2 + 3600)
    nightly = dg.define_asset_job(
        "nightly_backup",
        selection=NIGHTLY_SELECTION,
        executor_def=dg.in_process_executor,  # one process: a step per process costs seconds on a Pi
        tags={"dagster/max_runtime": str(max_runtime)},
        description="Back up every database and n8n's workflows, locally and off-site.",
    )
    schedule = dg.ScheduleDefinition(
        name="nightly_backup_schedule",
        job=nightly,
        cron_schedule="0 3 * * *",
        execution_timezone=settings.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="03:00 in the settings' timezone, running from the first start: a fresh "
                    "deployment backs up without a click.",
    )
    return dg.Definitions(assets=assets, jobs=[nightly], schedules=[schedule])
