"""n8n's execution log rolled up per day, with a failure-rate check per partition.

Thin on purpose: the reading, the rules and the judgement are in `homelab_ops.n8n.rollup`.
"""

import time
import warnings
from datetime import date

import dagster as dg

from homelab_ops.defs.resources import HomelabSettings, PostgresResource
from homelab_ops.health.checks import Thresholds, failing_workflows, failure_rates
from homelab_ops.metrics.thresholds import ALERTED_BY
from homelab_ops.n8n import rollup
from homelab_ops.settings import N8nSettings

GROUP = "n8n"
ASSET = "n8n_execution_rollup"


class RollupConfig(dg.Config):
    allow_shrink: bool = False
    """Replace a stored day even when n8n now has fewer of its executions (they were hard-deleted)."""


def daily_partitions(n8n: N8nSettings, zone: str) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=n8n.history_start, timezone=zone)


def failure_check_result(rows: list[rollup.RollupRow], th: Thresholds) -> dg.AssetCheckResult:
    """The day judged as the health sensor judges the newest one (health.checks.failing_workflows),
    against the same numbers; shown here, alerted by health_sensor (n8n_failure_rate)."""
    threshold, min_finished = th.n8n_failure_rate_warn, th.n8n_min_finished
    wfs = {w.workflow_id: w for w in rollup.per_workflow(rows)}
    bad = [wfs[k] for k, *_ in failing_workflows([(k, w.finished, w.failed) for k, w in wfs.items()],
                                                  threshold, min_finished)]
    meta = {"threshold": dg.MetadataValue.float(threshold),
            "workflows_judged": dg.MetadataValue.int(len(failure_rates(
                [(k, w.finished, w.failed) for k, w in wfs.items()], min_finished)))}
    if not bad:
        return dg.AssetCheckResult(check_name="failure_rate", passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   description=f"no workflow failed more than {threshold:.0%} of its finished runs",
                                   metadata=meta)
    named = "; ".join(f"{w.workflow_name} ({w.failed}/{w.finished} = {w.failure_rate:.0%})" for w in bad)
    meta["failing_workflows"] = dg.MetadataValue.json(
        [{"workflow_id": w.workflow_id, "workflow": w.workflow_name, "failed": w.failed, "finished": w.finished,
          "failure_rate": round(w.failure_rate, 4)} for w in bad])
    return dg.AssetCheckResult(
        check_name="failure_rate", passed=False, severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(bad)} workflow{'s' if len(bad) > 1 else ''} above {threshold:.0%} failures: {named}",
        metadata=meta)


def n8n_execution_rollup_asset(n8n: N8nSettings, zone: str) -> dg.AssetsDefinition:
    """One partition per day of `zone` since n8n.history_start."""
    partitions = daily_partitions(n8n, zone)
    with warnings.catch_warnings():
        # Partitioned checks are a preview feature in Dagster 1.13; the check is per day by design.
        warnings.simplefilter("ignore", category=dg.PreviewWarning)
        spec = dg.AssetCheckSpec(
            "failure_rate", asset=ASSET, partitions_def=partitions,
            metadata={"alerted_by": ALERTED_BY},  # n8n_failure_rate, for the newest day
            description=f"Workflows whose (error + crashed) / finished executions that day exceed "
                        f"thresholds.n8n_failure_rate_warn (default n8n.failure_rate_warn, "
                        f"{n8n.failure_rate_warn:.0%}) fail it (WARN), named; health_sensor alerts on the "
                        "newest day (n8n_failure_rate).")

    @dg.asset(
        name=ASSET,
        group_name=GROUP,
        kinds={"postgres"},
        partitions_def=partitions,
        check_specs=[spec],
        description=f"n8n executions per day ({zone}), workflow and status with p50/p95/max "
                    "durations, in homelab_ops.n8n_execution_daily. Read-only from n8n's execution_entity "
                    "and workflow_entity; a day is replaced atomically; soft-deleted executions count, and "
                    "a day n8n has since pruned keeps its stored rows.",
    )
    def _rollup(context: dg.AssetExecutionContext, config: RollupConfig,
                homelab: HomelabSettings, n8n_database: PostgresResource,
                state_database: PostgresResource) -> dg.MaterializeResult:
        n8n_config = homelab.n8n
        day = date.fromisoformat(context.partition_key)
        started = time.perf_counter()
        try:
            with (rollup.connect_n8n(n8n_database.conninfo().get_secret_value()) as n8n,
                  state_database.open_state() as state):
                layout = rollup.detect_layout(n8n, n8n_config.n8n.db_schema, n8n_config.n8n.table_prefix)
                rows = rollup.compute_day(n8n, layout, day, n8n_config.timezone)
                out = rollup.replace_day(state, day, rows, allow_shrink=config.allow_shrink)
        except rollup.LayoutError as e:
            raise dg.Failure(description=str(e)) from None
        if out.kept_stored:
            context.log.warning(
                f"{day}: n8n now has {out.source_executions} executions for this day, the table "
                f"{out.stored_executions}; n8n pruned some, so the stored rows stay (allow_shrink to replace)")
        wfs = rollup.per_workflow(out.rows)
        return dg.MaterializeResult(
            metadata={
                "executions": dg.MetadataValue.int(sum(r.executions for r in out.rows)),
                "workflows": dg.MetadataValue.int(len(wfs)),
                "rows": dg.MetadataValue.int(len(out.rows)),
                "kept_stored": dg.MetadataValue.bool(out.kept_stored),
                "duration_ms": dg.MetadataValue.int(round((time.perf_counter() - started) * 1000)),
                "summary": dg.MetadataValue.md(rollup.markdown_summary(out.rows)),
            },
            check_results=[failure_check_result(out.rows, n8n_config.thresholds)],
        )

    return _rollup
