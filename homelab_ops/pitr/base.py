"""Base backups: `pg_basebackup` in tar format, checked with `pg_verifybackup`, compressed, encrypted.

A base backup is a backup set in `_base/<cluster>/`, files sharing a stem and the
manifest written last (the completeness marker, as for the dumps):

    <stem>.base.tar.zst[.age]         the data directory
    <stem>.pg_wal.tar.zst[.age]       the WAL written during the backup (-X stream)
    <stem>.backup_manifest.zst[.age]  the server's backup_manifest
    <stem>.manifest.json              LSNs, timeline, times, sha256 of every file

PostgreSQL 15's pg_verifybackup reads only plain backups, so the tars are unpacked
into a scratch folder beside the archive, verified there (files and the WAL range,
through pg_waldump), and only then compressed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pyrage
import zstandard

from homelab_ops.backups import postgresql as pg
from homelab_ops.backups.catalog import MANIFEST_SUFFIX, stem_for, time_of
from homelab_ops.backups.names import pitr_folders
from homelab_ops.backups.stores import LocalStore, read_json
from homelab_ops.files import PARTIAL_SUFFIX, fsync_dir, remove_stale_scratch, sha256_file, write_atomic
from homelab_ops.pitr import wal
from homelab_ops.pitr.config import PitrConfig
from homelab_ops.pitr.receive import pitr_dsn

CHUNK = 1 << 20
PARTS = ("base.tar", "pg_wal.tar", "backup_manifest")
MANIFEST_FORMAT = 1
_NAME = re.compile(r"^(?P<stem>\d{8}T\d{6}Z)\.(?P<part>base\.tar|pg_wal\.tar|backup_manifest)\.zst(?P<age>\.age)?$")


class BaseBackupError(RuntimeError):
    """A base backup did not complete or did not verify; nothing complete-looking was left."""


def base_dir(config: PitrConfig, root: Path | None = None) -> Path:
    """`<local_dir>/_base/<cluster>`; `root` instead of local_dir for a copy fetched from off-site."""
    return Path(root or config.backups.local_dir) / pitr_folders(config.pitr.cluster)[0]


@dataclass(frozen=True)
class BaseBackup:
    stem: str
    manifest: dict
    files: tuple[str, ...]

    @property
    def time(self) -> datetime:
        return time_of(self.stem)

    @property
    def finished(self) -> datetime:
        return datetime.fromisoformat(self.manifest["finished_at"])

    @property
    def start_lsn(self) -> int:
        return wal.parse_lsn(self.manifest["start_lsn"])

    @property
    def end_lsn(self) -> int:
        return wal.parse_lsn(self.manifest["end_lsn"])

    @property
    def timeline(self) -> int:
        return int(self.manifest["timeline"])

    @property
    def segment_size(self) -> int:
        return int(self.manifest.get("wal_segment_size", wal.DEFAULT_SEGMENT_SIZE))


def read_base_backups(names, read_manifest) -> list[BaseBackup]:
    """Complete base backups among `names`, oldest first: a manifest whose every file is present.
    `read_manifest(name)` returns its JSON; the local folder and an S3 listing are read alike."""
    names = set(names)
    out = []
    for name in sorted(names):
        if not name.endswith(MANIFEST_SUFFIX):
            continue
        try:
            m = read_manifest(name)
        except (OSError, ValueError):
            continue
        files = tuple(m.get("files", {}))
        if m.get("kind") == "base_backup" and files and all(f in names for f in files):
            out.append(BaseBackup(name[: -len(MANIFEST_SUFFIX)], m, files))
    return out


def stored_base_backups(store, folder: str) -> list[BaseBackup]:
    """The complete base backups in a store's folder, oldest first: the local archive and an S3
    target's copy are read the same way."""
    return read_base_backups(store.list(folder), lambda name: read_json(store, folder, name))


def list_base_backups(config: PitrConfig, root: Path | None = None) -> list[BaseBackup]:
    """The complete base backups in the local folder (or under `root`), oldest first."""
    return stored_base_backups(LocalStore(root or config.backups.local_dir), pitr_folders(config.pitr.cluster)[0])


def _pack(src: Path, dest: Path, level: int, recipients: list[str]) -> tuple[str, int]:
    """src -> zstd -> (age) -> dest.partial, fsynced, renamed; returns the sha256 and size of dest."""
    tmp = dest.with_name(dest.name + PARTIAL_SUFFIX)

    class Sink:
        def __init__(self, f):
            self.f, self.sha, self.size = f, hashlib.sha256(), 0

        def write(self, b):
            self.sha.update(b)
            self.size += len(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            sink = Sink(fout)
            cctx = zstandard.ZstdCompressor(level=level, threads=1)
            if recipients:
                pyrage.encrypt_io(cctx.stream_reader(fin, read_size=CHUNK), sink,
                                  [pyrage.x25519.Recipient.from_str(k) for k in recipients])
            else:
                cctx.copy_stream(fin, sink, read_size=CHUNK, write_size=CHUNK)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return sink.sha.hexdigest(), sink.size


def unpack(path: Path, dest: Path, identities=None) -> None:
    """A packed tar (zstd, maybe age) -> extracted into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    with open(path, "rb") as f:
        if identities:
            plain = tempfile.SpooledTemporaryFile(max_size=0, dir=dest.parent)
            pyrage.decrypt_io(f, plain, identities)
            plain.seek(0)
            f2 = plain
        else:
            f2 = f
        with zstandard.ZstdDecompressor().stream_reader(f2, read_size=CHUNK) as reader:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                tar.extractall(dest, filter="tar")


def _run(args: list[str], env=None, timeout: float = 7200) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise BaseBackupError(f"{Path(args[0]).name} failed (exit {proc.returncode}): {msg or 'no message'}")
    return proc.stdout


def server_facts(conn: psycopg.Connection) -> dict:
    """The server's version, WAL segment size and system identifier, which a restore must match."""
    version = conn.execute("SHOW server_version").fetchone()[0]
    seg = conn.execute("SELECT setting::bigint * (CASE unit WHEN 'B' THEN 1 WHEN 'kB' THEN 1024 "
                       "WHEN 'MB' THEN 1048576 ELSE 1 END) FROM pg_settings WHERE name = 'wal_segment_size'"
                       ).fetchone()[0]
    sysid = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()[0]
    return {"server_version": version, "wal_segment_size": int(seg), "system_identifier": sysid}


def run_base_backup(config: PitrConfig) -> BaseBackup:
    """Take, verify and store one base backup of the cluster in pitr.dsn."""
    dsn = pitr_dsn(config)
    bin_dir = config.postgres.pg_bin_dir
    b = config.backups
    folder = base_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
        facts = server_facts(conn)
    while True:  # a UTC-second stem not used yet (two base backups in one second wait a tick)
        started = datetime.now(timezone.utc).replace(microsecond=0)
        stem = stem_for(started)
        if not any(n.startswith(stem) for n in os.listdir(folder)):
            break
        time.sleep(1.05 - time.time() % 1)
    remove_stale_scratch(folder, ".basebackup-*", b.timeout.seconds)  # left by a base backup killed midway
    scratch = Path(tempfile.mkdtemp(prefix=".basebackup-", dir=folder))
    conninfo, env = pg._client_env(dsn)
    written: list[Path] = []
    try:
        tar_dir, plain = scratch / "tar", scratch / "plain"
        _run([pg.tool("pg_basebackup", bin_dir), f"--pgdata={tar_dir}", "--format=tar", "--wal-method=stream",
              "--checkpoint=fast", f"--label=homelab-ops {stem}", "--no-password", f"--dbname={conninfo}"],
             env=env, timeout=b.timeout.seconds)
        finished = datetime.now(timezone.utc)
        with tarfile.open(tar_dir / "base.tar") as t:
            t.extractall(plain, filter="tar")
        with tarfile.open(tar_dir / "pg_wal.tar") as t:
            t.extractall(plain / "pg_wal", filter="tar")
        shutil.copy(tar_dir / "backup_manifest", plain / "backup_manifest")
        _run([pg.tool("pg_verifybackup", bin_dir), "--quiet", str(plain)], timeout=b.timeout.seconds)
        bm = json.loads((tar_dir / "backup_manifest").read_text())
        ranges = bm["WAL-Ranges"]
        label = (plain / "backup_label").read_text()
        shutil.rmtree(plain)
        suffix = ".zst" + (".age" if b.encryption.age_recipients else "")
        files = {}
        for part in PARTS:
            dest = folder / f"{stem}.{part}{suffix}"
            sha, size = _pack(tar_dir / part, dest, b.zstd_level, b.encryption.age_recipients)
            written.append(dest)
            files[dest.name] = {"sha256": sha, "size": size}
        fsync_dir(folder)
        manifest = {
            "format": MANIFEST_FORMAT, "kind": "base_backup", "cluster": config.pitr.cluster,
            "started_at": started.isoformat(), "finished_at": finished.isoformat(),
            "timeline": int(ranges[-1]["Timeline"]), "start_lsn": ranges[0]["Start-LSN"],
            "end_lsn": ranges[-1]["End-LSN"], **facts,
            "backup_label": label, "verified_with": "pg_verifybackup",
            "compression": {"algorithm": "zstd", "level": b.zstd_level},
            "encryption": {"algorithm": "age-x25519", "recipients": b.encryption.age_recipients}
            if b.encryption.age_recipients else None,
            "files": files,
        }
        write_atomic(folder / f"{stem}{MANIFEST_SUFFIX}", json.dumps(manifest, indent=2).encode())
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return BaseBackup(stem, manifest, tuple(files))


def check_files(config: PitrConfig, bb: BaseBackup, root: Path | None = None) -> None:
    """Every file's sha256 against the manifest, before a restore trusts it."""
    for name, meta in bb.manifest["files"].items():
        path = base_dir(config, root) / name
        if sha256_file(path) != meta["sha256"]:
            raise BaseBackupError(f"{path}: sha256 does not match the manifest: the base backup is damaged")
