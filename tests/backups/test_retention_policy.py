"""Tests for homelab_ops.backups.retention: restic ``forget`` semantics.

Sources of truth, in order:
* restic's golden files (internal/data/testdata/policy_keep_snapshots_N for
  the snapshot list in internal/data/snapshot_policy_test.go), copied below
  in restic's own wording and translated to our reason strings;
* the examples in restic's "Removing snapshots according to a policy" docs;
* hand-worked calendar edge cases (DST, month ends, ISO weeks, UTC+14);
* a deliberately naive reference implementation checked with hypothesis.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homelab_ops.backups.retention import (
    Decision,
    Duration,
    RetentionError,
    RetentionPolicy,
    apply_policy,
    parse_duration,
)

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
KIRITIMATI = ZoneInfo("Pacific/Kiritimati")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def local(tz: ZoneInfo, text: str, fold: int = 0) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=tz, fold=fold)


def kept(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    return {d.id: d.reasons for d in decisions if d.keep}


# ---------------------------------------------------------------------------
# restic's golden files

# testExpireSnapshots from restic's snapshot_policy_test.go, in restic's order.
RESTIC_SNAPSHOTS = [
    "2014-09-01 10:20:30", "2014-09-02 10:20:30", "2014-09-05 10:20:30", "2014-09-06 10:20:30",
    "2014-09-08 10:20:30", "2014-09-09 10:20:30", "2014-09-10 10:20:30", "2014-09-11 10:20:30",
    "2014-09-20 10:20:30", "2014-09-22 10:20:30", "2014-08-08 10:20:30", "2014-08-10 10:20:30",
    "2014-08-12 10:20:30", "2014-08-13 10:20:30", "2014-08-13 10:20:30.1", "2014-08-15 10:20:30",
    "2014-08-18 10:20:30", "2014-08-20 10:20:30", "2014-08-21 10:20:30", "2014-08-22 10:20:30",
    "2014-10-01 10:20:30", "2014-10-02 10:20:30", "2014-10-05 10:20:30", "2014-10-06 10:20:30",
    "2014-10-08 10:20:30", "2014-10-09 10:20:30", "2014-10-10 10:20:30", "2014-10-11 10:20:30",
    "2014-10-20 10:20:30", "2014-10-22 10:20:30", "2014-11-08 10:20:30", "2014-11-10 10:20:30",
    "2014-11-12 10:20:30", "2014-11-13 10:20:30", "2014-11-13 10:20:30.1", "2014-11-15 10:20:30",
    "2014-11-18 10:20:30", "2014-11-20 10:20:30", "2014-11-21 10:20:30", "2014-11-22 10:20:30",
    "2015-09-01 10:20:30", "2015-09-02 10:20:30", "2015-09-05 10:20:30", "2015-09-06 10:20:30",
    "2015-09-08 10:20:30", "2015-09-09 10:20:30", "2015-09-10 10:20:30", "2015-09-11 10:20:30",
    "2015-09-20 10:20:30", "2015-09-22 10:20:30", "2015-08-08 10:20:30", "2015-08-10 10:20:30",
    "2015-08-12 10:20:30", "2015-08-13 10:20:30", "2015-08-13 10:20:30.1", "2015-08-15 10:20:30",
    "2015-08-18 10:20:30", "2015-08-20 10:20:30", "2015-08-21 10:20:30", "2015-08-22 10:20:30",
    "2015-10-01 10:20:30", "2015-10-02 10:20:30", "2015-10-05 10:20:30", "2015-10-06 10:20:30",
    "2015-10-08 10:20:30", "2015-10-09 10:20:30", "2015-10-10 10:20:30", "2015-10-11 10:20:30",
    "2015-10-20 10:20:30", "2015-10-22 10:20:30", "2015-10-22 10:20:30", "2015-10-22 10:20:30",
    "2015-10-22 10:20:30", "2015-10-22 10:20:30", "2015-11-08 10:20:30", "2015-11-10 10:20:30",
    "2015-11-12 10:20:30", "2015-11-13 10:20:30", "2015-11-13 10:20:30.1", "2015-11-15 10:20:30",
    "2015-11-18 10:20:30", "2015-11-20 10:20:30", "2015-11-21 10:20:30", "2015-11-22 10:20:30",
    "2016-01-01 01:02:03", "2016-01-01 01:03:03", "2016-01-01 07:08:03", "2016-01-03 07:02:03",
    "2016-01-04 10:23:03", "2016-01-04 11:23:03", "2016-01-04 12:23:03", "2016-01-04 12:24:03",
    "2016-01-04 12:28:03", "2016-01-04 12:30:03", "2016-01-04 16:23:03", "2016-01-05 09:02:03",
    "2016-01-06 08:02:03", "2016-01-07 10:02:03", "2016-01-08 20:02:03", "2016-01-09 21:02:03",
    "2016-01-12 21:02:03", "2016-01-12 21:08:03", "2016-01-18 12:02:03",
]


def restic_backups() -> list[tuple[str, datetime]]:
    return [(f"s{i:03d}", utc(t)) for i, t in enumerate(RESTIC_SNAPSHOTS)]


# (golden file number, policy, kept snapshots newest first with restic's
# "matches" minus the trailing " snapshot").
RESTIC_GOLDEN = [
    (5, RetentionPolicy(keep_hourly=20), """
        2016-01-18 12:02:03  hourly
        2016-01-12 21:08:03  hourly
        2016-01-09 21:02:03  hourly
        2016-01-08 20:02:03  hourly
        2016-01-07 10:02:03  hourly
        2016-01-06 08:02:03  hourly
        2016-01-05 09:02:03  hourly
        2016-01-04 16:23:03  hourly
        2016-01-04 12:30:03  hourly
        2016-01-04 11:23:03  hourly
        2016-01-04 10:23:03  hourly
        2016-01-03 07:02:03  hourly
        2016-01-01 07:08:03  hourly
        2016-01-01 01:03:03  hourly
        2015-11-22 10:20:30  hourly
        2015-11-21 10:20:30  hourly
        2015-11-20 10:20:30  hourly
        2015-11-18 10:20:30  hourly
        2015-11-15 10:20:30  hourly
        2015-11-13 10:20:30.1  hourly
    """),
    (6, RetentionPolicy(keep_daily=3), """
        2016-01-18 12:02:03  daily
        2016-01-12 21:08:03  daily
        2016-01-09 21:02:03  daily
    """),
    (9, RetentionPolicy(keep_last=5, keep_daily=5), """
        2016-01-18 12:02:03  last, daily
        2016-01-12 21:08:03  last, daily
        2016-01-12 21:02:03  last
        2016-01-09 21:02:03  last, daily
        2016-01-08 20:02:03  last, daily
        2016-01-07 10:02:03  daily
    """),
    (10, RetentionPolicy(keep_last=2, keep_daily=10), """
        2016-01-18 12:02:03  last, daily
        2016-01-12 21:08:03  last, daily
        2016-01-09 21:02:03  daily
        2016-01-08 20:02:03  daily
        2016-01-07 10:02:03  daily
        2016-01-06 08:02:03  daily
        2016-01-05 09:02:03  daily
        2016-01-04 16:23:03  daily
        2016-01-03 07:02:03  daily
        2016-01-01 07:08:03  daily
    """),
    (11, RetentionPolicy(keep_weekly=2), """
        2016-01-18 12:02:03  weekly
        2016-01-12 21:08:03  weekly
    """),
    (12, RetentionPolicy(keep_weekly=4), """
        2016-01-18 12:02:03  weekly
        2016-01-12 21:08:03  weekly
        2016-01-09 21:02:03  weekly
        2016-01-03 07:02:03  weekly
    """),
    (13, RetentionPolicy(keep_daily=3, keep_weekly=4), """
        2016-01-18 12:02:03  daily, weekly
        2016-01-12 21:08:03  daily, weekly
        2016-01-09 21:02:03  daily, weekly
        2016-01-03 07:02:03  weekly
    """),
    (14, RetentionPolicy(keep_monthly=6), """
        2016-01-18 12:02:03  monthly
        2015-11-22 10:20:30  monthly
        2015-10-22 10:20:30  monthly
        2015-09-22 10:20:30  monthly
        2015-08-22 10:20:30  monthly
        2014-11-22 10:20:30  monthly
    """),
    (15, RetentionPolicy(keep_daily=2, keep_weekly=2, keep_monthly=6), """
        2016-01-18 12:02:03  daily, weekly, monthly
        2016-01-12 21:08:03  daily, weekly
        2015-11-22 10:20:30  monthly
        2015-10-22 10:20:30  monthly
        2015-09-22 10:20:30  monthly
        2015-08-22 10:20:30  monthly
        2014-11-22 10:20:30  monthly
    """),
    (16, RetentionPolicy(keep_yearly=10), """
        2016-01-18 12:02:03  yearly
        2015-11-22 10:20:30  yearly
        2014-11-22 10:20:30  yearly
        2014-08-08 10:20:30  oldest yearly
    """),
    (17, RetentionPolicy(keep_daily=7, keep_weekly=2, keep_monthly=3, keep_yearly=10), """
        2016-01-18 12:02:03  daily, weekly, monthly, yearly
        2016-01-12 21:08:03  daily, weekly
        2016-01-09 21:02:03  daily
        2016-01-08 20:02:03  daily
        2016-01-07 10:02:03  daily
        2016-01-06 08:02:03  daily
        2016-01-05 09:02:03  daily
        2015-11-22 10:20:30  monthly, yearly
        2015-10-22 10:20:30  monthly
        2014-11-22 10:20:30  yearly
        2014-08-08 10:20:30  oldest yearly
    """),
    (39, RetentionPolicy(keep_daily=3, keep_weekly=2, keep_monthly=-1, keep_yearly=-1), """
        2016-01-18 12:02:03  daily, weekly, monthly, yearly
        2016-01-12 21:08:03  daily, weekly
        2016-01-09 21:02:03  daily
        2015-11-22 10:20:30  monthly, yearly
        2015-10-22 10:20:30  monthly
        2015-09-22 10:20:30  monthly
        2015-08-22 10:20:30  monthly
        2014-11-22 10:20:30  monthly, yearly
        2014-10-22 10:20:30  monthly
        2014-09-22 10:20:30  monthly
        2014-08-22 10:20:30  monthly
        2014-08-08 10:20:30  oldest monthly, oldest yearly
    """),
]


def translate_restic(policy: RetentionPolicy, matches: list[list[str]]) -> list[tuple[str, ...]]:
    """restic's "daily snapshot" becomes "daily n/limit", numbered per rule."""
    seen: Counter[str] = Counter()
    out = []
    for row in matches:
        reasons = []
        for match in row:
            if match.startswith(("within ", "oldest ")):
                reasons.append(match)
                continue
            seen[match] += 1
            limit = getattr(policy, f"keep_{match}")
            reasons.append(f"{match} {seen[match]}/{'all' if limit == -1 else limit}")
        out.append(tuple(reasons))
    return out


@pytest.mark.parametrize(
    ("golden", "policy", "expected"), RESTIC_GOLDEN, ids=[f"golden_{c[0]}" for c in RESTIC_GOLDEN]
)
def test_restic_golden_counts(golden: int, policy: RetentionPolicy, expected: str) -> None:
    rows = [line.strip().split("  ", 1) for line in expected.strip().splitlines()]
    times = [utc(t.strip()) for t, _ in rows]
    matches = [[m.strip() for m in ms.split(",")] for _, ms in rows]
    got = [(d.time, d.reasons) for d in apply_policy(restic_backups(), policy, UTC) if d.keep]
    assert got == list(zip(times, translate_restic(policy, matches)))


@pytest.mark.parametrize(
    ("golden", "policy", "n_kept"),
    [
        (1, RetentionPolicy(keep_last=10), 10),
        (3, RetentionPolicy(keep_last=99), 99),
        (4, RetentionPolicy(keep_last=200), 103),
        (36, RetentionPolicy(keep_last=-1), 103),
    ],
)
def test_restic_golden_last(golden: int, policy: RetentionPolicy, n_kept: int) -> None:
    decisions = apply_policy(restic_backups(), policy, UTC)
    limit = "all" if policy.keep_last == -1 else policy.keep_last
    assert [d.reasons for d in decisions if d.keep] == [
        (f"last {i}/{limit}",) for i in range(1, n_kept + 1)
    ]
    assert all(d.keep for d in decisions[:n_kept])
    assert not any(d.keep for d in decisions[n_kept:])


@pytest.mark.parametrize(
    ("golden", "within", "shown", "n_kept"),
    [
        (21, "1d", "1d", 1),
        (22, "2d", "2d", 1),
        (23, "7d", "7d", 3),
        (24, "1m", "1m", 19),
        (25, "1m14d", "1m14d", 19),
        (26, "1y1d1m", "1y1m1d", 63),  # restic prints the normalised duration
        (27, "13d23h", "13d23h", 9),
        (28, "2m2h", "2m2h", 23),
        (29, "1y2m3d3h", "1y2m3d3h", 68),
    ],
)
def test_restic_golden_within(golden: int, within: str, shown: str, n_kept: int) -> None:
    decisions = apply_policy(restic_backups(), RetentionPolicy(keep_within=within), UTC)
    assert [d.keep for d in decisions] == [True] * n_kept + [False] * (103 - n_kept)
    assert {d.reasons for d in decisions if d.keep} == {(f"within {shown}",)}


# Golden file 38 (keep hourly unlimited) removes exactly these; 37 (last and
# hourly unlimited) keeps everything and gives them only the "last" reason.
RESTIC_SAME_HOUR = Counter(
    [
        "2014-08-13 10:20:30", "2014-11-13 10:20:30", "2015-08-13 10:20:30",
        "2015-10-22 10:20:30", "2015-10-22 10:20:30", "2015-10-22 10:20:30",
        "2015-10-22 10:20:30", "2015-11-13 10:20:30", "2016-01-01 01:02:03",
        "2016-01-04 12:23:03", "2016-01-04 12:24:03", "2016-01-04 12:28:03",
        "2016-01-12 21:02:03",
    ]
)


def test_restic_golden_hourly_unlimited() -> None:
    decisions = apply_policy(restic_backups(), RetentionPolicy(keep_hourly=-1), UTC)
    removed = Counter(d.time.strftime("%Y-%m-%d %H:%M:%S") for d in decisions if not d.keep)
    assert removed == RESTIC_SAME_HOUR
    assert [d.reasons for d in decisions if d.keep] == [(f"hourly {i}/all",) for i in range(1, 91)]


def test_restic_golden_last_and_hourly_unlimited() -> None:
    decisions = apply_policy(restic_backups(), RetentionPolicy(keep_last=-1, keep_hourly=-1), UTC)
    assert all(d.keep for d in decisions)
    last_only = Counter(
        d.time.strftime("%Y-%m-%d %H:%M:%S") for d in decisions if len(d.reasons) == 1
    )
    assert last_only == RESTIC_SAME_HOUR
    assert decisions[-1].reasons == ("last 103/all", "hourly 90/all")


# ---------------------------------------------------------------------------
# restic documentation examples


DOC_SNAPSHOTS = [
    ("60e5c031", "2025-04-21 11:00:00"), ("1dccffe9", "2025-04-22 11:00:00"),
    ("90a5c949", "2025-04-23 11:00:00"), ("79580708", "2025-04-24 11:00:00"),
    ("8a603ddf", "2025-04-25 11:00:00"), ("ae33bf10", "2025-04-25 23:00:00"),
    ("fb8b1418", "2025-04-28 11:00:00"), ("1db188b4", "2025-04-29 11:00:00"),
    ("7baa4f28", "2025-05-01 11:00:00"), ("05c48af3", "2025-05-02 11:00:00"),
    ("ad72e262", "2025-05-02 23:00:00"),
]


def test_docs_keep_daily_5_skips_missed_day() -> None:
    """The docs' weekday example: a missed Wednesday pulls in last Friday."""
    backups = [(i, utc(t)) for i, t in DOC_SNAPSHOTS]
    decisions = apply_policy(backups, RetentionPolicy(keep_daily=5), UTC)
    assert kept(decisions) == {
        "ad72e262": ("daily 1/5",),
        "7baa4f28": ("daily 2/5",),
        "1db188b4": ("daily 3/5",),
        "fb8b1418": ("daily 4/5",),
        "ae33bf10": ("daily 5/5",),
    }
    # The docs' "keep" table labels the 25 April 23:00 backup 8a603ddf, but
    # their snapshot list (and "remove" table) say 8a603ddf is the 11:00 one
    # and ae33bf10 the 23:00 one: the newest of the day is kept.
    assert {d.id for d in decisions if not d.keep} == {
        "60e5c031", "1dccffe9", "90a5c949", "79580708", "8a603ddf", "05c48af3",
    }


def test_docs_one_backup_a_day_for_a_hundred_years() -> None:
    """The docs' 7 daily / 5 weekly / 12 monthly / 75 yearly example.

    Ending on Sunday 2025-12-28, the 7 dailies cover Mon-Sun, so 4 weeklies are
    extra (as the docs say); Sunday 2025-11-30 is both weekly and monthly, so
    10 monthlies are extra, and 74 yearlies.
    """
    start = datetime(1926, 1, 1, 3, tzinfo=timezone.utc)
    days = (date(2025, 12, 28) - date(1926, 1, 1)).days + 1
    backups = [(f"d{i:05d}", start + timedelta(days=i)) for i in range(days)]
    policy = RetentionPolicy(keep_daily=7, keep_weekly=5, keep_monthly=12, keep_yearly=75)
    decisions = apply_policy(backups, policy, UTC)
    keeps = [d for d in decisions if d.keep]
    rules = Counter(r.split()[0] for d in keeps for r in d.reasons)
    assert rules == {"daily": 7, "weekly": 5, "monthly": 12, "yearly": 75}
    first_rule = Counter(d.reasons[0].split()[0] for d in keeps)
    assert first_rule == {"daily": 7, "weekly": 4, "monthly": 10, "yearly": 74}
    assert len(keeps) == 95
    assert keeps[-1].time.date() == date(1951, 12, 31)
    assert not any(r.startswith("oldest") for d in keeps for r in d.reasons)


# ---------------------------------------------------------------------------
# restic's "oldest" rule


def test_oldest_kept_only_while_the_rule_has_count_left() -> None:
    backups = [
        ("a", utc("2026-05-03 10:00")),
        ("b", utc("2026-05-02 10:00")),
        ("c", utc("2026-05-02 08:00")),  # same day as b, and the oldest
    ]
    # two days, three allowed: count left when c comes -> "oldest daily"
    assert kept(apply_policy(backups, RetentionPolicy(keep_daily=3), UTC)) == {
        "a": ("daily 1/3",), "b": ("daily 2/3",), "c": ("oldest daily",),
    }
    # two days, two allowed: the counter is spent, c goes
    assert kept(apply_policy(backups, RetentionPolicy(keep_daily=2), UTC)) == {
        "a": ("daily 1/2",), "b": ("daily 2/2",),
    }
    # unlimited never runs out
    assert kept(apply_policy(backups, RetentionPolicy(keep_daily=-1), UTC))["c"] == (
        "oldest daily",
    )


def test_oldest_in_its_own_bucket_is_an_ordinary_keep() -> None:
    backups = [("a", utc("2026-05-03 10:00")), ("b", utc("2026-05-02 10:00"))]
    assert kept(apply_policy(backups, RetentionPolicy(keep_daily=2, keep_last=5), UTC)) == {
        "a": ("last 1/5", "daily 1/2"),
        "b": ("last 2/5", "daily 2/2"),
    }


def test_single_backup() -> None:
    [d] = apply_policy([("only", utc("2026-01-01"))], RetentionPolicy(keep_weekly=4), UTC)
    assert d.keep and d.reasons == ("weekly 1/4",)


# ---------------------------------------------------------------------------
# calendar buckets in the caller's zone


def test_berlin_spring_forward_hours_are_distinct_buckets() -> None:
    """01:30 CET and 03:30 CEST are one hour apart but in hours 1 and 3."""
    backups = [
        ("before", local(BERLIN, "2026-03-29 01:30")),
        ("after", local(BERLIN, "2026-03-29 03:30")),
    ]
    assert backups[1][1].timestamp() - backups[0][1].timestamp() == 3600
    assert kept(apply_policy(backups, RetentionPolicy(keep_hourly=2), BERLIN)) == {
        "after": ("hourly 1/2",), "before": ("hourly 2/2",),
    }
    assert kept(apply_policy(backups, RetentionPolicy(keep_daily=1), BERLIN)) == {
        "after": ("daily 1/1",),
    }


def test_berlin_fall_back_repeated_hour_is_one_bucket() -> None:
    """02:30 CEST and 02:30 CET are an hour apart but share wall hour 2.

    restic (Go's Hour()) buckets by wall clock, so the hourly rule keeps only
    the later one; in UTC they are two hours.
    """
    backups = [
        ("x", local(BERLIN, "2026-10-25 01:30")),
        ("y", local(BERLIN, "2026-10-25 02:30", fold=0)),  # CEST, 00:30Z
        ("z", local(BERLIN, "2026-10-25 02:30", fold=1)),  # CET, 01:30Z
    ]
    assert backups[2][1].timestamp() - backups[1][1].timestamp() == 3600
    policy = RetentionPolicy(keep_hourly=2)
    assert kept(apply_policy(backups, policy, BERLIN)) == {
        "z": ("hourly 1/2",), "x": ("hourly 2/2",),
    }
    assert kept(apply_policy(backups, policy, UTC)) == {
        "z": ("hourly 1/2",), "y": ("hourly 2/2",),
    }


def test_month_end_evening_is_next_month_in_berlin() -> None:
    backups = [
        ("feb", utc("2026-02-27 12:00")),
        ("late", utc("2026-01-31 23:30")),  # Berlin: 1 Feb 00:30
        ("early", utc("2026-01-31 22:30")),  # Berlin: 31 Jan 23:30
        ("mid", utc("2026-01-15 12:00")),
    ]
    policy = RetentionPolicy(keep_monthly=2)
    assert kept(apply_policy(backups, policy, BERLIN)) == {
        "feb": ("monthly 1/2",), "early": ("monthly 2/2",),
    }
    assert kept(apply_policy(backups, policy, UTC)) == {
        "feb": ("monthly 1/2",), "late": ("monthly 2/2",),
    }


def test_iso_weeks_across_new_year() -> None:
    """2026-12-31 and 2027-01-01 are both ISO week 2026-W53; 2027-01-04 is 2027-W01."""
    backups = [
        ("thu", utc("2026-12-31 12:00")),
        ("fri", utc("2027-01-01 12:00")),
        ("mon", utc("2027-01-04 12:00")),
    ]
    assert kept(apply_policy(backups, RetentionPolicy(keep_weekly=2), UTC)) == {
        "mon": ("weekly 1/2",), "fri": ("weekly 2/2",),
    }
    # by calendar year the split falls elsewhere
    assert kept(apply_policy(backups, RetentionPolicy(keep_yearly=2), UTC)) == {
        "mon": ("yearly 1/2",), "thu": ("yearly 2/2",),
    }


def test_kiritimati_local_days_differ_from_utc_days() -> None:
    """UTC+14: 11:00Z is already tomorrow."""
    backups = [
        ("a", utc("2026-01-01 09:00")),  # Kiritimati 1 Jan 23:00
        ("b", utc("2026-01-01 11:00")),  # Kiritimati 2 Jan 01:00
        ("c", utc("2026-01-02 08:00")),  # Kiritimati 2 Jan 22:00
    ]
    policy = RetentionPolicy(keep_daily=2)
    assert kept(apply_policy(backups, policy, UTC)) == {
        "c": ("daily 1/2",), "b": ("daily 2/2",),
    }
    decisions = apply_policy(backups, policy, KIRITIMATI)
    assert kept(decisions) == {"c": ("daily 1/2",), "a": ("daily 2/2",)}
    b = next(d for d in decisions if d.id == "b")
    assert b.time.date() == date(2026, 1, 2)
    assert b.time.utcoffset() == timedelta(hours=14)


def test_kiritimati_new_year_comes_early() -> None:
    backups = [("new", utc("2026-12-31 11:00")), ("old", utc("2026-12-31 09:00"))]
    policy = RetentionPolicy(keep_yearly=2)
    assert kept(apply_policy(backups, policy, KIRITIMATI)) == {
        "new": ("yearly 1/2",), "old": ("yearly 2/2",),
    }
    assert kept(apply_policy(backups, policy, UTC)) == {
        "new": ("yearly 1/2",), "old": ("oldest yearly",),
    }


def test_bucket_compared_with_last_kept_bucket_only() -> None:
    """restic remembers one bucket per rule, not a set of seen buckets.

    Kwajalein jumped from UTC+11 to UTC-12 on 1969-09-30, so its wall clock
    shows 22:xx on 30 Sep twice, 23 hours apart.  The second 22:xx hour is
    "new" again because another hour was kept in between.
    """
    kwajalein = ZoneInfo("Pacific/Kwajalein")
    backups = [
        ("a", utc("1969-10-01 10:30")),  # 30 Sep 22:30 -12
        ("b", utc("1969-09-30 14:30")),  # 30 Sep 02:30 -12
        ("c", utc("1969-09-30 11:30")),  # 30 Sep 22:30 +11
        ("d", utc("1969-09-30 11:10")),  # 30 Sep 22:10 +11
    ]
    decisions = apply_policy(backups, RetentionPolicy(keep_hourly=3), kwajalein)
    assert decisions[0].time.replace(tzinfo=None) == decisions[2].time.replace(
        tzinfo=None
    ) == datetime(1969, 9, 30, 22, 30)
    assert kept(decisions) == {"a": ("hourly 1/3",), "b": ("hourly 2/3",), "c": ("hourly 3/3",)}


# ---------------------------------------------------------------------------
# keep_within calendar arithmetic (Go's AddDate, then hours)


@pytest.mark.parametrize(
    ("tz", "newest", "within", "cutoff"),
    [
        # month ends normalise forward like Go: "31 Feb" is 3 March
        (UTC, utc("2026-03-31 12:00"), "1m", utc("2026-03-03 12:00")),
        (UTC, utc("2024-03-31 12:00"), "1m", utc("2024-03-02 12:00")),  # leap year
        (UTC, utc("2024-02-29 12:00"), "1y", utc("2023-03-01 12:00")),
        (UTC, utc("2026-01-31 00:00"), "1y2m", utc("2024-12-01 00:00")),  # "31 Nov"
        (UTC, utc("2026-05-10 06:00"), "1d30h", utc("2026-05-08 00:00")),
        # one calendar day across spring-forward is 23 hours ...
        (BERLIN, local(BERLIN, "2026-03-29 12:00"), "1d", utc("2026-03-28 11:00")),
        # ... hours are elapsed time, not wall time
        (BERLIN, local(BERLIN, "2026-03-29 12:00"), "24h", utc("2026-03-28 10:00")),
        (BERLIN, local(BERLIN, "2026-03-29 12:00"), "1d2h", utc("2026-03-28 09:00")),
        # a wall time in the spring-forward gap resolves like Go: 03:30 CEST
        (BERLIN, local(BERLIN, "2026-03-30 02:30"), "1d", utc("2026-03-29 01:30")),
        # an ambiguous wall time: Go picks the later 02:30 (CET) east of UTC ...
        (BERLIN, local(BERLIN, "2026-10-26 02:30"), "1d", utc("2026-10-25 01:30")),
        # ... and the earlier 01:30 (EDT) west of UTC
        (NEW_YORK, local(NEW_YORK, "2026-11-02 01:30"), "1d", utc("2026-11-01 05:30")),
        # arithmetic happens on the policy zone's calendar
        (KIRITIMATI, utc("2026-03-01 09:00"), "1m", utc("2026-02-01 09:00")),
        (KIRITIMATI, utc("2026-02-28 11:00"), "1m", utc("2026-01-31 11:00")),  # 1 Mar local
        (UTC, utc("2026-02-28 11:00"), "1m", utc("2026-01-28 11:00")),
    ],
)
def test_within_cutoff(tz: ZoneInfo, newest: datetime, within: str, cutoff: datetime) -> None:
    """Kept strictly after the cutoff: the backup exactly at it goes."""
    backups = [
        ("newest", newest),
        ("after", cutoff + timedelta(microseconds=1)),
        ("at", cutoff),
    ]
    shown = str(parse_duration(within))
    assert kept(apply_policy(backups, RetentionPolicy(keep_within=within), tz)) == {
        "newest": (f"within {shown}",),
        "after": (f"within {shown}",),
    }


def test_within_huge_duration_keeps_everything() -> None:
    backups = [("a", utc("2026-01-01")), ("b", utc("0001-01-02"))]
    decisions = apply_policy(backups, RetentionPolicy(keep_within="9999y"), UTC)
    assert all(d.keep for d in decisions)


def test_within_combines_with_counts_in_restic_order() -> None:
    backups = [("a", utc("2026-01-10")), ("b", utc("2026-01-09")), ("c", utc("2026-01-01"))]
    policy = RetentionPolicy(keep_last=1, keep_daily=1, keep_within="2d")
    assert kept(apply_policy(backups, policy, UTC)) == {
        "a": ("within 2d", "last 1/1", "daily 1/1"),
        "b": ("within 2d",),
    }


# ---------------------------------------------------------------------------
# policy validation and durations


def test_empty_policy_is_refused() -> None:
    backups = [("a", utc("2026-01-01"))]
    for policy in (RetentionPolicy(), RetentionPolicy(keep_within="0d"), RetentionPolicy(keep_within="")):
        assert policy.is_empty()
        with pytest.raises(RetentionError, match="refusing to prune with an empty policy"):
            apply_policy(backups, policy, UTC)
    with pytest.raises(RetentionError, match="empty policy"):
        apply_policy([], RetentionPolicy(), UTC)
    assert not RetentionPolicy(keep_yearly=-1).is_empty()
    assert not RetentionPolicy(keep_within="1h").is_empty()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep_daily": -2}, "keep_daily=-2"),
        ({"keep_last": -5}, "other than -1"),
        ({"keep_weekly": True}, "keep_weekly must be an int"),
        ({"keep_monthly": 1.5}, "keep_monthly must be an int"),
        ({"keep_within": "2w"}, "'2w'"),
        ({"keep_within": "10"}, "'10'.*no unit found after number 10"),
        ({"keep_within": "-1d"}, "negative"),
        ({"keep_within": "1y-2m"}, "negative"),
    ],
)
def test_invalid_policy(kwargs: dict, message: str) -> None:
    with pytest.raises(RetentionError, match=message):
        RetentionPolicy(**kwargs)


def test_retention_error_is_a_value_error() -> None:
    assert issubclass(RetentionError, ValueError)


@pytest.mark.parametrize(
    ("text", "duration", "shown"),
    [  # restic's TestParseDuration table, plus a few
        ("9h", Duration(hours=9), "9h"),
        ("3d", Duration(days=3), "3d"),
        ("4d2h", Duration(days=4, hours=2), "4d2h"),
        ("7m5d", Duration(months=7, days=5), "7m5d"),
        ("6m4d8h", Duration(months=6, days=4, hours=8), "6m4d8h"),
        ("5d7m", Duration(months=7, days=5), "7m5d"),
        ("4h3d9m", Duration(months=9, days=3, hours=4), "9m3d4h"),
        ("-7m5d", Duration(months=-7, days=5), "-7m5d"),
        ("1y4m-5d-3h", Duration(years=1, months=4, days=-5, hours=-3), "1y4m-5d-3h"),
        ("2y7m-5d", Duration(years=2, months=7, days=-5), "2y7m-5d"),
        ("10d", Duration(days=10), "10d"),
        ("1y2m3d4h", Duration(1, 2, 3, 4), "1y2m3d4h"),
        ("  5d  ", Duration(days=5), "5d"),
        ("1d2d", Duration(days=2), "2d"),  # a repeated unit overrides, as in restic
        ("0d", Duration(), ""),
        ("", Duration(), ""),
    ],
)
def test_parse_duration(text: str, duration: Duration, shown: str) -> None:
    assert parse_duration(text) == duration
    assert str(parse_duration(text)) == shown


@pytest.mark.parametrize(
    "text",
    ["2w", "1y4m3w1d", "s", "\u07c0d", "5", "d", "-", "--5d", "+5d", "1d 2h", "1.5d", "1D"],
)
def test_parse_duration_errors_name_the_text(text: str) -> None:
    with pytest.raises(RetentionError) as info:
        parse_duration(text)
    assert repr(text) in str(info.value)


# ---------------------------------------------------------------------------
# protect, ordering and input checks


def test_protect_keeps_the_verified_backup() -> None:
    backups = [("new", utc("2026-01-03")), ("mid", utc("2026-01-02")), ("old", utc("2026-01-01"))]
    decisions = apply_policy(backups, RetentionPolicy(keep_last=1), UTC, protect=["mid"])
    assert kept(decisions) == {"new": ("last 1/1",), "mid": ("newest verified",)}
    # protection does not use up a rule's count
    decisions = apply_policy(backups, RetentionPolicy(keep_last=2), UTC, protect=("new",))
    assert kept(decisions) == {"new": ("newest verified", "last 1/2"), "mid": ("last 2/2",)}


def test_protect_accepts_a_single_id_string() -> None:
    backups = [("new", utc("2026-01-03")), ("mid", utc("2026-01-02"))]
    decisions = apply_policy(backups, RetentionPolicy(keep_last=1), UTC, protect="mid")
    assert kept(decisions) == {"new": ("last 1/1",), "mid": ("newest verified",)}


def test_protect_unknown_id_is_an_error() -> None:
    with pytest.raises(RetentionError, match="nope"):
        apply_policy([("a", utc("2026-01-01"))], RetentionPolicy(keep_last=1), UTC, protect=["nope"])


def test_naive_or_duplicate_input_is_an_error() -> None:
    with pytest.raises(RetentionError, match="naive"):
        apply_policy([("a", datetime(2026, 1, 1))], RetentionPolicy(keep_last=1), UTC)
    with pytest.raises(RetentionError, match="duplicate"):
        apply_policy(
            [("a", utc("2026-01-01")), ("a", utc("2026-01-02"))], RetentionPolicy(keep_last=1), UTC
        )


def test_no_backups() -> None:
    assert apply_policy([], RetentionPolicy(keep_last=1), UTC) == []
    assert apply_policy(iter(()), RetentionPolicy(keep_last=1), UTC) == []


def test_order_is_newest_first_with_ties_by_id_descending() -> None:
    t = utc("2026-06-01 12:00")
    backups = [("b", t), ("old", t - timedelta(days=1)), ("a", t.astimezone(BERLIN)), ("c", t)]
    decisions = apply_policy(backups, RetentionPolicy(keep_last=2), BERLIN)
    assert [d.id for d in decisions] == ["c", "b", "a", "old"]
    assert [d.keep for d in decisions] == [True, True, False, False]
    assert all(d.time.tzinfo is BERLIN for d in decisions)


# ---------------------------------------------------------------------------
# property tests against a naive reference


RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
REFERENCE_KEYS = {
    "hourly": lambda t: t.strftime("%Y-%m-%d %H"),
    "daily": lambda t: t.date(),
    "weekly": lambda t: t.strftime("%G-W%V"),
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.year,
}


def reference_cutoff(newest: datetime, d: Duration, tz: ZoneInfo) -> datetime:
    """Go's AddDate by stepping months one at a time, then time.Date's zone lookup."""
    wall = newest.astimezone(tz).replace(tzinfo=None, fold=0)
    year, month = wall.year, wall.month
    for _ in range(d.years * 12 + d.months):
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    day = date(year, month, 1) + timedelta(days=wall.day - 1 - d.days)
    as_utc = datetime.combine(day, wall.time(), tzinfo=timezone.utc)
    guess = as_utc.astimezone(tz).utcoffset()
    offset = (as_utc - guess).astimezone(tz).utcoffset()
    return as_utc - offset - timedelta(hours=d.hours)


def reference(backups: list[tuple[str, datetime]], policy: RetentionPolicy, tz: ZoneInfo) -> list:
    """Per rule: group into buckets newest first, take the first of each bucket."""
    ordered = sorted(backups, key=lambda b: (b[1], b[0]), reverse=True)
    reasons: dict[str, list[str]] = {i: [] for i, _ in ordered}
    within = policy.within()
    if within is not None:
        cutoff = reference_cutoff(ordered[0][1], within, tz)
        for i, t in ordered:
            if t > cutoff:
                reasons[i].append(f"within {within}")
    for rule in RULES:
        count = getattr(policy, f"keep_{rule}")
        if count == 0:
            continue
        firsts: dict[object, str] = {}
        for i, t in ordered:
            key = i if rule == "last" else REFERENCE_KEYS[rule](t.astimezone(tz))
            firsts.setdefault(key, i)
        chosen = list(firsts.values())
        label = "all" if count == -1 else str(count)
        for n, i in enumerate(chosen if count == -1 else chosen[:count], 1):
            reasons[i].append(f"{rule} {n}/{label}")
        oldest = ordered[-1][0]
        if oldest not in chosen and (count == -1 or len(chosen) < count):
            reasons[oldest].append(f"oldest {rule}")
    return [(i, bool(reasons[i]), tuple(reasons[i])) for i, _ in ordered]


ZONES = [UTC, BERLIN, NEW_YORK, KIRITIMATI, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("Asia/Kolkata")]
BASE = utc("2025-06-01")
# DST changes (Berlin, New York, Lord Howe) and a New Year, where buckets are interesting
HOTSPOTS = [
    utc(t) for t in (
        "2026-03-29 01:00", "2026-10-25 01:00", "2026-03-08 07:00", "2026-11-01 06:00",
        "2026-04-04 15:00", "2026-10-03 15:30", "2026-12-31 23:00", "2026-12-31 10:00",
    )
]
instants = st.one_of(
    st.integers(0, 3 * 86400).map(lambda s: BASE + timedelta(seconds=s)),
    st.integers(0, 900 * 86400).map(lambda s: BASE + timedelta(seconds=s)),
    st.tuples(st.sampled_from(HOTSPOTS), st.integers(-5 * 3600, 5 * 3600)).map(
        lambda p: p[0] + timedelta(seconds=p[1])
    ),
)
backup_lists = st.lists(instants, max_size=25).map(
    lambda ts: [(f"b{n:02d}", t) for n, t in enumerate(ts)]
)
counts = st.sampled_from([0, 0, 0, 1, 2, 3, 5, 8, -1])
durations = st.one_of(
    st.none(),
    st.tuples(
        st.integers(0, 1), st.integers(0, 14), st.integers(0, 40), st.integers(0, 50)
    ).map(lambda d: "".join(f"{v}{u}" for v, u in zip(d, "ymdh") if v) or "0d"),
)
policies = st.builds(
    RetentionPolicy,
    keep_last=counts, keep_hourly=counts, keep_daily=counts, keep_weekly=counts,
    keep_monthly=counts, keep_yearly=counts, keep_within=durations,
).filter(lambda p: not p.is_empty())
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(backups=backup_lists.filter(bool), policy=policies, tz=st.sampled_from(ZONES))
def test_matches_naive_reference(backups, policy, tz) -> None:
    got = [(d.id, d.keep, d.reasons) for d in apply_policy(backups, policy, tz)]
    assert got == reference(backups, policy, tz)


@settings(max_examples=100, deadline=None)
@given(
    backups=backup_lists.filter(bool),
    policy=policies,
    tz=st.sampled_from(ZONES),
    input_tz=st.sampled_from(ZONES),
    seed=st.integers(0, 2**32),
)
def test_input_order_and_input_zone_do_not_matter(backups, policy, tz, input_tz, seed) -> None:
    shuffled = [(i, t.astimezone(input_tz)) for i, t in backups]
    random.Random(seed).shuffle(shuffled)
    assert apply_policy(shuffled, policy, tz) == apply_policy(backups, policy, tz)


@settings(max_examples=100, deadline=None)
@given(backups=backup_lists.filter(bool), policy=policies, tz=st.sampled_from(ZONES), data=st.data())
def test_invariants(backups, policy, tz, data) -> None:
    protected = data.draw(st.sampled_from([i for i, _ in backups]))
    decisions = apply_policy(backups, policy, tz, protect=[protected])
    plain = apply_policy(backups, policy, tz)
    assert len(decisions) == len(backups)
    assert decisions[0].keep  # a non-empty policy never removes the newest
    # Instants, not datetimes: Python compares two times in one zone by wall clock, so 01:00 EST
    # (after the fall-back) would sort before 01:59 EDT although it comes an hour later.
    times = [d.time.timestamp() for d in decisions]
    assert times == sorted(times, reverse=True)
    for d, p in zip(decisions, plain):
        assert d.keep == bool(d.reasons)
        if d.id == protected:
            assert d.keep and d.reasons == ("newest verified", *p.reasons)
        else:
            assert d == p
    for rule in RULES:
        count = getattr(policy, f"keep_{rule}")
        numbered = [r for d in decisions for r in d.reasons if re.fullmatch(rf"{rule} \d+/\w+", r)]
        oldest = [r for d in decisions for r in d.reasons if r == f"oldest {rule}"]
        if count >= 0:
            assert len(numbered) <= count
        assert len(oldest) <= (1 if count else 0)
