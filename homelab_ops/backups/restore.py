"""Find a backup, prove it is intact, and stream it into a new database.

The sha256 is checked before pg_restore sees a byte, and a restore never
overwrites an existing database: a restore at 2 a.m. must not make things worse.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pyrage
import zstandard

from homelab_ops.backups import postgresql as pg
from homelab_ops.backups.catalog import Backup, Listing, dump_without_manifest, read_listing, stem_for
from homelab_ops.backups.stores import CHUNK, LocalStore, Store, StoreError, read_json, s3_errors, stores_for
from homelab_ops.backups.config import BackupsConfig

if TYPE_CHECKING:  # settings imports the backup sources: a runtime import would be a cycle
    from homelab_ops.settings import BackupSettings, EncryptionSettings


class RestoreError(RuntimeError):
    """A restore was refused or failed; the message says which and why."""


class ManifestError(RestoreError):
    """A backup's manifest is missing or damaged: its sha256 cannot be checked."""


IGNORE_HINT = "--ignore-manifest restores it without checking the sha256"


@dataclass
class Located:
    store: Store
    database: str
    backup: Backup
    manifest: dict | None  # None: restored with --ignore-manifest, the sha256 unchecked


def read_manifest(store: Store, database: str, backup: Backup) -> dict:
    """The manifest, or ManifestError in one line when it cannot be trusted (StoreError: the store is down)."""
    where = f"{backup.manifest} in {store.label}"
    try:
        m = read_json(store, database, backup.manifest)
    except StoreError:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"the manifest {where} is damaged ({type(e).__name__}: {e})") from None
    except (OSError, *s3_errors()) as e:
        raise StoreError(f"{store.label}: cannot read {backup.manifest}: {e}") from None
    if not isinstance(m, dict) or not isinstance(m.get("sha256"), str) or len(m["sha256"]) != 64:
        raise ManifestError(f"the manifest {where} is damaged (no sha256 in it)")
    return m


def manifest_state(store: Store, database: str, backup: Backup) -> str:
    """`ok`, or why the manifest is damaged, for `backups list`."""
    try:
        read_manifest(store, database, backup)
    except ManifestError:
        return "damaged"
    except StoreError:
        return "unreadable"
    return "ok"


def stores_named(backups: BackupSettings, source: str) -> list[Store]:
    """`auto`: local and every S3 target (a new SD card restores from off-site alone)."""
    local, remotes = stores_for(backups)
    if source == "auto":
        return [local, *remotes]
    if source == "local":
        return [local]
    if source == "s3":
        if not remotes:
            raise RestoreError("--from s3, but backups.s3 is not configured")
        return [remotes[0]]
    for remote in remotes:
        if source == remote.label:
            return [remote]
    raise RestoreError(f"unknown backup source {source!r}: use auto, local, s3, or an S3 target's name")


def parse_at(text: str) -> datetime:
    """Accept a backup stem (20261125T030000Z) or an ISO 8601 time."""
    try:
        return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise RestoreError(f"--at {text!r} is neither a backup id like 20261125T030000Z nor an ISO time") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def locate(config: BackupsConfig, database: str, *, at: datetime | None = None, source: str = "auto",
           ignore_manifest: bool = False) -> Located:
    """The newest complete backup of `database` at or before `at` in the stores of `source` (`auto`: all,
    the first store winning a tie, so local before off-site). A damaged or missing manifest is refused
    unless `ignore_manifest`; a store that is down is skipped, and named if nothing is found."""
    errors, stores, best = [], stores_named(config.backups, source), None
    for store in stores:
        try:
            sizes = store.list(database)
        except StoreError as e:
            errors.append(str(e))
            continue
        found = _newest(read_listing(sizes), sizes, at)
        if found and (best is None or (found[0].stem, not found[1]) > (best[1].stem, not best[2])):
            best = (store, *found)
    if best is None:
        when = f" at or before {at.isoformat()}" if at else ""
        raise RestoreError(f"no complete backup of {database!r} in {' or '.join(s.label for s in stores)}{when}"
                           + (f" ({'; '.join(errors)})" if errors else ""))
    store, b, orphan = best
    if orphan:
        if not ignore_manifest:
            raise ManifestError(f"backup {b.stem} in {store.label} has no manifest: refusing; {IGNORE_HINT}")
        return Located(store, database, b, None)
    try:
        return Located(store, database, b, read_manifest(store, database, b))
    except ManifestError as e:
        if not ignore_manifest:
            raise ManifestError(f"{e}: refusing; {IGNORE_HINT}") from None
        return Located(store, database, b, None)


def _newest(listing: Listing, sizes: dict[str, int], at: datetime | None) -> tuple[Backup, bool] | None:
    """The newest complete backup at or before `at`, or (asked for by its own stem) a dump whose manifest
    is missing; the flag says which."""
    backups = [b for b in listing.backups if at is None or b.stem <= stem_for(at)]
    if at is not None and not any(b.stem == stem_for(at) for b in backups):
        orphan = dump_without_manifest(listing, stem_for(at))
        if orphan:
            return Backup(stem_for(at), orphan, "", sizes={orphan: sizes.get(orphan, 0)}), True
    return (backups[-1], False) if backups else None


class _Counting:
    """A reader that reports progress and hashes what it hands on."""

    def __init__(self, f, progress: Callable[[int], None] | None):
        self.f, self.progress, self.sha = f, progress, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(CHUNK if n is None or n < 0 else n)
        self.sha.update(b)
        if self.progress and b:
            self.progress(len(b))
        return b

    def readinto(self, buf) -> int:
        b = self.read(len(buf))
        buf[: len(b)] = b
        return len(b)


@contextmanager
def local_copy(backups: BackupSettings, loc: Located, progress: Callable[[int], None] | None = None):
    """Yield a local path holding the dump whose sha256 matched the manifest.

    A local backup is hashed in place; an S3 one is downloaded (hashed on the way)
    into a temporary file beside the local backups and removed afterwards. Without a
    manifest (--ignore-manifest) nothing can be compared.
    """
    expected = loc.manifest["sha256"] if loc.manifest else None
    if isinstance(loc.store, LocalStore):
        path = loc.store.path(loc.database, loc.backup.dump)
        with open(path, "rb") as f:
            reader = _Counting(f, progress)
            while reader.read(CHUNK):
                pass
        actual = reader.sha.hexdigest()
        if expected and actual != expected:
            raise RestoreError(f"{path}: sha256 {actual[:16]}... does not match the manifest's "
                               f"{expected[:16]}...: the file is damaged; choose another backup with --at")
        yield path
        return
    tmp_dir = Path(backups.local_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".restore-", suffix=".tmp", dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as out, loc.store.open_read(loc.database, loc.backup.dump) as body:
            reader = _Counting(body, progress)
            while chunk := reader.read(CHUNK):
                out.write(chunk)
        if expected and reader.sha.hexdigest() != expected:
            raise RestoreError(f"{loc.store.uri(loc.database, loc.backup.dump)}: sha256 does not match "
                               "the manifest: the off-site copy is damaged")
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def load_identity(encryption: EncryptionSettings):
    ident_file = encryption.identity_file
    if not ident_file:
        raise RestoreError("this backup is encrypted: set backups.encryption.identity_file to the age identity")
    try:
        lines = Path(ident_file).read_text().splitlines()
    except OSError as e:
        raise RestoreError(f"cannot read the age identity file {ident_file}: {e.strerror}") from None
    keys = [line.strip() for line in lines if line.strip().startswith("AGE-SECRET-KEY-")]
    if not keys:
        raise RestoreError(f"{ident_file} holds no AGE-SECRET-KEY- line")
    return [pyrage.x25519.Identity.from_str(k) for k in keys]


def _decode(path: Path, sink, identities, progress: Callable[[int], None] | None) -> None:
    """file -> (age decrypt, with `identities`) -> zstd decompress -> `sink.write`."""
    with open(path, "rb") as f:
        src = _Counting(f, progress)
        writer = zstandard.ZstdDecompressor().stream_writer(sink, closefd=False)
        if identities:
            pyrage.decrypt_io(src, writer, identities)
        else:
            while chunk := src.read(CHUNK):
                writer.write(chunk)
        writer.flush()


def decode_file(encryption: EncryptionSettings, path: Path, dest: Path, *, encrypted: bool,
                progress: Callable[[int], None] | None = None) -> None:
    """The backup's own bytes (an RDB, a dump) as the file `dest`, fsynced; removed when it fails."""
    identities = load_identity(encryption) if encrypted else None
    try:
        with open(dest, "wb") as out:
            _decode(path, out, identities, progress)
            out.flush()
            os.fsync(out.fileno())
    except (pyrage.DecryptError, zstandard.ZstdError) as e:
        dest.unlink(missing_ok=True)
        raise RestoreError(f"cannot decode {path.name}: {type(e).__name__}: {e}") from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def pg_restore_file(config: BackupsConfig, path: Path, dsn: str, *, encrypted: bool, keep_owners: bool,
                    progress: Callable[[int], None] | None = None) -> None:
    """Stream file -> (age decrypt) -> zstd decompress -> pg_restore's stdin."""
    identities = load_identity(config.backups.encryption) if encrypted else None
    proc = pg.start_restore(dsn, keep_owners=keep_owners, bin_dir=config.postgres.pg_bin_dir)
    stderr: list[bytes] = []
    drain = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    drain.start()
    broken = None
    try:
        _decode(path, proc.stdin, identities, progress)
        proc.stdin.close()
    except (BrokenPipeError, pyrage.DecryptError, zstandard.ZstdError, OSError) as e:
        broken = e
        try:
            proc.stdin.close()
        except OSError:
            pass
    rc = proc.wait()
    drain.join(timeout=10)
    msg = b"".join(stderr).decode(errors="replace").strip()[-2000:]
    if rc != 0 or broken:
        why = msg or f"{type(broken).__name__}: {broken}"
        raise RestoreError(f"pg_restore failed (exit {rc}): {why}")


def source_of(config: BackupsConfig, database: str, manifest: dict | None):
    """The backup source module that restores `database`'s backups: its manifest says, else the settings."""
    from homelab_ops.backups import sources

    if manifest is not None:
        try:
            return sources.for_manifest(manifest)
        except ValueError as e:
            raise RestoreError(str(e)) from None
    return sources.source_for(config.backups, database)[0]


def refuse_existing(config: BackupsConfig, database: str, into: str) -> None:
    """Before any work: `into` (a database, or a folder for Redis) must not hold anything yet."""
    source_of(config, database, None).refuse_existing(config, into)


def restore(config: BackupsConfig, loc: Located, into: str, *, progress: Callable[[int], None] | None = None,
            keep_owners: bool = True) -> str:
    """Restore the located backup into `into` (a new database; for Redis, a folder); returns where it went.

    Progress counts the dump's bytes twice: once checked (or downloaded), once restored.
    """
    module = source_of(config, loc.database, loc.manifest)
    return module.restore(config, loc, into, progress=progress, keep_owners=keep_owners)
