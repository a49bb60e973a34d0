"""Sizes and durations: one parser and one formatter each, so every file, message and alert reads alike.

Sizes are humanize's binary units (`1.5 GiB`); an age in a sentence is humanize's words (`ago`,
"4 hours ago"). Durations stay compact (`45s`, `12m`, `2.5h`, `3.0d`): they sit in one-line alerts
and table cells, where humanize's "2 hours" would not fit. The one
duration syntax owners write (the settings file, `creds add --period`, `--since`) is parsed here;
retention.keep_within alone keeps restic's calendar syntax (y m(onths) d h), as restic defines it.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

import humanize
import yaml
from pydantic import AfterValidator, BeforeValidator

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(text: str) -> float:
    """Parse `90s`, `15m`, `6h`, `2d`, `1w` (or a bare number of seconds)."""
    m = _DURATION.fullmatch(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 6h, 2d or 1w")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


class Seconds(str):
    """A duration as the settings file writes it ("15m"), which also knows its length in seconds."""

    @property
    def seconds(self) -> float:
        return duration_seconds(self)


# Rendered configs (Prometheus, Alertmanager) write durations as the plain strings they are.
yaml.SafeDumper.add_representer(Seconds, yaml.representer.SafeRepresenter.represent_str)


def _duration_text(v: Any) -> str:
    """The one duration syntax: a number and a unit, s m(inutes) h d w.

    A bare number is refused (except 0, which has no unit to get wrong): `period: 30` meant as
    days would rotate every 30 seconds, and `m` is minutes here but months in restic's
    `retention.keep_within`, so the file always says which unit it means.
    """
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise ValueError(f"{v!r} is not a duration like 90s, 15m, 6h, 2d or 1w")
    text = f"{v:g}" if isinstance(v, (int, float)) else v
    m = _DURATION.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m (minutes), 6h, 2d or 1w "
                         "(years and months exist only in retention.keep_within)")
    if not m.group(2) and float(m.group(1)) != 0:
        raise ValueError(f"{text.strip()} has no unit: write {text.strip()}s for seconds (or 15m, 6h, 2d, 1w)")
    return text


def _positive(v: str) -> Seconds:
    v = Seconds(v)
    if v.seconds <= 0:
        raise ValueError(f"{v.strip()} is zero, which means nothing here; write a duration longer than 0, "
                         "e.g. 90s, 15m, 2h")
    return v


# Every duration owners write is one of these two (pydantic types).
Duration = Annotated[str, BeforeValidator(_duration_text), AfterValidator(_positive)]
DurationOrZero = Annotated[str, BeforeValidator(_duration_text), AfterValidator(Seconds)]  # where 0 means off


def size(n: float) -> str:
    return humanize.naturalsize(n, binary=True, format="%.1f")


def ago(seconds: float) -> str:
    """An age in a sentence read whole, in humanize's words: "30 minutes ago", "4 hours ago", "1 day
    and 16 hours ago" (to the hour: a backup 40 hours old must not read as "a day"), "3 days ago"."""
    delta = timedelta(seconds=max(0.0, seconds))
    if delta < timedelta(hours=1):
        return humanize.naturaldelta(delta) + " ago"
    return humanize.precisedelta(delta, minimum_unit="hours", format="%0.0f") + " ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
