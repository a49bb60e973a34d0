"""What a folder of backup files means: names, complete backups, orphans.

Pure functions over file names so that the local folder and an S3 prefix are read
the same way. A backup is complete only when its dump and its manifest both
exist; anything else is an orphan that is never counted as a backup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
GLOBALS = "_globals"  # the pseudo-database under which `pg_dumpall --globals-only` is kept

DUMP_SUFFIXES = (".dump.zst", ".dump.zst.age", ".globals.sql.zst", ".globals.sql.zst.age")
MANIFEST_SUFFIX = ".manifest.json"
VERIFIED_SUFFIX = ".verified.json"

# Every file whose name starts with a stem belongs to that backup set: the dump, the manifest,
# the verification record and any sidecar (n8n's key, binary data) another module writes.
_NAME = re.compile(r"^(?P<stem>\d{8}T\d{6}Z)(?P<suffix>\..+?)(?P<partial>\.partial)?$")


def stem_for(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime(STAMP_FORMAT)


def time_of(stem: str) -> datetime:
    return datetime.strptime(stem, STAMP_FORMAT).replace(tzinfo=timezone.utc)


def dump_suffix(*, encrypted: bool, globals_only: bool = False) -> str:
    base = ".globals.sql.zst" if globals_only else ".dump.zst"
    return base + (".age" if encrypted else "")


@dataclass
class Backup:
    """One complete backup: a dump and its manifest with the same stem."""

    stem: str
    dump: str
    manifest: str
    verified: str | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    sidecars: list[str] = field(default_factory=list)

    @property
    def time(self) -> datetime:
        return time_of(self.stem)

    @property
    def encrypted(self) -> bool:
        return self.dump.endswith(".age")

    @property
    def files(self) -> list[str]:
        return [f for f in (self.dump, *self.sidecars, self.verified, self.manifest) if f]

    @property
    def size(self) -> int:
        return sum(self.sizes.get(f, 0) for f in self.files)


@dataclass
class Listing:
    backups: list[Backup]  # complete backups, oldest first
    orphans: list[str]  # a dump without manifest, a manifest without dump, a stray verified.json or sidecar
    partials: list[str]  # interrupted writes
    unknown: list[str]  # names this tool did not write; never touched


def read_listing(names: dict[str, int] | list[str]) -> Listing:
    """Group file names (optionally with sizes) into complete backups and leftovers."""
    sizes = names if isinstance(names, dict) else {n: 0 for n in names}
    by_stem: dict[str, dict[str, str]] = {}
    partials, unknown = [], []
    for name in sorted(sizes):
        m = _NAME.match(name)
        if not m:
            unknown.append(name)
            continue
        if m.group("partial"):
            partials.append(name)
            continue
        suffix = m.group("suffix")
        kind = ("manifest" if suffix == MANIFEST_SUFFIX else "verified" if suffix == VERIFIED_SUFFIX
                else "dump" if suffix in DUMP_SUFFIXES else name)
        slot = by_stem.setdefault(m.group("stem"), {})
        if kind in slot:  # two dumps with one stem (encrypted and not): ambiguous, keep both as orphans
            unknown.append(name)
            continue
        slot[kind] = name
    backups, orphans = [], []
    for stem, parts in sorted(by_stem.items()):
        if "dump" in parts and "manifest" in parts:
            sidecars = sorted(v for k, v in parts.items() if k not in ("dump", "manifest", "verified"))
            b = Backup(stem, parts["dump"], parts["manifest"], parts.get("verified"), sidecars=sidecars)
            b.sizes = {f: sizes[f] for f in b.files}
            backups.append(b)
        else:
            orphans.extend(sorted(parts.values()))
    return Listing(backups, orphans, partials, unknown)


def dump_without_manifest(listing: Listing, stem: str) -> str | None:
    """The dump of `stem` when it is an orphan (its manifest missing): shown as damaged, restorable only
    with --ignore-manifest."""
    return next((n for n in listing.orphans if n.startswith(stem) and n[len(stem):] in DUMP_SUFFIXES), None)
