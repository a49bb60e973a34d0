"""Restore verification as assets: `restore_verification/<database>_verification`, with its checks.

The blocking check `matches_manifest` is what stops retention from pruning after a
backup that does not restore; the freshness check `verified_recently` is what
notices when verification stopped happening at all. Only a `restored` outcome
passes either; `integrity-only` (this host has no age identity) is a warning that
says how to fix it, and does not block retention.
"""

import random
from datetime import datetime, timezone

import dagster as dg
from pydantic import Field

from homelab_ops.backups import sources
from homelab_ops.backups import verify as v
from homelab_ops.backups.config import BackupsConfig
from homelab_ops.backups.stores import stores_for
from homelab_ops.defs.backups import keys
from homelab_ops.defs.n8n.verification import n8n_level
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.health.checks import OK, backup_age
from homelab_ops.metrics.thresholds import ALERTED_BY

GROUP = "backups"
MATCHES = "matches_manifest"
FRESH = "verified_recently"


class VerifyConfig(dg.Config):
    """Run config of a verification; the weekly job sets `random_older`."""

    random_older: bool = Field(
        default=False,
        description="Also verify one randomly chosen older backup, to find bit rot in old backups.",
    )


def _table(v_: v.Verification) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"table": t.table,
                                 "expected_rows": t.expected_rows if t.expected_rows is not None else -1,
                                 "restored_rows": t.restored_rows if t.restored_rows is not None else -1,
                                 "checksum_match": t.checksum_match}) for t in v_.tables],
        schema=dg.TableSchema(columns=[
            dg.TableColumn("table", "string"),
            dg.TableColumn("expected_rows", "int", description="from the manifest; -1: not in the manifest"),
            dg.TableColumn("restored_rows", "int", description="count(*) after the restore; -1: table missing"),
            dg.TableColumn("checksum_match", "bool"),
        ]),
    )


def verification_metadata(result: v.Verification, prefix: str = "") -> dict:
    meta = {
        f"{prefix}backup": dg.MetadataValue.text(result.stem),
        f"{prefix}outcome": dg.MetadataValue.text(result.outcome),
        f"{prefix}store": dg.MetadataValue.text(result.store),
        f"{prefix}mode": dg.MetadataValue.text("restore" if result.mode == "restore"
                                               else "integrity only: the restore was NOT tested"),
        f"{prefix}message": dg.MetadataValue.text(result.message),
        f"{prefix}verified_copy": dg.MetadataValue.text(result.source_uri),
        f"{prefix}sha256_ok": dg.MetadataValue.bool(result.sha256_ok),
        f"{prefix}restored": dg.MetadataValue.bool(result.restored),
        f"{prefix}duration_s": dg.MetadataValue.float(round(result.duration_s, 3)),
        f"{prefix}tables": _table(result),
    }
    if result.scratch_database:
        meta[f"{prefix}scratch_database"] = dg.MetadataValue.text(f"{result.scratch_database} (dropped)")
    if result.record_errors:
        meta[f"{prefix}record_errors"] = dg.MetadataValue.text("; ".join(result.record_errors))
    return meta


def verification_asset(database: str, backups: BackupsConfig) -> dg.AssetsDefinition:
    """`restore_verification/<database>_verification`; `backups` is read at load (targets, the source's kinds), the
    step reads the resource's (`homelab.backups`), as every asset does."""
    where = ("the copy in the store read longest ago (local or an S3 target, in turn)" if backups.backups.s3
             else "the local copy")
    source = sources.source_for(backups.backups, database)[0]

    @dg.asset(
        key=keys.verification(database),
        deps=[keys.backup(database)],
        group_name=GROUP,
        kinds=set(source.KINDS) | ({"s3"} if backups.backups.s3 else set()),
        pool=f"restore_verification_{database}",  # per database: one stuck verification blocks only its own
        check_specs=[dg.AssetCheckSpec(
            MATCHES, asset=keys.verification(database), blocking=True,
            description=f"The restore holds what the manifest recorded ({source.VERIFIES}); fails on any "
                        "difference, so retention does not prune after it.",
        )],
        description=(
            f"Proof that the newest backup of `{database}` restores: {where} is sha256-checked, then "
            f"{source.VERIFIES}. The outcome (restored, integrity-only, failed) is written beside the copy read as "
            "`<stem>.verified.json`; each store's copies are read in turn, one store a night."
        ),
    )
    def _verify(context: dg.AssetExecutionContext, config: VerifyConfig,
                homelab: HomelabSettings) -> dg.MaterializeResult:
        backups = homelab.backups
        try:
            store, skipped, listed = v.tonights_store(backups.backups, database)  # one listing for the whole step
            for why in skipped:
                context.log.warning(f"not verified tonight: {why}")
            results = [v.verify_backup(backups, database, store=store, backups=listed)]
            meta = verification_metadata(results[0])
            if config.random_older:
                older = v.pick_older(listed, random.SystemRandom())
                if older is None:
                    meta["older_backup"] = dg.MetadataValue.text("none: there is only one backup")
                else:
                    results.append(v.verify_backup(backups, database, stem=older.stem, store=store,
                                                   backups=listed))
                    meta.update(verification_metadata(results[1], prefix="older_"))
        except v.VerifyError as e:
            raise dg.Failure(description=str(e)) from None
        for r in results:
            log = (context.log.info if r.passed else context.log.warning if r.outcome == v.INTEGRITY_ONLY
                   else context.log.error)
            log(f"{database} backup {r.stem} in {r.store}: {r.outcome}: {r.message}")
            for err in r.record_errors:
                context.log.warning(f"could not record the result: {err}")
        failed = [r for r in results if not r.passed]
        n8n = n8n_level(context, backups, database, results[0], meta)  # n8n itself on n8n's database, or None
        if results[0].passed:
            v.publish_freshness(backups.textfile_dir, results[0])
        # Only a failed copy blocks retention; integrity-only warns (retention still protects the
        # newest restored backup, and a host without a key must not fill its disk).
        hard = any(r.outcome == v.FAILED for r in results)
        check = dg.AssetCheckResult(
            check_name=MATCHES,
            passed=not failed and (n8n is None or n8n[0]),
            severity=dg.AssetCheckSeverity.ERROR if hard or (n8n is not None and not n8n[0])
            else dg.AssetCheckSeverity.WARN,
            description="; ".join(f"{r.stem} in {r.store}: {r.message}" for r in (failed or results))
            + (f"; n8n: {n8n[1]}" if n8n else ""),
            metadata={
                "outcomes": dg.MetadataValue.text(", ".join(f"{r.stem} in {r.store}: {r.outcome}"
                                                            for r in results)),
                "differing_tables": dg.MetadataValue.int(sum(len(r.mismatches) for r in results)),
            },
        )
        return dg.MaterializeResult(metadata=meta, check_results=[check])

    return _verify


def freshness_check(database: str, config: BackupsConfig) -> dg.AssetChecksDefinition:
    """Shows in the UI what the health sensor judges and alerts on as `backup_age:<database>`: the
    same judgement (health.checks.backup_age) against the same number, so one condition is one message."""
    @dg.asset_check(
        asset=keys.verification(database),
        name=FRESH,
        description=f"A backup of `{database}` younger than thresholds.backup_age_fail_hours (default "
                    f"backups.max_age_hours, {config.backups.max_age_hours:g} h) was restored by its verification "
                    "(from any store; integrity-only does not count). health_sensor alerts on it "
                    f"(backup_age:{database}); this check shows it here.",
        metadata={"alerted_by": ALERTED_BY},
    )
    def _fresh(homelab: HomelabSettings) -> dg.AssetCheckResult:
        h = homelab.health  # the judgement is the health sensor's (backup_age), with its numbers
        limit = h.thresholds.backup_age_fail_hours
        now = datetime.now(timezone.utc)
        try:
            backup, store = v.newest_verified(h.backups.backups, database, now=now, within_hours=limit)
            local = v.listing(stores_for(h.backups.backups)[0], database).backups
        except v.VerifyError as e:
            return dg.AssetCheckResult(passed=False, description=str(e))
        verified = backup.time if backup else v.published_freshness(h.backups.textfile_dir, database)
        if backup is None and verified is not None and (now - verified).total_seconds() <= limit * 3600:
            verified = None  # verification published a recent restore, but no store holds that copy now
        # The sensor's input when no store has a recent restored copy: the same message for a stale one.
        judged = backup_age(database, verified, local[-1].time if local else None, now, limit)
        meta = {"store": dg.MetadataValue.text(store or "none")}
        if backup:
            meta["newest_verified_backup"] = dg.MetadataValue.text(backup.stem)
        return dg.AssetCheckResult(passed=judged.state == OK, description=judged.reason, metadata=meta)

    return _fresh
