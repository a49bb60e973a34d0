"""Backups as assets: one `backups/<database>` per database, the server's roles, n8n's workflows.

Thin on purpose: the work is in `homelab_ops.backups`; here it is only named,
scheduled and described for the web UI.
"""


import dagster as dg
import psycopg

from homelab_ops.backups import postgresql as pg
from homelab_ops.backups.backup import BackupError, BackupResult, run_backup, run_globals_backup
from homelab_ops.backups.catalog import GLOBALS, read_listing
from homelab_ops.backups.n8n_export import FOLDER as EXPORTS
from homelab_ops.backups.stores import LocalStore
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.errors import first_line
from homelab_ops.settings import DATABASE_NAME, Settings

GROUP = "backups"


def databases(settings: Settings) -> list[str]:
    """The databases with assets. `all` asks the server at load time; when it does not answer, the
    databases already backed up here stand in, so a PostgreSQL outage leaves the code location (and
    the health sensors that report the outage) loaded. Their backups fail, naming the server."""
    log = dg.get_dagster_logger()
    try:
        names = pg.configured_databases(settings)
    except psycopg.OperationalError as e:
        local = LocalStore(settings.backups.local_dir)
        names = [d for d in local.databases() if d not in (GLOBALS, EXPORTS) and read_listing(local.list(d)).backups]
        log.warning(f"postgres.databases is `all` but the server did not answer "
                    f"({first_line(e)}); using the databases backed up in "
                    f"{settings.backups.local_dir}: {', '.join(names) or 'none'}")
    usable = [n for n in names if DATABASE_NAME.fullmatch(n)]  # `all` may find names like lost+found
    if len(usable) < len(names):
        log.warning(f"not backed up, names that cannot be folder names and asset keys: "
                    f"{', '.join(sorted(set(names) - set(usable)))}")
    return usable


def _kinds(settings: Settings) -> set[str]:
    return {"postgres", "s3"} if settings.backups.s3 else {"postgres"}


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
    if result.uris[1:]:
        meta["s3_uri"] = dg.MetadataValue.text(", ".join(result.uris[1:]))
    if "tables" in m:
        meta["table_count"] = dg.MetadataValue.int(m["table_count"])
        meta["row_count"] = dg.MetadataValue.int(m["row_count"])
        meta["tables"] = dg.MetadataValue.table(
            records=[dg.TableRecord({"table": f"{t['schema']}.{t['table']}", "rows": t["rows"]})
                     for t in m["tables"]],
            schema=dg.TableSchema(columns=[dg.TableColumn("table", "string"), dg.TableColumn("rows", "int")]),
        )
    return meta


def _materialize(result: BackupResult) -> dg.MaterializeResult:
    meta = result_metadata(result)
    if result.offsite_errors:
        # The local backup is complete and stays; the run still fails so the owner hears of it.
        raise dg.Failure(
            description="local backup complete, off-site copy failed: " + "; ".join(result.offsite_errors),
            metadata=meta,
        )
    return dg.MaterializeResult(metadata=meta)


def backup_asset(database: str, settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        key=["backups", database],
        group_name=GROUP,
        kinds=_kinds(settings),
        pool=f"backup_{database}",
        description=(
            f"A backup of the `{database}` database: pg_dump in its own snapshot, zstd"
            f"{', age-encrypted' if settings.backups.encryption.age_recipients else ''}, with a manifest of "
            "every table's exact row count and checksum, kept locally"
            f"{' and off-site' if settings.backups.s3 else ''}. Each materialization is one backup."
        ),
    )
    def _backup(context: dg.AssetExecutionContext, homelab: HomelabSettings) -> dg.MaterializeResult:
        try:
            result = run_backup(homelab.settings, database)
        except (BackupError, pg.SourceError) as e:
            raise dg.Failure(description=str(e)) from None
        context.log.info(f"backed up {database}: {result.manifest['size']} bytes, "
                         f"{result.manifest['row_count']} rows in {result.manifest['table_count']} tables")
        return _materialize(result)

    return _backup


def globals_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        key="backup_globals",
        group_name=GROUP,
        kinds=_kinds(settings),
        pool="backup__globals",
        description="The server's roles and tablespaces (`pg_dumpall --globals-only`), which a restore "
                    "on a new server needs before any database dump.",
    )
    def _globals(homelab: HomelabSettings) -> dg.MaterializeResult:
        try:
            return _materialize(run_globals_backup(homelab.settings))
        except (BackupError, pg.SourceError) as e:
            raise dg.Failure(description=str(e)) from None

    return _globals
