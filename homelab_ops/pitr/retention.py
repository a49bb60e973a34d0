"""Retention of base backups (the backups' GFS policy) and of the WAL archive behind them.

`plan.plan_retention` decides; `prune_store` deletes from one copy of the archive, the local
folder or an S3 target's, by the same rules applied to what that copy holds: base backups
first (manifest first, so a half-deleted base backup is never listed as complete), then the
WAL no kept base backup needs.
"""

from __future__ import annotations

from homelab_ops.backups.catalog import MANIFEST_SUFFIX
from homelab_ops.backups.names import pitr_folders
from homelab_ops.backups.prune import policy_from
from homelab_ops.backups.stores import LocalStore
from homelab_ops.pitr import plan, wal
from homelab_ops.pitr.base import stored_base_backups
from homelab_ops.pitr.config import PitrConfig


def prune_store(config: PitrConfig, store, *, dry_run: bool) -> plan.RetentionPlan:
    bfolder, wfolder = pitr_folders(config.pitr.cluster)
    bases = stored_base_backups(store, bfolder)
    seg = bases[-1].segment_size if bases else wal.DEFAULT_SEGMENT_SIZE
    archive = wal.read_archive(store.list(wfolder), seg)
    p = plan.plan_retention([(b.stem, b.time, b.start_lsn) for b in bases], archive,
                            policy_from(config.backups.retention), config.tz, seg_size=seg)
    if dry_run:
        return p
    by_stem = {b.stem: b for b in bases}
    for stem in p.remove:
        store.delete(bfolder, [stem + MANIFEST_SUFFIX])
        store.delete(bfolder, list(by_stem[stem].files))
    store.delete(wfolder, p.wal_remove)
    return p


def prune(config: PitrConfig, *, dry_run: bool | None = None) -> plan.RetentionPlan:
    """The local archive."""
    dry_run = config.backups.retention.dry_run if dry_run is None else dry_run
    return prune_store(config, LocalStore(config.backups.local_dir), dry_run=dry_run)
