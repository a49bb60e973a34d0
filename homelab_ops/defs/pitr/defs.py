"""Point-in-time recovery in Dagster: base backups, the nightly WAL-chain verification, the RPO.

Thin: the work is in homelab_ops.pitr. The WAL receiver itself is a long-lived service
(`homelab-ops pitr receive`), not a run. Nothing here exists while pitr.enabled is false.
"""


from datetime import datetime, timezone

import dagster as dg

from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.settings import current

GROUP = "pitr"
CHAIN = "wal_chain_replays_exactly"


def base_key(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["base_backups", cluster])


def verification_key(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["pitr_verification", cluster])


def base_backup_asset(cluster: str) -> dg.AssetsDefinition:
    @dg.asset(key=base_key(cluster), group_name=GROUP, kinds={"postgres"}, pool="base_backup",
              description=f"A base backup of cluster `{cluster}` (pg_basebackup, tar format with the server's "
                          "backup_manifest, checked with pg_verifybackup, zstd, age), then retention: base "
                          "backups by backups.retention, WAL older than the oldest kept base backup.")
    def _base(context: dg.AssetExecutionContext, homelab: HomelabSettings) -> dg.MaterializeResult:
        from homelab_ops.pitr.base import BaseBackupError, run_base_backup
        from homelab_ops.pitr.retention import prune

        s = homelab.settings
        try:
            b = run_base_backup(s)
        except BaseBackupError as e:
            raise dg.Failure(description=str(e)) from None
        p = prune(s)
        context.log.info(f"base backup {b.stem}; kept {len(p.keep)}, removed {len(p.remove)} base backups and "
                         f"{len(p.wal_remove)} WAL files")
        m = b.manifest
        return dg.MaterializeResult(metadata={
            "base_backup": dg.MetadataValue.text(b.stem),
            "wal_range": dg.MetadataValue.text(f"{m['start_lsn']} .. {m['end_lsn']} (timeline {m['timeline']})"),
            "size_bytes": dg.MetadataValue.int(sum(f["size"] for f in m["files"].values())),
            "encrypted": dg.MetadataValue.bool(bool(m.get("encryption"))),
            "kept": dg.MetadataValue.text(", ".join(f"{s_} ({', '.join(r)})" for s_, r in p.keep)),
            "removed": dg.MetadataValue.text(", ".join(p.remove) or "none"),
            "wal_files_removed": dg.MetadataValue.int(len(p.wal_remove)),
        })

    return _base


def _tables(results) -> dg.TableMetadataValue:
    rows = [dg.TableRecord({"database": r.database, "table": t["table"],
                            "expected_rows": t["expected_rows"] if t["expected_rows"] is not None else -1,
                            "restored_rows": t["restored_rows"] if t["restored_rows"] is not None else -1,
                            "checksum_match": t["checksum_match"]}) for r in results for t in r.tables]
    return dg.MetadataValue.table(records=rows, schema=dg.TableSchema(columns=[
        dg.TableColumn("database", "string"), dg.TableColumn("table", "string"),
        dg.TableColumn("expected_rows", "int", description="the nightly dump's manifest; -1: not in it"),
        dg.TableColumn("restored_rows", "int", description="after replaying WAL to the dump's point; -1: missing"),
        dg.TableColumn("checksum_match", "bool"),
    ]))


def verification_asset(cluster: str, databases: list[str]) -> dg.AssetsDefinition:
    @dg.asset(key=verification_key(cluster), group_name=GROUP, kinds={"postgres"}, pool="restore_verification",
              deps=[base_key(cluster), *[dg.AssetKey(["backups", db]) for db in databases]],
              check_specs=[dg.AssetCheckSpec(CHAIN, asset=verification_key(cluster), blocking=True,
                                             description="The newest base backup plus the archived WAL replay to "
                                                         "exactly each nightly dump's point and match it table "
                                                         "by table (wal_level=logical); otherwise replay to the "
                                                         "end without a gap and pg_amcheck finds nothing.")],
              description=f"Every night: restore the newest base backup of `{cluster}` into a temporary "
                          "PostgreSQL, replay WAL to the nightly dump's consistent point, compare every table.")
    def _verify(context: dg.AssetExecutionContext, homelab: HomelabSettings) -> dg.MaterializeResult:
        from homelab_ops.pitr.verify import verify_database

        s = homelab.settings
        results = [verify_database(s, db) for db in databases]
        for r in results:
            (context.log.info if r.passed else context.log.error)(f"{r.database}: {r.message}")
        failed = [r for r in results if not r.passed]
        check = dg.AssetCheckResult(check_name=CHAIN, passed=not failed, severity=dg.AssetCheckSeverity.ERROR,
                                    description="; ".join(r.message for r in (failed or results))[:2000])
        return dg.MaterializeResult(metadata={
            "tables": _tables(results),
            "mode": dg.MetadataValue.text(", ".join(f"{r.database}: {r.mode}" for r in results)),
            "recovery_points": dg.MetadataValue.text(", ".join(
                f"{r.database}: {r.target_lsn or r.replay_lsn}" for r in results)),
            "messages": dg.MetadataValue.md("\n".join(f"- **{r.database}**: {r.message}" for r in results)),
        }, check_results=[check])

    return _verify


def rpo_sensor(cluster: str) -> dg.SensorDefinition:
    @dg.sensor(name="pitr_rpo", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
               description="Every minute: the recovery point objective (how much a restore would lose now) and "
                           "the WAL stream's checks, as an observation of base_backups/<cluster> (plotted in "
                           "the UI) and homelab_pitr_rpo_seconds for node_exporter.")
    def _rpo(context: dg.SensorEvaluationContext, homelab: HomelabSettings):
        from homelab_ops.pitr.health import pitr_results, read_slot, rpo_seconds
        from homelab_ops.pitr.receive import read_status

        s = homelab.settings
        now = datetime.now(timezone.utc)
        results = pitr_results(s, now)
        try:
            slot, _ = read_slot(s)
        except Exception:
            slot = None
        seconds = rpo_seconds(slot, read_status(s), now)
        meta = {r.name.split(":")[0]: dg.MetadataValue.text(f"{r.state}: {r.reason}") for r in results}
        meta["rpo_seconds"] = dg.MetadataValue.float(-1.0 if seconds is None else round(seconds, 1))
        return dg.SensorResult(asset_events=[dg.AssetObservation(asset_key=base_key(cluster), metadata=meta)])

    return _rpo


@dg.definitions
def defs() -> dg.Definitions:
    settings = current()
    if not settings.pitr.enabled:
        return dg.Definitions()
    from homelab_ops.backups.postgresql import configured_databases

    cluster = settings.pitr.cluster
    try:
        dbs = configured_databases(settings)
    except Exception:  # server down at load: the configured list when there is one
        dbs = [] if settings.postgres.databases == "all" else list(settings.postgres.databases)
    base = base_backup_asset(cluster)
    verify = verification_asset(cluster, dbs)
    base_job = dg.define_asset_job("base_backup", selection=[base], executor_def=dg.in_process_executor,
                                   tags={"dagster/max_runtime": str(int(settings.backups.timeout.seconds * 2))},
                                   description="Take a base backup and apply retention to base backups and WAL.")
    verify_job = dg.define_asset_job("verify_wal_chain", selection=[verify], executor_def=dg.in_process_executor,
                                     tags={"dagster/max_runtime": str(int(settings.backups.timeout.seconds * 2))},
                                     description="Replay the WAL archive to each nightly dump's point and compare.")
    schedules = [
        dg.ScheduleDefinition(name="base_backup_schedule", job=base_job, cron_schedule=settings.pitr.base_backup_cron,
                              execution_timezone=settings.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
                              description="pitr.base_backup_cron (default Sundays 04:00)."),
        dg.ScheduleDefinition(name="verify_wal_chain_schedule", job=verify_job, cron_schedule="30 4 * * *",
                              execution_timezone=settings.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
                              description="04:30 every day, after the 03:00 nightly backup."),
    ]
    return dg.Definitions(assets=[base, verify], jobs=[base_job, verify_job], schedules=schedules,
                          sensors=[rpo_sensor(cluster)])
