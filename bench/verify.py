"""Benchmark: restore verification against plain `pg_restore`, and retention's S3 request count.

Run: `.venv/bin/python bench/verify.py [--size-mb 1024] [--backups 10000] [--keep]`.

1. A generated database of `--size-mb` is backed up once; then, on the same dump,
   the baseline (`zstd -dc dump | pg_restore` into a fresh database) and the
   verification (sha256, restore into a scratch database, exact count and checksum
   of every table, drop) are timed. Target (issue 3): verification / baseline <= 1.5.
2. `--n8n` (the path of an n8n executable, e.g. from scripts/n8n-install.sh 1.123.0): a real n8n
   instance (n8n's migrations, the demo's workflows, credentials through `n8n import:credentials`)
   is backed up with its key, then the manifest-only verification and the verification by n8n
   (restore, n8n's CLI exports every workflow and decrypts every credential, drop) are timed in
   interleaved rounds; reported as the ratio n8n / manifest-only.
3. `--backups` backups (dump + manifest each) are put into a moto S3 server started
   here, and retention prunes them; every request the prune sends is counted with a
   botocore `before-send` hook. The minimum is the list pages plus the delete batches
   (1000 keys each). Target: at most the minimum + 5.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from psycopg import sql
from homelab_ops.backups.config import BackupsConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ADMIN = os.environ.get("HOMELAB_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

from homelab_ops.backups import postgresql as pg  # noqa: E402
from homelab_ops.children import free_port  # noqa: E402
from homelab_ops.backups.backup import run_backup  # noqa: E402
from homelab_ops.backups.catalog import stem_for  # noqa: E402
from homelab_ops.backups.prune import prune_database  # noqa: E402
from homelab_ops.backups.stores import S3Store  # noqa: E402
from homelab_ops.backups.verify import verify_backup  # noqa: E402
from homelab_ops.settings import parse  # noqa: E402


def admin(query: sql.Composable) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(query)


def generate(name: str, size_mb: int) -> int:
    """Roughly `size_mb` of n8n-like data in three tables, with primary keys and one more index."""
    admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = pg.database_dsn(ADMIN, name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE execution_data (id bigint PRIMARY KEY, workflow text, data jsonb, started timestamptz);
            CREATE TABLE execution_entity (id bigint PRIMARY KEY, status text, finished boolean,
                                           started timestamptz, stopped timestamptz, mode text);
            CREATE TABLE webhook_log (id bigserial PRIMARY KEY, path text, body text, at timestamptz);
            CREATE INDEX ON execution_entity (started);
        """)
        rows_per_mb, batch, start = 1500, 100_000, 0
        while True:
            n = batch
            conn.execute(
                "INSERT INTO execution_data SELECT i, 'workflow-' || (i %% 200), jsonb_build_object("
                "'node', 'Telegram', 'items', i %% 17, 'h', md5(i::text) || md5((i * 7)::text), "
                "'text', repeat('status ok ', 15)), now() - i * interval '1 second' "
                "FROM generate_series(%s::bigint, %s::bigint) i", (start, start + n - 1))
            conn.execute(
                "INSERT INTO execution_entity SELECT i, (ARRAY['success','error','crashed'])[1 + i %% 3], "
                "i %% 5 <> 0, now() - i * interval '1 second', now() - i * interval '1 second' + interval '2 s', "
                "'trigger' FROM generate_series(%s::bigint, %s::bigint) i", (start, start + n - 1))
            conn.execute(
                "INSERT INTO webhook_log (path, body, at) SELECT '/hook/' || (i %% 50), md5(i::text) || "
                "repeat('x', (i %% 100)::int), now() FROM generate_series(%s::bigint, %s::bigint) i",
                (start, start + n // 4 - 1))
            start += n
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            if size >= size_mb * 1e6 or start > size_mb * rows_per_mb * 4:
                break
        conn.execute("VACUUM ANALYZE")
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def baseline(dump: Path) -> float:
    """`zstd -dc dump | pg_restore` into a new database, as an owner would restore by hand."""
    name = f"bench_baseline_{uuid.uuid4().hex[:8]}"
    conninfo = pg.database_dsn(ADMIN, name)
    t0 = time.perf_counter()
    admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        subprocess.run(f"zstd -dc '{dump}' | pg_restore --exit-on-error --no-owner --no-privileges "
                       f"--dbname='{conninfo}'", shell=True, check=True)
        return time.perf_counter() - t0
    finally:
        admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def bench_verify(size_mb: int, keep: bool) -> None:
    name = f"bench_verify_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        settings = parse({"postgres": {"dsn": ADMIN, "databases": [name]},
                          "backups": {"local_dir": tmp}}, "<bench>")
        try:
            t0 = time.perf_counter()
            size = generate(name, size_mb)
            print(f"database {name}: {size / 1e6:.0f} MB generated in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            backup = run_backup(BackupsConfig.of(settings), name)
            print(f"backup: {backup.manifest['size'] / 1e6:.0f} MB dump, {backup.manifest['row_count']} rows "
                  f"in {backup.manifest['table_count']} tables, {time.perf_counter() - t0:.1f} s")
            base = baseline(backup.path)
            print(f"baseline  zstd -dc | pg_restore into a fresh database: {base:6.1f} s")
            t0 = time.perf_counter()
            result = verify_backup(BackupsConfig.of(settings), name)
            took = time.perf_counter() - t0
            print(f"verification (sha256, restore, count + checksum, drop):  {took:6.1f} s   "
                  f"outcome {result.outcome}")
            ratio = took / base
            print(f"ratio {ratio:.2f} (target <= 1.5): {'OK' if ratio <= 1.5 else 'MISSED'}")
        finally:
            if not keep:
                admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def bench_retention(n: int) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    import logging
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
            settings = parse({"backups": {"local_dir": tmp, "s3": {"bucket": bucket, "endpoint_url": endpoint,
                                                                   "prefix": "pi/"}}}, "<bench>")
            store = S3Store(settings.backups.s3[0])
            store.client.create_bucket(Bucket=bucket)
            # Setting up is not what is measured: 2 x n objects go straight into the server's store.
            t0 = time.perf_counter()
            backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
            end = datetime.now(timezone.utc) - timedelta(hours=1)
            for i in range(n):
                stem = stem_for(end - i * timedelta(hours=1))
                backend.put_object(bucket, f"pi/bench/{stem}.dump.zst", b"dump")
                backend.put_object(bucket, f"pi/bench/{stem}.manifest.json", b"{}")
            objects = 2 * n
            print(f"\n{n} backups ({objects} objects) in moto S3, {time.perf_counter() - t0:.1f} s to create")
            calls: Counter = Counter()
            store.client.meta.events.register("before-send.s3",
                                              lambda event_name, **kw: calls.update([event_name.split(".")[-1]]))
            t0 = time.perf_counter()
            result = prune_database(BackupsConfig.of(settings), "bench", stores=[store])
            took = time.perf_counter() - t0
            plan = result.plans[0]
            deleted = len(plan.delete_names)
            minimum = math.ceil(objects / 1000) + math.ceil(deleted / 1000)
            total = sum(calls.values())
            print(f"retention: {len(plan.kept)} kept, {len(plan.removed)} removed ({deleted} objects) in {took:.1f} s")
            print(f"S3 requests: {total} ({', '.join(f'{k} {v}' for k, v in sorted(calls.items()))})")
            print(f"minimum: {minimum} = {math.ceil(objects / 1000)} list pages + {math.ceil(deleted / 1000)} "
                  f"delete batches; target <= {minimum + 5}: {'OK' if total <= minimum + 5 else 'MISSED'}")
    finally:
        server.stop()


def bench_n8n(n8n_bin: str, rounds: int, workflows: int) -> None:
    import json
    import statistics

    import pyrage

    from homelab_ops.n8n.backup_set import save_extras
    from tests.n8n_demo import create_demo_database
    from homelab_ops.n8n.runner import N8nCli
    from homelab_ops.n8n.verification import verify_with_n8n
    from homelab_ops.n8n.workflows import export_workflows

    name, demo = f"bench_n8n_{uuid.uuid4().hex[:8]}", f"bench_n8ndemo_{uuid.uuid4().hex[:8]}"
    ident = pyrage.x25519.Identity.generate()
    with tempfile.TemporaryDirectory(prefix="bench-n8n-") as tmp:
        (Path(tmp) / "id.key").write_text(str(ident) + "\n")
        settings = parse({"postgres": {"dsn": ADMIN, "databases": [name]},
                          "backups": {"local_dir": tmp, "encryption": {"age_recipients": [str(ident.to_public())],
                                                                       "identity_file": f"{tmp}/id.key"}},
                          "n8n": {"dsn": pg.database_dsn(ADMIN, name), "encryption_key": "bench-key",
                                  "verify_with": "command", "command": n8n_bin}}, "<bench>")
        try:
            admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            create_demo_database(ADMIN, demo, workflows=workflows, executions=workflows * 50)
            with psycopg.connect(pg.database_dsn(ADMIN, demo)) as conn:
                wfs = [{**{k: w[k] for k in ("id", "name", "nodes", "connections", "settings", "versionId")},
                        "active": False} for w in export_workflows(conn)]
            cli = N8nCli(BackupsConfig.of(settings), database=name, key="bench-key")
            cli.export_workflows()  # n8n's migrations
            cli.import_credentials([{"id": f"cred{i:012d}", "name": f"API key {i}", "type": "httpHeaderAuth",
                                     "data": {"name": "X-Api-Key", "value": f"v{i}"}} for i in range(8)])
            cli.import_workflows_dir({f"{w['id']}.json": json.dumps(w).encode() for w in wfs})
            backup = run_backup(BackupsConfig.of(settings), name)
            save_extras(BackupsConfig.of(settings), name, backup.stem)
            print(f"\nn8n {cli.version} instance: {len(wfs)} workflows, 8 credentials, "
                  f"{backup.manifest['size'] / 1e6:.1f} MB dump")
            manifest, with_n8n = [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                assert verify_backup(BackupsConfig.of(settings), name).passed
                manifest.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                r = verify_with_n8n(BackupsConfig.of(settings), name)
                with_n8n.append(time.perf_counter() - t0)
                assert r.passed, r.message
            m, n = statistics.median(manifest), statistics.median(with_n8n)
            print(f"manifest-only verification: median {m:.1f} s ({', '.join(f'{x:.1f}' for x in manifest)})")
            print(f"verification by n8n:        median {n:.1f} s ({', '.join(f'{x:.1f}' for x in with_n8n)})")
            print(f"n8n leg / manifest-only: ratio {n / m:.1f}; both legs in the nightly run: {(m + n) / m:.1f}x")
        finally:
            for db in (name, demo):
                admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--backups", type=int, default=10_000)
    ap.add_argument("--keep", action="store_true", help="keep the generated database")
    ap.add_argument("--skip-verify", action="store_true")
    ap.add_argument("--skip-retention", action="store_true")
    ap.add_argument("--n8n", metavar="N8N", help="an n8n executable: also time the verification by n8n")
    ap.add_argument("--n8n-rounds", type=int, default=3)
    ap.add_argument("--n8n-workflows", type=int, default=12)
    args = ap.parse_args()
    if args.n8n:
        bench_n8n(args.n8n, args.n8n_rounds, args.n8n_workflows)
    if not args.skip_verify:
        bench_verify(args.size_mb, args.keep)
    if not args.skip_retention:
        bench_retention(args.backups)


if __name__ == "__main__":
    main()
