"""The PITR archive off-site: copying base backups and WAL to each S3 target, and fetching them back.

Uploads follow the dumps' rules (backups/offsite.py): from the finished local file, oldest
first, each file's sha256 known before its upload and checked after it; what a target lacks
stays owed until a later run. A base backup goes as a set, its manifest last (the completeness
marker). Of the WAL only finished segments and timeline histories go: the segment
pg_receivewal is still writing changes every second, so the off-site archive trails the local
one by that segment. With age recipients set only encrypted copies go, never a plain segment
the receiver has not encrypted yet.

Off-site the layout is the local one under the target's prefix: `_base/<cluster>/` and
`_wal/<cluster>/`. `fetch` downloads what one recovery needs into a folder laid out like
`backups.local_dir`, so recovery reads a fetched copy exactly as it reads the local archive.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from homelab_ops.backups.catalog import MANIFEST_SUFFIX
from homelab_ops.backups.names import pitr_folders
from homelab_ops.backups.stores import CHUNK, LocalFileChanged, LocalStore, S3Store, StoreError, stores_for
from homelab_ops.errors import first_line
from homelab_ops.files import sha256_file
from homelab_ops.pitr import base as bb
from homelab_ops.pitr import plan, wal
from homelab_ops.pitr.config import PitrConfig
from homelab_ops.pitr.receive import wal_dir
from homelab_ops.pitr.retention import prune_store
from homelab_ops.units import size


# --------------------------------------------------------------------------- the plan (pure)


def wal_owed(local: dict[str, int], remote: dict[str, int], *, encrypted: bool) -> list[str]:
    """Finished WAL files a target lacks (or holds at another size): histories first, then
    segments oldest first. `encrypted`: only `.age` copies are owed, never a plain one."""
    archive = wal.read_archive(local)
    histories = [name for _, name in sorted(archive.histories.items())]
    segments = [f.file for (tli, segno), f in sorted(archive.segments.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
    return [n for n in histories + segments if (n.endswith(".age") or not encrypted) and remote.get(n) != local[n]]


def base_owed(bases: list[bb.BaseBackup], local: dict[str, int], remote: dict[str, int]) -> list[tuple[str, list[str]]]:
    """(stem, files) of each complete local base backup a target lacks a part of, oldest first;
    the manifest comes last in every set that is owed."""
    out = []
    for b in bases:
        manifest = b.stem + MANIFEST_SUFFIX
        files = [n for n in b.files if remote.get(n) != local.get(n)]
        if files or remote.get(manifest) != local.get(manifest):
            out.append((b.stem, files + [manifest]))
    return out


# --------------------------------------------------------------------------- upload


@dataclass
class PitrTargetState:
    """One target's copy of the archive after a sync."""

    target: str
    newest_base: str | None = None
    newest_segment: str | None = None
    uploaded_bases: list[str] = field(default_factory=list)
    uploaded_wal: int = 0
    owed_bases: list[str] | None = None  # None: unknown (the target did not answer)
    owed_wal: list[str] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.errors and self.owed_bases == [] and self.owed_wal == []


def sync_target(config: PitrConfig, store: S3Store) -> PitrTargetState:
    """Upload the WAL, then the base backups, that `store` lacks. A failing target stops at its first
    error (one timeout, not one per segment); what was not copied stays owed."""
    state = PitrTargetState(store.label)
    bfolder, wfolder = pitr_folders(config.pitr.cluster)
    encrypted = bool(config.backups.encryption.age_recipients)
    wdir, bdir = wal_dir(config), bb.base_dir(config)
    local = LocalStore(config.backups.local_dir)
    try:
        local_wal = local.list(wfolder)
        state.owed_wal = wal_owed(local_wal, store.list(wfolder), encrypted=encrypted)
        for name in list(state.owed_wal):
            try:
                store.upload_file(wfolder, name, wdir / name, sha256_file(wdir / name))
            except FileNotFoundError:  # retention removed it meanwhile: no longer owed
                state.owed_wal.remove(name)
                continue
            state.owed_wal.remove(name)
            state.uploaded_wal += 1
        local_base = local.list(bfolder)
        bases = bb.stored_base_backups(local, bfolder)
        owed = base_owed(bases, local_base, store.list(bfolder))
        state.owed_bases = [stem for stem, _ in owed]
        by_stem = {b.stem: b for b in bases}
        for stem, files in owed:
            try:
                for name in files:
                    meta = by_stem[stem].manifest["files"].get(name)
                    path = bdir / name
                    store.upload_file(bfolder, name, path, meta["sha256"] if meta else sha256_file(path))
            except (LocalFileChanged, OSError) as e:  # this base backup's local files, not the target
                state.errors.append(str(e) if isinstance(e, StoreError) else f"{bfolder}/{stem}: {e}")
                continue
            state.owed_bases.remove(stem)
            state.uploaded_bases.append(stem)
    except StoreError as e:
        state.errors.append(str(e))
    try:
        held = bb.stored_base_backups(store, bfolder)
        state.newest_base = held[-1].stem if held else None
        segments = wal.read_archive(store.list(wfolder)).segments
        state.newest_segment = max(segments.values(), key=lambda f: (f.segno, f.tli)).name if segments else None
    except StoreError:  # down: unknown, and the error above says why
        pass
    return state


def finish_segment(config: PitrConfig, wait_s: float = 60.0) -> str:
    """Make the segment pg_receivewal is still writing a finished one, so it goes off-site now: on a
    quiet server it could otherwise stay unfinished for days (what archive_timeout does for
    archive_command). `pg_switch_wal()` does nothing when no WAL was written since the last switch;
    otherwise the rest of the segment is zeros, which gzip makes almost nothing of. As postgres.dsn's role (a REPLICATION role in pitr.dsn usually
    may not). Returns what happened, for the log; never raises: what is finished goes up either way."""
    admin = config.postgres.dsn.get_secret_value()
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            facts = bb.server_facts(conn)
            bases = bb.list_base_backups(config)
            if bases and bases[-1].manifest.get("system_identifier") not in (None, facts["system_identifier"]):
                return "postgres.dsn is another server than the archived cluster's: its WAL was not switched"
            seg = facts["wal_segment_size"]
            end = wal.parse_lsn(conn.execute("SELECT pg_switch_wal()::text").fetchone()[0])
    except psycopg.errors.InsufficientPrivilege:
        return ("pg_switch_wal() is not allowed for postgres.dsn's role, so the unfinished segment waits until "
                "it fills: GRANT EXECUTE ON FUNCTION pg_switch_wal() TO <that role>")
    except psycopg.Error as e:
        return f"the unfinished segment was not switched: {first_line(e)}"
    if end % seg == 0:  # nothing written since the last switch: the start of the current segment
        return "no WAL written since the last finished segment"
    segno = wal.segno_of(end - 1, seg)  # the segment the switch finished
    encrypted = bool(config.backups.encryption.age_recipients)
    deadline = time.monotonic() + wait_s
    local, wfolder = LocalStore(config.backups.local_dir), pitr_folders(config.pitr.cluster)[1]
    while time.monotonic() < deadline:
        archive = wal.read_archive(local.list(wfolder), seg)
        done = [f for (t, s), f in archive.segments.items() if s == segno and (f.encrypted or not encrypted)]
        if done:
            return f"finished segment {done[0].name} (pg_switch_wal)"
        time.sleep(0.5)
    return (f"switched to a new segment, but the receiver did not finish the old one within {wait_s:.0f} s "
            "(is `homelab-ops pitr receive` running?)")


def sync(config: PitrConfig) -> list[PitrTargetState]:
    """Bring every S3 target's copy of the PITR archive up to date."""
    _, remotes = stores_for(config.backups)
    return [sync_target(config, store) for store in remotes]


# --------------------------------------------------------------------------- retention


@dataclass
class TargetPrune:
    target: str
    plan: plan.RetentionPlan | None
    error: str | None = None


def prune(config: PitrConfig, *, dry_run: bool | None = None) -> list[TargetPrune]:
    dry_run = config.backups.retention.dry_run if dry_run is None else dry_run
    _, remotes = stores_for(config.backups)
    out = []
    for store in remotes:
        try:
            out.append(TargetPrune(store.label, prune_store(config, store, dry_run=dry_run)))
        except (StoreError, ValueError) as e:
            out.append(TargetPrune(store.label, None, str(e)))
    return out


# --------------------------------------------------------------------------- fetch for a restore


class LocalDiskError(RuntimeError):
    """The fetch cannot be written here (a full disk): no other target would fare better."""


def _download(store: S3Store, folder: str, name: str, dest: Path) -> None:
    with store.open_read(folder, name) as body, open(dest, "wb") as f:
        while True:
            try:
                chunk = body.read(CHUNK)
            except Exception as e:  # a connection cut mid-body is botocore's or urllib3's error
                raise StoreError(f"S3 target {store.label}: reading {folder}/{name} failed: {e}") from None
            if not chunk:
                return
            try:
                f.write(chunk)
            except OSError as e:
                raise LocalDiskError(f"writing {dest} (fetched from {store.label}) failed: {e.strerror}") from None


def fetch(config: PitrConfig, store: S3Store, target: plan.Target, root: Path) -> bb.BaseBackup:
    """Download from `store` what a recovery to `target` needs into `root` (laid out as local_dir):
    the base backup `plan.choose_base` picks and every finished WAL file from its start on.
    Raises PlanError when the target holds no base backup early enough, StoreError when it fails,
    LocalDiskError when the copy does not fit here."""
    bfolder, wfolder = pitr_folders(config.pitr.cluster)
    bases = bb.stored_base_backups(store, bfolder)
    if not bases:
        raise plan.PlanError(f"S3 target {store.label} holds no complete base backup of cluster "
                             f"{config.pitr.cluster} ({store.uri(bfolder, '')})")
    base = plan.choose_base(bases, target)
    held_wal = store.list(wfolder)
    archive = wal.read_archive(held_wal, base.segment_size)
    first = wal.segno_of(base.start_lsn, base.segment_size)
    wanted = [*archive.histories.values(), *(f.file for (tli, segno), f in archive.segments.items() if segno >= first)]
    held_base = store.list(bfolder)
    need = sum(held_base.get(n, 0) for n in (*base.files, base.stem + MANIFEST_SUFFIX)) + \
        sum(held_wal[n] for n in wanted)
    free = shutil.disk_usage(root).free
    if need > free:  # refused before a byte is fetched, not at ENOSPC halfway
        raise LocalDiskError(f"fetching base backup {base.stem} and {len(wanted)} WAL file(s) from {store.label} "
                             f"needs {size(need)} in {root.parent}, which has {size(free)} free: free space there "
                             "(or restore on a machine with more)")
    bdest, wdest = bb.base_dir(config, root), wal_dir(config, root)
    bdest.mkdir(parents=True, exist_ok=True)
    wdest.mkdir(parents=True, exist_ok=True)
    for name in (*base.files, base.stem + MANIFEST_SUFFIX):
        _download(store, bfolder, name, bdest / name)
    for name in wanted:
        _download(store, wfolder, name, wdest / name)
    return base


def has_base_for(config: PitrConfig, target: plan.Target) -> bool:
    """Whether the local archive holds a base backup a recovery to `target` can start from."""
    try:
        plan.choose_base(bb.list_base_backups(config), target)
    except plan.PlanError:
        return False
    return True
