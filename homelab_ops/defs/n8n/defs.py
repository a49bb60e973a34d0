"""The n8n domain: the execution-log rollup (yesterday's partition every night at 01:30), the
check that n8n's key is saved with its backups, and the upgrade check."""

import dagster as dg

from homelab_ops.defs.n8n.assets import n8n_execution_rollup_asset
from homelab_ops.defs.n8n.upgrade import n8n_upgrade_readiness, upgrade_job
from homelab_ops.defs.n8n.verification import key_saved_check
from homelab_ops.settings import current


@dg.definitions
def defs() -> dg.Definitions:
    settings = current()
    if settings.n8n is None:
        return dg.Definitions()
    asset = n8n_execution_rollup_asset(settings.n8n, settings.timezone)
    job = dg.define_asset_job(
        "n8n_rollup",
        selection=[asset],
        executor_def=dg.in_process_executor,  # one process: a step per process costs seconds on a Pi
        tags={"dagster/max_runtime": "1800"},
        description="Roll up one day of n8n's execution log and judge workflows' failure rates.",
    )
    schedule = dg.build_schedule_from_partitioned_job(
        job,
        name="n8n_rollup_schedule",
        hour_of_day=1,
        minute_of_hour=30,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="01:30 in the settings' timezone: yesterday, once executions started before midnight "
                    "have mostly finished.",
    )
    checks = [c for c in [key_saved_check(settings.n8n)] if c is not None]
    return dg.Definitions(assets=[asset, n8n_upgrade_readiness], asset_checks=checks,
                          jobs=[job, upgrade_job()], schedules=[schedule])
