"""The queries behind `homelab-ops n8n executions` and `homelab-ops n8n summary`.

Live reads of n8n's own tables (not the daily rollup), so today's failures show
up at once. Same rules as the rollup: layouts from `rollup.detect_layout`,
soft-deleted executions included (and marked), durations of stopped executions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from homelab_ops.n8n.rollup import FAILED, FINISHED, Layout, executions_between

#: Every value n8n writes to ``execution_entity.status`` (ExecutionStatus in n8n-workflow).
EXECUTION_STATUSES = ("success", "error", "crashed", "canceled", "running", "waiting", "new", "unknown")


@dataclass(frozen=True)
class Execution:
    id: int
    workflow: str
    status: str
    mode: str | None
    started_at: datetime | None
    stopped_at: datetime | None
    duration_ms: float | None
    deleted: bool


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def list_executions(conn: psycopg.Connection, layout: Layout, *, since: datetime, workflow: str | None = None,
                    statuses: tuple[str, ...] = (), limit: int = 50) -> list[Execution]:
    """Newest first: executions started since `since` (and queued ones created since then)."""
    e = sql.Identifier
    started = sql.SQL("e.{} >= %(since)s").format(e("startedAt"))
    if layout.has_created_at:
        started = sql.SQL("({} OR (e.{} IS NULL AND e.{} >= %(since)s))").format(
            started, e("startedAt"), e("createdAt"))
    where = [started]
    if workflow:
        where.append(sql.SQL("(w.name ILIKE %(like)s OR w.id = %(wf)s)"))
    deleted = sql.SQL("e.{} IS NOT NULL").format(e("deletedAt")) if layout.has_deleted_at else sql.SQL("false")
    inner = sql.SQL(
        "SELECT e.id, w.name::text AS workflow, {status} AS status, e.mode::text AS mode, e.{s} AS started_at,"
        " e.{t} AS stopped_at, {ms} AS ms, {deleted} AS deleted FROM {ex} e JOIN {wf} w ON w.id = e.{wid}"
        " WHERE {where}").format(
        status=layout.status_expr(), s=e("startedAt"), t=e("stoppedAt"), ms=layout.duration_ms_expr(),
        deleted=deleted, ex=layout.executions, wf=layout.workflows, wid=e("workflowId"),
        where=sql.SQL(" AND ").join(where))
    query = sql.SQL("SELECT * FROM ({inner}) x {filter} ORDER BY id DESC LIMIT %(limit)s").format(
        inner=inner, filter=sql.SQL("WHERE status = ANY(%(statuses)s)") if statuses else sql.SQL(""))
    params = {"since": layout.bind(since), "like": _like(workflow or ""), "wf": workflow,
              "statuses": list(statuses), "limit": limit}
    return [Execution(*r) for r in conn.execute(query, params)]


@dataclass(frozen=True)
class WorkflowSummary:
    workflow_id: str
    workflow: str
    runs: int
    failures: int
    finished: int
    p95_ms: float | None
    last_started: datetime | None

    @property
    def failure_rate(self) -> float | None:
        return self.failures / self.finished if self.finished else None


def summarize(conn: psycopg.Connection, layout: Layout, *, since: datetime, now: datetime) -> list[WorkflowSummary]:
    """Per workflow since `since`: runs started, failures (error + crashed), p95 of stopped runs."""
    cols = sql.SQL("e.{wid}::text AS workflow_id, w.name::text AS workflow_name, {st} AS status, {ms} AS ms,"
                   " e.{s} AS started").format(wid=sql.Identifier("workflowId"), st=layout.status_expr(),
                                               ms=layout.duration_ms_expr(), s=sql.Identifier("startedAt"))
    query = sql.SQL(
        "SELECT workflow_id, max(workflow_name), count(*), count(*) FILTER (WHERE status = ANY(%(failed)s)),"
        " count(*) FILTER (WHERE status = ANY(%(finished)s)), percentile_cont(0.95) WITHIN GROUP (ORDER BY ms),"
        " max(started) FROM ({src}) x GROUP BY workflow_id ORDER BY count(*) DESC, max(workflow_name)"
    ).format(src=executions_between(layout, cols))
    params = {"lo": layout.bind(since), "hi": layout.bind(now + timedelta(days=1)),
              "failed": sorted(FAILED), "finished": sorted(FINISHED)}
    return [WorkflowSummary(*r) for r in conn.execute(query, params)]
