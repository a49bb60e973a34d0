"""The backups domain: assets per database, the nightly job and its schedule."""


import dagster as dg

from homelab_ops.backups import sources
from homelab_ops.backups.catalog import GLOBALS
from homelab_ops.backups.config import BackupsConfig
from homelab_ops.defs.backups.assets import backup_asset, globals_asset, offsite_asset
from homelab_ops.defs.backups import keys
from homelab_ops.defs.backups.retention import globals_retention_asset
from homelab_ops.defs.backups.retention import retention_asset, workflow_retention_asset
from homelab_ops.defs.backups.verification import freshness_check, verification_asset
from homelab_ops.defs.n8n.workflows import n8n_workflows_asset
from homelab_ops.settings import current


def prune_after_failed_backup(nightly: dg.JobDefinition, prune_job: dg.JobDefinition, backups: dict[str, str]
                              ) -> dg.SensorDefinition:
    """A failed backup (a full disk, most often) skips its verification and so its retention; this
    prunes what the policy allows anyway, so a full disk heals by the next night. Only after a failed
    backup step: a backup that failed verification still blocks pruning, as retention wants."""

    @dg.run_failure_sensor(name="prune_after_failed_backup", monitored_jobs=[nightly], request_job=prune_job,
                           default_status=dg.DefaultSensorStatus.RUNNING,
                           description="After a nightly_backup whose backup step failed (a full disk, most often), "
                                       "prunes that database's backups as retention allows, so the disk heals.")
    def _sensor(context: dg.RunFailureSensorContext):
        failed = {e.step_key for e in context.instance.all_logs(context.dagster_run.run_id,
                                                                of_type=dg.DagsterEventType.STEP_FAILURE)}
        names = sorted(backups[step] for step in failed if step in backups)
        if names:
            return dg.RunRequest(run_key=f"prune-after-{context.dagster_run.run_id}",
                                 asset_selection=[keys.retention(n) for n in names])

    return _sensor


def _schedule(name: str, job, cron: str, timezone: str, description: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(name=name, job=job, cron_schedule=cron, execution_timezone=timezone,
                                 default_status=dg.DefaultScheduleStatus.RUNNING, description=description)


@dg.definitions
def defs() -> dg.Definitions:
    config = BackupsConfig.of(current())  # parsed once per process; the factories take their part
    dbs = sources.backed_up(config, warn=dg.get_dagster_logger().warning)  # databases, then sources
    verifications = [verification_asset(db, config) for db in dbs]
    freshness = [freshness_check(db, config) for db in dbs]
    backups = [backup_asset(db, config) for db in dbs]
    globals_backup = globals_asset()
    retentions = [retention_asset(db, config) for db in dbs] + [globals_retention_asset(config)]
    # Off-site copies are a step of their own after each local backup, so a slow uplink never
    # holds a dump's snapshot open; with no S3 target there is nothing to copy.
    offsite = ([offsite_asset(db, b.key, config) for db, b in zip(dbs, backups)]
               + [offsite_asset(GLOBALS, globals_backup.key, config)]) if config.backups.s3 else []
    # Everything the night's run touches: back up, copy off-site, verify, then prune, per database.
    nightly_assets = (
        backups + offsite + verifications + [globals_backup] + retentions
        + ([n8n_workflows_asset(config), workflow_retention_asset(config, dbs)]
           if config.n8n is not None else [])
    )
    max_runtime = int(config.backups.timeout.seconds * 2 + 3600)
    nightly = dg.define_asset_job(
        "nightly_backup",
        selection=nightly_assets,
        executor_def=dg.in_process_executor,  # one process: a step per process costs seconds on a Pi
        tags={"dagster/max_runtime": str(max_runtime)},
        description="Back up every database and n8n's workflows, locally and off-site; restore each "
                    "backup into a scratch database and compare it with its manifest; then prune.",
    )
    schedule = _schedule("nightly_backup_schedule", nightly, "0 3 * * *", config.timezone,
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
    prune_job = dg.define_asset_job(
        "prune_backups",
        selection=retentions,
        executor_def=dg.in_process_executor,
        tags={"dagster/max_runtime": "3600"},
        description="Retention alone: started after a nightly run whose backup failed, so a full disk "
                    "is freed of what the policy no longer keeps.",
    )
    jobs = [nightly, verify_weekly, freshness_job, prune_job]
    if offsite:
        jobs.append(dg.define_asset_job(
            "offsite_sync",
            # every `offsite/...` asset: the dumps' and, with pitr.enabled, the PITR archive's (offsite/_pitr_offsite)
            selection=dg.AssetSelection.key_prefixes(["offsite"]),
            executor_def=dg.in_process_executor,
            tags={"dagster/max_runtime": str(max_runtime)},
            description="Upload every local backup an S3 target lacks, oldest first, without dumping again: "
                        "after an outage, a new target, or a night the uplink was down.",
        ))
    sensor = prune_after_failed_backup(nightly, prune_job, {b.op.name: db for db, b in zip(dbs, backups)}
                                       | {globals_backup.op.name: GLOBALS})
    schedules = [
        schedule,
        _schedule("verify_backups_schedule", verify_weekly, "0 5 * * 0", config.timezone,
                "Sundays 05:00, after the nightly backup has finished."),
        _schedule("backup_freshness_schedule", freshness_job, "30 */6 * * *", config.timezone,
                "Every six hours: a missed night is noticed the same morning."),
    ]
    return dg.Definitions(assets=nightly_assets, asset_checks=freshness,
                          jobs=jobs, schedules=schedules, sensors=[sensor])
