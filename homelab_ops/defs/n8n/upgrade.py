"""`n8n_upgrade_check`: go / no-go for an n8n version, on a scratch copy of the newest verified backup."""


import dagster as dg
from pydantic import Field

from homelab_ops.defs.n8n.verification import credential_table, workflow_table
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.errors import first_line
from homelab_ops.health.messages import run_link
from homelab_ops.n8n import upgrade
from homelab_ops.notify.alert import Alert
from homelab_ops.notify.dispatch import dispatcher_for

ASSET = "n8n_upgrade_readiness"
GO = "upgrade_go"
JOB = "n8n_upgrade_check"


class UpgradeConfig(dg.Config):
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$",
                         description="The n8n version to try, e.g. 1.123.0 (n8nio/n8n:<version>, or "
                                     "n8n.command with {version} replaced).")


def upgrade_alert(report: upgrade.UpgradeReport, run_id: str, base_url: str) -> Alert:
    return Alert("asset_check", f"{ASSET}:{GO}", "check_failed" if not report.go else "settled",
                 "warn" if report.go else "fail",  # warn: reaches the chats a go/no-go was asked in
                 ("✅ " if report.go else "🛑 ") + report.headline(), report.verdict.summary(),
                 link=run_link(base_url, run_id), link_text="Open the run", run_id=run_id)


@dg.asset(
    name=ASSET,
    group_name="n8n",
    kinds={"n8n", "postgres"},
    pool="restore_verification",
    check_specs=[dg.AssetCheckSpec(GO, asset=ASSET, description="go: every workflow kept its nodes and "
                                   "parameters and every credential decrypts under the new version")],
    description="Before an n8n upgrade: the newest verified backup restored into a scratch database, the "
                "new version's migrations run on it, workflows, node parameters and credential decryption "
                "compared with the export taken before. Nothing is activated; the scratch database is dropped.",
)
def n8n_upgrade_readiness(context: dg.AssetExecutionContext, config: UpgradeConfig, homelab: HomelabSettings
                          ) -> dg.MaterializeResult:
    try:
        report = upgrade.check_upgrade(homelab.backups, config.version)
    except upgrade.UpgradeCheckError as e:
        raise dg.Failure(description=str(e)) from None
    (context.log.info if report.go else context.log.error)(f"{report.headline()}: {report.verdict.summary()}")
    try:
        dispatcher_for(homelab.notify, logger=context.log).deliver([upgrade_alert(report, context.run.run_id,
                                                                                homelab.notify.base_url)])
    except Exception as e:
        context.log.warning(f"the go/no-go message could not be sent: {first_line(e)}")
    v = report.verdict
    return dg.MaterializeResult(
        metadata={"verdict": dg.MetadataValue.text("GO" if report.go else "NO-GO"),
                  "report": dg.MetadataValue.md(upgrade.markdown(report)),
                  "version": dg.MetadataValue.text(config.version),
                  "backup": dg.MetadataValue.text(report.from_backup),
                  "compared_with": dg.MetadataValue.text(report.baseline),
                  "workflows": workflow_table(v), "credentials": credential_table(v),
                  "duration_s": dg.MetadataValue.float(round(report.duration_s, 2))},
        check_results=[dg.AssetCheckResult(check_name=GO, passed=report.go, severity=dg.AssetCheckSeverity.WARN,
                                           description=report.verdict.summary())])


def upgrade_job():
    return dg.define_asset_job(
        JOB, selection=[ASSET], executor_def=dg.in_process_executor, tags={"dagster/max_runtime": "3600"},
        description="Go / no-go for an n8n upgrade (run config `version`), on a scratch copy; on Telegram too.")
