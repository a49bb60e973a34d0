"""The n8n execution rollup against the real PostgreSQL with n8n 1.123.0's real schema.

Every expectation comes from an independent computation in plain Python over all rows of
execution_entity (`expected`), never from the module under test: an execution belongs to
the day its startedAt falls on in Europe/Berlin, never-started ones are not counted,
soft-deleted ones are, durations are stoppedAt - startedAt of stopped ones, percentiles
interpolate linearly.
"""

from __future__ import annotations

import math
import re
import uuid
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import dagster as dg
import psycopg
import pytest
import yaml
from click.testing import CliRunner

from homelab_ops.cli import main
from homelab_ops.defs.n8n.assets import n8n_execution_rollup_asset
from homelab_ops.defs.resources import resources_for
from homelab_ops.n8n import rollup
from tests.n8n_demo import create_demo_database, load_schema, seed_demo
from homelab_ops.settings import load
from homelab_ops.state import open_state

from tests.conftest import ADMIN_DSN, drop_database, dsn_for

pytestmark = pytest.mark.services  # every test here reaches PostgreSQL

TZ = "Europe/Berlin"
BERLIN = ZoneInfo(TZ)
DEMO_NOW = datetime(2025, 10, 27, 9, 0, tzinfo=timezone.utc)  # four demo days span the autumn DST change
FAILURE_WARN = 0.5


def local(*args) -> datetime:
    """A wall-clock time in Berlin as an aware UTC instant (fold=0: the first of a repeated hour)."""
    return datetime(*args, tzinfo=BERLIN).astimezone(timezone.utc)


# ---------------------------------------------------------------- the independent computation


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p
    f = math.floor(k)
    c = min(f + 1, len(v) - 1)
    return v[f] + (v[c] - v[f]) * (k - f)


def derived_status(status, finished, stopped, wait_till) -> str:
    if status:
        s = status
    elif finished:
        s = "success"
    elif stopped is not None:
        s = "error"
    elif wait_till is not None:
        s = "waiting"
    else:
        s = "running"
    return "error" if s == "failed" else s


def read_all(conn, *, naive_utc: bool = False) -> list[dict]:
    """Every execution as plain dicts, whatever the layout (missing columns read as None)."""
    cols = {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns"
                                       " WHERE table_schema = 'public' AND table_name = 'execution_entity'")}
    want = ["id", "workflowId", "status", "finished", "startedAt", "stoppedAt", "waitTill"]
    sel = ", ".join(f'"{c}"' if c in cols else f'NULL AS "{c}"' for c in want)
    rows = [dict(zip(want, r)) for r in conn.execute(f"SELECT {sel} FROM execution_entity")]
    if naive_utc:
        for r in rows:
            for k in ("startedAt", "stoppedAt", "waitTill"):
                if r[k] is not None:
                    r[k] = r[k].replace(tzinfo=timezone.utc)
    return rows


def expected(rows: list[dict], names: dict[str, str]) -> dict[date, dict[tuple[str, str], tuple]]:
    groups: dict[date, dict[tuple[str, str], list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["startedAt"] is None:
            continue  # never started
        day = r["startedAt"].astimezone(BERLIN).date()
        status = derived_status(r["status"], r["finished"], r["stoppedAt"], r["waitTill"])
        ms = None if r["stoppedAt"] is None else (r["stoppedAt"] - r["startedAt"]).total_seconds() * 1000
        groups[day][(r["workflowId"], status)].append(ms)
    out = {}
    for day, g in groups.items():
        out[day] = {}
        for key, durations in g.items():
            stopped = [d for d in durations if d is not None]
            out[day][key] = (names[key[0]], len(durations), percentile(stopped, 0.5), percentile(stopped, 0.95),
                             max(stopped) if stopped else None)
    return out


def as_dict(rows: list[rollup.RollupRow]) -> dict[tuple[str, str], tuple]:
    return {(r.workflow_id, r.status): (r.workflow_name, r.executions, r.p50_ms, r.p95_ms, r.max_ms) for r in rows}


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        g, w = got[k], want[k]
        assert g[:2] == w[:2], k
        for a, b in zip(g[2:], w[2:]):
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-9, abs=1e-6), (k, g, w)


def names_of(conn) -> dict[str, str]:
    return dict(conn.execute("SELECT id, name FROM workflow_entity").fetchall())


# ---------------------------------------------------------------- fixtures


def insert(conn, wid: str, status: str, started: datetime | None, stopped: datetime | None = None, *,
           deleted: datetime | None = None, wait_till: datetime | None = None, created: datetime | None = None):
    nid = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM execution_entity").fetchone()[0]
    conn.execute(
        'INSERT INTO execution_entity (id, finished, mode, "startedAt", "stoppedAt", "waitTill", status,'
        ' "workflowId", "deletedAt", "createdAt") VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)',
        (nid, status == "success", "trigger", started, stopped, wait_till, status, wid, deleted,
         created or started or DEMO_NOW))
    return nid


@pytest.fixture(scope="module")
def n8n_db():
    """The demo n8n database (4 days up to 2025-10-27) plus executions placed on the edges that matter."""
    name = f"rollup_test_{uuid.uuid4().hex[:8]}"
    create_demo_database(ADMIN_DSN, name, executions=1200, days=4, workflows=6, now=DEMO_NOW, seed=11)
    try:
        yield _add_edge_cases(dsn_for(name))
    finally:
        drop_database(name)


def _add_edge_cases(dsn: str) -> str:
    with psycopg.connect(dsn) as c:
        wf = [r[0] for r in c.execute("SELECT id FROM workflow_entity ORDER BY id")]
        a, b = wf[0], wf[1]
        c.execute('INSERT INTO workflow_entity (id, name, active, nodes, connections, "versionId")'
                  " VALUES ('flakysync0000001', 'Flaky sync', true, '[]', '{}', %s)", (str(uuid.uuid4()),))
        flaky = "flakysync0000001"
        ms = timedelta(milliseconds=1)
        # Midnight and DST edges, spring (23-hour 2025-03-30) and autumn (25-hour 2025-10-26).
        for t in (local(2025, 3, 29, 23, 59, 59, 999000), local(2025, 3, 30, 0, 0), local(2025, 3, 30, 1, 59, 59, 999000),
                  local(2025, 3, 30, 3, 0), local(2025, 3, 30, 23, 59, 59, 999000), local(2025, 3, 31, 0, 0),
                  local(2025, 10, 25, 23, 59, 59, 999000), local(2025, 10, 26, 0, 0),
                  datetime(2025, 10, 26, 0, 30, tzinfo=timezone.utc),  # 02:30 CEST
                  datetime(2025, 10, 26, 1, 30, tzinfo=timezone.utc),  # 02:30 CET, the repeated hour
                  local(2025, 10, 26, 23, 59, 59, 999000), local(2025, 10, 27, 0, 0)):
            insert(c, a, "success", t, t + 1234 * ms)
            insert(c, b, "error", t, t + 250 * ms)
        t = local(2025, 3, 30, 12, 0)
        insert(c, a, "running", t)  # no stoppedAt: counted, no duration
        insert(c, a, "waiting", t, wait_till=t + timedelta(days=3))
        insert(c, a, "success", t, t + 5 * ms, deleted=t + timedelta(days=1))  # soft-deleted: counted
        insert(c, a, "crashed", t)  # crashed without stoppedAt
        insert(c, a, "new", None, created=t)  # never started: not counted
        insert(c, b, "new", None, created=local(2025, 10, 26, 12, 0))
        for i, status in enumerate(["success"] * 3 + ["error"] * 4 + ["crashed", "canceled", "running"]):
            s = local(2025, 3, 30, 6, i)
            insert(c, flaky, status, s, None if status == "running" else s + (100 + 37 * i) * ms)
    return dsn


@pytest.fixture(scope="module")
def settings_file(n8n_db, tmp_path_factory):
    state = f"rollup_state_{uuid.uuid4().hex[:8]}"
    path = tmp_path_factory.mktemp("rollup") / "homelab.yaml"
    path.write_text(yaml.safe_dump({
        "timezone": TZ, "postgres": {"dsn": ADMIN_DSN}, "state": {"dsn": dsn_for(state)},
        "n8n": {"dsn": n8n_db, "failure_rate_warn": FAILURE_WARN, "failure_min_finished": 3,
                "history_start": "2025-01-01"}}))
    yield path
    drop_database(state)


def materialize(settings_file, day: str, **run_config):
    settings = load(settings_file)
    cfg = {"ops": {"n8n_execution_rollup": {"config": run_config}}} if run_config else None
    asset = n8n_execution_rollup_asset(settings.n8n, settings.timezone)
    return dg.materialize([asset], partition_key=day, run_config=cfg,
                          resources=resources_for(str(settings_file)))


def stored(settings_file, day: date) -> list[tuple]:
    with psycopg.connect(load(settings_file).state.dsn.get_secret_value()) as c:
        return c.execute("SELECT * FROM homelab_ops.n8n_execution_daily WHERE day = %s"
                         " ORDER BY workflow_id, status", (day,)).fetchall()


# ---------------------------------------------------------------- tests


def test_rollup_equals_independent_computation_across_dst_and_midnight(n8n_db):
    with psycopg.connect(n8n_db) as c:
        want = expected(read_all(c), names_of(c))
    days = sorted(want) + [date(2025, 6, 1)]  # plus a day without executions
    assert {date(2025, 3, 29), date(2025, 3, 30), date(2025, 3, 31), date(2025, 10, 26)} <= set(want)
    with rollup.connect_n8n(n8n_db) as n8n:
        layout = rollup.detect_layout(n8n)
        for day in days:
            assert_same(as_dict(rollup.compute_day(n8n, layout, day, TZ)), want.get(day, {}))
    # the edges landed where a person in Berlin would put them
    edge = sum(v[1] for v in want[date(2025, 3, 30)].values() if v[0] != "Flaky sync")
    assert edge == 4 * 2 + 4  # four edge instants x two workflows; running, waiting, deleted, crashed


def test_partition_materializes_and_rerunning_it_changes_nothing(settings_file, n8n_db):
    day = date(2025, 10, 26)
    result = materialize(settings_file, "2025-10-26")
    assert result.success
    first = stored(settings_file, day)
    with psycopg.connect(n8n_db) as c:
        want = expected(read_all(c), names_of(c))[day]
    assert_same({(r[1], r[3]): (r[2], r[4], r[5], r[6], r[7]) for r in first}, want)
    meta = result.asset_materializations_for_node("n8n_execution_rollup")[0].metadata
    assert meta["executions"].value == sum(v[1] for v in want.values())
    summary = meta["summary"].value
    assert summary.startswith("| workflow | runs |") and summary.count("\n") >= 3
    evaluation = result.get_asset_check_evaluations()[0]
    assert evaluation.partition == "2025-10-26"

    assert materialize(settings_file, "2025-10-26").success
    assert stored(settings_file, day) == first


def test_failure_rate_check_names_the_failing_workflows(settings_file, n8n_db):
    result = materialize(settings_file, "2025-03-30")
    check = result.get_asset_check_evaluations()[0]
    with psycopg.connect(n8n_db) as c:
        want = expected(read_all(c), names_of(c))[date(2025, 3, 30)]
    per_wf = defaultdict(lambda: [0, 0])  # finished, failed
    for (wid, status), v in want.items():
        if status in ("success", "error", "crashed", "canceled"):
            per_wf[v[0]][0] += v[1]
        if status in ("error", "crashed"):
            per_wf[v[0]][1] += v[1]
    failing = {n for n, (fin, bad) in per_wf.items() if fin >= 3 and bad / fin > FAILURE_WARN}
    assert "Flaky sync" in failing
    assert (check.passed, check.severity, check.partition) == (False, dg.AssetCheckSeverity.WARN, "2025-03-30")
    assert set(re.findall(r"(?:: |; )([^;:(]+?) \(\d+/\d+", check.description)) == failing
    assert "Flaky sync (5/9 = 56%)" in check.description


def test_soft_and_hard_deletes_do_not_rewrite_stored_history(settings_file, n8n_db):
    day = date(2025, 10, 24)
    settings = load(settings_file)
    with rollup.connect_n8n(n8n_db) as n8n, open_state(settings.state, settings.postgres) as state:
        rollup.roll_up(n8n, state, [day], TZ)
        before = stored(settings_file, day)
        lo, hi = local(2025, 10, 24, 0, 0), local(2025, 10, 25, 0, 0)
        with psycopg.connect(n8n_db, autocommit=True) as w:
            # n8n's pruning soft-deletes first: still counted, nothing changes
            w.execute('UPDATE execution_entity SET "deletedAt" = now() WHERE "startedAt" >= %s AND "startedAt" < %s'
                      " AND id %% 2 = 0", (lo, hi))
            out = rollup.roll_up(n8n, state, [day], TZ)[0]
            assert not out.kept_stored and stored(settings_file, day) == before
            # ... then hard-deletes: n8n has fewer now, the stored day stays
            w.execute('DELETE FROM execution_entity WHERE "deletedAt" IS NOT NULL AND "startedAt" >= %s'
                      ' AND "startedAt" < %s', (lo, hi))
            out = rollup.roll_up(n8n, state, [day], TZ)[0]
            assert out.kept_stored and out.source_executions < out.stored_executions
            assert stored(settings_file, day) == before
    # allow_shrink (run config) replaces it with what n8n has now
    assert materialize(settings_file, "2025-10-24", allow_shrink=True).success
    with psycopg.connect(n8n_db) as c:
        want = expected(read_all(c), names_of(c))[day]
    after = stored(settings_file, day)
    assert sum(r[4] for r in after) == sum(v[1] for v in want.values()) < sum(r[4] for r in before)


def test_older_n8n_layouts_and_unknown_ones(new_db):
    """n8n 1.x before soft deletes and status-only rows; before createdAt with `finished` and no tz."""
    name = new_db("rollup_old")
    dsn = dsn_for(name)
    with psycopg.connect(dsn, autocommit=True) as c:
        load_schema(c)
        seed_demo(c, executions=400, days=3, workflows=4, now=DEMO_NOW, seed=3)
        wid = c.execute("SELECT min(id) FROM workflow_entity").fetchone()[0]
        # Layout 1: no deletedAt; status nullable, some NULL (read from finished), some legacy 'failed'.
        c.execute('ALTER TABLE execution_entity DROP COLUMN "deletedAt"')
        c.execute("ALTER TABLE execution_entity ALTER COLUMN status DROP NOT NULL")
        c.execute("UPDATE execution_entity SET status = NULL WHERE id % 7 = 0")
        c.execute("UPDATE execution_entity SET status = 'failed' WHERE id % 11 = 0 AND status = 'error'")
        t = local(2025, 10, 26, 8, 0)
        for status, finished, stopped, wait in ((None, False, None, t + timedelta(hours=1)), (None, False, None, None),
                                                (None, False, t + timedelta(seconds=3), None), ("failed", False, t, None)):
            nid = c.execute("SELECT max(id) + 1 FROM execution_entity").fetchone()[0]
            c.execute('INSERT INTO execution_entity (id, finished, mode, "startedAt", "stoppedAt", "waitTill", status,'
                      ' "workflowId") VALUES (%s, %s, %s, %s, %s, %s, %s, %s)',
                      (nid, finished, "trigger", t, stopped, wait, status, wid))

        def check(naive: bool) -> None:
            want = expected(read_all(c, naive_utc=naive), names_of(c))
            with rollup.connect_n8n(dsn) as n8n:
                layout = rollup.detect_layout(n8n)
                for day in sorted(want):
                    assert_same(as_dict(rollup.compute_day(n8n, layout, day, TZ)), want[day])
            assert any(k[1] == "waiting" for d in want.values() for k in d)

        check(naive=False)
        # Layout 2: no createdAt, `finished` instead of status, timestamps without time zone (UTC).
        c.execute('ALTER TABLE execution_entity DROP COLUMN "createdAt", DROP COLUMN status')
        for col in ("startedAt", "stoppedAt", "waitTill"):
            c.execute(f'ALTER TABLE execution_entity ALTER COLUMN "{col}" TYPE timestamp(3) USING "{col}" AT TIME ZONE \'UTC\'')
        check(naive=True)

        # Unknown layouts: the error names what is missing.
        c.execute("ALTER TABLE execution_entity DROP COLUMN finished")
        with rollup.connect_n8n(dsn) as n8n, pytest.raises(rollup.LayoutError, match='neither a "status" nor a "finished"'):
            rollup.detect_layout(n8n)
        c.execute('ALTER TABLE execution_entity DROP COLUMN "startedAt"')
        with rollup.connect_n8n(dsn) as n8n, pytest.raises(rollup.LayoutError, match='no column "startedAt"'):
            rollup.detect_layout(n8n)


def test_rollup_session_is_read_only(n8n_db):
    with rollup.connect_n8n(n8n_db) as n8n, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        n8n.execute("DELETE FROM execution_entity")


def test_cli_executions_and_summary(settings_file, n8n_db):
    with psycopg.connect(n8n_db) as c:
        rows = read_all(c)
        names = names_of(c)
    runner = CliRunner()
    res = runner.invoke(main, ["--config", str(settings_file), "n8n", "executions", "--workflow", "flaky",
                               "--status", "error", "--status", "crashed", "--since", "3650d"])
    assert res.exit_code == 0, res.output
    want_ids = sorted((r["id"] for r in rows if r["workflowId"] == "flakysync0000001"
                       and r["status"] in ("error", "crashed")), reverse=True)
    got_ids = [int(line.split()[0]) for line in res.output.splitlines()[1:] if line.strip()]
    assert got_ids == want_ids
    assert "Flaky sync" in res.output and "error" in res.output

    res = runner.invoke(main, ["--config", str(settings_file), "n8n", "summary", "--days", "3650"])
    assert res.exit_code == 0, res.output
    lines = {line.split("  ")[0]: line.split() for line in res.output.splitlines()[1:] if line.strip()}
    per = defaultdict(lambda: [0, 0, []])
    for r in rows:
        if r["startedAt"] is None:
            continue
        p = per[names[r["workflowId"]]]
        p[0] += 1
        p[1] += r["status"] in ("error", "crashed")
        if r["stoppedAt"] is not None:
            p[2].append((r["stoppedAt"] - r["startedAt"]).total_seconds() * 1000)
    assert set(lines) == set(per)
    for name, (runs, failures, durations) in per.items():
        cells = lines[name][len(name.split()):]
        assert (int(cells[0]), int(cells[1])) == (runs, failures)
        assert cells[3] == f"{percentile(durations, 0.95) / 1000:.1f}s"


def test_cli_reports_a_missing_n8n_section(tmp_path):
    path = tmp_path / "no_n8n.yaml"
    path.write_text("timezone: Europe/Berlin\n")
    res = CliRunner().invoke(main, ["--config", str(path), "n8n", "summary"])
    assert res.exit_code != 0 and "no n8n section" in res.output
