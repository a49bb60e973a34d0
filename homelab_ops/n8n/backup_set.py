"""What an n8n backup set holds beyond the dump: the encryption key and the binary data.

Beside `<stem>.dump.zst[.age]` and its manifest, a backup of n8n's database gets:

- in the manifest itself, `n8n_key_fingerprint`: read before the dump, so the completeness marker
  already tells which key the set needs (a restore refuses a wrong key before n8n runs);
- `<stem>.n8n.json`: the key's source and fingerprint (never the key), whether the key opens the
  database's credentials, the binary data's size and sha256, and any problem, in words;
- `<stem>.n8n-key.age`: n8n's `config` holding the key, age-encrypted to
  `backups.encryption.age_recipients`. Without recipients it is not written at all: a key in
  plain text next to the database it opens would hand every credential to whoever reads the disk;
- `<stem>.n8n-binary.tar.zst[.age]`: n8n's binary data folder (`n8n.binary_data_dir`), encrypted
  like the dump.

Every file is written atomically, with the backup's stem, so retention and the off-site copy treat
the set as one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pyrage
import zstandard

from homelab_ops.backups.config import BackupsConfig
from homelab_ops.backups.stores import CHUNK, LocalStore, Store, StoreError, stores_for
from homelab_ops.errors import first_line
from homelab_ops.files import PARTIAL_SUFFIX, fsync_dir, sha256_file, write_atomic
from homelab_ops.n8n import keys

if TYPE_CHECKING:
    from homelab_ops.settings import BackupSettings, N8nSettings

META_SUFFIX = ".n8n.json"
KEY_SUFFIX = ".n8n-key.age"
BINARY_SUFFIX = ".n8n-binary.tar.zst"
META_FORMAT = 1
MANIFEST_KEY_FIELD = "n8n_key_fingerprint"


def n8n_database(n8n: N8nSettings | None) -> str | None:
    """The database name in `n8n.dsn`: its backups are the ones that get the key and binary data."""
    if n8n is None:
        return None
    return psycopg.conninfo.conninfo_to_dict(n8n.dsn.get_secret_value()).get("dbname")


def manifest_fields(config: BackupsConfig, database: str) -> dict:
    """What the backup's manifest records of n8n's key, read before the dump: its fingerprint, never
    the key. Nothing when this is not n8n's database or the key cannot be read (save_extras says why)."""
    if database != n8n_database(config.n8n):
        return {}
    try:
        key = keys.read_key(config)
    except keys.KeyError_:
        return {}
    return {MANIFEST_KEY_FIELD: key.fingerprint} if key is not None else {}


def recorded_fingerprint(store: Store, database: str, extras: SetExtras) -> str | None:
    """The fingerprint of the key this set needs: the manifest's (sets before it: the sidecar's). The two
    disagreeing means the files are not one set: refused."""
    from homelab_ops.backups.catalog import MANIFEST_SUFFIX
    from homelab_ops.backups.stores import read_json

    in_manifest = read_json(store, database, extras.backup + MANIFEST_SUFFIX).get(MANIFEST_KEY_FIELD)
    if in_manifest and extras.key_fingerprint and in_manifest != extras.key_fingerprint:
        raise keys.KeyError_(f"key fingerprint mismatch: the manifest of {extras.backup} records {in_manifest}, "
                             f"{extras.backup}{META_SUFFIX} records {extras.key_fingerprint}: not one backup set")
    return in_manifest or extras.key_fingerprint


def binary_name(encrypted: bool) -> str:
    return BINARY_SUFFIX + (".age" if encrypted else "")


@dataclass
class KeyCheck:
    """How the key opened the credentials at backup time (counts and names only)."""

    credentials: int = 0
    decrypted: int = 0
    failed: list[str] = field(default_factory=list)  # credential names


@dataclass
class SetExtras:
    """What was saved beside one n8n backup, as `<stem>.n8n.json` records it."""

    database: str
    backup: str
    key_source: str | None = None
    key_fingerprint: str | None = None
    key_file: str | None = None
    key_check: KeyCheck | None = None
    binary_file: str | None = None
    binary_files: int = 0
    binary_bytes: int = 0
    binary_sha256: str | None = None
    problems: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {"format": META_FORMAT, **asdict(self)}

    @classmethod
    def from_record(cls, data: dict) -> "SetExtras":
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        check = data.pop("key_check", None)
        return cls(**data, key_check=KeyCheck(**check) if check else None)


def check_key(key: str, dsn: str, schema: str = "public", prefix: str = "") -> KeyCheck:
    """Decrypt every credential of the live database with `key` (in memory; values are dropped)."""
    out = KeyCheck()
    table = f'"{schema}"."{prefix}credentials_entity"'
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.read_only = True
        rows = conn.execute(f"SELECT name, data FROM {table} ORDER BY id").fetchall()
    for name, data in rows:
        out.credentials += 1
        try:
            keys.decrypt_credential(key, data)
            out.decrypted += 1
        except ValueError:
            out.failed.append(name)
    return out


def _encrypt_bytes(data: bytes, recipients: list[str]) -> bytes:
    return pyrage.encrypt(data, [pyrage.x25519.Recipient.from_str(r) for r in recipients])


def _tar_binary(src: Path, dest: Path, *, level: int, recipients: list[str]) -> tuple[int, int, str]:
    """`src` as a zstd tar (age-encrypted to `recipients`) at `dest`; (files, bytes, sha256 of dest)."""
    files = size = 0
    tmp_fd, tmp_name = tempfile.mkstemp(prefix=".n8n-binary-", dir=dest.parent)
    os.close(tmp_fd)
    tmp = Path(tmp_name)
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    try:
        with open(tmp if recipients else partial, "wb") as raw:
            with zstandard.ZstdCompressor(level=level).stream_writer(raw, closefd=False) as zw:
                with tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    for path in sorted(src.rglob("*")):
                        if path.is_file() and not path.is_symlink():
                            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
                            files += 1
                            size += path.stat().st_size
            raw.flush()
            os.fsync(raw.fileno())
        if recipients:
            with open(tmp, "rb") as f, open(partial, "wb") as out:
                pyrage.encrypt_io(f, out, [pyrage.x25519.Recipient.from_str(r) for r in recipients])
                out.flush()
                os.fsync(out.fileno())
        sha = sha256_file(partial)
        os.replace(partial, dest)
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    return files, size, sha


def save_extras(config: BackupsConfig, database: str, stem: str) -> SetExtras:
    """Write the key and binary data beside backup `stem` of n8n's database, locally and off-site.

    Never raises for a problem with the key or the data: the database backup is complete and
    stays; the problem is recorded in `<stem>.n8n.json`, which the `n8n_key_saved` check reads.
    """
    s, b = config.n8n, config.backups
    recipients = b.encryption.age_recipients
    local = LocalStore(b.local_dir)
    extras = SetExtras(database=database, backup=stem)
    try:
        key = keys.read_key(config)
    except keys.KeyError_ as e:
        key = None
        extras.problems.append(f"the encryption key could not be read: {e}")
    if key is None and not extras.problems:
        extras.problems.append("no source for n8n's encryption key is configured (n8n.encryption_key, "
                               "n8n.config_file or n8n.container): credentials in this backup cannot be "
                               "decrypted after a restore")
    if key is not None:
        extras.key_source, extras.key_fingerprint = key.source, key.fingerprint
        try:
            extras.key_check = check_key(key.value, s.dsn.get_secret_value(), s.db_schema, s.table_prefix)
            c = extras.key_check
            if c.credentials and not c.decrypted:
                extras.problems.append(
                    f"the key from {key.source} (fingerprint {key.fingerprint}) decrypts none of the "
                    f"{c.credentials} credentials: it is not this instance's key")
            elif c.failed:
                extras.problems.append(f"{len(c.failed)} of {c.credentials} credentials do not decrypt with "
                                       f"the key: {', '.join(c.failed[:10])}")
        except psycopg.Error as e:
            extras.problems.append(f"the key could not be checked against n8n's credentials: {first_line(e)}")
        if recipients:
            extras.key_file = stem + KEY_SUFFIX
            write_atomic(local.path(database, extras.key_file),
                         _encrypt_bytes(keys.config_bytes(key.value), recipients), mode=0o600)
        else:
            extras.problems.append(
                "the encryption key was NOT saved: backups.encryption.age_recipients is empty, and the key "
                "is never written in plain text; credentials of this backup cannot be restored. Fix: add "
                "an age recipient (age-keygen -y) to backups.encryption.age_recipients")
        del key
    if s.binary_data_dir:
        src = Path(s.binary_data_dir)
        if not src.is_dir():
            extras.problems.append(f"n8n.binary_data_dir {src} is not a folder here: binary data not backed up")
        else:
            name = stem + binary_name(bool(recipients))
            try:
                extras.binary_files, extras.binary_bytes, extras.binary_sha256 = _tar_binary(
                    src, local.path(database, name), level=b.zstd_level, recipients=recipients)
                extras.binary_file = name
            except OSError as e:
                extras.problems.append(f"binary data in {src} not backed up: {e.strerror or e}")
    meta = stem + META_SUFFIX
    local.put_bytes(database, meta, json.dumps(extras.record(), indent=2).encode())
    # written last: the record describes files that exist
    # Off-site copies follow with the set: the off-site step uploads every file sharing the stem.
    return extras


def read_extras(store: Store, database: str, stem: str) -> SetExtras | None:
    """`<stem>.n8n.json` from a store, or None when the set has none."""
    name = stem + META_SUFFIX
    if name not in store.list(database):
        return None
    with store.open_read(database, name) as f:
        return SetExtras.from_record(json.loads(f.read()))


def open_key(backups: BackupSettings, store: Store, database: str, extras: SetExtras) -> str:
    """The key saved with a backup set, decrypted with this host's age identity (in memory only)."""
    from homelab_ops.backups.restore import load_identity

    if not extras.key_file:
        raise keys.KeyError_(f"backup {extras.backup} has no saved key: {'; '.join(extras.problems) or 'unknown'}")
    with store.open_read(database, extras.key_file) as f:
        data = f.read()
    try:
        plain = pyrage.decrypt(data, load_identity(backups.encryption))
    except pyrage.DecryptError:
        raise keys.KeyError_(f"{extras.key_file} does not decrypt with backups.encryption.identity_file") from None
    key = keys.key_from_config(plain.decode(), extras.key_file)
    recorded = recorded_fingerprint(store, database, extras)
    if recorded and keys.fingerprint(key) != recorded:
        raise keys.KeyError_(f"key fingerprint mismatch: {extras.key_file} holds a key with fingerprint "
                             f"{keys.fingerprint(key)}, the backup recorded {recorded}")
    return key


def extract_binary(backups: BackupSettings, store: Store, database: str, extras: SetExtras, dest: Path) -> int:
    """Unpack the set's binary data into `dest` (files only, no links, nothing outside `dest`).

    Streamed through temporary files beside `dest`: binary data may be larger than memory."""
    from homelab_ops.backups.restore import load_identity

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=dest) as raw, tempfile.TemporaryFile(dir=dest) as plain:
        sha = hashlib.sha256()
        with store.open_read(database, extras.binary_file) as f:
            while chunk := f.read(CHUNK):
                sha.update(chunk)
                raw.write(chunk)
        if extras.binary_sha256 and sha.hexdigest() != extras.binary_sha256:
            raise keys.KeyError_(f"{extras.binary_file}: sha256 does not match {extras.backup}{META_SUFFIX}")
        raw.seek(0)
        if extras.binary_file.endswith(".age"):
            pyrage.decrypt_io(raw, plain, load_identity(backups.encryption))
            src = plain
        else:
            src = raw
        src.seek(0)
        count = 0
        with zstandard.ZstdDecompressor().stream_reader(src) as zr, tarfile.open(fileobj=zr, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                tar.extract(member, dest, filter="data")
                count += 1
    return count


def after_backup(config: BackupsConfig, database: str, result, log) -> SetExtras | None:
    """Called by the backup asset after each backup: n8n's database gets its extras, others nothing.
    They are written before the off-site step, which copies them with the rest of the set."""
    if database != n8n_database(config.n8n):
        return None
    for uri in prune_orphans(config.backups, database):
        log.info(f"removed {uri}: its backup was pruned")
    extras = save_extras(config, database, result.stem)
    for problem in extras.problems:
        log.warning(f"n8n backup {result.stem}: {problem}")
    if extras.key_fingerprint:
        log.info(f"n8n backup {result.stem}: key {extras.key_fingerprint} from {extras.key_source}"
                 f"{' saved (age)' if extras.key_file else ' NOT saved'}; binary data: {extras.binary_files} files")
    return extras


EXTRA_SUFFIXES = (META_SUFFIX, KEY_SUFFIX, BINARY_SUFFIX, BINARY_SUFFIX + ".age", ".n8n-verified.json")


def orphaned_extras(names: list[str]) -> list[str]:
    """Extras whose backup is gone (retention pruned its dump and manifest): they follow it.
    Pure; a `.partial` is left to the leftover sweep."""
    from homelab_ops.backups.catalog import MANIFEST_SUFFIX

    stems = {n[:16] for n in names if n.endswith(MANIFEST_SUFFIX)}
    return sorted(n for n in names if n.endswith(EXTRA_SUFFIXES) and n[:16] not in stems)


def prune_orphans(backups: BackupSettings, database: str) -> list[str]:
    """Delete, in every store, the extras of backups retention has removed; returns what went."""
    local, remotes = stores_for(backups)
    gone = []
    for store in [local, *remotes]:
        try:
            names = orphaned_extras(list(store.list(database)))
            if names:
                store.delete(database, names)
                gone += [store.uri(database, n) for n in names]
        except (StoreError, OSError):
            continue  # the next backup tries again
    return gone
