"""A private PostgreSQL 15 cluster for the point-in-time recovery tests: wal_level=logical,
replication allowed on loopback (trust), a free port. As root, it runs as the `postgres` OS user.

    with logical_cluster() as pg:
        psycopg.connect(pg.dsn("postgres"))
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from psycopg.conninfo import make_conninfo

from homelab_ops.children import free_port
from tests.pg_cluster import PG_BIN, owned_folder, served  # noqa: F401 (PG_BIN for bench/pitr.py)


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
    root = owned_folder("homelab-pitr-pg-")
    c = Cluster(root, free_port(), wal_level)
    opts = (f"-c port={c.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root}"
            f" -c wal_level={wal_level} -c max_wal_senders=10 -c max_replication_slots=10"
            " -c fsync=off -c shared_buffers=32MB -c max_connections=40 -c max_slot_wal_keep_size=1GB"
            f" {extra}")
    with served(root, c.datadir, root / "server.log", ["--auth=trust", "--username=postgres"], opts):
        yield c
