"""A private PostgreSQL 15 cluster for the point-in-time recovery tests: wal_level=logical,
replication allowed on loopback (trust), a free port. As root, it runs as the `postgres` OS user.

    with logical_cluster() as pg:
        psycopg.connect(pg.dsn("postgres"))
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from psycopg.conninfo import make_conninfo

from tests.pg_cluster import PG_BIN, _free_port, _run


@dataclass
class Cluster:
    root: Path
    port: int
    wal_level: str

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(host="127.0.0.1", port=self.port, dbname=dbname, user="postgres", connect_timeout=10)

    def log(self) -> str:
        p = self.root / "server.log"
        return p.read_text(errors="replace") if p.exists() else ""


@contextlib.contextmanager
def logical_cluster(wal_level: str = "logical", extra: str = "") -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="homelab-pitr-pg-"))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    os.chmod(root, 0o700)
    c = Cluster(root, _free_port(), wal_level)
    started = False
    try:
        _run([str(PG_BIN / "initdb"), "-D", str(c.datadir), "--auth=trust", "--username=postgres",
              "--encoding=UTF8", "--no-sync", "--no-instructions"])
        opts = (f"-c port={c.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root}"
                f" -c wal_level={wal_level} -c max_wal_senders=10 -c max_replication_slots=10"
                " -c fsync=off -c shared_buffers=32MB -c max_connections=40 -c max_slot_wal_keep_size=1GB"
                f" {extra}")
        _run([str(PG_BIN / "pg_ctl"), "-D", str(c.datadir), "-l", str(root / "server.log"), "-o", opts,
              "-w", "-t", "60", "start"])
        started = True
        yield c
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(PG_BIN / "pg_ctl"), "-D", str(c.datadir), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)
