"""Daily min/mean/max per metric, day boundaries in a time zone, and the snapshot cron.

Pure functions: the store reads and writes rows, these decide what the rows are.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class DailyRow:
    day: date
    metric: str
    labels: dict
    samples: int  # non-null values; 0 when the sensor was absent all day
    min: float | None
    mean: float | None
    max: float | None


def labels_key(labels: dict) -> str:
    """A canonical text form, so {"a":1,"b":2} and {"b":2,"a":1} are one series."""
    return json.dumps(labels or {}, sort_keys=True, separators=(",", ":"))


def rollup(day: date, rows) -> list[DailyRow]:
    """(metric, labels, value) rows of one day -> one DailyRow per series, sorted."""
    series: dict[tuple[str, str], list[float]] = {}
    for metric, labels, value in rows:
        values = series.setdefault((metric, labels_key(labels)), [])
        if value is not None and not math.isnan(value):
            values.append(float(value))
    out = []
    for (metric, key), values in sorted(series.items()):
        if values:
            out.append(DailyRow(day, metric, json.loads(key), len(values), min(values),
                                math.fsum(values) / len(values), max(values)))
        else:
            out.append(DailyRow(day, metric, json.loads(key), 0, None, None, None))
    return out


def day_bounds(day: date, tz: str | ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of `day` in `tz`, in UTC: 23 or 25 hours long across a DST change.

    fold=0 maps a midnight the clocks skip to the first instant of the day, so
    consecutive days tile time without gaps or overlaps.
    """
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    start = datetime.combine(day, time(0), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)


def cron_for(seconds: float) -> str:
    """A cron expression firing every `seconds`; only intervals that divide an hour or a day map."""
    s = int(seconds)
    if s != seconds or s < 60 or s % 60:
        raise ValueError(f"metrics.snapshot_every must be whole minutes, not {seconds:g}s")
    minutes = s // 60
    if minutes < 60:
        if 60 % minutes:
            raise ValueError(f"metrics.snapshot_every of {minutes}m does not divide an hour; use 1, 2, 3, 4, 5, "
                             "6, 10, 12, 15, 20 or 30 minutes")
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    if minutes % 60 or 24 % (minutes // 60):
        raise ValueError(f"metrics.snapshot_every of {minutes}m is not a whole number of hours dividing a day")
    hours = minutes // 60
    return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
