"""Retention as assets: `backup_retention/<database>_retention` after its verification, `_globals`, n8n's exports.

Downstream of `restore_verification/<database>_verification`, so the blocking check keeps a run
whose backup did not verify from pruning anything; the exports' retention is
downstream of `n8n_workflows`, so a failed export prunes nothing either.
"""

from collections.abc import Callable
from datetime import tzinfo

import dagster as dg

from homelab_ops.backups import prune as p
from homelab_ops.backups.catalog import GLOBALS
from homelab_ops.backups.config import BackupsConfig
from homelab_ops.defs.backups import keys
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.n8n.workflow_export import FOLDER
from homelab_ops.n8n.workflow_retention import prune_workflow_exports

GROUP = "backups"


def prune_metadata(result: p.DatabasePrune, tz: tzinfo) -> dict:
    meta = {
        "dry_run": dg.MetadataValue.bool(result.dry_run),
        "bytes_freed": dg.MetadataValue.int(result.bytes_freed),
        "kept": dg.MetadataValue.int(sum(len(x.kept) for x in result.plans)),
        "removed": dg.MetadataValue.int(sum(len(x.removed) for x in result.plans)),
        "leftovers_removed": dg.MetadataValue.int(sum(1 for x in result.plans for o in x.leftovers if o.remove)),
        "plan": dg.MetadataValue.md(p.markdown(result, tz)),
    }
    if result.blocked:
        meta["not_pruned_because"] = dg.MetadataValue.text(result.blocked)
    return meta


def _run(context: dg.AssetExecutionContext, homelab: HomelabSettings,
         prune: Callable[[BackupsConfig], p.DatabasePrune]) -> dg.MaterializeResult:
    config = homelab.backups
    try:
        result = prune(config)
    except p.PruneError as e:
        raise dg.Failure(description=str(e)) from None
    meta = prune_metadata(result, config.tz)
    if result.blocked:
        context.log.warning(result.blocked)
    verb = "would free" if result.dry_run else "freed"
    context.log.info(f"{result.database}: {meta['removed'].value} removed, {result.bytes_freed} bytes {verb}")
    if result.errors:
        raise dg.Failure(description="retention failed in " + "; ".join(result.errors), metadata=meta)
    return dg.MaterializeResult(metadata=meta)


_DESCRIPTION = (
    "Deletes backups the retention policy (backups.retention, restic's forget semantics, calendar "
    "buckets in the settings' timezone) no longer keeps, locally and off-site, each store on its own; "
    "removes leftovers of interrupted writes after a day. Never deletes the {protected}."
)


def _retention_asset(name: str, dep, config: BackupsConfig, about: str, protected: str,
                     prune: Callable[[BackupsConfig], p.DatabasePrune]) -> dg.AssetsDefinition:
    """`backup_retention/<name>_retention` after `dep`, in the pool of the backups it prunes."""
    @dg.asset(
        key=keys.retention(name),
        deps=[dep],
        group_name=GROUP,
        kinds={"s3"} if config.backups.s3 else set(),
        pool=f"backup_{name}",
        description=about + _DESCRIPTION.format(protected=protected),
    )
    def _retention(context: dg.AssetExecutionContext, homelab: HomelabSettings) -> dg.MaterializeResult:
        return _run(context, homelab, prune)

    return _retention


def retention_asset(database: str, config: BackupsConfig) -> dg.AssetsDefinition:
    return _retention_asset(
        database, keys.verification(database), config, f"Retention of `{database}`'s backups. ",
        "newest backup whose verification passed, and nothing at all when the newest backup failed verification",
        lambda config: p.prune_database(config, database))


def globals_retention_asset(config: BackupsConfig) -> dg.AssetsDefinition:
    return _retention_asset(
        GLOBALS, "backup_globals", config, "Retention of the roles backups (`backup_globals`). ",
        "newest globals backup (they are not verified)", lambda config: p.prune_database(config, GLOBALS))


def workflow_retention_asset(config: BackupsConfig, databases: list[str]) -> dg.AssetsDefinition:
    """`backup_retention/n8n_workflows_retention`; refuses a database of that name, whose backups would share
    the exports' folder and whose retention asset would have this key."""
    if FOLDER in databases:
        raise dg.DagsterInvalidDefinitionError(
            f"postgres.databases includes a database named {FOLDER!r}, the folder (and the "
            f"{keys.retention(FOLDER).to_user_string()} asset) of n8n's workflow exports; its backups and the exports would "
            "be pruned as one. Back that database up under another name, or remove the n8n section.")
    return _retention_asset(
        FOLDER, "n8n_workflows", config,
        "Retention of n8n's workflow exports (`n8n_workflows`, one folder per run), by the same policy as the "
        "database backups. ", "newest complete export", prune_workflow_exports)
