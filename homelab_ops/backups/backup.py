"""Take one backup: pg_dump -> zstd -> (age) -> sha256 -> file, then the manifest, then off-site.

The dump is complete-looking only when it is: it is written as `.partial`,
fsynced, and renamed after pg_dump exited 0, and the manifest (written the same
way) follows it. A hung pg_dump is killed after `backups.timeout`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pyrage
import zstandard

from homelab_ops.backups import postgresql as pg
from homelab_ops.backups.catalog import GLOBALS, MANIFEST_SUFFIX, PARTIAL_SUFFIX, dump_suffix, stem_for
from homelab_ops.backups.stores import CHUNK, LocalStore, StoreError, fsync_dir, stores_for
from homelab_ops.state import connect

MANIFEST_FORMAT = 1


class BackupError(RuntimeError):
    """A backup did not complete; nothing complete-looking was left behind."""


@dataclass
class BackupResult:
    database: str
    stem: str
    path: Path
    manifest: dict
    uris: list[str] = field(default_factory=list)
    offsite_errors: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        m = self.manifest
        return (datetime.fromisoformat(m["finished_at"]) - datetime.fromisoformat(m["started_at"])).total_seconds()


class _HashingWriter:
    """A file sink that hashes and counts what passes through it."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def _recipients(keys: list[str]):
    return [pyrage.x25519.Recipient.from_str(k) for k in keys]


def stream_to_file(proc, dest: Path, *, level: int, recipients: list[str], timeout: float, what: str) -> tuple[str, int]:
    """Compress (and encrypt) a child's stdout into `dest`; returns (sha256, size).

    Raises BackupError when the child fails or outlives `timeout`; `dest` is
    removed then, so a failed backup leaves nothing behind.
    """
    stderr: list[bytes] = []
    drain = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    drain.start()
    hung = threading.Event()

    def kill():
        hung.set()
        proc.kill()

    watchdog = threading.Timer(timeout, kill)
    watchdog.daemon = True
    watchdog.start()
    sink = _HashingWriter(dest)
    try:
        cctx = zstandard.ZstdCompressor(level=level)
        if recipients:
            reader = cctx.stream_reader(proc.stdout, read_size=CHUNK)
            pyrage.encrypt_io(reader, sink, _recipients(recipients))
        else:
            cctx.copy_stream(proc.stdout, sink, read_size=CHUNK, write_size=CHUNK)
        sink.close()
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        sink.f.close()
        dest.unlink(missing_ok=True)
        raise
    finally:
        watchdog.cancel()
        drain.join(timeout=10)
    if hung.is_set():
        dest.unlink(missing_ok=True)
        raise BackupError(f"{what} hung: still running after the {timeout:.0f} s timeout (backups.timeout); it was stopped")
    if rc != 0:
        dest.unlink(missing_ok=True)
        msg = b"".join(stderr).decode(errors="replace").strip()[-2000:]
        raise BackupError(f"{what} failed (exit {rc}): {msg or 'no message'}")
    return sink.sha.hexdigest(), sink.size


def _new_stem(local: LocalStore, database: str) -> tuple[str, datetime]:
    """A UTC-second stem not yet used in the folder (two backups in one second wait a tick)."""
    while True:
        now = datetime.now(timezone.utc).replace(microsecond=0)
        stem = stem_for(now)
        if not any(n.startswith(stem) for n in local.list(database)):
            return stem, now
        time.sleep(1.05 - (time.time() % 1))


def _commit_dump(partial: Path, final: Path) -> None:
    os.replace(partial, final)
    fsync_dir(final.parent)


def _lock_key(database: str) -> int:
    return int.from_bytes(hashlib.sha256(f"homelab_ops.backup.{database}".encode()).digest()[:8], "big", signed=True)


def _offsite(settings, database: str, dump_name: str, path: Path, manifest: dict, result: BackupResult) -> None:
    _, remotes = stores_for(settings)
    body = json.dumps(manifest, indent=2).encode()
    for store in remotes:
        try:
            store.put_file(database, dump_name, path, manifest["sha256"])
            store.put_bytes(database, result.stem + MANIFEST_SUFFIX, body)
            result.uris.append(store.uri(database, dump_name))
        except StoreError as e:
            result.offsite_errors.append(str(e))


def run_backup(settings, database: str) -> BackupResult:
    """Back up one database. Off-site failures are returned in `offsite_errors`, not raised,
    so the caller can report the local backup that did succeed."""
    admin = settings.postgres.dsn.get_secret_value()
    bin_dir = settings.postgres.pg_bin_dir
    enc = settings.backups.encryption.age_recipients
    pg_dump = pg.tool("pg_dump", bin_dir)
    if not pg.database_exists(admin, database):
        raise BackupError(f"database {database!r} does not exist on the server in postgres.dsn: "
                          "check postgres.databases in the settings")
    local = LocalStore(settings.backups.local_dir)
    local.folder(database).mkdir(parents=True, exist_ok=True)
    with connect(admin, autocommit=True) as lock_conn:
        if not lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(database),)).fetchone()[0]:
            raise BackupError(f"another backup of {database!r} is running; two backups of one database never run at once")
        stem, started = _new_stem(local, database)
        dump_name = stem + dump_suffix(encrypted=bool(enc))
        final = local.path(database, dump_name)
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        with connect(pg.database_dsn(admin, database)) as src:
            src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            src.read_only = True
            snapshot = src.execute("SELECT pg_export_snapshot()").fetchone()[0]
            server_version = pg.server_version(src)
            proc = pg.start_dump(pg.database_dsn(admin, database), snapshot, bin_dir)
            stats: dict = {}

            def take_stats():
                try:
                    stats["tables"] = pg.table_stats(src)
                except Exception as e:  # reported after the dump, from the main thread
                    stats["error"] = e

            counter = threading.Thread(target=take_stats, daemon=True)
            deadline = time.monotonic() + settings.backups.timeout_seconds
            counter.start()
            try:
                sha, size = stream_to_file(proc, partial, level=settings.backups.zstd_level, recipients=enc,
                                           timeout=settings.backups.timeout_seconds, what=f"pg_dump of {database}")
                counter.join(max(0.0, deadline - time.monotonic()))
                if counter.is_alive():
                    partial.unlink(missing_ok=True)
                    raise BackupError(f"counting rows of {database} hung: still running after the "
                                      f"{settings.backups.timeout_seconds:.0f} s timeout (backups.timeout); it was stopped")
            finally:
                if counter.is_alive():
                    src.cancel_safe()
                    counter.join()
            src.rollback()
        if "error" in stats:
            partial.unlink(missing_ok=True)
            raise BackupError(f"counting rows of {database} failed: {stats['error']}")
        _commit_dump(partial, final)
        tables = stats["tables"]
        manifest = {
            "format": MANIFEST_FORMAT,
            "kind": "database",
            "database": database,
            "dump": dump_name,
            "started_at": started.isoformat(),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "host": socket.gethostname(),
            "pg_dump_version": pg.tool_version(pg_dump),
            "server_version": server_version,
            "snapshot": snapshot,
            "size": size,
            "sha256": sha,
            "compression": {"algorithm": "zstd", "level": settings.backups.zstd_level},
            "encryption": {"algorithm": "age-x25519", "recipients": enc} if enc else None,
            "table_count": len(tables),
            "row_count": sum(t.rows for t in tables),
            "tables": [{"schema": t.schema, "table": t.table, "rows": t.rows, "checksum": t.checksum}
                       for t in tables],
        }
        local.put_bytes(database, stem + MANIFEST_SUFFIX, json.dumps(manifest, indent=2).encode())
    result = BackupResult(database, stem, final, manifest, [str(final)])
    _offsite(settings, database, dump_name, final, manifest, result)
    return result


def run_globals_backup(settings) -> BackupResult:
    """`pg_dumpall --globals-only`: the roles a restore on a new server needs first."""
    admin = settings.postgres.dsn.get_secret_value()
    enc = settings.backups.encryption.age_recipients
    local = LocalStore(settings.backups.local_dir)
    local.folder(GLOBALS).mkdir(parents=True, exist_ok=True)
    stem, started = _new_stem(local, GLOBALS)
    dump_name = stem + dump_suffix(encrypted=bool(enc), globals_only=True)
    final = local.path(GLOBALS, dump_name)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    proc = pg.start_dumpall_globals(admin, settings.postgres.pg_bin_dir)
    sha, size = stream_to_file(proc, partial, level=settings.backups.zstd_level, recipients=enc,
                               timeout=settings.backups.timeout_seconds, what="pg_dumpall --globals-only")
    _commit_dump(partial, final)
    with connect(admin) as conn:
        server_version = pg.server_version(conn)
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "globals",
        "database": GLOBALS,
        "dump": dump_name,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "host": socket.gethostname(),
        "server_version": server_version,
        "size": size,
        "sha256": sha,
        "compression": {"algorithm": "zstd", "level": settings.backups.zstd_level},
        "encryption": {"algorithm": "age-x25519", "recipients": enc} if enc else None,
    }
    local.put_bytes(GLOBALS, stem + MANIFEST_SUFFIX, json.dumps(manifest, indent=2).encode())
    result = BackupResult(GLOBALS, stem, final, manifest, [str(final)])
    _offsite(settings, GLOBALS, dump_name, final, manifest, result)
    return result
