"""Backups as assets: one `backups/<database>_backup` per database, the server's roles, n8n's workflows.

Thin on purpose: the work is in `homelab_ops.backups`; here it is only named,
scheduled and described for the web UI.
"""


import dagster as dg

from homelab_ops.backups import sources
from homelab_ops.backups.sources import SourceError
from homelab_ops.backups.backup import BackupError, BackupResult, run_globals_backup
from homelab_ops.backups.catalog import time_of
from homelab_ops.backups.config import BackupsConfig
from homelab_ops.backups.offsite import TargetState, sync
from homelab_ops.defs.backups import keys
from homelab_ops.defs.resources import HomelabSettings

GROUP = "backups"


def result_metadata(result: BackupResult) -> dict:
    m = result.manifest
    meta = {
        "path": dg.MetadataValue.path(str(result.path)),
        "size_bytes": dg.MetadataValue.int(m["size"]),
        "duration_s": dg.MetadataValue.float(round(result.duration, 3)),
        "throughput_mb_s": dg.MetadataValue.float(round(m["size"] / 1e6 / max(result.duration, 1e-3), 2)),
        "sha256": dg.MetadataValue.text(m["sha256"]),
        "encrypted": dg.MetadataValue.bool(bool(m.get("encryption"))),
    }
    if "keys" in m:  # a Redis RDB
        meta["key_count"] = dg.MetadataValue.int(m["keys"])
        meta["keys_with_ttl"] = dg.MetadataValue.int(m["expires"])
    if "tables" in m:
        meta["table_count"] = dg.MetadataValue.int(m["table_count"])
        meta["row_count"] = dg.MetadataValue.int(m["row_count"])
        meta["tables"] = dg.MetadataValue.table(
            records=[dg.TableRecord({"table": f"{t['schema']}.{t['table']}", "rows": t["rows"]})
                     for t in m["tables"]],
            schema=dg.TableSchema(columns=[dg.TableColumn("table", "string"), dg.TableColumn("rows", "int")]),
        )
    return meta


def backup_asset(name: str, config: BackupsConfig) -> dg.AssetsDefinition:
    """`backups/<name>_backup`: a PostgreSQL database or a `backups.sources` entry, backed up by its source module."""
    source, entry = sources.source_for(config.backups, name)
    about = source.describe(entry, config)

    @dg.asset(
        key=keys.backup(name),
        group_name=GROUP,
        kinds=set(source.KINDS),
        pool=f"backup_{name}",
        description=(
            f"{about}, written to the local folder at disk speed"
            f"{' (then copied off-site by `' + keys.offsite(name).to_user_string() + '`)' if config.backups.s3 else ''}. "
            "Each materialization is one backup."
        ),
    )
    def _backup(context: dg.AssetExecutionContext, homelab: HomelabSettings) -> dg.MaterializeResult:
        module, current = sources.source_for(homelab.backups.backups, name)
        try:
            result = module.backup(current, homelab.backups, context.log)
        except (BackupError, SourceError) as e:
            raise dg.Failure(description=str(e)) from None
        return dg.MaterializeResult(metadata=result_metadata(result))

    return _backup


def globals_asset() -> dg.AssetsDefinition:
    @dg.asset(
        key="backup_globals",
        group_name=GROUP,
        kinds={"postgres"},
        pool="backup__globals",
        description="The server's roles and tablespaces (`pg_dumpall --globals-only`), which a restore "
                    "on a new server needs before any database dump.",
    )
    def _globals(homelab: HomelabSettings) -> dg.MaterializeResult:
        try:
            return dg.MaterializeResult(metadata=result_metadata(run_globals_backup(homelab.backups)))
        except (BackupError, SourceError) as e:
            raise dg.Failure(description=str(e)) from None

    return _globals


def _when(stem: str | None) -> str:
    return time_of(stem).strftime("%Y-%m-%d %H:%M:%S UTC") if stem else "none"


def _owed(s: TargetState) -> str:
    return "unknown" if s.owed is None else str(len(s.owed))


def offsite_metadata(states: list[TargetState]) -> dict:
    """Per target: the newest copy there and what it still lacks, as a table and as plain keys."""
    meta: dict = {
        "targets": dg.MetadataValue.table(
            records=[dg.TableRecord({"target": s.target, "newest_copy": _when(s.newest),
                                     "uploaded": len(s.uploaded), "owed": _owed(s),
                                     "error": s.error or ""}) for s in states],
            schema=dg.TableSchema(columns=[dg.TableColumn("target", "string"),
                                           dg.TableColumn("newest_copy", "string"),
                                           dg.TableColumn("uploaded", "int"), dg.TableColumn("owed", "string"),
                                           dg.TableColumn("error", "string")]),
        ),
    }
    for s in states:
        meta[f"{s.target}/newest_copy"] = dg.MetadataValue.text(_when(s.newest))
        meta[f"{s.target}/owed"] = dg.MetadataValue.text(_owed(s))
        if s.owed:
            meta[f"{s.target}/owed_backups"] = dg.MetadataValue.text(", ".join(s.owed))
    return meta


def offsite_asset(database: str, upstream: dg.AssetKey, config: BackupsConfig) -> dg.AssetsDefinition:
    """`offsite/<database>_offsite`: copies every local backup of `database` that a target lacks, oldest first.

    The check `copies_complete` fails (and fails the step, so the run reports it) when a target
    still lacks a backup; the materialization records per target what it holds either way."""
    key = keys.offsite(database)
    targets = ", ".join(t.label for t in config.backups.s3)

    @dg.asset(
        key=key,
        deps=[upstream],
        group_name=GROUP,
        kinds={"s3"},
        pool=f"offsite_{database}",
        # Before the verification that becomes runnable with it (it depends on the backup only), so
        # tonight's copy is off-site when a target's copy is the one restored.
        op_tags={"dagster/priority": "1"},
        check_specs=[dg.AssetCheckSpec("copies_complete", asset=key, blocking=True,
                                       description="Every target holds every complete local backup.")],
        description=(
            f"Off-site copies of `{database}`'s backups on {targets}: each complete local backup a target "
            "lacks is uploaded from the finished file, oldest first (every file of the set, the manifest "
            "last), with its sha256 in the object's metadata, a checksum on every part (Content-MD5, or "
            "CRC32 with `checksum: crc32`) and the object's checked after completion. A copy that failed "
            "stays owed and is caught up by the next run."
        ),
    )
    def _offsite(context: dg.AssetExecutionContext, homelab: HomelabSettings) -> dg.MaterializeResult:
        states = sync(homelab.backups.backups, database)
        for s in states:
            if s.uploaded:
                context.log.info(f"{database}: copied {len(s.uploaded)} backup(s) to {s.target}: "
                                 f"{', '.join(s.uploaded)}")
            if s.error:
                context.log.error(s.error)
        failing = [s for s in states if s.error or s.owed]
        summary = "; ".join(f"{s.target}: " + ("not reached" if s.owed is None else f"{len(s.owed)} backup(s) owed")
                            + (f" ({s.error})" if s.error else "") for s in failing)
        return dg.MaterializeResult(
            metadata=offsite_metadata(states),
            check_results=[dg.AssetCheckResult(
                check_name="copies_complete", passed=not failing, severity=dg.AssetCheckSeverity.ERROR,
                description=summary or f"every target holds every local backup of {database}",
                metadata={"targets_behind": dg.MetadataValue.int(len(failing))})],
        )

    return _offsite
