"""The backups domain: assets per database, the nightly job and its schedule."""


import dagster as dg

from homelab_ops.defs.backups.assets import backup_asset, databases, globals_asset
from homelab_ops.defs.backups.hygiene import dagster_run_retention, disk_hygiene
from homelab_ops.defs.backups.retention import globals_retention_asset, retention_asset, workflow_retention_asset
from homelab_ops.defs.backups.verification import freshness_check, verification_asset
from homelab_ops.defs.backups.n8n_workflows import n8n_workflows_asset
from homelab_ops.settings import current


def _schedule(name: str, job, cron: str, settings, description: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(name=name, job=job, cron_schedule=cron, execution_timezone=settings.timezone,
                                 default_status=dg.DefaultScheduleStatus.RUNNING, description=description)


@dg.definitions
def defs() -> dg.Definitions:
    settings = current()
    dbs = databases(settings)
    verifications = [verification_asset(db, settings) for db in dbs]
    freshness = [freshness_check(db, settings) for db in dbs]
    # Everything the night's run touches: back up, verify, then prune, per database.
    nightly_assets = (
        [backup_asset(db, settings) for db in dbs] + verifications
        + [retention_asset(db, settings) for db in dbs]
        + [globals_asset(settings), globals_retention_asset(settings)]
        + ([n8n_workflows_asset(settings), workflow_retention_asset(settings, dbs)]
           if settings.n8n is not None else [])
    )
    max_runtime = int(settings.backups.timeout.seconds * 2 + 3600)
    nightly = dg.define_asset_job(
        "nightly_backup",
        selection=nightly_assets,
        executor_def=dg.in_process_executor,  # one process: a step per process costs seconds on a Pi
        tags={"dagster/max_runtime": str(max_runtime)},
        description="Back up every database and n8n's workflows, locally and off-site; restore each "
                    "backup into a scratch database and compare it with its manifest; then prune.",
    )
    schedule = _schedule("nightly_backup_schedule", nightly, "0 3 * * *", settings,
                       "03:00 in the settings' timezone, running from the first start: a fresh "
                       "deployment backs up without a click.")
    verify_weekly = dg.define_asset_job(
        "verify_backups",
        selection=dg.AssetSelection.key_prefixes(["restore_verification"]),
        executor_def=dg.in_process_executor,
        tags={"dagster/max_runtime": str(max_runtime)},
        config={"ops": {a.op.name: {"config": {"random_older": True}} for a in verifications}},
        description="Verify the newest backup of every database again and one random older one, "
                    "so bit rot in old backups is found before they are needed.",
    )
    freshness_job = dg.define_asset_job(
        "backup_freshness",
        selection=dg.AssetSelection.checks(*freshness),
        executor_def=dg.in_process_executor,
        tags={"dagster/max_runtime": "900"},
        description="Is there a verified backup younger than backups.max_age_hours? Notices a nightly "
                    "run that stopped happening, which no check inside that run can.",
    )
    hygiene_job = dg.define_asset_job(
        "disk_hygiene_job",
        selection=dg.AssetSelection.assets(disk_hygiene, dagster_run_retention),
        executor_def=dg.in_process_executor,
        tags={"dagster/max_runtime": "3600"},
        description="fstrim and container log sizes; delete Dagster's finished runs older than "
                    "disk_hygiene.run_retention, keeping each job's newest run and every run that holds "
                    "an asset's latest materialization.",
    )
    schedules = [
        schedule,
        _schedule("verify_backups_schedule", verify_weekly, "0 5 * * 0", settings,
                "Sundays 05:00, after the nightly backup has finished."),
        _schedule("backup_freshness_schedule", freshness_job, "30 */6 * * *", settings,
                "Every six hours: a missed night is noticed the same morning."),
        _schedule("disk_hygiene_schedule", hygiene_job, "0 4 * * 6", settings,
                "Saturdays 04:00, when nothing else runs."),
    ]
    return dg.Definitions(assets=nightly_assets + [disk_hygiene, dagster_run_retention], asset_checks=freshness,
                          jobs=[nightly, verify_weekly, freshness_job, hygiene_job], schedules=schedules)
