"""n8n's workflows exported one file each, restorable with `n8n import:workflow`, and the
lost-workflow tripwire that compares each export with the one before it."""

from pathlib import Path

import dagster as dg
import psycopg

from homelab_ops.backups.config import BackupsConfig
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.errors import first_line
from homelab_ops.health.messages import run_link
from homelab_ops.n8n import tripwire
from homelab_ops.n8n.workflow_export import FOLDER, export_n8n_workflows
from homelab_ops.notify.alert import Alert
from homelab_ops.notify.dispatch import dispatcher_for
from homelab_ops.settings import N8nSettings

NO_LOSS = "no_workflow_lost"
CREDENTIAL_COUNT = "credential_count"


def _credential_count(n8n: N8nSettings) -> int | None:
    try:
        with psycopg.connect(n8n.dsn.get_secret_value(), connect_timeout=10) as conn:
            return conn.execute(
                f'SELECT count(*) FROM "{n8n.db_schema}"."{n8n.table_prefix}credentials_entity"').fetchone()[0]
    except psycopg.Error:
        return None


def _previous_credential_count(context) -> int | None:
    event = context.instance.get_latest_materialization_event(dg.AssetKey("n8n_workflows"))
    mat = event.asset_materialization if event else None
    value = mat.metadata.get(CREDENTIAL_COUNT) if mat else None
    return getattr(value, "value", None)


def tripwire_alert(t: tripwire.Tripwire, run_id: str, base_url: str) -> Alert:
    return Alert("asset_check", f"n8n_workflows:{NO_LOSS}", "check_failed", "warn",
                 "⚠️ n8n workflows lost since the last export", t.message(),
                 link=run_link(base_url, run_id), link_text="Open the run", run_id=run_id)


def n8n_workflows_asset(config: BackupsConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key="n8n_workflows",
        group_name="backups",
        kinds={"n8n", "postgres"} | ({"s3"} if config.backups.s3 else set()),
        pool=f"backup_{FOLDER}",  # shared with its retention: an export and a prune never overlap
        check_specs=[dg.AssetCheckSpec(
            NO_LOSS, asset="n8n_workflows",
            description="No workflow of the previous export is missing from this one, and neither workflows "
                        "nor credentials dropped by more than n8n.max_drop_share. Fails (WARN, one alert) "
                        "naming the newest export that still has what went missing.")],
        description="Every n8n workflow exported as one JSON file in n8n's own export format, beside "
                    "the dumps and off-site; restore one with `n8n import:workflow --input=FILE`.",
    )
    def n8n_workflows(context: dg.AssetExecutionContext, homelab: HomelabSettings) -> dg.MaterializeResult:
        backups = homelab.backups
        previous_credentials = _previous_credential_count(context)
        result = export_n8n_workflows(backups)
        credentials = _credential_count(backups.n8n)
        meta = {
            "path": dg.MetadataValue.path(str(result.path)),
            "workflow_count": dg.MetadataValue.int(result.count),
            "workflows": dg.MetadataValue.md("\n".join(f"- {n}" for n in result.names) or "_none_"),
        }
        if credentials is not None:
            meta[CREDENTIAL_COUNT] = dg.MetadataValue.int(credentials)
        if result.uris:
            meta["s3_uri"] = dg.MetadataValue.text(", ".join(result.uris))
        t = tripwire.compare_exports(Path(backups.backups.local_dir) / FOLDER, share=backups.n8n.max_drop_share,
                                     credentials_before=previous_credentials, credentials_now=credentials)
        if t.tripped:
            # WARN checks are not alerted by the asset_check_alert sensor: this alert is the one.
            try:
                dispatcher_for(homelab.notify, logger=context.log).deliver(
                    [tripwire_alert(t, context.run.run_id, homelab.notify.base_url)])
            except Exception as e:  # the export is written; a dead channel must not fail it
                context.log.warning(f"the tripwire alert could not be sent: {first_line(e)}")
        check = dg.AssetCheckResult(
            check_name=NO_LOSS, passed=not t.tripped, severity=dg.AssetCheckSeverity.WARN,
            description=t.message(),
            metadata={"previous_export": dg.MetadataValue.text(t.previous or "none"),
                      "lost_workflows": dg.MetadataValue.json([{"id": w.id, "name": w.name, "export": w.export,
                                                                 "file": w.file} for w in t.lost])})
        if result.offsite_errors:
            raise dg.Failure(description="export written locally, off-site copy failed: "
                             + "; ".join(result.offsite_errors), metadata=meta)
        return dg.MaterializeResult(metadata=meta, check_results=[check])

    return n8n_workflows
