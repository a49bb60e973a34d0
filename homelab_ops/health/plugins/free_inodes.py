"""Free inodes per filesystem: a disk is full when its inodes are, whatever space is left.

ext4 on an SD card has a fixed inode count set at mkfs; many small files (Docker's vfs and
overlay layers, n8n's binary data, logs) can use them all while `disk_free` still shows room,
and then every write fails with "No space left on device". Filesystems without a fixed count
(btrfs, vfat) report 0 inodes and are not judged.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import TYPE_CHECKING

from homelab_ops.health.checks import FREE_DISK, OK, CheckResult, below, level, unknown

if TYPE_CHECKING:
    from homelab_ops.health.config import HealthConfig

CHECKS = ("free_inodes",)
THRESHOLDS = {"free_inodes_warn_pct": 10.0, "free_inodes_fail_pct": 3.0}
REMEDY = FREE_DISK  # backup retention and disk hygiene delete files, which frees their inodes


def judge(mounts: dict[str, tuple[int, int]], warn_pct: float, fail_pct: float) -> list[CheckResult]:
    """One result per mount point; `mounts` maps it to (inodes, free inodes)."""
    out = []
    for mp, (files, free) in sorted(mounts.items()):
        name = f"free_inodes:{mp}"
        if files <= 0:
            out.append(CheckResult(name, OK, f"{mp}: no fixed inode count (the filesystem allocates them)"))
            continue
        pct = 100.0 * free / files
        state = level(pct, warn_pct, fail_pct, higher_is_worse=False)
        out.append(CheckResult(name, state, f"{mp}: {pct:.1f}% of {files:,} inodes free"
                                            f"{below(state, warn_pct, fail_pct)}", REMEDY))
    return out


def run(config: HealthConfig, now: datetime) -> list[CheckResult]:
    from homelab_ops.metrics.collect import chosen_mounts

    mounts: dict[str, tuple[int, int]] = {}
    unread: list[CheckResult] = []
    for _dev, mp, _fs in chosen_mounts(config.metrics.proc_root, config.metrics.mounts):
        try:
            st = os.statvfs(mp)
        except OSError as e:
            unread.append(unknown(f"free_inodes:{mp}", f"{mp}: {e.strerror or e}"))
            continue
        mounts[mp] = (st.f_files, st.f_favail)
    th = config.thresholds
    results = judge(mounts, th.get("free_inodes_warn_pct"), th.get("free_inodes_fail_pct")) + unread
    return results or [unknown("free_inodes", "no filesystem readable")]
