"""Benchmark: the backup asset end to end against `pg_dump -Fc -Z0 | zstd -3 > file`.

Run: `.venv/bin/python bench/backup.py [--size-mb 1024] [--repeat 3] [--checksum md5|crc32] [--keep]`.
Everything is measured in one run on one database, so the ratio holds even on a noisy machine.
Each backup runs in a child process, so its peak RSS is the backup's own
(the child reports its VmHWM); the S3 server (moto) is a process of its own on the
same cores, and its CPU time is reported beside each S3 run.

Targets (issues 2 and 11): local ratio <= 1.3; peak RSS <= 250 MB at 1 GB and the same at 4 GB;
the off-site upload of the finished file at most 1.1x boto3's `upload_file` (what `aws s3 cp`
does) of the same file to the same server in the same process, the two taking turns to go first.

Also measured, to tell our cost from the S3 server's: a reference pipeline of the same tools
that stores off-site too (`... | zstd -3 | tee file | boto3 upload_fileobj`, as `aws s3 cp -`
does) to the same server, against the whole S3 leg (local backup, then the off-site step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml
from psycopg import sql
from homelab_ops.backups.config import BackupsConfig

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


def timed(args: list[str], env=None) -> tuple[float, str]:
    """Wall time and standard output of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=env, stdout=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{args[:3]} failed")
    return elapsed, proc.stdout


def child(config: str, database: str, reference_first: bool = False) -> None:
    """One backup, as the nightly job runs it: the local backup (run_backup), then with a target
    the off-site step (offsite.sync); prints each one's seconds (as the assets call them in a run
    whose process has loaded the code already) and this process's peak RSS in bytes. With a target,
    then boto3's `upload_file` of the same finished file to the same server, timed the same way
    (before ours in every other round: whichever goes first right after the dump is the slower).

    VmHWM, not ru_maxrss: a child started by fork/vfork + exec inherits its parent's
    ru_maxrss, so the latter would report the bench's own size, not the backup's."""
    import boto3  # imported before the clock starts, as in a run whose process has loaded it already

    from homelab_ops.backups.backup import run_backup
    from homelab_ops.backups.offsite import sync
    from homelab_ops.settings import load

    def hwm() -> int:
        return 1024 * next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                           if line.startswith("VmHWM:"))

    settings = load(config)
    t0 = time.perf_counter()
    result = run_backup(BackupsConfig.of(settings), database)
    out = {"backup_s": time.perf_counter() - t0}
    if settings.backups.s3:
        def ours() -> None:
            t0 = time.perf_counter()
            errors = [s.error for s in sync(settings.backups, database) if s.error]
            out["upload_s"] = time.perf_counter() - t0
            if errors:
                raise SystemExit("; ".join(errors))
            out.setdefault("peak_rss", hwm())  # ours, unless the reference upload ran before it

        def reference() -> None:
            t0 = time.perf_counter()
            boto3.client("s3", endpoint_url=settings.backups.s3[0].endpoint_url, region_name="us-east-1").upload_file(
                str(result.path), settings.backups.s3[0].bucket, f"reference/{result.path.name}")
            out["upload_file_s"] = time.perf_counter() - t0

        if reference_first:  # boto3 keeps memory after its upload: this round's peak is the local backup's
            out["peak_rss"], out["rss_of_upload"] = hwm(), False
        for leg in ((reference, ours) if reference_first else (ours, reference)):
            leg()
    out.setdefault("peak_rss", hwm())
    out["seconds"] = out["backup_s"] + out.get("upload_s", 0.0)
    print(json.dumps(out))


def upload_stdin(key: str) -> None:
    """The reference pipeline's last stage: boto3's managed upload from a pipe, as `aws s3 cp -` does."""
    import boto3

    boto3.client("s3", endpoint_url=os.environ["BENCH_S3"], region_name="us-east-1").upload_fileobj(
        sys.stdin.buffer, "bench", key)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--keep", action="store_true", help="keep the generated database")
    ap.add_argument("--checksum", choices=("md5", "crc32"), default="md5",
                    help="the S3 target's `checksum` setting (what each part carries)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of baseline, local and local+S3 (medians)")
    ap.add_argument("--child", nargs=3, metavar=("CONFIG", "DB", "REFERENCE_FIRST"), help=argparse.SUPPRESS)
    ap.add_argument("--upload-stdin", metavar="KEY", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], a.child[1], a.child[2] == "1")
    if a.upload_stdin:
        return upload_stdin(a.upload_stdin)

    import psutil

    import s3server
    from tests.conftest import free_port

    db = f"bench_backup_{a.size_mb}"
    t0 = time.perf_counter()
    size = generate(db, a.size_mb)
    print(f"generated {db}: {size / 1e6:.0f} MB on disk in {time.perf_counter() - t0:.0f} s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-backup-", dir=ROOT / "var" if (ROOT / "var").exists() else None))
    port = free_port()
    server, s3 = s3server.start(port)
    moto = psutil.Process(server.pid)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "PYTHONPATH": str(ROOT),
           "BENCH_S3": f"http://127.0.0.1:{port}"}
    try:
        dsn = psycopg.conninfo.make_conninfo(ADMIN, dbname=db)
        baseline_file = work / "baseline.dump.zst"
        variants = (("local", {}),
                    ("local+s3", {"s3": {"endpoint_url": f"http://127.0.0.1:{port}", "bucket": "bench",
                                              "checksum": a.checksum}}))
        rounds: dict[str, list[dict]] = {"baseline": [], "baseline+upload": [], "local": [], "local+s3": []}
        # Rounds interleave baseline and both variants, so a slow minute hits all three alike.
        for n in range(1, a.repeat + 1):
            t_base, _ = timed(["bash", "-c", f"set -o pipefail; pg_dump -Fc -Z0 '{dsn}' | zstd -q -3 > {baseline_file}"])
            rounds["baseline"].append({"seconds": t_base})
            print(f"round {n}: baseline pg_dump -Fc -Z0 | zstd -3: {t_base:.1f} s, "
                  f"{baseline_file.stat().st_size / 1e6:.0f} MB", flush=True)
            # The same tools storing off-site too, to the same S3 server: what that server alone costs.
            cpu0 = moto.cpu_times()
            t_up, _ = timed(["bash", "-c", f"set -o pipefail; pg_dump -Fc -Z0 '{dsn}' | zstd -q -3 | tee {baseline_file} "
                                           f"| {sys.executable} {__file__} --upload-stdin reference/{n}"], env=env)
            cpu1 = moto.cpu_times()
            up_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
            rounds["baseline+upload"].append({"seconds": t_up, "ratio": t_up / t_base, "s3_server_cpu_s": up_cpu})
            print(f"round {n}: reference pipeline | tee file | boto3 upload_fileobj: {t_up:.1f} s, "
                  f"ratio {t_up / t_base:.2f}, S3 server CPU {up_cpu:.1f} s", flush=True)
            for label, extra in variants:
                cfg = work / f"{label}.yaml"
                cfg.write_text(yaml.safe_dump({"postgres": {"dsn": ADMIN, "databases": [db]},
                                               "backups": {"local_dir": str(work / label / str(n)), **extra}}))
                cpu0 = moto.cpu_times()
                t_proc, out = timed([sys.executable, __file__, "--child", str(cfg), db, str(1 - n % 2)], env=env)
                cpu1 = moto.cpu_times()
                own = json.loads(out.strip().splitlines()[-1])
                t, rss = own["seconds"], own["peak_rss"]
                moto_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)  # the S3 server's share of the cores
                if extra:  # moto keeps objects in memory: empty the bucket for the next round
                    for obj in s3.list_objects_v2(Bucket="bench").get("Contents", []):
                        s3.delete_object(Bucket="bench", Key=obj["Key"])
                rounds[label].append({"seconds": t, "ratio": t / t_base, "process_ratio": t_proc / t_base,
                                      "peak_rss_mb": rss / 1e6, "rss_of_upload": own.get("rss_of_upload", True),
                                      "s3_server_cpu_s": moto_cpu,
                                      "local_ratio": own["backup_s"] / t_base})
                upload = ""
                if "upload_s" in own:
                    rounds[label][-1].update(upload_s=own["upload_s"], upload_file_s=own["upload_file_s"],
                                             upload_ratio=own["upload_s"] / own["upload_file_s"])
                    upload = (f"; of which the local backup {own['backup_s']:.1f} s (ratio "
                              f"{own['backup_s'] / t_base:.2f}) and the off-site upload {own['upload_s']:.1f} s, "
                              f"boto3 upload_file of the same file {own['upload_file_s']:.1f} s "
                              f"(ratio {own['upload_s'] / own['upload_file_s']:.2f})")
                print(f"round {n}: backup asset ({label}): {t:.1f} s, ratio {t / t_base:.2f} "
                      f"(whole process with Python's start and imports: {t_proc:.1f} s, {t_proc / t_base:.2f}), "
                      f"peak RSS {rss / 1e6:.0f} MB{'' if own.get('rss_of_upload', True) else ' (the local backup)'}, "
                      f"S3 server CPU {moto_cpu:.1f} s{upload}", flush=True)
        med = statistics.median
        results = {"database_bytes": size, "rounds": a.repeat,
                   "baseline_s": round(med(r["seconds"] for r in rounds["baseline"]), 2)}
        for label, _ in variants:
            rs = rounds[label]
            results[label] = {"seconds": round(med(r["seconds"] for r in rs), 2),
                              "ratio": round(med(r["ratio"] for r in rs), 2),
                              "ratio_range": [round(min(r["ratio"] for r in rs), 2), round(max(r["ratio"] for r in rs), 2)],
                              "process_ratio": round(med(r["process_ratio"] for r in rs), 2),
                              # the peak of rounds whose child measured the upload too
                              "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rs if r["rss_of_upload"]), 1),
                              "s3_server_cpu_s": round(med(r["s3_server_cpu_s"] for r in rs), 1)}
            r = results[label]
            print(f"backup asset ({label}), median of {a.repeat}: ratio {r['ratio']:.2f} "
                  f"(range {r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}; target <= 1.3; whole process "
                  f"{r['process_ratio']:.2f}), "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB (target <= 250), S3 server CPU {r['s3_server_cpu_s']:.1f} s",
                  flush=True)
        ref = rounds["baseline+upload"]
        vs_ref = [own["seconds"] / r["seconds"] for own, r in zip(rounds["local+s3"], ref)]  # both include their uploads
        results["reference_upload"] = {"seconds": round(med(r["seconds"] for r in ref), 2),
                                       "ratio": round(med(r["ratio"] for r in ref), 2),
                                       "s3_server_cpu_s": round(med(r["s3_server_cpu_s"] for r in ref), 1)}
        results["local+s3"]["vs_reference"] = round(med(vs_ref), 2)
        print(f"reference (same tools | tee | boto3 upload_fileobj to the same server), median: ratio "
              f"{results['reference_upload']['ratio']:.2f} to the baseline; the backup asset (local+s3) takes "
              f"{results['local+s3']['vs_reference']:.2f}x the reference", flush=True)
        rs = rounds["local+s3"]
        results["offsite_upload"] = {"seconds": round(med(r["upload_s"] for r in rs), 2),
                                     "upload_file_s": round(med(r["upload_file_s"] for r in rs), 2),
                                     "ratio": round(med(r["upload_ratio"] for r in rs), 2),
                                     "ratio_range": [round(min(r["upload_ratio"] for r in rs), 2),
                                                     round(max(r["upload_ratio"] for r in rs), 2)],
                                     "local_ratio": round(med(r["local_ratio"] for r in rs), 2)}
        u = results["offsite_upload"]
        u["checksum"] = a.checksum
        print(f"off-site upload of the finished file (checksum {a.checksum}), median of {a.repeat}: "
              f"{u['seconds']:.1f} s against boto3 "
              f"upload_file {u['upload_file_s']:.1f} s: ratio {u['ratio']:.2f} (range {u['ratio_range'][0]:.2f}-"
              f"{u['ratio_range'][1]:.2f}; target <= 1.1); the local leg before it: ratio {u['local_ratio']:.2f} "
              "to the baseline", flush=True)
        print(json.dumps(results))
    finally:
        server.terminate()
        subprocess.run(["rm", "-rf", str(work)])
        if not a.keep:
            with psycopg.connect(ADMIN, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


if __name__ == "__main__":
    main()
