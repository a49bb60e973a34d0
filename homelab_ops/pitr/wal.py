"""WAL positions, segment names and the archive folder's meaning: pure functions, no I/O.

PostgreSQL names a WAL segment `TTTTTTTTXXXXXXXXYYYYYYYY`: timeline, then the
segment number split in two. pg_receivewal adds `.gz` (its compression) and
`.partial` (the segment it is still writing); homelab-ops adds `.age` when it
encrypts a finished segment. Everything here works on names, so the local folder
and an off-site listing are read alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_SEGMENT_SIZE = 16 << 20

_LSN = re.compile(r"^\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*$")
SEGMENT = re.compile(r"^(?P<name>(?P<tli>[0-9A-F]{8})(?P<hi>[0-9A-F]{8})(?P<lo>[0-9A-F]{8}))"
                     r"(?P<comp>\.gz|\.lz4)?(?P<age>\.age)?$")
PARTIAL = re.compile(r"^(?P<name>(?P<tli>[0-9A-F]{8})(?P<hi>[0-9A-F]{8})(?P<lo>[0-9A-F]{8}))"
                     r"(?P<comp>\.gz|\.lz4)?\.partial$")
HISTORY = re.compile(r"^(?P<tli>[0-9A-F]{8})\.history(?P<age>\.age)?$")


class WalError(ValueError):
    """A WAL position, name or chain that cannot be used; the message says which."""


def parse_lsn(text: str) -> int:
    m = _LSN.match(str(text))
    if not m:
        raise WalError(f"{text!r} is not a WAL position like 0/3000148")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segments_per_id(seg_size: int) -> int:
    return 0x100000000 // seg_size


def segno_of(lsn: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return lsn // seg_size


def segment_name(tli: int, segno: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per = segments_per_id(seg_size)
    return f"{tli:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment_name(name: str, seg_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """(timeline, segment number) of a bare 24-hex segment name."""
    if not re.fullmatch(r"[0-9A-F]{24}", name):
        raise WalError(f"{name!r} is not a WAL segment name")
    return int(name[:8], 16), int(name[8:16], 16) * segments_per_id(seg_size) + int(name[16:], 16)


@dataclass(frozen=True)
class SegmentFile:
    file: str  # the name on disk
    name: str  # the 24-hex segment name PostgreSQL asks for
    tli: int
    segno: int
    partial: bool
    compression: str | None  # "gz", "lz4" or None
    encrypted: bool


@dataclass
class Archive:
    """An archive folder read by name: segments, partial segments, timeline histories, the rest."""

    segments: dict[tuple[int, int], SegmentFile] = field(default_factory=dict)  # (tli, segno) -> finished file
    partials: dict[tuple[int, int], SegmentFile] = field(default_factory=dict)
    histories: dict[int, str] = field(default_factory=dict)  # tli -> file name
    other: list[str] = field(default_factory=list)

    def find(self, name: str, seg_size: int = DEFAULT_SEGMENT_SIZE, *, allow_partial: bool = False) -> SegmentFile | None:
        key = parse_segment_name(name, seg_size)
        found = self.segments.get(key)
        if found is None and allow_partial:
            found = self.partials.get(key)
        return found


def read_archive(names, seg_size: int = DEFAULT_SEGMENT_SIZE) -> Archive:
    """Classify file names. When both a plain and an encrypted copy of one segment exist
    (a crash between encrypting and removing the plain file), the encrypted one is listed."""
    a = Archive()
    for n in sorted(names):
        if m := SEGMENT.match(n):
            tli, segno = parse_segment_name(m["name"], seg_size)
            f = SegmentFile(n, m["name"], tli, segno, False, (m["comp"] or ".")[1:] or None, bool(m["age"]))
            old = a.segments.get((tli, segno))
            if old is None or (f.encrypted and not old.encrypted):
                a.segments[(tli, segno)] = f
        elif m := PARTIAL.match(n):
            tli, segno = parse_segment_name(m["name"], seg_size)
            a.partials[(tli, segno)] = SegmentFile(n, m["name"], tli, segno, True,
                                                    (m["comp"] or ".")[1:] or None, False)
        elif m := HISTORY.match(n):
            a.histories[int(m["tli"], 16)] = n
        else:
            a.other.append(n)
    return a


def parse_history(text: str) -> list[tuple[int, int]]:
    """A timeline history file: [(parent timeline, LSN where it ended)], oldest first."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise WalError(f"timeline history line {line!r} is not `<timeline> <LSN> <reason>`")
        out.append((int(parts[0]), parse_lsn(parts[1])))
    return out


def timeline_of(lsn: int, target_tli: int, history: list[tuple[int, int]]) -> int:
    """Which timeline on the path to `target_tli` holds the WAL at `lsn`."""
    for tli, end in history:
        if lsn < end:
            return tli
    return target_tli


@dataclass(frozen=True)
class Gap:
    segment: str  # the file PostgreSQL would ask for
    why: str


def find_gaps(archive: Archive, start_lsn: int, end_lsn: int, target_tli: int,
              history: list[tuple[int, int]] | None = None, *, seg_size: int = DEFAULT_SEGMENT_SIZE,
              partial_ok_at_end: bool = True) -> list[Gap]:
    """Every segment recovery from `start_lsn` to `end_lsn` on `target_tli` needs but the archive lacks.

    A segment in which the timeline switches may come from either timeline (the new
    timeline's copy starts with the old one's WAL). Only the last segment may be a
    `.partial` (the one pg_receivewal is still writing).
    """
    history = history or []
    if target_tli > 1 and target_tli not in archive.histories:
        # a timeline above 1 always has a history file; without it the chain cannot be followed
        return [Gap(f"{target_tli:08X}.history", "the timeline's history file is missing")]
    gaps = []
    first, last = segno_of(start_lsn, seg_size), segno_of(max(end_lsn - 1, start_lsn), seg_size)
    for segno in range(first, last + 1):
        seg_start, seg_end = segno * seg_size, (segno + 1) * seg_size - 1
        tlis = sorted({timeline_of(seg_start, target_tli, history), timeline_of(seg_end, target_tli, history)},
                      reverse=True)
        if any((t, segno) in archive.segments for t in tlis):
            continue
        if segno == last and partial_ok_at_end and any((t, segno) in archive.partials for t in tlis):
            continue
        gaps.append(Gap(segment_name(tlis[0], segno, seg_size), "missing from the archive"))
    return gaps


def wal_to_delete(archive: Archive, keep_from_segno: int | None) -> list[str]:
    """Finished segment files older than the oldest segment a kept base backup needs.

    `keep_from_segno` is the start segment of the oldest kept base backup; None (no base
    backup kept) deletes nothing. Partial segments and timeline histories are never deleted.
    """
    if keep_from_segno is None:
        return []
    return sorted(f.file for (tli, segno), f in archive.segments.items() if segno < keep_from_segno)
