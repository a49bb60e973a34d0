"""Database names -> asset keys, op names, pools and folders, one-to-one.

A database's name becomes the folder `<local_dir>/<name>/`, the S3 prefix `<prefix><name>/` and the
asset keys `backups/<name>_backup`, `restore_verification/<name>_verification`, `backup_retention/<name>_retention`. Dagster
turns a key into an op name by replacing `-` and `.` with `_`, so `chaos-dash` and `chaos_dash`
would be one op and the code location would not load; `_globals` and `n8n_workflows` are the
folders (and retention assets) of the roles dump and n8n's workflow exports. Anyone who can run
`CREATE DATABASE` can make such a name, so under `postgres.databases: all` they are skipped with a
warning (the other databases keep their backups); in a list they are refused when the settings load.
This module is the one place that decides; everything else calls `usable_databases` or
`require_database_name`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable

from homelab_ops.backups.config import BackupsConfig

# Names PostgreSQL allows that can be a folder and an asset key: no `/`, no leading `.`, 63 bytes.
DATABASE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")


class DatabaseNameError(ValueError):
    """A database name that cannot be backed up under its own folder and asset keys."""


# Folder names in `backups.local_dir` that are not a database's, with what they hold. Literal here
# (the settings validate with them before any backup module can be imported); a test checks they
# are catalog.GLOBALS and n8n.workflow_export.FOLDER.
# Folders under backups.local_dir that are not a database's backups: PITR's archive has its own
# writer (pg_receivewal's active `.partial` segment lives there) and its own retention.
WAL_FOLDER, BASE_FOLDER = "_wal", "_base"
PITR_FOLDERS = (WAL_FOLDER, BASE_FOLDER)
PITR_OFFSITE = "_pitr"  # not a folder: what names the PITR archive's `offsite/_pitr_offsite`, as a database its own
RESERVED = {"_globals": "the roles dump (backup_globals)", "n8n_workflows": "n8n's workflow exports (n8n_workflows)",
            WAL_FOLDER: "the PITR WAL archive (homelab-ops pitr receive)", BASE_FOLDER: "the PITR base backups (base_backups)",
            PITR_OFFSITE: "the PITR archive's off-site copies (offsite/_pitr_offsite)"}


def pitr_folders(cluster: str) -> tuple[str, str]:
    """A cluster's base-backup and WAL folders, as store folder names (`_base/main`, `_wal/main`):
    the same under local_dir and under each S3 target's prefix."""
    return f"{BASE_FOLDER}/{cluster}", f"{WAL_FOLDER}/{cluster}"


def reserved() -> dict[str, str]:
    return dict(RESERVED)


# Scratch databases the restore verification creates and drops: never backed up under `all`, not even
# one a crash left (the recovery sweep drops those); postgresql.list_databases leaves them out.
SCRATCH_PREFIX = "homelab_verify_"


def op_name(database: str) -> str:
    """What Dagster makes of `backups/<database>_backup` as an op name (AssetKey.to_python_identifier)."""
    return database.replace("-", "_").replace(".", "_")


def name_problem(database: str) -> str | None:
    """Why `database` cannot have a folder and asset keys of its own, or None when it can."""
    if not DATABASE_NAME.fullmatch(database) or len(database.encode()) > 63:
        return "not a name that can be a folder and an asset key (letters, digits, _ . -; not starting with . or -)"
    what = reserved().get(database)
    if what:
        return f"reserved: the folder and retention asset of {what}"
    return None


def require_database_name(database: str) -> str:
    """`database` when it is usable as a folder name; raises DatabaseNameError otherwise (the CLI's
    DATABASE argument: `../other` must never become a path)."""
    problem = name_problem(database)
    if problem:
        raise DatabaseNameError(f"{database!r}: {problem}")
    return database


def usable_databases(names: Iterable[str], *, explicit: bool, warn: Callable[[str], None] | None = None,
                     backed_up: Iterable[str] = ()) -> list[str]:
    """The names that get assets and folders, in the given order.

    `explicit` (a list in the settings): any unusable name raises DatabaseNameError naming it.
    Otherwise (`all`): unusable names are skipped and `warn` is told which and why. Of names that
    collide after Dagster's normalisation, the one already in `backed_up` (folders with backups)
    keeps its assets when it is the only one there, so a new `CREATE DATABASE chaos-dash` cannot
    take `chaos_dash`'s backups away; otherwise all of them are skipped.
    """
    names = list(dict.fromkeys(names))
    problems: dict[str, str] = {}
    for n in names:
        p = name_problem(n)
        if p:
            problems[n] = p
    groups: dict[str, list[str]] = defaultdict(list)
    for n in names:
        if n not in problems:
            groups[op_name(n)].append(n)
    had = set(backed_up)
    for group in groups.values():
        if len(group) < 2:
            continue
        keep = [n for n in group if n in had] if not explicit else []
        for n in group:
            if len(keep) == 1 and n == keep[0]:
                continue
            others = ", ".join(repr(o) for o in group if o != n)
            problems[n] = (f"collides with {others}: Dagster makes the same op name {op_name(n)!r} of them "
                           "(-, . and _ are one character to it)")
    if problems and explicit:
        raise DatabaseNameError("postgres.databases: " + "; ".join(f"{n!r} {p}" for n, p in problems.items()))
    if problems and warn:
        warn("not backed up (rename the database to back it up): "
             + "; ".join(f"{n!r}: {p}" for n, p in problems.items()))
    return [n for n in names if n not in problems]


def require_known_database(config: BackupsConfig, database: str, *, any_name: bool = False) -> str:
    """The CLI's DATABASE argument: a database name (never a path such as `../other`) that is
    configured, has a folder in `backups.local_dir` or is a reserved folder; with `any_name` (a restore
    from S3 onto a new machine) any database name. Anything else is refused, naming what exists."""
    if not DATABASE_NAME.fullmatch(database) or len(database.encode()) > 63:
        raise DatabaseNameError(f"{database!r} is not a database name (letters, digits, _ . -; "
                                "not starting with . or -)")
    if any_name:
        return database
    from homelab_ops.backups.sources import backed_up
    from homelab_ops.backups.stores import LocalStore

    configured = backed_up(config)  # with the server down, the folders with backups
    # PITR's folders and asset name are not databases: `backups restore --at` reads the archive.
    known = sorted({*configured, *LocalStore(config.backups.local_dir).databases(), *reserved()}
                   - {*PITR_FOLDERS, PITR_OFFSITE})
    if database not in known:
        raise DatabaseNameError(f"{database!r} is not a database homelab-ops knows (not in postgres.databases "
                                f"nor backups.sources, "
                                f"no folder in {config.backups.local_dir}); known: {', '.join(known) or 'none'}")
    return database
