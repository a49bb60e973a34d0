"""A whole n8n instance back from one backup set: the database, the key, the binary data.

`homelab-ops n8n restore --into NEW_DB --config-out DIR` restores the dump into a new
database, writes the saved key into `DIR/config` (mode 0600, n8n's own format) and the
binary data into `DIR/binaryData`: DIR is what n8n expects at /home/node/.n8n.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
import pyrage

from homelab_ops.backups.config import BackupsConfig
from homelab_ops.backups.restore import RestoreError, locate, refuse_existing, restore
from homelab_ops.files import write_atomic
from homelab_ops.n8n import backup_set, keys


@dataclass
class RestoredInstance:
    database: str
    stem: str
    into: str
    config: Path
    key_fingerprint: str
    binary_files: int
    start_lines: list[str]


def start_lines(config: BackupsConfig, into: str, config_dir: Path, binary: bool) -> list[str]:
    """The two lines that start n8n on the restored instance (the image runs as uid 1000)."""
    p = psycopg.conninfo.conninfo_to_dict(config.postgres.dsn.get_secret_value())
    env = ["DB_TYPE=postgresdb", f"DB_POSTGRESDB_HOST={p.get('host') or '127.0.0.1'}",
           f"DB_POSTGRESDB_PORT={p.get('port') or 5432}", f"DB_POSTGRESDB_DATABASE={into}",
           f"DB_POSTGRESDB_USER={p.get('user') or 'postgres'}"]
    # where n8n's tables are, as the backed-up instance had them: without these n8n would create an
    # empty instance beside the restored tables
    if config.n8n.db_schema != "public":
        env.append(f"DB_POSTGRESDB_SCHEMA={config.n8n.db_schema}")
    if config.n8n.table_prefix:
        env.append(f"DB_TABLE_PREFIX={config.n8n.table_prefix}")
    if binary:
        env.append("N8N_DEFAULT_BINARY_DATA_MODE=filesystem")
    flags = " ".join(f"-e {e}" for e in env)
    return [f"sudo chown -R 1000:1000 {config_dir}",
            f"docker run -d --name n8n -p 5678:5678 -v {config_dir}:/home/node/.n8n {flags} "
            f"n8nio/n8n:{config.n8n.version}  # add -e DB_POSTGRESDB_PASSWORD=... when the role has one"]


def restore_instance(config: BackupsConfig, into: str, config_out: Path, *, at: datetime | None = None,
                     source: str = "local", progress=None) -> RestoredInstance:
    """Refuses before any work when `into` exists, DIR/config exists, or the set has no usable key."""
    database = backup_set.n8n_database(config.n8n)
    if database is None:
        raise RestoreError("no n8n section (n8n.dsn) in the settings: which database is n8n's?")
    config_out = Path(config_out)
    config_file = config_out / "config"
    if config_file.exists():
        raise RestoreError(f"{config_file} already exists: refusing to overwrite an n8n config; "
                           "choose another --config-out")
    refuse_existing(config, database, into)
    loc = locate(config, database, at=at, source=source)
    extras = backup_set.read_extras(loc.store, database, loc.backup.stem)
    if extras is None:
        raise RestoreError(f"backup {loc.backup.stem} of {database} has no {backup_set.META_SUFFIX}: it was taken "
                           "without n8n's key; restore the database alone with `homelab-ops backups restore`")
    target = config_out / "binaryData"
    if extras.binary_file and target.exists():
        raise RestoreError(f"{target} already exists: refusing to mix two instances' binary data; "
                           "choose another --config-out")
    try:
        key = backup_set.open_key(config.backups, loc.store, database, extras)  # before any work: fail early
    except keys.KeyError_ as e:
        raise RestoreError(str(e)) from None
    restore(config, loc, into, progress=progress)
    config_out.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(config_out, 0o700)
    write_atomic(config_file, keys.config_bytes(key), mode=0o600, overwrite=False)
    del key
    files = 0
    if extras.binary_file:
        staging = config_out / ".binaryData.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            files = backup_set.extract_binary(config.backups, loc.store, database, extras, staging)
        except (keys.KeyError_, pyrage.DecryptError, tarfile.TarError, OSError) as e:
            raise RestoreError(f"database {into} and the key in {config_file} are restored, but the binary data of "
                               f"{loc.backup.stem} is not: {e}") from None
        os.replace(staging, target)
    return RestoredInstance(database, loc.backup.stem, into, config_file, extras.key_fingerprint or "", files,
                            start_lines(config, into, config_out, bool(extras.binary_file)))
