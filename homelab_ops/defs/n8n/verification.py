"""n8n's backups in the UI: verification by n8n itself (part of the blocking `matches_manifest`
check of `restore_verification/<n8n database>_verification`) and the WARN check that the key was saved."""


import dagster as dg

from homelab_ops.backups.catalog import read_listing
from homelab_ops.backups.config import BackupsConfig
from homelab_ops.backups.stores import LocalStore, StoreError
from homelab_ops.defs.backups import keys
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.n8n import backup_set
from homelab_ops.n8n import verification as nv
from homelab_ops.settings import N8nSettings

KEY_SAVED = "n8n_key_saved"


def workflow_table(verdict) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"workflow": w.workflow, "expected_nodes": w.expected_nodes,
                                 "loaded_nodes": w.loaded_nodes, "ok": w.ok, "problem": w.problem})
                 for w in verdict.workflows],
        schema=dg.TableSchema(columns=[
            dg.TableColumn("workflow", "string"),
            dg.TableColumn("expected_nodes", "int", description="in the backup; -1: not in it"),
            dg.TableColumn("loaded_nodes", "int", description="as n8n loaded it; -1: not loaded"),
            dg.TableColumn("ok", "bool"),
            dg.TableColumn("problem", "string"),
        ]))


def credential_table(verdict) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"credential": c.credential, "type": c.type, "decrypted": c.decrypted,
                                 "ok": c.ok, "problem": c.problem}) for c in verdict.credentials],
        schema=dg.TableSchema(columns=[
            dg.TableColumn("credential", "string"), dg.TableColumn("type", "string"),
            dg.TableColumn("decrypted", "bool", description="n8n decrypted it with the backup's key"),
            dg.TableColumn("ok", "bool", description="and to the value the ciphertext holds (keyed hash)"),
            dg.TableColumn("problem", "string"),
        ]))


def verification_metadata(r: nv.N8nVerification) -> dict:
    v = r.verdict
    return {
        "n8n_result": dg.MetadataValue.text(("passed: " if r.passed else "FAILED: ") + r.message),
        "n8n_version": dg.MetadataValue.text(f"{r.version} ({r.mode})"),
        "n8n_key_fingerprint": dg.MetadataValue.text(r.key_fingerprint or "none saved"),
        "n8n_workflows_loaded": dg.MetadataValue.int(sum(1 for w in v.workflows if w.loaded_nodes >= 0)),
        "n8n_credentials_decrypted": dg.MetadataValue.int(sum(1 for c in v.credentials if c.decrypted)),
        "n8n_workflows": workflow_table(v),
        "n8n_credentials": credential_table(v),
        "n8n_duration_s": dg.MetadataValue.float(round(r.duration_s, 3)),
    }


def n8n_level(context, backups: BackupsConfig, database: str, manifest_result, meta: dict) -> tuple[bool, str] | None:
    """Run n8n on the backup just verified against its manifest; None when it does not apply.

    Adds the result tables to `meta`; (passed, message) joins the blocking check."""
    if not nv.applies(backups, database):
        return None
    if not manifest_result.restored:
        return False, "not run: the backup did not restore"
    try:
        # the very backup, from the store, that the manifest check just restored
        r = nv.verify_with_n8n(backups, database, stem=manifest_result.stem, source=manifest_result.store, exact=True)
    except nv.N8nVerifyError as e:
        context.log.error(f"verification by n8n could not run: {e}")
        return False, f"verification by n8n could not run: {e}"
    meta.update(verification_metadata(r))
    for err in nv.record_result(backups.backups, r):
        context.log.warning(f"could not record the n8n verification: {err}")
    (context.log.info if r.passed else context.log.error)(f"{database} backup {r.stem} by n8n {r.version}: {r.message}")
    return r.passed, r.message


def key_saved_check(n8n: N8nSettings | None) -> dg.AssetChecksDefinition | None:
    """WARN on `backups/<n8n database>_backup`: the newest backup set holds n8n's key (and its binary data)."""
    database = backup_set.n8n_database(n8n)
    if database is None:
        return None

    @dg.asset_check(
        asset=keys.backup(database),
        name=KEY_SAVED,
        description="The newest backup of n8n's database holds its encryption key (age-encrypted) and, with "
                    "n8n.binary_data_dir, its binary data: without the key every credential must be re-entered "
                    "by hand after a restore.",
    )
    def _key_saved(homelab: HomelabSettings) -> dg.AssetCheckResult:
        local = LocalStore(homelab.backups.backups.local_dir)
        try:
            backups = read_listing(local.list(database)).backups
            extras = backup_set.read_extras(local, database, backups[-1].stem) if backups else None
        except (StoreError, OSError, ValueError) as e:
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                       description=f"cannot read the newest backup's n8n record: {e}")
        if not backups:
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                       description=f"no backup of {database} yet")
        stem = backups[-1].stem
        if extras is None:
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                       description=f"backup {stem} has no n8n key record: its credentials cannot "
                                                   "be restored", metadata={"backup": stem})
        meta = {"backup": dg.MetadataValue.text(stem),
                "key_fingerprint": dg.MetadataValue.text(extras.key_fingerprint or "none"),
                "key_source": dg.MetadataValue.text(extras.key_source or "none"),
                "key_saved": dg.MetadataValue.bool(bool(extras.key_file)),
                "binary_data_files": dg.MetadataValue.int(extras.binary_files)}
        if extras.key_check:
            meta["credentials_decrypting"] = dg.MetadataValue.text(
                f"{extras.key_check.decrypted} of {extras.key_check.credentials}")
        ok = bool(extras.key_file) and not extras.problems
        return dg.AssetCheckResult(
            passed=ok, severity=dg.AssetCheckSeverity.WARN, metadata=meta,
            description=(f"backup {stem}: key {extras.key_fingerprint} saved age-encrypted" if ok
                         else f"backup {stem}: " + "; ".join(extras.problems)))

    return _key_saved
