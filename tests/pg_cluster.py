"""A throwaway PostgreSQL cluster that checks passwords (scram-sha-256), for tests of logins.

The machine's own server trusts every local login, so it cannot tell a right
password from a wrong one. This starts a private cluster from the PostgreSQL
15 binaries: initdb with --auth=scram-sha-256 and a random superuser password
in a temporary folder, listening on 127.0.0.1 and a free port only, with
`log_statement=all` so tests can also prove what never reached the server log.
As root, initdb and postgres run as the `postgres` OS user (they refuse root).

    from tests.pg_cluster import scram_cluster
    with scram_cluster() as pg:
        psycopg.connect(pg.dsn())

or the module-scoped fixture `scram_pg` (import it into a test module).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from psycopg.conninfo import make_conninfo

from homelab_ops.children import free_port

PG_BIN = Path(os.environ.get("HOMELAB_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass
class ScramCluster:
    root: Path
    port: int
    password: str
    superuser: str = "postgres"
    host: str = "127.0.0.1"

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        return make_conninfo(host=self.host, port=self.port, dbname=dbname, user=user or self.superuser,
                             password=self.password if password is None else password, connect_timeout=10)

    def server_log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def _as_pg_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(_as_pg_user(cmd), capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")


def owned_folder(prefix: str) -> Path:
    """A private temp folder the postgres user owns: initdb refuses to run as root."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(root, pg.pw_uid, pg.pw_gid)
    os.chmod(root, 0o700)
    return root


@contextlib.contextmanager
def served(root: Path, datadir: Path, log: Path, initdb: list[str], opts: str, hba: str = "") -> Iterator[None]:
    """initdb, add `hba` lines, start with `opts`; afterwards stop it (immediate) and delete `root`,
    whatever failed."""
    started = False
    try:
        _run([str(PG_BIN / "initdb"), "-D", str(datadir), "--encoding=UTF8", "--no-sync", "--no-instructions",
              *initdb])
        if hba:
            with open(datadir / "pg_hba.conf", "a") as f:
                f.write(hba)
        _run([str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-l", str(log), "-o", opts, "-w", "-t", "60", "start"])
        started = True
        yield
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def scram_cluster(*, also_listen: str | None = None, clients: str | None = None,
                  max_connections: int = 30) -> Iterator[ScramCluster]:
    """Start a private scram-sha-256 cluster; stop it and delete its folder afterwards.

    `also_listen` adds an address (a Docker network's gateway, for containers on it) and `clients`
    the subnet allowed to log in from there, with a password like every other login."""
    root = owned_folder("homelab-scram-pg-")
    cluster = ScramCluster(root, free_port(), secrets.token_urlsafe(24))
    pwfile = root / "pwfile"
    pwfile.write_text(cluster.password + "\n")
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(pwfile, pg.pw_uid, pg.pw_gid)
    listen = ",".join(["127.0.0.1", *([also_listen] if also_listen else [])])
    opts = (f"-c port={cluster.port} -c listen_addresses={listen} -c unix_socket_directories={root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB"
            f" -c max_connections={max_connections} -c log_statement=all -c password_encryption=scram-sha-256")
    with served(root, cluster.datadir, cluster.log_file,
                ["--auth=scram-sha-256", f"--username={cluster.superuser}", f"--pwfile={pwfile}"], opts,
                hba=f"host all all {clients} scram-sha-256\n" if clients else ""):
        pwfile.unlink()
        yield cluster


@pytest.fixture(scope="module")
def scram_pg() -> Iterator[ScramCluster]:
    with scram_cluster() as cluster:
        yield cluster
