"""PostgreSQL databases as a backup source: pg_dump in its own snapshot, restored into a scratch
database and compared table by table. The dump and restore primitives are
`homelab_ops.backups.postgresql`; PITR, the roles dump and n8n use them too, which is why the
databases are listed in `postgres.databases` and not in `backups.sources`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from homelab_ops.backups.config import BackupsConfig
from homelab_ops.backups.names import SCRATCH_PREFIX
from homelab_ops.backups.sources._base import SourceConfig

if TYPE_CHECKING:
    from homelab_ops.backups import postgresql as pg
    from homelab_ops.backups.verify import TableCheck

LISTED = False
KINDS = {"postgres"}
VERIFIES = ("restored into a scratch database, and every table's exact row count and checksum compared "
            "with the manifest")


class Config(SourceConfig):
    type: Literal["postgresql"] = "postgresql"


def compare(manifest_tables: list[dict], restored: list[pg.TableStat]) -> list[TableCheck]:
    """Every table on either side, by name; a table on one side only is a difference."""
    from homelab_ops.backups.verify import TableCheck

    expected = {f"{t['schema']}.{t['table']}": (int(t["rows"]), str(t["checksum"])) for t in manifest_tables}
    actual = {s.name: (s.rows, s.checksum) for s in restored}
    out = []
    for name in sorted(expected.keys() | actual.keys()):
        e, a = expected.get(name), actual.get(name)
        out.append(TableCheck(name, e[0] if e else None, a[0] if a else None,
                              e is not None and a is not None and e[1] == a[1]))
    return out


def scratch_name(database: str, short_id: str) -> str:
    """`homelab_verify_<database>_<id>`, shortened to PostgreSQL's 63-byte identifier limit."""
    room = 63 - len(SCRATCH_PREFIX) - 1 - len(short_id.encode())
    db = database.encode()[:room].decode(errors="ignore")
    return f"{SCRATCH_PREFIX}{db}_{short_id}"


def describe(source: Config, config: BackupsConfig) -> str:
    return (f"A backup of the `{source.name}` database: pg_dump in its own snapshot, zstd"
            f"{', age-encrypted' if config.backups.encryption.age_recipients else ''}, with a manifest of "
            "every table's exact row count and checksum")


def backup(source: Config, config: BackupsConfig, log):
    """One pg_dump, with n8n's key fingerprint and binary data when this is n8n's database."""
    from homelab_ops.backups.backup import run_backup
    from homelab_ops.n8n.backup_set import after_backup, manifest_fields

    result = run_backup(config, source.name, manifest_extra=manifest_fields(config, source.name))
    after_backup(config, source.name, result, log)
    log.info(f"backed up {source.name}: {result.manifest['size']} bytes, "
             f"{result.manifest['row_count']} rows in {result.manifest['table_count']} tables")
    return result


def verify_restore(config: BackupsConfig, path, manifest: dict, result) -> None:
    """pg_restore into a scratch database, then every table's count and checksum against the manifest;
    the scratch database is always dropped."""
    import uuid

    from homelab_ops.backups import postgresql as pg
    from homelab_ops.backups import verify as v
    from homelab_ops.backups.restore import RestoreError, pg_restore_file
    from homelab_ops.state import connect

    admin = config.postgres.dsn.get_secret_value()
    scratch = scratch_name(result.database, uuid.uuid4().hex[:8])
    result.scratch_database = scratch
    try:
        pg.create_database(admin, scratch)
    except Exception as e:
        raise v.VerifyError(config.redact(f"cannot create the scratch database {scratch}: {e}")) from None
    try:
        try:
            pg_restore_file(config, path, pg.database_dsn(admin, scratch), encrypted=result.encrypted,
                            keep_owners=False)
        except RestoreError as e:
            result.message = config.redact(f"the backup does not restore: {e}")
            return
        result.restored = True
        with connect(pg.database_dsn(admin, scratch)) as conn:
            restored = pg.table_stats(conn)
        legacy = {f"{t['schema']}.{t['table']}" for t in manifest.get("tables", [])
                  if str(t.get("checksum", "")).startswith("txt:")}
        if legacy:  # a manifest from before the fixed session: its text was taken with the defaults
            with connect(pg.database_dsn(admin, scratch)) as conn:
                old = {s.name: s for s in pg.table_stats(conn, fixed_session=False) if s.name in legacy}
            restored = [old.get(s.name, s) for s in restored]
        result.tables = compare(manifest.get("tables", []), restored)
        bad = result.mismatches
        if bad:
            names = ", ".join(t.table for t in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            result.message = f"{len(bad)} of {len(result.tables)} tables differ from the manifest: {names}"
        else:
            result.outcome = v.RESTORED
            result.message = (f"restored and matched the manifest: {len(result.tables)} tables, "
                              f"{sum(t.restored_rows or 0 for t in result.tables)} rows")
    finally:
        pg.drop_database(admin, scratch)


def refuse_existing(config: BackupsConfig, into: str) -> None:
    from homelab_ops.backups import postgresql as pg
    from homelab_ops.backups.restore import RestoreError

    if pg.database_exists(config.postgres.dsn.get_secret_value(), into):
        raise RestoreError(f"database {into!r} already exists: refusing to overwrite it; choose another --into")


def restore(config: BackupsConfig, loc, into: str, *, progress=None, keep_owners: bool = True) -> str:
    """Into the new database `into`; progress counts the dump's bytes twice (checked, then restored)."""
    from homelab_ops.backups import postgresql as pg
    from homelab_ops.backups.restore import load_identity, local_copy, pg_restore_file

    admin = config.postgres.dsn.get_secret_value()
    refuse_existing(config, into)
    if loc.backup.encrypted:
        load_identity(config.backups.encryption)  # fail before any work when the key is missing
    with local_copy(config.backups, loc, progress) as path:
        pg.create_database(admin, into)
        try:
            pg_restore_file(config, path, pg.database_dsn(admin, into),
                            encrypted=loc.backup.encrypted, keep_owners=keep_owners, progress=progress)
        except BaseException:
            pg.drop_database(admin, into)
            raise
    return f"into {into}"
