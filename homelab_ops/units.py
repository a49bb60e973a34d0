"""Sizes and ages for people: one formatter each, so every message, table and alert reads alike.

Sizes are humanize's binary units (`1.5 GiB`). Durations stay compact (`45s`, `12m`, `2.5h`, `3.0d`):
they sit in one-line alerts and table cells, where humanize's "2 hours" would not fit.
"""

from __future__ import annotations

import humanize


def size(n: float) -> str:
    return humanize.naturalsize(n, binary=True, format="%.1f")


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
