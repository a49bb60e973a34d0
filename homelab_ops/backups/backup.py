"""Take one backup: pg_dump -> zstd -> (age) -> sha256 -> local file, then the manifest.

Local only, at disk speed, so the dump's snapshot and locks are released as soon as
pg_dump exits; the off-site copies are made afterwards from the finished file
(`homelab_ops.backups.offsite`). The dump is complete-looking only when it is: it
is written as `.partial`, fsynced, and renamed after pg_dump exited 0, and the
manifest (written the same way) follows it; whatever step fails, nothing of the
backup stays. A hung pg_dump is killed after `backups.timeout`; a full disk is
refused before the dump when the newest backup would not fit, and named when it
fills anyway.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pyrage
import zstandard

from homelab_ops import units
from homelab_ops.backups import postgresql as pg
from homelab_ops.backups.config import BackupsConfig
from homelab_ops.backups.catalog import GLOBALS, MANIFEST_SUFFIX, dump_suffix, read_listing, stem_for
from homelab_ops.backups.stores import CHUNK, LocalStore
from homelab_ops.files import PARTIAL_SUFFIX, free_space, fsync_dir
from homelab_ops.pitr.snapshot import dump_snapshot
from homelab_ops.state import connect

if TYPE_CHECKING:  # the settings are made of the backup sources' models
    from homelab_ops.settings import BackupSettings

MANIFEST_FORMAT = 1
FREE_SPACE_HEADROOM = 1.25  # a backup may grow this much since the newest one before the dump is refused


class BackupError(RuntimeError):
    """A backup did not complete; nothing complete-looking was left behind."""


@dataclass
class BackupResult:
    database: str
    stem: str
    path: Path
    manifest: dict

    @property
    def duration(self) -> float:
        m = self.manifest
        return (datetime.fromisoformat(m["finished_at"]) - datetime.fromisoformat(m["started_at"])).total_seconds()


@contextmanager
def _writing(database: str, path: Path, abandon):
    """A full disk while writing `path` becomes one line naming the database, the file and the free
    space once `abandon` has removed what the backup wrote."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        abandon()
        raise BackupError(f"disk full: the backup of {database} could not write {path}; "
                          f"{free_space(path.parent)} free in {path.parent} once what it wrote was removed") from None


def check_free_space(local: LocalStore, database: str) -> None:
    """Refuse before the dump when the newest backup, with headroom, would not fit."""
    backups = read_listing(local.list(database)).backups
    if not backups:
        return
    newest = backups[-1]
    need = int(newest.sizes.get(newest.dump, 0) * FREE_SPACE_HEADROOM)
    folder = local.folder(database)
    if shutil.disk_usage(folder).free < need:
        raise BackupError(f"disk full: not backing up {database}: {free_space(folder)} free in {folder}, the newest "
                          f"backup ({newest.stem}) needs {units.size(need)} with headroom; "
                          "retention frees space, or make room under backups.local_dir")


class _HashingWriter:
    """A file sink that hashes and counts what passes through it; remembers a write error, which
    age's encryptor may hand back as another exception type."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")
        self.sha = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as e:
            self.error = e
            raise
        finally:
            try:
                self.f.close()
            except OSError:  # the flush inside close fails again on a full disk; the fd is closed anyway
                pass


def _recipients(keys: list[str]):
    return [pyrage.x25519.Recipient.from_str(k) for k in keys]


class _Tap:
    """The child's stdout, also written raw to `path`: for a source whose tool checks the raw bytes
    (redis-check-rdb) while only the compressed file is kept."""

    def __init__(self, stream, path: Path):
        self.stream, self.out = stream, open(path, "wb")

    def read(self, n: int = -1) -> bytes:
        b = self.stream.read(n)
        self.out.write(b)
        return b

    def close(self) -> None:
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()


def stream_to_file(proc, dest: Path, *, level: int, recipients: list[str], timeout: float, what: str,
                   tap: Path | None = None) -> tuple[str, int]:
    """Compress (and encrypt) a child's stdout into `dest`; returns (sha256, size). With `tap`, the raw
    stream is also written there (the caller removes it).

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
    source = _Tap(proc.stdout, tap) if tap else proc.stdout
    try:
        # One worker thread compresses while this one reads the pipe and writes: as fast as the
        # `pg_dump | zstd` pipeline, and one core at most, so Ollama keeps the others.
        cctx = zstandard.ZstdCompressor(level=level, threads=1)
        if recipients:
            reader = cctx.stream_reader(source, read_size=CHUNK)
            pyrage.encrypt_io(reader, sink, _recipients(recipients))
        else:
            cctx.copy_stream(source, sink, read_size=CHUNK, write_size=CHUNK)
        sink.close()
        if tap:
            source.close()
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        for f in (sink.f, source.out if tap else None):
            try:
                f and f.close()
            except OSError:
                pass
        dest.unlink(missing_ok=True)
        if sink.error is not None:
            raise sink.error from None
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


def _lock_key(database: str) -> int:
    return int.from_bytes(hashlib.sha256(f"homelab_ops.backup.{database}".encode()).digest()[:8], "big", signed=True)


@dataclass
class _Pending:
    """A backup being written: its names, and the way back when any step fails."""

    backups: BackupSettings
    database: str
    stem: str
    started: datetime
    final: Path

    @property
    def partial(self) -> Path:
        return self.final.with_name(self.final.name + PARTIAL_SUFFIX)

    @property
    def manifest_path(self) -> Path:
        return self.final.with_name(self.stem + MANIFEST_SUFFIX)

    def stream(self, proc, what: str, *, tap: Path | None = None) -> tuple[str, int]:
        b = self.backups
        with _writing(self.database, self.partial, self.abandon):
            return stream_to_file(proc, self.partial, level=b.zstd_level, recipients=b.encryption.age_recipients,
                                  timeout=b.timeout.seconds, what=what, tap=tap)

    def abandon(self) -> None:
        """Remove every artefact of this backup, the manifest first (never a manifest without its dump)."""
        for path in (self.manifest_path, self.final, self.partial):
            path.unlink(missing_ok=True)

    def commit(self, sha: str, size: int, extra: dict) -> BackupResult:
        """Rename the dump into place, then write its manifest: the backup is complete."""
        os.replace(self.partial, self.final)
        fsync_dir(self.final.parent)
        b = self.backups
        enc = b.encryption.age_recipients
        manifest = {
            "format": MANIFEST_FORMAT,
            "database": self.database,
            "dump": self.final.name,
            "started_at": self.started.isoformat(),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "host": socket.gethostname(),
            "size": size,
            "sha256": sha,
            "compression": {"algorithm": "zstd", "level": b.zstd_level},
            "encryption": {"algorithm": "age-x25519", "recipients": enc} if enc else None,
            **extra,
        }
        with _writing(self.database, self.manifest_path, self.abandon):
            LocalStore(b.local_dir).put_bytes(self.database, self.manifest_path.name,
                                              json.dumps(manifest, indent=2).encode())
        return BackupResult(self.database, self.stem, self.final, manifest)


def prepare(config: BackupsConfig, database: str, *, globals_only: bool = False) -> _Pending:
    """A new backup of the folder `database`: free space checked, a stem of its own; every source's
    backup streams through it (`stream`), then `commit`s its manifest fields or `abandon`s."""
    local = LocalStore(config.backups.local_dir)
    local.folder(database).mkdir(parents=True, exist_ok=True)
    check_free_space(local, database)
    stem, started = _new_stem(local, database)
    name = stem + dump_suffix(encrypted=bool(config.backups.encryption.age_recipients), globals_only=globals_only)
    return _Pending(config.backups, database, stem, started, local.path(database, name))


def run_backup(config: BackupsConfig, database: str, *, manifest_extra: dict | None = None) -> BackupResult:
    """Back up one database to the local folder (the off-site copies follow from the finished file).
    `manifest_extra`: fields the manifest records besides the dump's (n8n's key fingerprint)."""
    admin = config.postgres.dsn.get_secret_value()
    bin_dir = config.postgres.pg_bin_dir
    timeout = config.backups.timeout.seconds
    pg_dump = pg.tool("pg_dump", bin_dir)
    if not pg.database_exists(admin, database):
        raise BackupError(f"database {database!r} does not exist on the server in postgres.dsn: "
                          "check postgres.databases in the settings")
    with connect(admin, autocommit=True) as lock_conn:
        if not lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(database),)).fetchone()[0]:
            raise BackupError(f"another backup of {database!r} is running; two backups of one database never run at once")
        pending = prepare(config, database)
        try:
            with connect(pg.database_dsn(admin, database)) as src, contextlib.ExitStack() as held:
                src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                src.read_only = True
                snap = held.enter_context(dump_snapshot(src, pg.database_dsn(admin, database)))
                snapshot = snap["snapshot"]
                server_version = pg.server_version(src)
                proc = pg.start_dump(pg.database_dsn(admin, database), snapshot, bin_dir)
                stats: dict = {}

                def take_stats():
                    try:
                        stats["tables"] = pg.table_stats(src)
                    except Exception as e:  # reported after the dump, from the main thread
                        stats["error"] = e

                counter = threading.Thread(target=take_stats, daemon=True)
                deadline = time.monotonic() + timeout
                counter.start()
                try:
                    sha, size = pending.stream(proc, f"pg_dump of {database}")
                    counter.join(max(0.0, deadline - time.monotonic()))
                    if counter.is_alive():
                        raise BackupError(f"counting rows of {database} hung: still running after the "
                                          f"{timeout:.0f} s timeout (backups.timeout); it was stopped")
                finally:
                    if counter.is_alive():
                        src.cancel_safe()
                        counter.join()
                src.rollback()
            if "error" in stats:
                raise BackupError(f"counting rows of {database} failed: {stats['error']}")
            tables = stats["tables"]
            return pending.commit(sha, size, {
                "kind": "database",
                "pg_dump_version": pg.tool_version(pg_dump),
                "server_version": server_version,
                **snap,
                "table_count": len(tables),
                "row_count": sum(t.rows for t in tables),
                "tables": [{"schema": t.schema, "table": t.table, "rows": t.rows, "checksum": t.checksum}
                           for t in tables],
                **(manifest_extra or {}),
            })
        except BaseException:
            pending.abandon()
            raise


def run_globals_backup(config: BackupsConfig) -> BackupResult:
    """`pg_dumpall --globals-only`: the roles a restore on a new server needs first."""
    admin = config.postgres.dsn.get_secret_value()
    pending = prepare(config, GLOBALS, globals_only=True)
    try:
        proc = pg.start_dumpall_globals(admin, config.postgres.pg_bin_dir)
        sha, size = pending.stream(proc, "pg_dumpall --globals-only")
        with connect(admin) as conn:
            server_version = pg.server_version(conn)
        return pending.commit(sha, size, {"kind": "globals", "server_version": server_version})
    except BaseException:
        pending.abandon()
        raise
