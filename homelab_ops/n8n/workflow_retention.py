"""Retention of n8n's workflow exports: one folder per run, pruned exactly like the backups.

A folder `n8n_workflows/<stem>/` is one export and its stem is its time, so the
backups' own planner (`prune.plan_store`, i.e. `retention.apply_policy` with
`backups.retention` in the settings' zone) decides; nothing here is a second
policy. Only complete folders count; a `<stem>.partial` folder is an
interrupted export, removed after the same grace as a backup's leftovers. The
newest complete export is always kept. Each store is listed and pruned on its
own; names that are not an export's are never touched.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from homelab_ops.backups.catalog import Listing, time_of
from homelab_ops.backups.config import BackupsConfig
from homelab_ops.backups.prune import DatabasePrune, StorePlan, plan_store, prepare
from homelab_ops.backups.retention import RetentionError, RetentionPolicy
from homelab_ops.backups.stores import LocalStore, S3Store, Store, StoreError, s3_errors
from homelab_ops.files import PARTIAL_SUFFIX, fsync_dir
from homelab_ops.n8n.workflow_export import FOLDER

NEWEST = "newest export"
_NAME = re.compile(r"(?P<stem>\d{8}T\d{6}Z)(?P<partial>" + re.escape(PARTIAL_SUFFIX) + r")?")


# --------------------------------------------------------------------------
# pure logic


@dataclass
class ExportFolder:
    """One complete export, in the shape `plan_store` and `markdown` read a `catalog.Backup`.

    Its only "file" is the folder itself; `size` is filled in once the folder is listed for deletion
    (kept folders are never listed one by one: on S3 that would cost a request each).
    """

    stem: str
    size: int = 0

    @property
    def time(self) -> datetime:
        return time_of(self.stem)

    @property
    def files(self) -> list[str]:
        return [self.stem]


def _kind(name: str) -> str | None:
    """What an export run made this folder: an export, a partial one, or None (not ours; 20261399T... too)."""
    m = _NAME.fullmatch(name)
    if m is None:
        return None
    try:
        time_of(m["stem"])
    except ValueError:
        return None
    return "partial" if m["partial"] else "export"


def read_folders(names: Iterable[str]) -> Listing:
    """Sort folder names into complete exports (oldest first), `.partial` leftovers and names not ours."""
    listing = Listing([], [], [], [])
    for name in sorted(names):
        kind = _kind(name)
        if kind == "export":
            listing.backups.append(ExportFolder(name))
        else:
            (listing.partials if kind == "partial" else listing.unknown).append(name)
    return listing


def plan_exports(label: str, names: Iterable[str], policy: RetentionPolicy, tz: ZoneInfo, *, now: datetime,
                 grace: timedelta) -> StorePlan:
    """The backups' plan over one store's export folders; the newest complete one is protected."""
    listing = read_folders(names)
    newest = listing.backups[-1].stem if listing.backups else None
    return plan_store(label, listing, {}, policy, tz, now=now, grace=grace, protect=newest, protect_reason=NEWEST)


def with_sizes(plan: StorePlan, sizes: dict[str, int]) -> None:
    """Record the sizes of the folders the plan deletes, for `bytes_freed`."""
    for folder in plan.removed:
        folder.size = sizes[folder.stem]
    plan.leftovers = [replace(x, size=sizes[x.name]) if x.remove else x for x in plan.leftovers]


# --------------------------------------------------------------------------
# I/O: the same three operations on a local folder and on an S3 prefix


class _LocalExports:
    def __init__(self, store: LocalStore):
        self.label = store.label
        self.root = store.folder(FOLDER)

    def folders(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [p.name for p in self.root.iterdir() if p.is_dir() and not p.is_symlink()]

    def files(self, name: str) -> dict[str, int]:
        folder = self.root / name
        return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}

    def remove(self, files: dict[str, dict[str, int]]) -> int:
        for name in files:
            shutil.rmtree(self.root / name)
        fsync_dir(self.root)
        return 0


class _S3Exports:
    def __init__(self, store: S3Store):
        self.store, self.label = store, store.label
        self.prefix = store.key(FOLDER, "")

    def _pages(self, prefix: str, **kwargs) -> Iterator[dict]:
        try:
            yield from self.store.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.store.target.bucket, Prefix=prefix, **kwargs)
        except s3_errors() as e:
            raise StoreError(f"S3 target {self.label}: listing s3://{self.store.target.bucket}/{prefix} "
                             f"failed: {e}") from None

    def folders(self) -> list[str]:
        """One level only (Delimiter): the export folders, not the files in them."""
        return [cp["Prefix"][len(self.prefix):].rstrip("/") for page in self._pages(self.prefix, Delimiter="/")
                for cp in page.get("CommonPrefixes", [])]

    def files(self, name: str) -> dict[str, int]:
        """Every object under the folder, at any depth, keyed relative to `n8n_workflows/`."""
        return {o["Key"][len(self.prefix):]: o["Size"] for page in self._pages(f"{self.prefix}{name}/")
                for o in page.get("Contents", [])}

    def remove(self, files: dict[str, dict[str, int]]) -> int:
        return self.store.delete(FOLDER, [key for keys in files.values() for key in keys])


def _exports(store: Store) -> _LocalExports | _S3Exports:
    return _S3Exports(store) if isinstance(store, S3Store) else _LocalExports(store)


def prune_workflow_exports(config: BackupsConfig, *, dry_run: bool | None = None, now: datetime | None = None,
                           stores: list[Store] | None = None) -> DatabasePrune:
    """Prune the export folders in every store. A store that fails is reported; the others still run."""
    policy, dry, now, grace, stores = prepare(config, dry_run, now, stores)
    result = DatabasePrune(FOLDER, dry)
    for store in stores:
        exports = _exports(store)
        try:
            plan = plan_exports(store.label, exports.folders(), policy, config.tz, now=now, grace=grace)
        except (StoreError, OSError, RetentionError) as e:
            result.plans.append(StorePlan(store.label, error=str(e)))
            continue
        result.plans.append(plan)
        try:
            files = {name: exports.files(name) for name in plan.delete_names}
            with_sizes(plan, {name: sum(f.values()) for name, f in files.items()})
            if files and not dry:
                plan.delete_requests = exports.remove(files)
        except (StoreError, OSError) as e:
            plan.error = str(e)
    return result
