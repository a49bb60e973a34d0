"""Retention of base backups (the backups' GFS policy) and of the WAL archive behind them.

`plan.plan_retention` decides; this deletes, base backups first (manifest first, so a
half-deleted base backup is never listed as complete), then the WAL no kept base
backup needs.
"""

from __future__ import annotations

import os

from homelab_ops.backups.catalog import MANIFEST_SUFFIX
from homelab_ops.backups.prune import policy_from
from homelab_ops.files import fsync_dir
from homelab_ops.pitr import plan, wal
from homelab_ops.pitr.base import base_dir, list_base_backups
from homelab_ops.pitr.receive import wal_dir


def prune(settings, *, dry_run: bool | None = None) -> plan.RetentionPlan:
    dry_run = settings.backups.retention.dry_run if dry_run is None else dry_run
    policy = policy_from(settings.backups.retention)
    bases = list_base_backups(settings)
    seg = bases[-1].segment_size if bases else wal.DEFAULT_SEGMENT_SIZE
    wdir = wal_dir(settings)
    archive = wal.read_archive(os.listdir(wdir) if wdir.is_dir() else [], seg)
    p = plan.plan_retention([(b.stem, b.time, b.start_lsn) for b in bases], archive, policy, settings.tz,
                            seg_size=seg)
    if dry_run:
        return p
    folder = base_dir(settings)
    by_stem = {b.stem: b for b in bases}
    for stem in p.remove:
        (folder / f"{stem}{MANIFEST_SUFFIX}").unlink(missing_ok=True)
        for name in by_stem[stem].files:
            (folder / name).unlink(missing_ok=True)
    if p.remove:
        fsync_dir(folder)
    for name in p.wal_remove:
        (wdir / name).unlink(missing_ok=True)
    if p.wal_remove:
        fsync_dir(wdir)
    return p
