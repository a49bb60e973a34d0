"""moto's S3 server for the benchmarks, in a process of its own: its CPU time is measured apart,
and the objects it holds in memory inflate nothing else."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def start(port: int, bucket: str = "bench"):
    """(the server's process, an S3 client for it) once `bucket` exists; keys `bench`/`bench`."""
    import boto3

    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench")
    for _ in range(100):
        try:
            s3.create_bucket(Bucket=bucket)
            break
        except Exception:  # not listening yet
            time.sleep(0.2)
    return server, s3
