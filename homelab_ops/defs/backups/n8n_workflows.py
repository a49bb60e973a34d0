"""n8n's workflows exported one file each, restorable with `n8n import:workflow`."""


import dagster as dg

from homelab_ops.backups.n8n_export import FOLDER, export_n8n_workflows
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.settings import Settings


def n8n_workflows_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        key="n8n_workflows",
        group_name="backups",
        kinds={"n8n", "postgres"} | ({"s3"} if settings.backups.s3 else set()),
        pool=f"backup_{FOLDER}",  # shared with its retention: an export and a prune never overlap
        description="Every n8n workflow exported as one JSON file in n8n's own export format, beside "
                    "the dumps and off-site; restore one with `n8n import:workflow --input=FILE`.",
    )
    def n8n_workflows(homelab: HomelabSettings) -> dg.MaterializeResult:
        result = export_n8n_workflows(homelab.settings)
        meta = {
            "path": dg.MetadataValue.path(str(result.path)),
            "workflow_count": dg.MetadataValue.int(result.count),
            "workflows": dg.MetadataValue.md("\n".join(f"- {n}" for n in result.names) or "_none_"),
        }
        if result.uris:
            meta["s3_uri"] = dg.MetadataValue.text(", ".join(result.uris))
        if result.offsite_errors:
            raise dg.Failure(description="export written locally, off-site copy failed: "
                             + "; ".join(result.offsite_errors), metadata=meta)
        return dg.MaterializeResult(metadata=meta)

    return n8n_workflows
