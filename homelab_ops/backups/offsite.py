"""Off-site copies as their own step: every complete local backup a target lacks, oldest first.

A copy that failed (S3 down at 03:00, the uplink gone) stays owed until a later run
(the nightly job, or `offsite_sync` from the web UI) uploads it from the local file;
nothing is dumped again. `owed` is the plan, a pure function of two listings; `sync`
does it, one target at a time, so a dead or refusing target leaves the others complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from homelab_ops.backups.catalog import MANIFEST_SUFFIX, VERIFIED_SUFFIX, read_listing
from homelab_ops.backups.stores import LocalFileChanged, LocalStore, S3Store, StoreError, stores_for
from homelab_ops.files import PARTIAL_SUFFIX, sha256_file

if TYPE_CHECKING:
    from homelab_ops.settings import BackupSettings


@dataclass(frozen=True)
class Owed:
    """One backup set a target lacks (part of): the files to upload, the manifest last."""

    stem: str
    files: list[str]


def backup_set(names: dict[str, int], stem: str) -> list[str]:
    """Every file of a backup: the dump, its sidecars and the manifest (last, as the completeness
    marker). The verified record is not part of it: each store keeps its own."""
    files = sorted(n for n in names if n.startswith(stem + ".")
                   and not n.endswith((PARTIAL_SUFFIX, VERIFIED_SUFFIX, MANIFEST_SUFFIX)))
    return files + [stem + MANIFEST_SUFFIX]


def owed(local: dict[str, int], remote: dict[str, int]) -> list[Owed]:
    """The complete local backups a target lacks, oldest first; a file there of another size is owed
    again (an upload interrupted before S3 made it whole cannot be, but a hand-copied file can)."""
    out = []
    for backup in read_listing(local).backups:
        files = [n for n in backup_set(local, backup.stem) if remote.get(n) != local[n]]
        if files:
            out.append(Owed(backup.stem, files))
    return out


@dataclass
class TargetState:
    """One target's side of one database after a sync: what it holds and what it still lacks."""

    target: str
    newest: str | None = None  # the newest complete backup there
    uploaded: list[str] = field(default_factory=list)  # stems copied by this run
    owed: list[str] | None = None  # stems still missing there; None: unknown (the target did not answer)
    error: str | None = None


def _expected_sha256(local: LocalStore, database: str, stem: str) -> dict[str, str]:
    """What each file should hold: the manifest's sha256 for the dump (so a dump that rotted
    since it was written is refused), the file's own for the rest."""
    manifest = json.loads(local.path(database, stem + MANIFEST_SUFFIX).read_bytes())
    return {manifest["dump"]: manifest["sha256"]} if manifest.get("dump") and manifest.get("sha256") else {}


def sync_target(local: LocalStore, store: S3Store, database: str) -> TargetState:
    """Upload what `store` lacks of `database`, oldest first. A backup whose local files are damaged
    is skipped (it stays owed, and named); a failing target stops the rest, which stays owed, so a
    dead target costs one timeout, not one per backup."""
    state = TargetState(store.label)
    names = local.list(database)
    errors = []
    try:
        plan = owed(names, store.list(database))
        state.owed = [o.stem for o in plan]
        for item in plan:
            try:
                expected = _expected_sha256(local, database, item.stem)
                for name in item.files:
                    path = local.path(database, name)
                    store.upload_file(database, name, path, expected.get(name) or sha256_file(path))
            except (LocalFileChanged, OSError, ValueError) as e:  # this backup's local files, not the target
                errors.append(str(e) if isinstance(e, StoreError) else f"{database}/{item.stem}: {e}")
                continue
            state.uploaded.append(item.stem)
            state.owed.remove(item.stem)
    except StoreError as e:
        errors.append(str(e))
    state.error = "; ".join(errors) or None
    try:
        held = read_listing(store.list(database)).backups
        state.newest = held[-1].stem if held else None
    except StoreError:  # the target is down: its newest copy is unknown, the error says why
        pass
    return state


def sync(backups: BackupSettings, database: str) -> list[TargetState]:
    """Bring every S3 target up to date with the local backups of `database`."""
    local, remotes = stores_for(backups)
    return [sync_target(local, store, database) for store in remotes]
