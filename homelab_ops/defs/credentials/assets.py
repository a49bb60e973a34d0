"""Credential assets: `credentials/<name>` per managed credential, and the workflow secrets scan.

Thin: the work is in `homelab_ops.credentials.service`; here it becomes
metadata (ages, versions, consumers to restart; never a value) and checks.
"""


import dagster as dg
import psycopg

from homelab_ops import units
from homelab_ops.credentials import kinds
from homelab_ops.credentials.errors import CredentialError
from homelab_ops.credentials.policy import Definition
from homelab_ops.credentials.service import rotate_and_report, scan_configured
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.errors import first_line
from homelab_ops.n8n.workflow_scan import ScanError, summary

GROUP = "credentials"


def credential_asset(d: Definition) -> dg.AssetsDefinition:
    key = dg.AssetKey(["credentials", d.name])
    consumers = ", ".join(d.consumers) or "none listed"
    module = kinds.MODULES.get(d.kind)  # each kind's module says how its asset looks

    @dg.asset(
        key=key,
        group_name=GROUP,
        kinds=set(module.DAGSTER_KINDS) if module else {"secret"},
        pool="credentials",
        description=(f"{d.description + ' ' if d.description else ''}`{d.kind}` credential, rotated every "
                     f"{d.period} when due: {module.HOW if module else ''}. Consumers: {consumers}. Each "
                     "materialization finishes any interrupted rotation and records the credential's age."),
        check_specs=[dg.AssetCheckSpec("not_overdue", asset=key,
                                       description=f"The current value is younger than its period ({d.period}).")],
    )
    def _credential(context: dg.AssetExecutionContext, homelab: HomelabSettings) -> dg.MaterializeResult:
        try:
            report = rotate_and_report(homelab.credentials, d.name, actor=f"dagster-run:{context.run.run_id}")
        except CredentialError as e:
            raise dg.Failure(description=str(e)) from None
        st, rot = report.status, report.rotation
        restart = list(rot.restart) if rot else []
        if rot and rot.rotated:
            context.log.info(f"rotated {d.name} to v{rot.version}; restart: {', '.join(restart) or 'nothing'}")
        age = st.age_seconds
        meta = {
            "kind": dg.MetadataValue.text(st.definition.kind),
            "period": dg.MetadataValue.text(st.definition.period),
            "version": dg.MetadataValue.int(st.current.version if st.current else 0),
            "stages": dg.MetadataValue.text(st.stages),
            "age": dg.MetadataValue.text(units.duration(age)),
            "age_days": dg.MetadataValue.float(round(age / 86400, 3) if age is not None else -1.0),
            "next_due": dg.MetadataValue.text(report.next_due.isoformat() if report.next_due else "now"),
            "rotated": dg.MetadataValue.bool(bool(rot and rot.rotated)),
            "consumers_to_restart": dg.MetadataValue.md("\n".join(f"- {c}" for c in restart) or "_none_"),
        }
        if rot and rot.resumed:
            meta["resumed_pending"] = dg.MetadataValue.bool(True)
        if rot and rot.notes:
            meta["notes"] = dg.MetadataValue.md("\n".join(f"- {n}" for n in rot.notes))
        if report.env_file:
            meta["env_file"] = dg.MetadataValue.path(str(report.env_file))
        check = dg.AssetCheckResult(
            check_name="not_overdue",
            passed=not st.overdue,
            severity=dg.AssetCheckSeverity.WARN,
            description=(f"{d.name} has never been set" if st.current is None else
                         f"{d.name} is {units.duration(age)} old, its period is {d.period}"),
            metadata={"age_days": dg.MetadataValue.float(round(age / 86400, 3) if age is not None else -1.0)},
        )
        return dg.MaterializeResult(metadata=meta, check_results=[check])

    return _credential


def workflow_secrets_scan_asset() -> dg.AssetsDefinition:
    @dg.asset(
        key="workflow_secrets_scan",
        group_name=GROUP,
        kinds={"n8n"},
        description="n8n's workflows (its database, saved versions included, and the `n8n.workflows_dir` "
                    "exports) scanned for hard-coded secrets: Telegram bot tokens (also inside Bot API URLs), "
                    "chat ids, keys, credential and webhook ids in exports, high-entropy values under "
                    "secret-like keys. Fix them with `homelab-ops workflows templatize`.",
        check_specs=[dg.AssetCheckSpec("no_hardcoded_secrets", asset="workflow_secrets_scan",
                                       description="No workflow holds a hard-coded secret.")],
    )
    def workflow_secrets_scan(context: dg.AssetExecutionContext, homelab: HomelabSettings) -> dg.MaterializeResult:
        try:
            report = scan_configured(homelab.n8n.n8n)
        except (ScanError, OSError) as e:
            raise dg.Failure(description=str(e)) from None
        except psycopg.Error as e:
            raise dg.Failure(description=f"cannot read n8n's workflows: {first_line(e)}") from None
        findings = report.findings
        if findings:
            context.log.warning(f"{len(findings)} hard-coded secrets in n8n workflows")
        rows = [dg.TableRecord({k: str(v or "") for k, v in f.as_dict().items() if k != "workflow_id"})
                for f in findings[:500]]
        cols = ["source", "workflow", "node", "path", "rule", "excerpt"]
        meta = {
            "sources": dg.MetadataValue.text(", ".join(report.sources) or "nothing configured"),
            "workflows_scanned": dg.MetadataValue.int(report.workflows),
            "finding_count": dg.MetadataValue.int(len(findings)),
            "by_rule": dg.MetadataValue.json(summary(findings)),
            "findings": dg.MetadataValue.table(
                records=rows, schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in cols])),
        }
        check = dg.AssetCheckResult(
            check_name="no_hardcoded_secrets",
            passed=not findings,
            severity=dg.AssetCheckSeverity.WARN,
            description=(f"{len(findings)} findings in "
                         f"{len({(f.source, f.workflow) for f in findings})} workflows" if findings else "clean"),
            metadata={"finding_count": dg.MetadataValue.int(len(findings))},
        )
        return dg.MaterializeResult(metadata=meta, check_results=[check])

    return workflow_secrets_scan
