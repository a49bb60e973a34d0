"""restic's ``forget`` retention policy as a pure function over (id, time) pairs.

The rules follow restic's ``internal/data/snapshot_policy.go`` (``ApplyPolicy``)
and ``internal/data/duration.go`` (``ParseDuration``) so that anyone who knows
``restic forget --keep-*`` can predict what is kept.  Deliberate differences:

* calendar buckets (hour, day, ISO week, month, year) and the ``keep_within``
  calendar arithmetic are computed in the zone the caller passes, not in the
  zone each timestamp happens to carry (restic uses the snapshot's stored
  zone, which depends on the host that made it);
* ``keep_within`` counts back from the newest backup given.  restic ignores
  snapshots dated in the future when picking that reference; a pure function
  has no clock, so a caller that fears future-dated backups must filter them;
* ties in time are broken by id so the result never depends on input order;
* ``protect`` ids are always kept (reason ``"newest verified"``);
* keep-tag and keep-within-<bucket> rules are not implemented.

No I/O happens here: the caller decides what to delete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

__all__ = [
    "Decision",
    "Duration",
    "RetentionError",
    "RetentionPolicy",
    "UNLIMITED",
    "apply_policy",
    "parse_duration",
]

UNLIMITED = -1
"""Count value meaning "keep every bucket", restic's ``unlimited``."""


class RetentionError(ValueError):
    """A policy or input that must not be used to delete backups."""


# --------------------------------------------------------------------------
# durations


@dataclass(frozen=True)
class Duration:
    """restic's calendar duration: years, months, days and hours.

    Kept as separate fields (not a timedelta) because "1m" means one calendar
    month, whose length depends on the date it is subtracted from.
    """

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def is_zero(self) -> bool:
        """restic treats an all-zero duration as "rule not set"."""
        return not (self.years or self.months or self.days or self.hours)

    def is_negative(self) -> bool:
        return self.years < 0 or self.months < 0 or self.days < 0 or self.hours < 0

    def __str__(self) -> str:
        """Normalised form, like restic's ``Duration.String`` ("1y1d1m" -> "1y1m1d")."""
        parts = []
        for value, unit in (
            (self.years, "y"),
            (self.months, "m"),
            (self.days, "d"),
            (self.hours, "h"),
        ):
            if value:
                parts.append(f"{value}{unit}")
        return "".join(parts)


_UNIT_FIELD = {"y": "years", "m": "months", "d": "days", "h": "hours"}


def parse_duration(text: str) -> Duration:
    """Parse restic's ``6y5m234d37h`` durations, with restic's quirks.

    Like restic: surrounding whitespace is ignored, units may come in any
    order, a repeated unit overrides the earlier one ("1d2d" is 2 days), a
    leading ``-`` is accepted here (the policy refuses negatives), and the
    empty string is the zero duration.  Only ASCII digits count as digits.
    """
    if not isinstance(text, str):
        raise RetentionError(f"invalid duration {text!r}: not a string")
    values = {"years": 0, "months": 0, "days": 0, "hours": 0}
    rest = text.strip()
    while rest:
        negative = rest.startswith("-")
        if negative:
            rest = rest[1:]
        i = 0
        while i < len(rest) and "0" <= rest[i] <= "9":
            i += 1
        if i == 0:
            raise RetentionError(f"invalid duration {text!r}: no number found")
        num = int(rest[:i])
        if negative:
            num = -num
        rest = rest[i:]
        if not rest:
            raise RetentionError(
                f"invalid duration {text!r}: no unit found after number {num}"
            )
        unit = rest[0]
        if unit not in _UNIT_FIELD:
            raise RetentionError(
                f"invalid duration {text!r}: invalid unit {unit!r} found after number {num}"
            )
        values[_UNIT_FIELD[unit]] = num
        rest = rest[1:]
    return Duration(**values)


# --------------------------------------------------------------------------
# policy


_COUNT_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class RetentionPolicy:
    """The ``--keep-*`` options of ``restic forget``; 0 = off, -1 = unlimited.

    Validated on construction so a bad configuration fails when it is loaded,
    not halfway through a prune.  An empty policy may be constructed (it is
    the default) but :func:`apply_policy` refuses it.
    """

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "keep_within":
                continue
            value = getattr(self, f.name)
            if type(value) is not int:  # bool is an int subclass: refuse it too
                raise RetentionError(f"{f.name} must be an int, got {value!r}")
            if value < UNLIMITED:
                raise RetentionError(
                    f"{f.name}={value}: negative values other than -1 (unlimited) "
                    "are not allowed"
                )
        if self.keep_within is not None:
            try:
                duration = parse_duration(self.keep_within)
            except RetentionError as exc:
                raise RetentionError(f"keep_within: {exc}") from None
            if duration.is_negative():
                raise RetentionError(
                    f"keep_within={self.keep_within!r}: durations containing "
                    "negative values are not allowed"
                )

    def within(self) -> Duration | None:
        """The parsed ``keep_within``, or None when that rule is off."""
        if self.keep_within is None:
            return None
        duration = parse_duration(self.keep_within)
        return None if duration.is_zero() else duration

    def is_empty(self) -> bool:
        """True when no rule is set; ``"0d"`` counts as unset, as in restic."""
        return (
            all(getattr(self, f"keep_{rule}") == 0 for rule in _COUNT_RULES)
            and self.within() is None
        )


# --------------------------------------------------------------------------
# decisions


@dataclass(frozen=True)
class Decision:
    """What to do with one backup and why; ``time`` is in the policy's zone."""

    id: str
    time: datetime
    keep: bool
    reasons: tuple[str, ...]


# Bucket keys, computed on the local (policy zone) time.  The second argument
# is the position in the newest-first list: keep_last's "bucket" is unique
# per backup, exactly like restic's ``always`` bucker.
_BucketFn = Callable[[datetime, int], object]

_BUCKETS: dict[str, _BucketFn] = {
    "last": lambda t, nr: nr,
    "hourly": lambda t, nr: (t.year, t.month, t.day, t.hour),
    "daily": lambda t, nr: (t.year, t.month, t.day),
    "weekly": lambda t, nr: tuple(t.isocalendar())[:2],
    "monthly": lambda t, nr: (t.year, t.month),
    "yearly": lambda t, nr: t.year,
}

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_ORDINAL = _EPOCH.date().toordinal()
_US = timedelta(microseconds=1)
_US_PER_DAY = 86_400_000_000
# Instants that can be looked up in a ZoneInfo without overflowing datetime.
_MIN_US = (datetime.min.replace(tzinfo=timezone.utc) + timedelta(days=2) - _EPOCH) // _US
_MAX_US = (datetime.max.replace(tzinfo=timezone.utc) - timedelta(days=2) - _EPOCH) // _US
_DAYS_BEFORE_MONTH = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def _to_us(t: datetime) -> int:
    """Microseconds since the epoch: an integer instant that cannot overflow."""
    return (t - _EPOCH) // _US


def _ordinal(year: int, month: int, day: int) -> int:
    """Proleptic Gregorian day number for any year (date.toordinal stops at 1..9999).

    ``day`` may be out of range: it simply counts on, which is how Go's
    ``time.Date`` normalises "February 31" to early March.
    """
    y = year - 1
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return (
        y * 365 + y // 4 - y // 100 + y // 400
        + _DAYS_BEFORE_MONTH[month - 1] + (1 if month > 2 and leap else 0)
        + day
    )


def _offset_us(instant_us: int, tz: ZoneInfo) -> int:
    """UTC offset of ``tz`` at an instant (clamped to what datetime can represent)."""
    clamped = min(max(instant_us, _MIN_US), _MAX_US)
    local = (_EPOCH + timedelta(microseconds=clamped)).astimezone(tz)
    return local.utcoffset() // _US


def _within_cutoff_us(latest: datetime, duration: Duration, tz: ZoneInfo) -> int:
    """restic's ``latest.AddDate(-y, -m, -d).Add(-h * time.Hour)`` in ``tz``.

    Go's AddDate works on the wall clock and normalises overflow (March 31
    minus one month is "February 31", i.e. March 3), then resolves the wall
    clock to an instant the way ``time.Date`` does: read the wall time as if
    it were UTC, take the zone offset there, and re-take the offset at the
    corrected instant.  For an ambiguous wall time that picks the later
    occurrence in zones east of UTC and the earlier one west of it, which
    Python's ``fold`` cannot express, so it is replicated by hand.  The hours
    are then subtracted as elapsed time, not wall time.  Integer arithmetic
    keeps absurd durations ("9999y") from overflowing datetime.
    """
    local = latest.astimezone(tz)
    months = local.year * 12 + (local.month - 1) - duration.years * 12 - duration.months
    year, month0 = divmod(months, 12)
    day_number = _ordinal(year, month0 + 1, local.day) - duration.days
    wall_us = (
        (day_number - _EPOCH_ORDINAL) * _US_PER_DAY
        + ((local.hour * 60 + local.minute) * 60 + local.second) * 1_000_000
        + local.microsecond
    )
    guess = _offset_us(wall_us, tz)
    instant = wall_us - _offset_us(wall_us - guess, tz)
    return instant - duration.hours * 3_600_000_000


@dataclass
class _Counter:
    """One count rule's running state, like one entry of restic's ``buckets``."""

    name: str
    bucket_of: _BucketFn
    remaining: int  # -1 never runs out
    label: str  # the "/7" or "/all" part of the reason
    kept: int = 0
    last_bucket: object = field(default=None)


def apply_policy(
    backups: Iterable[tuple[str, datetime]],
    policy: RetentionPolicy,
    tz: ZoneInfo,
    *,
    protect: Iterable[str] = (),
) -> list[Decision]:
    """Decide, restic-style, which backups to keep; newest first.

    Each count rule walks the backups newest first with its own counter and
    keeps a backup whenever its bucket differs from the bucket of the last
    backup that rule kept, until the counter runs out.  Like restic, the
    oldest backup is additionally kept ("oldest <rule>") by every rule that
    still has count left when it gets there, so a short history is not thinned
    out further than the policy asks.  ``keep_within`` keeps everything strictly
    after the newest time minus the duration.

    Raises :class:`RetentionError` for an empty policy, naive or duplicate
    input, and ``protect`` ids that are not among the backups (a mismatched id
    would otherwise silently protect nothing).
    """
    if policy.is_empty():
        raise RetentionError(
            "refusing to prune with an empty policy: set at least one keep_* rule"
        )
    items: list[tuple[str, datetime]] = []
    seen: set[str] = set()
    for backup_id, t in backups:
        if t.tzinfo is None or t.utcoffset() is None:
            raise RetentionError(f"backup {backup_id!r} has a naive time {t!r}")
        if backup_id in seen:
            raise RetentionError(f"duplicate backup id {backup_id!r}")
        seen.add(backup_id)
        items.append((backup_id, t))
    # A lone string is one id, not an iterable of one-letter ids.
    protected = {protect} if isinstance(protect, str) else set(protect)
    unknown = protected - seen
    if unknown:
        raise RetentionError(f"protected ids not among the backups: {sorted(unknown)}")
    if not items:
        return []

    # Newest first; equal instants ordered by id (descending, i.e. the exact
    # reverse of a chronological (time, id) sort).
    items.sort(key=lambda item: (_to_us(item[1]), item[0]), reverse=True)
    last_nr = len(items) - 1

    within = policy.within()
    cutoff_us = None if within is None else _within_cutoff_us(items[0][1], within, tz)

    counters = [
        _Counter(name, _BUCKETS[name], count, "all" if count == UNLIMITED else str(count))
        for name in _COUNT_RULES
        if (count := getattr(policy, f"keep_{name}"))
    ]

    decisions = []
    for nr, (backup_id, t) in enumerate(items):
        local = t.astimezone(tz)
        reasons: list[str] = []
        if backup_id in protected:
            reasons.append("newest verified")
        if cutoff_us is not None and _to_us(t) > cutoff_us:
            reasons.append(f"within {within}")
        for c in counters:
            if c.remaining == 0:
                continue
            bucket = c.bucket_of(local, nr)
            # restic compares with the bucket this rule kept last, not with
            # every bucket seen so far (matters only if a zone's clock jumps
            # back across a bucket boundary).
            is_new = c.kept == 0 or bucket != c.last_bucket
            if is_new or nr == last_nr:
                if is_new:
                    c.kept += 1
                    reasons.append(f"{c.name} {c.kept}/{c.label}")
                else:
                    reasons.append(f"oldest {c.name}")
                c.last_bucket = bucket
                if c.remaining > 0:
                    c.remaining -= 1
        decisions.append(Decision(backup_id, local, bool(reasons), tuple(reasons)))

    if not any(d.keep for d in decisions):  # unreachable with a valid policy
        raise RetentionError("refusing to delete every backup")
    return decisions

