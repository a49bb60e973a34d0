"""Retention: decide with restic's forget policy, then delete, each store on its own.

The decision is `retention.apply_policy` over complete backups only; leftovers of
interrupted writes (orphans, `.partial` files) never count as backups and are
removed once they are old enough that no running backup can still be writing
them. The newest backup with a copy that was restored (in any store) is never
deleted, and when a copy of the newest verified backup failed its verification
nothing is deleted at all: that is the moment the older backups matter most.

On a versioned bucket (B2 keeps every version; AWS or MinIO with versioning on) a
plain delete only hides an object behind a delete marker and frees nothing, so
retention deletes every version of each pruned object, delete markers included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from homelab_ops import units
from homelab_ops.backups.catalog import GLOBALS, STAMP_FORMAT, Backup, Listing, read_listing
from homelab_ops.backups.retention import RetentionError, RetentionPolicy, apply_policy
from homelab_ops.backups.stores import S3Store, Store, StoreError, s3_errors, stores_for
from homelab_ops.backups.verify import newest_failed, newest_restored, recorded_outcomes
from homelab_ops.backups.config import BackupsConfig

if TYPE_CHECKING:
    from homelab_ops.settings import BackupSettings

LEFTOVER_GRACE = timedelta(hours=24)
_STEM_LEN = len("20260101T000000Z")


class PruneError(RuntimeError):
    """Retention refused to run (bad policy); nothing was deleted."""


# --------------------------------------------------------------------------
# pure logic


def policy_from(retention) -> RetentionPolicy:
    """`backups.retention` as a policy; an empty one is refused here, before any listing."""
    try:
        policy = RetentionPolicy(
            keep_last=retention.keep_last, keep_hourly=retention.keep_hourly, keep_daily=retention.keep_daily,
            keep_weekly=retention.keep_weekly, keep_monthly=retention.keep_monthly,
            keep_yearly=retention.keep_yearly, keep_within=retention.keep_within,
        )
    except RetentionError as e:
        raise PruneError(f"backups.retention: {e}") from None
    if policy.is_empty():
        raise PruneError("backups.retention: every keep_* rule is 0 and keep_within is unset or zero, a policy that "
                         "would delete every backup; refusing to prune (restic refuses an empty policy too). "
                         "Set at least one rule, e.g. keep_daily: 7")
    return policy


def leftover_grace(timeout_seconds: float) -> timedelta:
    """How old a leftover must be before it is surely not a backup still being written."""
    return max(LEFTOVER_GRACE, timedelta(seconds=timeout_seconds + 3600))


def _stem_time(name: str) -> datetime | None:
    try:
        return datetime.strptime(name[:_STEM_LEN], STAMP_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


@dataclass(frozen=True)
class Leftover:
    name: str
    size: int
    kind: str  # "orphan" or "partial"
    remove: bool  # False while younger than the grace period


@dataclass
class StorePlan:
    """What retention decided for one database in one store, and (after execution) what it did."""

    store: str
    kept: list[tuple[Backup, tuple[str, ...]]] = field(default_factory=list)  # newest first
    removed: list[Backup] = field(default_factory=list)  # newest first
    leftovers: list[Leftover] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    blocked: str | None = None
    stale_uploads: list[str] = field(default_factory=list)
    error: str | None = None
    delete_requests: int = 0
    versioned: bool = False  # an S3 bucket that keeps versions: every version of each object is deleted
    versions_deleted: int = 0

    @property
    def delete_names(self) -> list[str]:
        names = [f for b in self.removed for f in b.files]
        return names + [x.name for x in self.leftovers if x.remove]

    @property
    def bytes_freed(self) -> int:
        return sum(b.size for b in self.removed) + sum(x.size for x in self.leftovers if x.remove)


def plan_store(label: str, listing: Listing, sizes: dict[str, int], policy: RetentionPolicy, tz: ZoneInfo, *,
               now: datetime, grace: timedelta, protect: str | None = None,
               protect_reason: str = "newest verified", blocked: str | None = None) -> StorePlan:
    """Apply the policy to one store's complete backups and sort its leftovers. No I/O."""
    plan = StorePlan(label, unknown=list(listing.unknown), blocked=blocked)
    for kind, names in (("orphan", listing.orphans), ("partial", listing.partials)):
        for name in names:
            t = _stem_time(name)
            old = t is not None and now - t > grace
            plan.leftovers.append(Leftover(name, sizes.get(name, 0), kind, old and not blocked))
    if blocked:
        plan.kept = [(b, ("not pruned: " + blocked,)) for b in reversed(listing.backups)]
        return plan
    by_stem = {b.stem: b for b in listing.backups}
    decisions = apply_policy([(b.stem, b.time) for b in listing.backups], policy, tz,
                             protect=[protect] if protect else [])
    for d in decisions:
        if d.keep:
            reasons = tuple(protect_reason if r == "newest verified" else r for r in d.reasons)
            plan.kept.append((by_stem[d.id], reasons))
        else:
            plan.removed.append(by_stem[d.id])
    return plan


def stale_uploads(uploads: list[dict], now: datetime, grace: timedelta = LEFTOVER_GRACE) -> list[dict]:
    """Incomplete multipart uploads started more than `grace` ago."""
    return [u for u in uploads if now - u["Initiated"] > grace]


def markdown(result: DatabasePrune, tz: ZoneInfo, max_rows: int = 200) -> str:
    """One table per store: every kept backup with its reasons, every removed one with its size."""
    verb = "would free" if result.dry_run else "freed"
    out = []
    for p in result.plans:
        head = (f"### {result.database} in {p.store}: {len(p.kept)} kept, {len(p.removed)} removed, "
                f"{units.size(p.bytes_freed)} {verb}")
        out.append(head)
        if p.error:
            out.append(f"\n**error:** {p.error}\n")
            continue
        if p.blocked:
            out.append(f"\n**nothing pruned:** {p.blocked}\n")
        if p.versioned:
            done = "would be deleted" if result.dry_run else f"deleted ({p.versions_deleted} versions and markers)"
            out.append(f"\nversioned bucket: every version and delete marker of each pruned object {done}, "
                       "so the space is really freed\n")
        rows = [(b.stem, b.time.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z"), "keep", ", ".join(r))
                for b, r in p.kept]
        action = "would remove" if result.dry_run else "removed"
        rows += [(b.stem, b.time.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z"), action, units.size(b.size))
                 for b in p.removed]
        for x in p.leftovers:
            rows.append((x.name, "", f"{action} {x.kind}" if x.remove else f"{x.kind}, kept for now",
                         units.size(x.size) if x.remove else "nothing pruned" if p.blocked
                         else "younger than the grace period: a backup may be writing it"))
        rows += [(u, "", f"{'would abort' if result.dry_run else 'aborted'} upload", "incomplete for over a day")
                 for u in p.stale_uploads]
        out.append("\n| backup | time | action | reasons / size |\n|---|---|---|---|")
        for r in rows[:max_rows]:
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
        if len(rows) > max_rows:
            out.append(f"| ... | | | {len(rows) - max_rows} more rows |")
        out.append("")
    return "\n".join(out).strip() + "\n"


# --------------------------------------------------------------------------
# I/O


@dataclass
class DatabasePrune:
    database: str
    dry_run: bool
    plans: list[StorePlan] = field(default_factory=list)
    blocked: str | None = None

    @property
    def bytes_freed(self) -> int:
        return sum(p.bytes_freed for p in self.plans if not p.error)

    @property
    def errors(self) -> list[str]:
        return [f"{p.store}: {p.error}" for p in self.plans if p.error]


def prepare(config: BackupsConfig, dry_run: bool | None, now: datetime | None, stores: list[Store] | None
            ) -> tuple[RetentionPolicy, bool, datetime, timedelta, list[Store]]:
    """Policy, dry-run flag, clock, leftover grace and stores of one prune; refuses a bad policy first."""
    policy = policy_from(config.backups.retention)
    dry = config.backups.retention.dry_run if dry_run is None else dry_run
    if stores is None:
        local, remotes = stores_for(config.backups)
        stores = [local, *remotes]
    grace = leftover_grace(config.backups.timeout.seconds)
    return policy, dry, now or datetime.now(timezone.utc), grace, stores


def prune_database(config: BackupsConfig, database: str, *, dry_run: bool | None = None, now: datetime | None = None,
                   stores: list[Store] | None = None) -> DatabasePrune:
    """Prune one database in every store. A store that fails is reported; the others still run."""
    policy, dry, now, grace, stores = prepare(config, dry_run, now, stores)
    result = DatabasePrune(database, dry)

    seen: list[tuple[Store, dict[str, int], Listing]] = []
    for store in stores:
        try:
            sizes = store.list(database)
        except StoreError as e:
            result.plans.append(StorePlan(store.label, error=str(e)))
            continue
        seen.append((store, sizes, read_listing(sizes)))
    listed = [store for store, _, _ in seen]
    if database == GLOBALS:  # not verified: the newest in each store is kept
        protect = {store.label: (lst.backups[-1].stem if lst.backups else None) for store, _, lst in seen}
    else:
        outcomes = recorded_outcomes(listed, database, {s.label: lst.backups for s, _, lst in seen})
        failed = newest_failed(outcomes)
        if failed and result.blocked is None:
            result.blocked = (f"the newest backup verification read, {failed[0]}, failed its verification "
                              f"(the copy in {failed[1]}); nothing of {database} is pruned until a newer backup is restored")
        newest = newest_restored(outcomes)
        # Protected where that copy is: a target the off-site step has not reached yet has nothing to protect.
        protect = {s.label: newest if any(b.stem == newest for b in lst.backups) else None for s, _, lst in seen}

    for store, sizes, listing in seen:
        try:
            plan = plan_store(store.label, listing, sizes, policy, config.tz, now=now, grace=grace,
                              protect=protect[store.label], blocked=result.blocked,
                              protect_reason="newest (globals are not verified)" if database == GLOBALS
                              else "newest verified")
        except RetentionError as e:
            result.plans.append(StorePlan(store.label, error=f"retention policy: {e}"))
            continue
        result.plans.append(plan)
        try:
            _execute(store, database, plan, dry, now)
        except StoreError as e:
            plan.error = str(e)
    return result


def versioned(store: S3Store) -> bool:
    """Does the bucket keep versions? When the target will not say, assume it does (B2 always does)."""
    try:
        status = store.client.get_bucket_versioning(Bucket=store.target.bucket).get("Status")
    except s3_errors():
        return True
    return status in ("Enabled", "Suspended")


def delete_every_version(store: S3Store, database: str, names: list[str]) -> tuple[int, int]:
    """Delete every version and delete marker of `names` (ListObjectVersions, then DeleteObjects with
    VersionId in batches of 1000). Returns (delete requests, versions deleted)."""
    keys = {store.key(database, n) for n in names}
    versions = []
    try:
        pages = store.client.get_paginator("list_object_versions").paginate(
            Bucket=store.target.bucket, Prefix=store.key(database, ""))
        for page in pages:
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if v["Key"] in keys:
                    versions.append({"Key": v["Key"], "VersionId": v["VersionId"]})
    except s3_errors() as e:
        raise StoreError(f"S3 target {store.label}: listing object versions failed: {e}") from None
    requests = 0
    for i in range(0, len(versions), 1000):
        try:
            resp = store.client.delete_objects(Bucket=store.target.bucket,
                                               Delete={"Objects": versions[i:i + 1000], "Quiet": True})
        except s3_errors() as e:
            raise StoreError(f"S3 target {store.label}: deleting versions failed: {e}") from None
        requests += 1
        if resp.get("Errors"):
            first = resp["Errors"][0]
            raise StoreError(f"S3 target {store.label}: could not delete {first['Key']} version "
                             f"{first.get('VersionId')}: {first.get('Code')}")
    return requests, len(versions)


def _execute(store: Store, database: str, plan: StorePlan, dry_run: bool, now: datetime) -> None:
    names = plan.delete_names
    plan.versioned = bool(names) and isinstance(store, S3Store) and versioned(store)
    if names and not dry_run:
        if plan.versioned:
            plan.delete_requests, plan.versions_deleted = delete_every_version(store, database, names)
        else:
            plan.delete_requests = store.delete(database, names) or 0
    if isinstance(store, S3Store) and not plan.blocked:
        try:
            uploads = list(store.incomplete_uploads(store.key(database, "")))
        except Exception as e:  # botocore errors: reported like any store failure
            raise StoreError(f"S3 target {store.label}: listing incomplete uploads failed: {e}") from None
        for up in stale_uploads(uploads, now):
            if not dry_run:
                try:
                    store.client.abort_multipart_upload(Bucket=store.target.bucket, Key=up["Key"],
                                                        UploadId=up["UploadId"])
                except Exception as e:
                    raise StoreError(f"S3 target {store.label}: aborting the upload of {up['Key']} "
                                     f"failed: {e}") from None
            plan.stale_uploads.append(up["Key"])


def databases_to_prune(backups: BackupSettings, configured: list[str]) -> list[str]:
    """The configured databases, any others with a local folder, and `_globals` (not the n8n exports
    nor PITR's archive, which have their own retention)."""
    from homelab_ops.n8n.workflow_export import FOLDER
    from homelab_ops.backups.names import PITR_FOLDERS

    local, _ = stores_for(backups)
    names = set(configured) | set(local.databases()) | {GLOBALS}
    return sorted(names - {FOLDER, *PITR_FOLDERS})
