"""Point-in-time recovery in Dagster: base backups, the nightly WAL-chain verification, the RPO.

Thin: the work is in homelab_ops.pitr. The WAL receiver itself is a long-lived service
(`homelab-ops pitr receive`), not a run. Nothing here exists while pitr.enabled is false.
"""


from datetime import datetime, timezone

import dagster as dg

from homelab_ops.backups.names import PITR_OFFSITE
from homelab_ops.defs.backups import keys
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.settings import current

GROUP = "pitr"
CHAIN = "wal_chain_replays_exactly"


def base_backup_asset(cluster: str) -> dg.AssetsDefinition:
    @dg.asset(key=keys.base_backup(cluster), group_name=GROUP, kinds={"postgres"}, pool="base_backup",
              description=f"A base backup of cluster `{cluster}` (pg_basebackup, tar format with the server's "
                          "backup_manifest, checked with pg_verifybackup, zstd, age), then retention: base "
                          "backups by backups.retention, WAL older than the oldest kept base backup.")
    def _base(context: dg.AssetExecutionContext, homelab: HomelabSettings) -> dg.MaterializeResult:
        from homelab_ops.pitr.base import BaseBackupError, run_base_backup
        from homelab_ops.pitr.retention import prune

        s = homelab.pitr
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


def _copies_table(states) -> dg.TableMetadataValue:
    def owed(v):
        return -1 if v is None else len(v)

    return dg.MetadataValue.table(
        records=[dg.TableRecord({"target": s.target, "newest_base_backup": s.newest_base or "none",
                                 "newest_segment": s.newest_segment or "none", "uploaded_wal": s.uploaded_wal,
                                 "uploaded_base_backups": len(s.uploaded_bases), "owed_wal": owed(s.owed_wal),
                                 "owed_base_backups": owed(s.owed_bases), "error": "; ".join(s.errors)})
                 for s in states],
        schema=dg.TableSchema(columns=[
            dg.TableColumn("target", "string"), dg.TableColumn("newest_base_backup", "string"),
            dg.TableColumn("newest_segment", "string"), dg.TableColumn("uploaded_wal", "int"),
            dg.TableColumn("uploaded_base_backups", "int"),
            dg.TableColumn("owed_wal", "int", description="-1: unknown (the target did not answer)"),
            dg.TableColumn("owed_base_backups", "int", description="-1: unknown"), dg.TableColumn("error", "string")]))


def offsite_asset(cluster: str, targets: str) -> dg.AssetsDefinition:
    key = keys.offsite(PITR_OFFSITE)  # `_pitr` is a reserved name no database can take

    @dg.asset(key=key, deps=[keys.base_backup(cluster)], group_name=GROUP, kinds={"s3"}, pool="offsite_pitr",
              check_specs=[dg.AssetCheckSpec("copies_complete", asset=key, blocking=True,
                                             description="Every target holds every finished WAL segment and "
                                                         "every complete base backup of the local archive.")],
              description=f"The PITR archive of `{cluster}` off-site on {targets}: finished WAL segments (the one "
                          "pg_receivewal is writing is finished first with pg_switch_wal, when WAL was written since "
                          "the last) and base backups, from the local "
                          "files, oldest first, checked like the dumps' copies; then each target's copy is pruned "
                          "by the local rules. What failed stays owed until the next run (pitr.offsite_cron).")
    def _offsite(context: dg.AssetExecutionContext, homelab: HomelabSettings) -> dg.MaterializeResult:
        from homelab_ops.pitr import offsite

        s = homelab.pitr
        switched = offsite.finish_segment(s)
        context.log.info(switched)
        states = offsite.sync(s)
        prunes = {p.target: p for p in offsite.prune(s)}
        for st in states:
            context.log.info(f"{st.target}: {st.uploaded_wal} WAL file(s), {len(st.uploaded_bases)} base backup(s) "
                             f"copied; newest there: base backup {st.newest_base}, segment {st.newest_segment}")
            for e in st.errors + ([prunes[st.target].error] if prunes[st.target].error else []):
                context.log.error(e)
        failing = [st for st in states if not st.complete]
        summary = "; ".join(f"{st.target}: " + ("not reached" if st.owed_wal is None else
                                               f"{len(st.owed_wal)} WAL file(s), {len(st.owed_bases or [])} "
                                               "base backup(s) owed") + (f" ({'; '.join(st.errors)})" if st.errors else "")
                            for st in failing)
        removed = {t: (f"{len(p.plan.remove)} base backup(s), {len(p.plan.wal_remove)} WAL file(s)" if p.plan
                       else f"not pruned: {p.error}") for t, p in prunes.items()}
        return dg.MaterializeResult(
            metadata={"targets": _copies_table(states), "unfinished_segment": dg.MetadataValue.text(switched),
                      "pruned": dg.MetadataValue.text("; ".join(f"{t}: {r}" for t, r in removed.items()))},
            check_results=[dg.AssetCheckResult(
                check_name="copies_complete", passed=not failing, severity=dg.AssetCheckSeverity.ERROR,
                description=summary or f"every target holds the whole PITR archive of {cluster}")])

    return _offsite


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
    @dg.asset(key=keys.pitr_verification(cluster), group_name=GROUP, kinds={"postgres"}, pool="restore_verification",
              deps=[keys.base_backup(cluster), *[keys.backup(db) for db in databases]],
              check_specs=[dg.AssetCheckSpec(CHAIN, asset=keys.pitr_verification(cluster), blocking=True,
                                             description="The newest base backup plus the archived WAL replay to "
                                                         "exactly each nightly dump's point and match it table "
                                                         "by table (wal_level=logical); otherwise replay to the "
                                                         "end without a gap and pg_amcheck finds nothing.")],
              description=f"Every night: restore the newest base backup of `{cluster}` into a temporary "
                          "PostgreSQL, replay WAL to the nightly dump's consistent point, compare every table.")
    def _verify(context: dg.AssetExecutionContext, homelab: HomelabSettings) -> dg.MaterializeResult:
        from homelab_ops.pitr.verify import verify_database

        s = homelab.pitr
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
                           "the WAL stream's checks, as an observation of base_backups/<cluster>_base_backup (plotted in "
                           "the UI) and homelab_pitr_rpo_seconds for node_exporter.")
    def _rpo(context: dg.SensorEvaluationContext, homelab: HomelabSettings):
        from homelab_ops.pitr.health import pitr_judgement

        results, seconds = pitr_judgement(homelab.pitr, datetime.now(timezone.utc))  # one look at the server
        meta = {r.name.split(":")[0]: dg.MetadataValue.text(f"{r.state}: {r.reason}") for r in results}
        meta["rpo_seconds"] = dg.MetadataValue.float(-1.0 if seconds is None else round(seconds, 1))
        return dg.SensorResult(asset_events=[dg.AssetObservation(asset_key=keys.base_backup(cluster), metadata=meta)])

    return _rpo


@dg.definitions
def defs() -> dg.Definitions:
    settings = current()
    if not settings.pitr.enabled:
        return dg.Definitions()
    from homelab_ops.backups.postgresql import configured_databases

    cluster = settings.pitr.cluster
    try:
        dbs = configured_databases(settings.postgres)
    except Exception:  # server down at load: the configured list when there is one
        dbs = [] if settings.postgres.databases == "all" else list(settings.postgres.databases)
    base = base_backup_asset(cluster)
    verify = verification_asset(cluster, dbs)
    offsite = [offsite_asset(cluster, ", ".join(t.label for t in settings.backups.s3))] if settings.backups.s3 else []
    max_runtime = str(int(settings.backups.timeout.seconds * 2))
    # a new base backup goes off-site in the same run; WAL follows hourly (pitr.offsite_cron)
    base_job = dg.define_asset_job("base_backup", selection=[base, *offsite], executor_def=dg.in_process_executor,
                                   tags={"dagster/max_runtime": max_runtime},
                                   description="Take a base backup and apply retention to base backups and WAL"
                                               + (", then copy the archive off-site." if offsite else "."))
    verify_job = dg.define_asset_job("verify_wal_chain", selection=[verify], executor_def=dg.in_process_executor,
                                     tags={"dagster/max_runtime": max_runtime},
                                     description="Replay the WAL archive to each nightly dump's point and compare.")
    schedules = [
        dg.ScheduleDefinition(name="base_backup_schedule", job=base_job, cron_schedule=settings.pitr.base_backup_cron,
                              execution_timezone=settings.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
                              description="pitr.base_backup_cron (default Sundays 04:00)."),
        dg.ScheduleDefinition(name="verify_wal_chain_schedule", job=verify_job, cron_schedule="30 4 * * *",
                              execution_timezone=settings.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
                              description="04:30 every day, after the 03:00 nightly backup."),
    ]
    jobs = [base_job, verify_job]
    if offsite:
        offsite_job = dg.define_asset_job("pitr_offsite", selection=offsite, executor_def=dg.in_process_executor,
                                          tags={"dagster/max_runtime": max_runtime},
                                          description="Copy finished WAL segments and base backups to every S3 "
                                                      "target, then prune each copy by the local rules.")
        jobs.append(offsite_job)
        schedules.append(dg.ScheduleDefinition(
            name="pitr_offsite_schedule", job=offsite_job, cron_schedule=settings.pitr.offsite_cron,
            execution_timezone=settings.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
            description="pitr.offsite_cron (default hourly): the off-site archive trails the local one by at "
                        "most this and the segment still being written."))
    return dg.Definitions(assets=[base, verify, *offsite], jobs=jobs, schedules=schedules,
                          sensors=[rpo_sensor(cluster)])
