"""PostgreSQL as a backup data source: dump and restore side by side.

Both stream through pipes (pg_dump's stdout, pg_restore's stdin) so memory stays
flat whatever the database's size. Table statistics are taken in the exact
snapshot pg_dump reads (`pg_export_snapshot` + `--snapshot`), so a restore can be
compared with the manifest table by table, not merely "about the same size".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from homelab_ops.backups.sources._base import SourceError  # noqa: F401  (raised here, caught by its name)
from homelab_ops.state import connect

if TYPE_CHECKING:  # settings imports the backup sources: a runtime import would be a cycle
    from homelab_ops.settings import PostgresSettings


@dataclass(frozen=True)
class TableStat:
    schema: str
    table: str
    rows: int
    checksum: str

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


# An order-independent content checksum: the sum of a 64-bit hash of every row. No
# sort, so it costs one sequential read per table; equal multisets of rows give equal
# sums, and a changed, missing or extra row changes it. The hashes are PostgreSQL's
# extended hash functions, the ones hash partitioning relies on to be stable. Rows are
# hashed column by column (`hash_record_extended`, three times faster than hashing
# their text); a table with a column type that has no hash function (json, point...)
# falls back to hashing the row's text. The prefix says which, so both sides agree.
# This detects damage; it is not meant to resist forgery.
# A row's text depends on the session (timestamptz on TimeZone, dates on DateStyle, intervals on
# IntervalStyle, floats on extra_float_digits...), so it is taken with the settings below, whatever
# the server's, database's or role's defaults: prefix `txtf`. Manifests written before that say
# `txt` (the session's defaults) and are compared the old way.
_STATS_SQL = {
    "rec": "SELECT count(*), coalesce(sum(hash_record_extended(t, 0)), 0)::text FROM {}.{} AS t",
    "txt": "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM {}.{} AS t",
}
FIXED_SESSION = (("TimeZone", "UTC"), ("DateStyle", "ISO, YMD"), ("IntervalStyle", "postgres"),
                 ("extra_float_digits", "1"), ("bytea_output", "hex"), ("lc_monetary", "C"))

_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


def table_stats(conn: psycopg.Connection, *, fixed_session: bool = True) -> list[TableStat]:
    """Exact row count and content checksum of every user table, in the connection's snapshot.

    `fixed_session=False` only to compare with a manifest written before the session was fixed."""
    if fixed_session:  # local to the transaction when there is one (the dump's snapshot)
        for name, value in FIXED_SESSION:
            conn.execute("SELECT set_config(%s, %s, %s)", (name, value, not conn.autocommit))
    out = []
    for schema, table in conn.execute(_TABLES_SQL).fetchall():
        out.append(TableStat(schema, table, *_table_checksum(conn, schema, table, fixed_session)))
    return out


def _table_checksum(conn: psycopg.Connection, schema: str, table: str, fixed: bool) -> tuple[int, str]:
    ident = (sql.Identifier(schema), sql.Identifier(table))
    try:
        with conn.transaction():  # a savepoint: the fallback must not lose the snapshot
            rows, total = conn.execute(sql.SQL(_STATS_SQL["rec"]).format(*ident)).fetchone()
            return int(rows), f"rec:{total}"
    except psycopg.errors.UndefinedFunction:
        rows, total = conn.execute(sql.SQL(_STATS_SQL["txt"]).format(*ident)).fetchone()
        return int(rows), f"{'txtf' if fixed else 'txt'}:{total}"


def database_dsn(admin_dsn: str, database: str) -> str:
    """The admin connection's parameters, pointed at another database."""
    return make_conninfo(admin_dsn, dbname=database)


def list_databases(admin_dsn: str) -> list[str]:
    """Every database but the templates, for `postgres.databases: all`."""
    from homelab_ops.backups.names import SCRATCH_PREFIX

    with connect(admin_dsn) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn"
                            " ORDER BY 1").fetchall()
    # not the scratch databases of verifications, even one a crash left
    return [r[0] for r in rows if not r[0].startswith(SCRATCH_PREFIX)]


def configured_databases(postgres: PostgresSettings) -> list[str]:
    """`postgres.databases`; for `all`, every database on the server now (raises when it is down)."""
    if postgres.databases == "all":
        return list_databases(postgres.dsn.get_secret_value())
    return list(postgres.databases)


def database_exists(admin_dsn: str, database: str) -> bool:
    with connect(admin_dsn) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None


def server_version(conn: psycopg.Connection) -> str:
    return conn.execute("SHOW server_version").fetchone()[0]


def tool(name: str, bin_dir: str | None = None) -> str:
    path = os.path.join(bin_dir, name) if bin_dir else shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise SourceError(f"{name} not found{' in ' + bin_dir if bin_dir else ' on PATH'}: install the PostgreSQL client tools")
    return path


def tool_version(path: str) -> str:
    return subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def _client_env(dsn: str) -> tuple[str, dict[str, str]]:
    """Split a DSN into a password-free conninfo and an environment with PGPASSWORD.

    A password on a command line is visible to every user through `ps`.
    """
    params = conninfo_to_dict(dsn)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env


def start_dump(dsn: str, snapshot: str | None, bin_dir: str | None = None) -> subprocess.Popen:
    """pg_dump in custom format without its own compression (zstd does that), stdout piped."""
    conninfo, env = _client_env(dsn)
    args = [tool("pg_dump", bin_dir), "--format=custom", "--compress=0", f"--dbname={conninfo}"]
    if snapshot:
        args.append(f"--snapshot={snapshot}")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def start_dumpall_globals(dsn: str, bin_dir: str | None = None) -> subprocess.Popen:
    """Roles and tablespaces: what a restore on a new server needs before the dumps."""
    conninfo, env = _client_env(dsn)
    args = [tool("pg_dumpall", bin_dir), "--globals-only", f"--dbname={conninfo}"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def start_restore(dsn: str, *, keep_owners: bool = True, bin_dir: str | None = None) -> subprocess.Popen:
    """pg_restore reading a custom-format archive from stdin; stops at the first error."""
    conninfo, env = _client_env(dsn)
    args = [tool("pg_restore", bin_dir), "--exit-on-error", f"--dbname={conninfo}"]
    if not keep_owners:
        args += ["--no-owner", "--no-privileges"]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def create_database(admin_dsn: str, name: str) -> None:
    with connect(admin_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            raise SourceError(f"database {name!r} already exists: refusing to overwrite it")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(admin_dsn: str, name: str) -> None:
    with connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def read_stderr(stream: IO[bytes] | None, limit: int = 4000) -> str:
    if stream is None:
        return ""
    return stream.read().decode(errors="replace")[-limit:].strip()
