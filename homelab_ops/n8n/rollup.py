"""n8n executions per day, workflow and status, read from n8n's own tables.

n8n owns `execution_entity` and `workflow_entity`: this module only reads them, in
single-statement read-only transactions with short lock and statement timeouts, and
adds nothing to n8n's schema. The query is shaped for the indexes n8n 1.123's
migrations create (`("workflowId", "startedAt")` for rows not soft-deleted,
`("deletedAt")` for the rest), so one day never scans the whole table.

Rules (the issue's, kept in one place):
- an execution belongs to the day its `startedAt` falls on in the settings' time zone;
- executions never started (`startedAt` NULL, status `new`) are not counted;
- durations are `stoppedAt - startedAt` of executions that stopped; p50/p95 are
  linearly interpolated (`percentile_cont`);
- soft-deleted executions (`deletedAt` set, n8n's pruning) are counted, so pruning
  does not rewrite history;
- older n8n 1.x layouts are read too: without `createdAt`, without `deletedAt`, with
  `finished` instead of (or besides, for NULL) `status`, with the pre-1.x `failed`
  status (read as `error`), with timestamps without time zone (read as UTC).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import psycopg
from psycopg import sql

from homelab_ops.metrics.daily import day_bounds

FAILED = frozenset({"error", "crashed"})
FINISHED = frozenset({"success", "error", "crashed", "canceled"})

_LOCK = 0x6E386E72  # "n8nr": one replace of n8n_execution_daily at a time


class LayoutError(RuntimeError):
    """n8n's tables are not in a layout this module knows; names what is missing."""


@dataclass(frozen=True)
class Layout:
    """What the connected n8n schema has, decided once per connection."""

    schema: str
    prefix: str
    has_status: bool
    has_finished: bool
    has_deleted_at: bool
    has_wait_till: bool
    has_created_at: bool
    tz_aware: bool  # startedAt is timestamptz (n8n 1.x); else timestamps are UTC wall times
    status_nullable: bool = True  # before n8n made it NOT NULL, old rows may have none

    @property
    def executions(self) -> sql.Composable:
        return sql.Identifier(self.schema, f"{self.prefix}execution_entity")

    @property
    def workflows(self) -> sql.Composable:
        return sql.Identifier(self.schema, f"{self.prefix}workflow_entity")

    def bind(self, t: datetime) -> datetime:
        """A bound for startedAt comparisons in the column's own type, so its index applies."""
        return t if self.tz_aware else t.astimezone(timezone.utc).replace(tzinfo=None)

    def status_expr(self, alias: str = "e") -> sql.Composable:
        """n8n's status, or what `finished`/`stoppedAt`/`waitTill` say it was in layouts without it."""
        a = sql.Identifier(alias)
        parts = [sql.SQL("WHEN {}.finished THEN 'success'").format(a),
                 sql.SQL("WHEN {}.{} IS NOT NULL THEN 'error'").format(a, sql.Identifier("stoppedAt"))]
        if self.has_wait_till:
            parts.append(sql.SQL("WHEN {}.{} IS NOT NULL THEN 'waiting'").format(a, sql.Identifier("waitTill")))
        derived = sql.SQL("CASE {} ELSE 'running' END").format(sql.SQL(" ").join(parts))
        if self.has_status and not self.status_nullable:
            # n8n 1.123: status is NOT NULL; only the pre-1.x 'failed' needs a new name.
            return sql.SQL("(CASE {a}.status WHEN 'failed' THEN 'error' ELSE {a}.status END)::text").format(a=a)
        if self.has_status and self.has_finished:
            raw = sql.SQL("COALESCE(NULLIF({}.status, ''), {})").format(a, derived)
        elif self.has_status:
            raw = sql.SQL("{}.status").format(a)
        else:
            raw = derived
        return sql.SQL("(CASE WHEN {raw} = 'failed' THEN 'error' ELSE {raw} END)::text").format(raw=raw)

    def duration_ms_expr(self, alias: str = "e") -> sql.Composable:
        a = sql.Identifier(alias)
        return sql.SQL("(EXTRACT(EPOCH FROM ({a}.{stop} - {a}.{start})) * 1000)::double precision").format(
            a=a, stop=sql.Identifier("stoppedAt"), start=sql.Identifier("startedAt"))


def _columns(conn: psycopg.Connection, schema: str, table: str) -> dict[str, tuple[str, bool]]:
    """column -> (data type, nullable)."""
    return {name: (kind, nullable == "YES") for name, kind, nullable in conn.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_schema = %s AND table_name = %s", (schema, table))}


def detect_layout(conn: psycopg.Connection, schema: str = "public", prefix: str = "") -> Layout:
    """Read n8n's column layout; a missing table or column is a LayoutError that names it."""
    ex_name, wf_name = f"{prefix}execution_entity", f"{prefix}workflow_entity"
    ex, wf = _columns(conn, schema, ex_name), _columns(conn, schema, wf_name)
    for name, cols in ((ex_name, ex), (wf_name, wf)):
        if not cols:
            raise LayoutError(f"n8n table {schema}.{name} not found: is n8n.dsn n8n's database "
                              "(and n8n.db_schema / n8n.table_prefix its schema and prefix)?")
    for need in ("workflowId", "startedAt", "stoppedAt"):
        if need not in ex:
            raise LayoutError(f'n8n\'s {schema}.{ex_name} has no column "{need}": an n8n schema layout this '
                              "rollup does not know (it reads n8n 1.x)")
    if "status" not in ex and "finished" not in ex:
        raise LayoutError(f'n8n\'s {schema}.{ex_name} has neither a "status" nor a "finished" column: an n8n '
                          "schema layout this rollup does not know (it reads n8n 1.x)")
    for need in ("id", "name"):
        if need not in wf:
            raise LayoutError(f'n8n\'s {schema}.{wf_name} has no column "{need}": an n8n schema layout this '
                              "rollup does not know (it reads n8n 1.x)")
    return Layout(schema=schema, prefix=prefix, has_status="status" in ex, has_finished="finished" in ex,
                  has_deleted_at="deletedAt" in ex, has_wait_till="waitTill" in ex,
                  has_created_at="createdAt" in ex, tz_aware=ex["startedAt"][0] == "timestamp with time zone",
                  status_nullable=ex.get("status", ("", True))[1])


def connect_n8n(dsn: str) -> psycopg.Connection:
    """A read-only autocommit session: every statement is its own short transaction.

    lock_timeout keeps a query from queueing behind (and so in front of) an n8n migration;
    statement_timeout bounds how long any lock of ours can be held.
    """
    return psycopg.connect(
        dsn, autocommit=True, connect_timeout=10, application_name="homelab-ops n8n rollup",
        options="-c default_transaction_read_only=on -c lock_timeout=2000 -c statement_timeout=30000")


def executions_between(layout: Layout, columns: sql.Composable) -> sql.Composable:
    """SELECT `columns` of executions started in [%(lo)s, %(hi)s) (aliases e and w), indexes in mind.

    Rows not soft-deleted come from one bitmap scan of n8n's partial index on
    ("workflowId", "startedAt") with every workflow id as the leading key (PostgreSQL
    before 18 cannot skip-scan a leading column), so each heap page of the day is read
    once; soft-deleted rows, few once n8n's pruning has hard-deleted them, through
    the index on "deletedAt".
    """
    started = sql.Identifier("startedAt")
    where = sql.SQL("e.{s} >= %(lo)s AND e.{s} < %(hi)s").format(s=started)
    if not layout.has_deleted_at:
        # Layouts before soft deletes predate n8n's startedAt index too: the planner decides.
        return sql.SQL("SELECT {cols} FROM {ex} e JOIN {wf} w ON w.id = e.{wid} WHERE {where}").format(
            cols=columns, ex=layout.executions, wf=layout.workflows, wid=sql.Identifier("workflowId"), where=where)
    deleted = sql.Identifier("deletedAt")
    return sql.SQL(
        "SELECT {cols} FROM {ex} e JOIN {wf} w ON w.id = e.{wid}"
        " WHERE e.{wid} = ANY(ARRAY(SELECT id FROM {wf})) AND {where} AND e.{d} IS NULL"
        " UNION ALL "
        "SELECT {cols} FROM {ex} e JOIN {wf} w ON w.id = e.{wid} WHERE e.{d} IS NOT NULL AND {where}"
    ).format(cols=columns, wf=layout.workflows, ex=layout.executions, wid=sql.Identifier("workflowId"),
             where=where, d=deleted)


def rollup_query(layout: Layout) -> sql.Composable:
    cols = sql.SQL("e.{wid}::text AS workflow_id, w.name::text AS workflow_name, {st} AS status, {ms} AS ms").format(
        wid=sql.Identifier("workflowId"), st=layout.status_expr(), ms=layout.duration_ms_expr())
    return sql.SQL(
        "SELECT workflow_id, max(workflow_name), status, count(*),"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY ms),"
        " max(ms) FROM ({src}) x GROUP BY workflow_id, status ORDER BY workflow_id, status"
    ).format(src=executions_between(layout, cols))


@dataclass(frozen=True)
class RollupRow:
    day: date
    workflow_id: str
    workflow_name: str | None
    status: str
    executions: int
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None


def compute_day(conn: psycopg.Connection, layout: Layout, day: date, tz: str) -> list[RollupRow]:
    """One day's rows from n8n, in one read-only statement."""
    lo, hi = day_bounds(day, tz)
    rows = conn.execute(rollup_query(layout), {"lo": layout.bind(lo), "hi": layout.bind(hi)}).fetchall()
    return [RollupRow(day, *r) for r in rows]


@dataclass(frozen=True)
class ReplaceOutcome:
    day: date
    rows: list[RollupRow]  # what the table holds for the day afterwards
    kept_stored: bool  # n8n now has fewer executions for the day than stored: stored rows stay
    stored_executions: int
    source_executions: int


def replace_day(state: psycopg.Connection, day: date, rows: list[RollupRow], *,
                allow_shrink: bool = False) -> ReplaceOutcome:
    """Make `rows` the day's content of n8n_execution_daily, in one transaction.

    When n8n now has fewer executions for the day than the table holds, n8n has
    hard-deleted some (pruning, a deleted workflow): the stored rows stay unless
    `allow_shrink`, so a backfill over months never erases history n8n no longer has.
    """
    new_total = sum(r.executions for r in rows)
    with state.transaction():
        state.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK, day.toordinal()))
        stored_total = state.execute(
            "SELECT coalesce(sum(executions), 0) FROM homelab_ops.n8n_execution_daily WHERE day = %s",
            (day,)).fetchone()[0]
        if new_total < stored_total and not allow_shrink:
            return ReplaceOutcome(day, read_day(state, day), True, int(stored_total), new_total)
        state.execute("DELETE FROM homelab_ops.n8n_execution_daily WHERE day = %s", (day,))
        with state.cursor() as cur, cur.copy(
                "COPY homelab_ops.n8n_execution_daily (day, workflow_id, workflow_name, status, executions,"
                " p50_ms, p95_ms, max_ms) FROM STDIN") as copy:
            for r in rows:
                copy.write_row((r.day, r.workflow_id, r.workflow_name, r.status, r.executions, r.p50_ms, r.p95_ms,
                                r.max_ms))
    return ReplaceOutcome(day, rows, False, int(stored_total), new_total)


def read_day(state: psycopg.Connection, day: date) -> list[RollupRow]:
    return [RollupRow(*r) for r in state.execute(
        "SELECT day, workflow_id, workflow_name, status, executions, p50_ms, p95_ms, max_ms"
        " FROM homelab_ops.n8n_execution_daily WHERE day = %s ORDER BY workflow_id, status", (day,))]


def roll_up(n8n: psycopg.Connection, state: psycopg.Connection, days: list[date], tz: str, *,
            layout: Layout | None = None, allow_shrink: bool = False) -> list[ReplaceOutcome]:
    """Compute and replace each day in turn: one short read and one write transaction per day."""
    layout = layout or detect_layout(n8n)
    return [replace_day(state, d, compute_day(n8n, layout, d, tz), allow_shrink=allow_shrink) for d in days]


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


# ---------------------------------------------------------------- pure judgement and reporting


@dataclass(frozen=True)
class WorkflowDay:
    workflow_id: str
    workflow_name: str
    executions: int
    by_status: dict[str, int]
    finished: int
    failed: int
    p95_success_ms: float | None
    max_ms: float | None

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.finished if self.finished else None


def per_workflow(rows: list[RollupRow]) -> list[WorkflowDay]:
    """Fold (workflow, status) rows into one line per workflow, busiest first."""
    groups: dict[str, list[RollupRow]] = defaultdict(list)
    for r in rows:
        groups[r.workflow_id].append(r)
    out = []
    for wid, rs in groups.items():
        by_status = {r.status: r.executions for r in rs}
        success = [r for r in rs if r.status == "success"]
        maxes = [r.max_ms for r in rs if r.max_ms is not None]
        out.append(WorkflowDay(
            wid, next((r.workflow_name for r in rs if r.workflow_name), wid), sum(by_status.values()), by_status,
            sum(n for s, n in by_status.items() if s in FINISHED), sum(n for s, n in by_status.items() if s in FAILED),
            success[0].p95_ms if success else None, max(maxes) if maxes else None))
    return sorted(out, key=lambda w: (-w.executions, w.workflow_name))


def _seconds(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.2f}"


def markdown_summary(rows: list[RollupRow], limit: int = 40) -> str:
    """The day as a markdown table for the asset's metadata."""
    lines = ["| workflow | runs | success | failed | other | failure rate | p95 success (s) | max (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    wfs = per_workflow(rows)
    for w in wfs[:limit]:
        other = w.executions - w.by_status.get("success", 0) - w.failed
        rate = "-" if w.failure_rate is None else f"{w.failure_rate:.0%}"
        name = w.workflow_name.replace("|", "\\|")
        lines.append(f"| {name} | {w.executions} | {w.by_status.get('success', 0)} | {w.failed} | {other} | "
                     f"{rate} | {_seconds(w.p95_success_ms)} | {_seconds(w.max_ms)} |")
    if len(wfs) > limit:
        lines.append(f"| … {len(wfs) - limit} more workflows | | | | | | | |")
    if not wfs:
        lines.append("| (no executions started this day) | | | | | | | |")
    return "\n".join(lines)
