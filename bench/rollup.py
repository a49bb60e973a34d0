"""Benchmark the n8n execution rollup and the host metrics snapshot.

    .venv/bin/python bench/rollup.py                      # 5M executions, 180 days, 200 workflows
    .venv/bin/python bench/rollup.py --executions 1000000  # scaled down
    .venv/bin/python bench/rollup.py --reuse               # keep the generated database from last time

Executions are generated in SQL (INSERT ... SELECT generate_series) into n8n 1.123.0's real
schema, ids in time order as n8n assigns them, with ~0.5% soft-deleted, a few never
started, and running/waiting ones at the end. n8n's secondary indexes are dropped for the
load and recreated from their own definitions afterwards, so the measured schema is
exactly n8n's. Targets: one day <= 1 s with no sequential scan of execution_entity; the
snapshot asset <= 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import psycopg
import yaml
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from homelab_ops.metrics.daily import day_bounds  # noqa: E402
from homelab_ops.n8n import rollup  # noqa: E402
from tests.n8n_demo import load_schema  # noqa: E402
from homelab_ops.settings import load  # noqa: E402
from homelab_ops.state import open_state  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
N8N_DB = "homelab_bench_n8n"
STATE_DB = "homelab_bench_state"
TZ = "Europe/Berlin"
NOW = datetime(2025, 11, 20, 9, 0, tzinfo=timezone.utc)


def recreate(name: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(name)))


def generate(dsn: str, executions: int, days: int, workflows: int) -> float:
    t0 = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        load_schema(conn)
        conn.commit()
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '256MB'")
        conn.execute(
            'INSERT INTO workflow_entity (id, name, active, nodes, connections, "versionId")'
            " SELECT 'bench' || lpad(g::text, 11, '0'), 'Workflow ' || lpad(g::text, 3, '0'), true, '[]', '{}',"
            " gen_random_uuid()::text FROM generate_series(1, %s) g", (workflows,))
        # Keep n8n's index and FK definitions, drop them for the load, recreate them after.
        indexes = [r[0] for r in conn.execute(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'public.execution_entity'::regclass AND NOT i.indisprimary")]
        names = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'public.execution_entity'::regclass AND NOT i.indisprimary")]
        fks = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'public.execution_entity'::regclass AND contype = 'f'").fetchall()
        for n in names:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier("public", n)))
        for n, _ in fks:
            conn.execute(sql.SQL("ALTER TABLE public.execution_entity DROP CONSTRAINT {}").format(sql.Identifier(n)))
        span_s = days * 86400
        start = NOW - timedelta(days=days)
        conn.execute("SELECT setseed(0.42)")
        # t: evenly spread start times (ids follow time, as in n8n); r: status draw; busy workflows skew.
        conn.execute(
            """
            INSERT INTO execution_entity (id, finished, mode, "startedAt", "stoppedAt", "waitTill", status,
                                          "workflowId", "deletedAt", "createdAt")
            SELECT g, s.status = 'success', 'trigger',
                   CASE WHEN s.status = 'new' THEN NULL ELSE t END,
                   CASE WHEN s.status IN ('running', 'waiting', 'new') THEN NULL
                        ELSE t + make_interval(secs => 0.05 + (-ln(1 - random()) * 4)) END,
                   CASE WHEN s.status = 'waiting' THEN t + interval '1 day' END,
                   s.status,
                   'bench' || lpad((1 + floor(%(wf)s * power(random(), 2)))::int::text, 11, '0'),
                   CASE WHEN random() < 0.005 AND s.status NOT IN ('running', 'waiting', 'new')
                        THEN t + (%(now)s - t) * random() END,
                   t - make_interval(secs => random() * 0.2)
            FROM generate_series(1, %(n)s) g
            CROSS JOIN LATERAL (SELECT %(start)s::timestamptz
                                       + make_interval(secs => (g - 1)::float8 * %(span)s / %(n)s) AS t) tt
            CROSS JOIN LATERAL (SELECT random() AS r) rr
            CROSS JOIN LATERAL (SELECT CASE
                       WHEN g > %(n)s - 5 THEN 'new'
                       WHEN g > %(n)s - 40 THEN (ARRAY['running', 'waiting'])[1 + (g %% 2)]
                       WHEN rr.r < 0.925 THEN 'success'
                       WHEN rr.r < 0.965 THEN 'error'
                       WHEN rr.r < 0.975 THEN 'crashed'
                       WHEN rr.r < 0.985 THEN 'canceled'
                       WHEN rr.r < 0.986 THEN 'unknown'
                       ELSE 'success' END AS status) s
            """, {"wf": workflows, "n": executions, "start": start, "span": span_s, "now": NOW})
        conn.execute("SELECT setval('execution_entity_id_seq', %s)", (executions,))
        conn.commit()
        for d in indexes:
            conn.execute(d)
        for n, d in fks:
            conn.execute(sql.SQL("ALTER TABLE public.execution_entity ADD CONSTRAINT {} ").format(sql.Identifier(n))
                         + sql.SQL(d))
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE execution_entity")
        conn.execute("VACUUM ANALYZE workflow_entity")
    return time.perf_counter() - t0


def explain(n8n: psycopg.Connection, layout: rollup.Layout, day: date) -> str:
    lo, hi = day_bounds(day, TZ)
    q = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) ") + rollup.rollup_query(layout)
    return "\n".join(r[0] for r in n8n.execute(q, {"lo": lo, "hi": hi}))


def bench_snapshot(state_dsn: str) -> tuple[float, float]:
    """Seconds for take_snapshot alone, and for materializing the host_metrics asset."""
    import dagster as dg

    from homelab_ops.defs.metrics.assets import host_metrics
    from homelab_ops.defs.resources import resources_for
    from homelab_ops.metrics.collect import take_snapshot

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "homelab.yaml"
        path.write_text(yaml.safe_dump({
            "postgres": {"dsn": ADMIN}, "state": {"dsn": state_dsn},
            "metrics": {"textfile_dir": str(Path(tmp) / "textfile")}}))
        settings = load(path)
        t = time.perf_counter()
        take_snapshot(settings.metrics)
        collect_s = time.perf_counter() - t
        dg.materialize([host_metrics], resources=resources_for(str(path)))  # warm imports
        t = time.perf_counter()
        result = dg.materialize([host_metrics], resources=resources_for(str(path)))
        asset_s = time.perf_counter() - t
        assert result.success
    return collect_s, asset_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--executions", type=int, default=5_000_000)
    ap.add_argument("--days", type=int, default=180)
    ap.add_argument("--workflows", type=int, default=200)
    ap.add_argument("--reuse", action="store_true", help="use the n8n database a --keep run left")
    ap.add_argument("--keep", action="store_true", help="do not drop the databases afterwards")
    args = ap.parse_args()

    n8n_dsn, state_dsn = make_conninfo(ADMIN, dbname=N8N_DB), make_conninfo(ADMIN, dbname=STATE_DB)
    if not args.reuse:
        recreate(N8N_DB)
        print(f"generating {args.executions:,} executions over {args.days} days, {args.workflows} workflows ...",
              flush=True)
        print(f"  generated in {generate(n8n_dsn, args.executions, args.days, args.workflows):.1f} s")
    recreate(STATE_DB)
    settings = load_settings(state_dsn)
    with rollup.connect_n8n(n8n_dsn) as n8n, open_state(settings.state, settings.postgres) as state:
        total, deleted, size = n8n.execute(
            "SELECT count(*), count(\"deletedAt\"), pg_size_pretty(pg_total_relation_size('execution_entity'))"
            " FROM execution_entity").fetchone()
        print(f"execution_entity: {total:,} rows ({deleted:,} soft-deleted), {size} with indexes")
        layout = rollup.detect_layout(n8n)
        last = (NOW.astimezone(settings.tz) - timedelta(days=1)).date()
        first = last - timedelta(days=args.days - 1)
        day = first + timedelta(days=args.days // 2)

        print(f"\n== one day ({day}, {TZ}) ==")
        times, reads = [], []
        for _ in range(5):
            t = time.perf_counter()
            rows = rollup.compute_day(n8n, layout, day, TZ)
            reads.append(time.perf_counter() - t)
            out = rollup.replace_day(state, day, rows)
            times.append(time.perf_counter() - t)
        print(f"  {sum(r.executions for r in out.rows):,} executions -> {len(out.rows)} rows; read + replace: "
              f"first {times[0] * 1000:.0f} ms, median {statistics.median(times) * 1000:.0f} ms, "
              f"max {max(times) * 1000:.0f} ms (target 1000 ms); the read alone: median "
              f"{statistics.median(reads) * 1000:.0f} ms")
        plan = explain(n8n, layout, day)
        print("\n  EXPLAIN (ANALYZE, BUFFERS):\n" + "\n".join("    " + line for line in plan.splitlines()))
        seq = "Seq Scan on execution_entity" in plan
        print(f"\n  sequential scan of execution_entity: {'YES' if seq else 'no'}")

        print(f"\n== backfill {first} .. {last} ({args.days} days) ==")
        t = time.perf_counter()
        outs = rollup.roll_up(n8n, state, rollup.days_between(first, last), TZ, layout=layout)
        took = time.perf_counter() - t
        print(f"  {sum(sum(r.executions for r in o.rows) for o in outs):,} executions in {took:.1f} s "
              f"({took / len(outs) * 1000:.0f} ms per day)")

    print("\n== host_metrics snapshot ==")
    collect_s, asset_s = bench_snapshot(state_dsn)
    print(f"  take_snapshot {collect_s * 1000:.0f} ms; materialize(host_metrics) {asset_s * 1000:.0f} ms (target 2000 ms)")

    if not args.keep:
        with psycopg.connect(ADMIN, autocommit=True) as c:
            for name in (STATE_DB, N8N_DB):
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def load_settings(state_dsn: str):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"postgres": {"dsn": ADMIN}, "state": {"dsn": state_dsn}, "timezone": TZ}, f)
    try:
        return load(f.name)
    finally:
        Path(f.name).unlink()


if __name__ == "__main__":
    main()
