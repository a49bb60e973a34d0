"""The credentials domain: an asset per managed credential, the daily rotation job, the secrets scan."""


import dagster as dg

from homelab_ops.credentials.store import known_definitions
from homelab_ops.defs.credentials.assets import credential_asset, workflow_secrets_scan_asset
from homelab_ops.credentials.config import CredentialsConfig
from homelab_ops.settings import current


@dg.definitions
def defs() -> dg.Definitions:
    settings = current()
    known = known_definitions(CredentialsConfig.of(settings))
    assets = [credential_asset(d) for d in known] + [workflow_secrets_scan_asset()]
    rotate = dg.define_asset_job(
        "rotate_credentials",
        selection=dg.AssetSelection.key_prefixes(["credentials"]),
        executor_def=dg.in_process_executor,
        tags={"dagster/max_runtime": "3600"},
        description="Rotate every credential that is due and finish any interrupted rotation; record ages.",
    )
    scan = dg.define_asset_job(
        "scan_workflow_secrets",
        selection=dg.AssetSelection.assets("workflow_secrets_scan"),
        executor_def=dg.in_process_executor,
        tags={"dagster/max_runtime": "900"},
        description="Scan n8n's workflows for hard-coded secrets.",
    )
    schedules = [
        dg.ScheduleDefinition(
            name="rotate_credentials_schedule",
            job=rotate,
            cron_schedule="30 4 * * *",
            execution_timezone=settings.timezone,
            # Stopped until turned on: a rotation changes passwords that running
            # services hold, so switch it on once every consumer reads the rendered
            # .env (credentials.env_file) and is restarted after a rotation.
            default_status=dg.DefaultScheduleStatus.STOPPED,
            description="04:30 daily: rotates what is due. Off by default; see docs/credentials.md.",
        ),
        dg.ScheduleDefinition(
            name="scan_workflow_secrets_schedule",
            job=scan,
            cron_schedule="15 5 * * *",
            execution_timezone=settings.timezone,
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description="05:15 daily: read-only, so running from the first start.",
        ),
    ]
    return dg.Definitions(assets=assets, jobs=[rotate, scan], schedules=schedules)
