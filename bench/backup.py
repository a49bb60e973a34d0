"""Benchmark: the backup asset end to end against `pg_dump -Fc -Z0 | zstd -3 > file`.

Run: `.venv/bin/python bench/backup.py [--size-mb 1024] [--keep]`. Everything is
measured in one run on one database, so the ratio holds even on a noisy machine.
Each backup runs in a child process, so its peak RSS is the backup's own
(os.wait4 reports the child's ru_maxrss); the S3 server runs in this process.

Targets (issue 2): ratio <= 1.3; peak RSS <= 250 MB at 1 GB and the same at 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ADMIN = os.environ.get("HOMELAB_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def generate(name: str, size_mb: int) -> int:
    """A database of roughly `size_mb`: n8n-like rows, half compressible text, half hashes."""
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(ADMIN, dbname=name)
    rows_per_mb = 2400  # ~420 bytes a row on disk
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE execution_data (id bigint, workflow text, data text, started timestamptz)")
        batch = 200_000
        total = size_mb * rows_per_mb
        for start in range(0, total, batch):
            n = min(batch, total - start)
            conn.execute(
                "INSERT INTO execution_data SELECT i, 'workflow-' || (i %% 200), "
                "'{\"node\":\"Telegram\",\"ok\":true,\"items\":' || (i %% 17) || ',\"h\":\"' || md5(i::text) "
                "|| md5((i * 7)::text) || md5((i * 13)::text) || '\",\"text\":\"' || repeat('status ok ', 20) || '\"}', "
                "now() - (i || ' seconds')::interval FROM generate_series(%s::bigint, %s::bigint) i",
                (start, start + n - 1))
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return size


def timed_child(args: list[str], env=None) -> tuple[float, int]:
    """Wall time and peak RSS (bytes) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{args[:3]} failed")
    return elapsed, usage.ru_maxrss * 1024


def child(config: str, database: str) -> None:
    from homelab_ops.backups.backup import run_backup
    from homelab_ops.settings import load

    result = run_backup(load(config), database)
    if result.offsite_errors:
        raise SystemExit("; ".join(result.offsite_errors))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--keep", action="store_true", help="keep the generated database")
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "DB"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(*a.child)

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    from tests.conftest import free_port

    db = f"bench_backup_{a.size_mb}"
    t0 = time.perf_counter()
    size = generate(db, a.size_mb)
    print(f"generated {db}: {size / 1e6:.0f} MB on disk in {time.perf_counter() - t0:.0f} s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-backup-", dir=ROOT / "var" if (ROOT / "var").exists() else None))
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "PYTHONPATH": str(ROOT)}
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                 aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")
    try:
        dsn = psycopg.conninfo.make_conninfo(ADMIN, dbname=db)
        baseline_file = work / "baseline.dump.zst"
        t_base, _ = timed_child(["bash", "-c", f"set -o pipefail; pg_dump -Fc -Z0 '{dsn}' | zstd -q -3 > {baseline_file}"])
        print(f"baseline pg_dump -Fc -Z0 | zstd -3: {t_base:.1f} s, {baseline_file.stat().st_size / 1e6:.0f} MB",
              flush=True)
        results = {"database_bytes": size, "baseline_s": round(t_base, 2)}
        for label, extra in (("local", {}),
                             ("local+s3", {"s3": {"endpoint_url": f"http://127.0.0.1:{port}", "bucket": "bench"}})):
            cfg = work / f"{label}.yaml"
            cfg.write_text(yaml.safe_dump({"postgres": {"dsn": ADMIN, "databases": [db]},
                                           "backups": {"local_dir": str(work / label), **extra}}))
            cpu0 = os.times()
            t, rss = timed_child([sys.executable, __file__, "--child", str(cfg), db], env=env)
            cpu1 = os.times()
            # This process does nothing but serve S3 meanwhile: its CPU time is moto's share of the 2 cores.
            moto_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
            ratio = t / t_base
            results[label] = {"seconds": round(t, 2), "ratio": round(ratio, 2), "peak_rss_mb": round(rss / 1e6, 1),
                              "s3_server_cpu_s": round(moto_cpu, 1)}
            print(f"backup asset ({label}): {t:.1f} s, ratio {ratio:.2f} (target <= 1.3), "
                  f"peak RSS {rss / 1e6:.0f} MB (target <= 250), S3 server CPU {moto_cpu:.1f} s", flush=True)
        print(json.dumps(results))
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", str(work)])
        if not a.keep:
            with psycopg.connect(ADMIN, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


if __name__ == "__main__":
    main()
