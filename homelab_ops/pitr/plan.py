"""Pure decisions of point-in-time recovery: what to restore from, how far, and what retention may delete."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from homelab_ops.backups.retention import RetentionPolicy, apply_policy
from homelab_ops.pitr import wal

LATEST = "latest"
_STEM = re.compile(r"^\d{8}T\d{6}Z$")
_RESTORE_POINT = re.compile(r"^[A-Za-z0-9_.:-]{1,63}$")


class PlanError(ValueError):
    """A target or a set of backups that cannot be used; the message says why."""


@dataclass(frozen=True)
class Target:
    kind: str  # "time", "lsn", "name" or "latest"
    value: object = None  # datetime (aware), LSN int, restore point name
    inclusive: bool = True  # stop after the target (time, LSN) rather than just before it

    def describe(self) -> str:
        if self.kind == "time":
            return f"time {self.value.isoformat()}"
        if self.kind == "lsn":
            return f"WAL position {wal.format_lsn(self.value)}"
        if self.kind == "name":
            return f"restore point {self.value!r}"
        return "the newest WAL archived"

    @property
    def _incl(self) -> str:
        return "on" if self.inclusive else "off"

    def recovery_settings(self) -> dict[str, str]:
        """The recovery_target_* settings for the temporary cluster."""
        if self.kind == "time":
            return {"recovery_target_time": self.value.isoformat(sep=" "), "recovery_target_inclusive": self._incl}
        if self.kind == "lsn":
            return {"recovery_target_lsn": wal.format_lsn(self.value), "recovery_target_inclusive": self._incl}
        if self.kind == "name":
            return {"recovery_target_name": self.value}
        return {}


def is_pitr_target(text: str) -> bool:
    """`--at` values that are not a dump's stem go to point-in-time recovery."""
    return not _STEM.match(text.strip())


def parse_target(text: str, tz: ZoneInfo) -> Target:
    """`latest`, a WAL position (0/3000148), a time (a naive time is in the settings' zone),
    or a restore point name made with pg_create_restore_point()."""
    t = text.strip()
    if not t:
        raise PlanError("--at is empty: give a time, a restore point name, a WAL position or `latest`")
    if t.lower() == LATEST:
        return Target(LATEST)
    try:
        return Target("lsn", wal.parse_lsn(t))
    except wal.WalError:
        pass
    try:
        when = datetime.fromisoformat(t)
    except ValueError:
        when = None
    if when is not None:
        return Target("time", when if when.tzinfo else when.replace(tzinfo=tz))
    if re.match(r"^\d{4}-\d", t):
        raise PlanError(f"--at {text!r} looks like a time but is not one: write it like 2026-12-03 14:05:00")
    if not _RESTORE_POINT.match(t):
        raise PlanError(f"--at {text!r} is neither a time, a WAL position, `latest` nor a restore point name")
    return Target("name", t)


def choose_base(bases: list, target: Target):
    """The base backup to start from: the newest that was consistent before the target.

    For a restore point name the position is unknown until replay finds it, so the
    oldest base backup is used: every restore point after it can be reached.
    `bases` are BaseBackup-like (finished, end_lsn), oldest first.
    """
    if not bases:
        raise PlanError("no complete base backup: take one first (`homelab-ops pitr basebackup` or the "
                        "base_backups asset)")
    if target.kind == "time":
        ok = [b for b in bases if b.finished <= target.value]
    elif target.kind == "lsn":
        ok = [b for b in bases if b.end_lsn <= target.value]
    elif target.kind == "name":
        ok = bases[:1]
    else:
        ok = bases
    if not ok:
        raise PlanError(f"no base backup finished before {target.describe()}: the oldest finished at "
                        f"{bases[0].finished.isoformat()}; point-in-time recovery reaches only later points")
    return ok[-1]


@dataclass(frozen=True)
class RetentionPlan:
    keep: list[tuple[str, tuple[str, ...]]]  # (stem, reasons), newest first
    remove: list[str]  # stems
    wal_remove: list[str]  # file names in the WAL archive
    keep_wal_from: str | None  # the first segment kept, for the report


def plan_retention(bases: list[tuple[str, datetime, int]], archive: wal.Archive, policy: RetentionPolicy,
                   tz: ZoneInfo, *, seg_size: int = wal.DEFAULT_SEGMENT_SIZE) -> RetentionPlan:
    """Base backups by the backups' GFS policy; WAL older than the oldest kept base backup's start.

    `bases` are (stem, time, start LSN). The newest base backup is always kept (protected),
    and no WAL is deleted when there is no base backup: WAL is then all there is.
    """
    if not bases:
        return RetentionPlan([], [], [], None)
    newest = max(bases, key=lambda b: (b[1], b[0]))[0]
    decisions = apply_policy([(s, t) for s, t, _ in bases], policy, tz, protect=[newest])
    keep = [(d.id, d.reasons) for d in decisions if d.keep]
    remove = [d.id for d in decisions if not d.keep]
    kept = {s for s, _ in keep}
    first = min(wal.segno_of(lsn, seg_size) for s, _, lsn in bases if s in kept)
    return RetentionPlan(keep, remove, wal.wal_to_delete(archive, first),
                         wal.segment_name(1, first, seg_size)[8:])
