"""The Raspberry Pi firmware's throttling word (`vcgencmd get_throttled`), decoded.

Pure functions: the bit layout is the firmware's, documented in the Raspberry Pi
documentation under `vcgencmd get_throttled`. Bits 0-3 say what is happening now,
bits 16-19 what has happened since boot.
"""

from __future__ import annotations

import re

# name -> bit offset within a half (now: +0, since boot: +16)
FLAGS: dict[str, int] = {
    "under_voltage": 0,
    "arm_frequency_capped": 1,
    "throttled": 2,
    "soft_temperature_limit": 3,
}
SINCE_BOOT_SHIFT = 16

_WORD = re.compile(r"throttled\s*=\s*(0x[0-9a-fA-F]+|\d+)")


class ThrottledOutputError(ValueError):
    """vcgencmd answered something that is not `throttled=0x...`."""


def parse_get_throttled(output: str) -> int:
    """The integer in `throttled=0x50005` (vcgencmd's whole answer)."""
    m = _WORD.search(output)
    if not m:
        raise ThrottledOutputError(f"unexpected vcgencmd get_throttled output: {output.strip()[:80]!r}")
    return int(m.group(1), 0)


def decode(word: int) -> dict[tuple[str, str], bool]:
    """{(flag, "now" | "since_boot"): set?} for every named flag."""
    out: dict[tuple[str, str], bool] = {}
    for name, bit in FLAGS.items():
        out[(name, "now")] = bool(word >> bit & 1)
        out[(name, "since_boot")] = bool(word >> (bit + SINCE_BOOT_SHIFT) & 1)
    return out


def active(word: int, when: str) -> list[str]:
    """Names of the flags set `now` or `since_boot`, in bit order."""
    return [name for (name, w), on in decode(word).items() if w == when and on]
