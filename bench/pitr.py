"""Benchmark: the WAL receiver's cost, idle and busy, and a one-database point-in-time restore.

Run: `.venv/bin/python bench/pitr.py [--window 60] [--rate 200] [--size-mb 200]`.

A private PostgreSQL 15 cluster (wal_level=logical, tests/pitr_cluster.py) and the real
`homelab-ops pitr receive` (wrapper + pg_receivewal) are started here.

1. Idle, then busy (a writer inserting `--rate` n8n-like rows a second, ~1 KB each,
   one transaction per row), each for `--window` seconds: WAL the server wrote, bytes
   the archive grew by (gzip, encrypted), both scaled to an hour, and the receiver's
   CPU time (wrapper + pg_receivewal, from /proc) and RSS.
2. Two databases of `--size-mb` each (the one to restore and another) get a base backup;
   then writes, a timestamp, more writes. Timed: `restore_at` (unpack the base backup,
   replay to the time in a temporary cluster, pg_dump | pg_restore one database, clean
   up) against the baseline an operator would run by hand to get the whole cluster back
   at that time from the same files: `zstd -dc | tar -x` of the base backup, the same
   restore_command, start PostgreSQL and wait for it to reach the time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import psycopg
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from homelab_ops.pitr import base, wal  # noqa: E402
from homelab_ops.pitr.receive import slot_state  # noqa: E402
from homelab_ops.pitr.plan import Target  # noqa: E402
from homelab_ops.pitr.recover import FETCH, _as_postgres, _chown_tree, recovered, restore_at, stage_wal  # noqa: E402
from homelab_ops.pitr.config import PitrConfig  # noqa: E402
from homelab_ops.settings import load  # noqa: E402
from tests.pitr_cluster import PG_BIN, logical_cluster  # noqa: E402

CLI = str(Path(sys.executable).with_name("homelab-ops"))


def sql(dsn: str, q: str):
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(q)
        return cur.fetchall() if cur.description else None


def lsn(dsn: str) -> int:
    return wal.parse_lsn(sql(dsn, "SELECT pg_current_wal_lsn()::text")[0][0])


def tree(pid: int) -> list[psutil.Process]:
    p = psutil.Process(pid)
    return [p, *p.children(recursive=True)]


def cpu(pid: int) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in tree(pid))


def rss(pid: int) -> tuple[int, int]:
    """(the wrapper's RSS, pg_receivewal's RSS)."""
    procs = tree(pid)
    return procs[0].memory_info().rss, sum(p.memory_info().rss for p in procs[1:])


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file())


def wait_flushed(c, slot: str, timeout: float = 300) -> None:
    target = lsn(c.dsn())
    deadline = time.monotonic() + timeout
    while wal.parse_lsn(slot_state(c.dsn(), slot)["flushed_lsn"] or "0/0") < target:
        if time.monotonic() > deadline:
            raise RuntimeError("the receiver did not catch up")
        time.sleep(0.2)


def measure(c, rx_pid: int, archive: Path, window: float, rate: float) -> dict:
    stop = time.monotonic() + window
    w0, a0, c0 = lsn(c.dsn()), dir_bytes(archive), cpu(rx_pid)
    peak = rss(rx_pid)
    sampled = time.monotonic()
    rows = 0
    payload = "x" * 900
    with psycopg.connect(c.dsn("bench"), autocommit=True) as conn:
        next_at = time.monotonic()
        while (now := time.monotonic()) < stop:
            if rate > 0 and now >= next_at:
                conn.execute("INSERT INTO execution_data (workflow, data) VALUES (%s, %s)",
                             (f"wf{rows % 50}", '{"payload": "%s"}' % payload))
                rows += 1
                next_at += 1 / rate
            else:
                time.sleep(min(0.05, max(0.0, next_at - now)) if rate > 0 else 0.5)
            if now - sampled > 0.5:
                sampled = now
                r = rss(rx_pid)
                peak = (max(peak[0], r[0]), max(peak[1], r[1]))
    w1, a1, c1 = lsn(c.dsn()), dir_bytes(archive), cpu(rx_pid)
    scale = 3600 / window
    return {"rows": rows, "wal_per_h": (w1 - w0) * scale, "archived_per_h": max(0, a1 - a0) * scale,
            "cpu_pct": 100 * (c1 - c0) / window, "rss": peak}


def generate(dsn: str, name: str, size_mb: int) -> None:
    sql(dsn, f"CREATE DATABASE {name}")
    d = psycopg.conninfo.make_conninfo(dsn, dbname=name)
    sql(d, "CREATE TABLE execution_data (id bigserial PRIMARY KEY, workflow text, data jsonb, "
           "at timestamptz DEFAULT clock_timestamp())")
    rows = size_mb * 1024 * 1024 // 1100
    sql(d, f"INSERT INTO execution_data (workflow, data) SELECT 'wf' || (g % 50), "
           f"jsonb_build_object('payload', repeat(md5(g::text), 28)) FROM generate_series(1, {rows}) g")


def baseline_restore(settings, bb: base.BaseBackup, at: datetime) -> float:
    """The whole cluster back at `at` from the same files, by hand: unpack, restore_command, start, wait."""
    t0 = time.perf_counter()
    prefix, pw = _as_postgres()
    root = Path(tempfile.mkdtemp(prefix="bench-full-"))
    try:
        data = root / "data"
        data.mkdir(mode=0o700)
        (data / "pg_wal").mkdir()
        folder = base.base_dir(settings)
        for part, dest in (("base.tar", data), ("pg_wal.tar", data / "pg_wal")):
            subprocess.run(f"zstd -dc {folder / f'{bb.stem}.{part}.zst'} | tar -x -C {dest}", shell=True, check=True)
        stage_wal(Path(settings.backups.local_dir) / "_wal" / "main", root / "wal", bb, until_lsn=None,
                  identities=None)
        shutil.copyfile(FETCH, root / "fetch.py")
        (data / "recovery.signal").write_text("")
        with open(data / "postgresql.auto.conf", "a") as f:
            f.write(f"port = 5999\nlisten_addresses = ''\nunix_socket_directories = '{root}'\n"
                    f"restore_command = '/usr/bin/python3 {root}/fetch.py {root}/wal %f %p'\n"
                    f"recovery_target_time = '{at.isoformat(sep=' ')}'\nrecovery_target_action = 'promote'\n"
                    "hot_standby = off\n")
        _chown_tree(root, pw)
        subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "600",
                        "start"], check=True, capture_output=True)
        dsn = f"host={root} port=5999 user=postgres dbname=postgres"
        while True:
            try:
                if not sql(dsn, "SELECT pg_is_in_recovery()")[0][0]:
                    break
            except psycopg.OperationalError:
                pass
            time.sleep(0.2)
        took = time.perf_counter() - t0
        subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        return took
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=60, help="seconds each of idle and busy is measured")
    ap.add_argument("--rate", type=float, default=200, help="rows a second while busy")
    ap.add_argument("--size-mb", type=int, default=200, help="size of each of the two databases for the restore")
    args = ap.parse_args()
    with logical_cluster() as c:
        tmp = Path(tempfile.mkdtemp(prefix="bench-pitr-"))
        cfg = {"postgres": {"dsn": c.dsn(), "databases": ["bench"], "pg_bin_dir": str(PG_BIN)},
               "state": {"dsn": c.dsn("homelab")}, "backups": {"local_dir": str(tmp / "backups"), "timeout": "1h"},
               "pitr": {"enabled": True}}
        (tmp / "h.yaml").write_text(yaml.safe_dump(cfg))
        settings = PitrConfig.of(load(tmp / "h.yaml"))
        generate(c.dsn(), "bench", args.size_mb)
        generate(c.dsn(), "other", args.size_mb)
        rx = subprocess.Popen([CLI, "--config", str(tmp / "h.yaml"), "pitr", "receive"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not slot_state(c.dsn(), settings.pitr.slot_name).get("active"):
                time.sleep(0.2)
            archive = tmp / "backups" / "_wal" / "main"
            # let the generated data settle (hint bits, visibility map, a checkpoint) and be archived,
            # so "idle" measures an idle server
            sql(c.dsn("bench"), "VACUUM ANALYZE")
            sql(c.dsn("other"), "VACUUM ANALYZE")
            sql(c.dsn(), "CHECKPOINT")
            wait_flushed(c, settings.pitr.slot_name, timeout=1800)
            time.sleep(10)
            idle = measure(c, rx.pid, archive, args.window, 0)
            busy = measure(c, rx.pid, archive, args.window, args.rate)
            for label, m in (("idle", idle), (f"busy ({m_rate(busy, args.window)} rows/s)", busy)):
                print(f"receiver {label:<22} WAL written {m['wal_per_h'] / 2**20:8.1f} MiB/h, archived "
                      f"{m['archived_per_h'] / 2**20:7.1f} MiB/h (gzip), CPU {m['cpu_pct']:5.2f} % of a core, "
                      f"peak RSS wrapper {m['rss'][0] / 2**20:5.1f} MiB + pg_receivewal {m['rss'][1] / 2**20:4.1f} MiB")

            t0 = time.perf_counter()
            bb = base.run_base_backup(settings)
            print(f"base backup of 2 x {args.size_mb} MB: {time.perf_counter() - t0:.1f} s "
                  f"({sum(f['size'] for f in bb.manifest['files'].values()) / 2**20:.0f} MiB stored)")
            sql(c.dsn("bench"), "INSERT INTO execution_data (workflow, data) SELECT 'late', '{}'::jsonb "
                                "FROM generate_series(1, 10000)")
            sql(c.dsn(), "SELECT pg_switch_wal()")
            time.sleep(1.1)
            at = sql(c.dsn(), "SELECT clock_timestamp()")[0][0]
            time.sleep(1.1)
            sql(c.dsn("bench"), "DELETE FROM execution_data WHERE workflow = 'late'")
            wait_flushed(c, settings.pitr.slot_name)
            t0 = time.perf_counter()
            restore_at(settings, "bench", "bench_at", at.isoformat())
            ours = time.perf_counter() - t0
            n = sql(c.dsn("bench_at"), "SELECT count(*) FROM execution_data WHERE workflow = 'late'")[0][0]
            assert n == 10000, n
            full = baseline_restore(settings, bb, at)
            t0 = time.perf_counter()
            with recovered(settings, Target("time", at)):
                replay = time.perf_counter() - t0
            print(f"restore one database to a point (restore_at): {ours:6.1f} s")
            print(f"  of which recovery in the temporary cluster (sha256, unpack, stage, replay): {replay:6.1f} s;"
                  f" the rest is pg_dump | pg_restore of one database and cleanup")
            print(f"baseline: whole cluster to the same point by hand: {full:6.1f} s")
            print(f"ratio {ours / full:.2f} (the difference is pg_dump | pg_restore of one database)")
        finally:
            rx.send_signal(signal.SIGTERM)
            rx.wait(timeout=60)
            shutil.rmtree(tmp, ignore_errors=True)


def m_rate(m: dict, window: float) -> str:
    return f"{m['rows'] / window:.0f}"


if __name__ == "__main__":
    main()
