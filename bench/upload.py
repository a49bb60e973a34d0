"""Benchmark: the off-site upload alone, `S3Store.upload_file` against boto3's `upload_file`.

Run: `.venv/bin/python bench/upload.py [--size-mb 300] [--rounds 4]`. One file of random bytes
(incompressible, as a zstd dump is), one moto server in a process of its own, rounds that
rotate which client goes first, and the bucket emptied before each upload (moto keeps objects
in memory, so a later upload would otherwise run on a fuller server). Target (issue 11): ratio
at most 1.1. Prints each round and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args()

    import s3server
    from homelab_ops.backups.stores import S3Store
    from homelab_ops.settings import S3Target
    from tests.conftest import free_port

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as work:
        path = Path(work) / "dump.zst"
        with open(path, "wb") as f:
            for _ in range(a.size_mb):
                f.write(os.urandom(1 << 20))
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        port = free_port()
        server, s3 = s3server.start(port)
        endpoint = f"http://127.0.0.1:{port}"
        try:
            md5, crc32 = (S3Store(S3Target(endpoint_url=endpoint, bucket="bench", prefix="pi5/", checksum=c))
                          for c in ("md5", "crc32"))
            uploads = {"S3Store.upload_file, checksum md5": lambda: md5.upload_file("db", "dump.zst", path, sha),
                       "S3Store.upload_file, checksum crc32": lambda: crc32.upload_file("db", "dump.zst", path, sha),
                       "boto3 upload_file": lambda: s3.upload_file(str(path), "bench", "reference")}
            seconds: dict[str, list[float]] = {name: [] for name in uploads}
            for n in range(a.rounds):
                for name in list(uploads)[n % 3:] + list(uploads)[:n % 3]:
                    for o in s3.list_objects_v2(Bucket="bench").get("Contents", []):
                        s3.delete_object(Bucket="bench", Key=o["Key"])
                    t0 = time.perf_counter()
                    uploads[name]()
                    seconds[name].append(time.perf_counter() - t0)
                    print(f"round {n + 1}: {name}: {seconds[name][-1]:.2f} s", flush=True)
        finally:
            server.terminate()
            server.wait()
    ref_s = statistics.median(seconds.pop("boto3 upload_file"))
    for name, v in seconds.items():
        print(f"{a.size_mb} MB, median of {a.rounds}: {name}: {statistics.median(v):.2f} s against boto3 "
              f"upload_file's {ref_s:.2f} s: ratio {statistics.median(v) / ref_s:.2f} (target <= 1.1)")


if __name__ == "__main__":
    main()
