"""The lost-workflow tripwire: each workflow export compared with the one before it.

A workflow that vanished, or a drop of more than `n8n.max_drop_share` of the workflows or
credentials, is named with the newest export that still holds it, so one
`n8n import:workflow --input=FILE` brings it back. Pure: folders in, findings out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

STEM_LEN = len("20260101T000000Z")


@dataclass(frozen=True)
class Lost:
    id: str
    name: str
    export: str  # the newest export that still has it
    file: str


@dataclass
class Tripwire:
    current: str | None
    previous: str | None
    lost: list[Lost] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)

    @property
    def tripped(self) -> bool:
        return bool(self.lost or self.drops)

    def message(self) -> str:
        if not self.previous:
            return "the first export: nothing to compare with"
        if not self.tripped:
            return f"export {self.current} holds every workflow of {self.previous}"
        parts = [f"workflow {w.name!r} ({w.id}) is gone; the newest export that has it is {w.export}: "
                 f"n8n import:workflow --input={w.file}" for w in self.lost[:10]]
        if len(self.lost) > 10:
            parts.append(f"and {len(self.lost) - 10} more workflows")
        return "; ".join(parts + self.drops)


def export_folders(root: Path) -> list[Path]:
    """Complete export folders, oldest first (a `.partial` folder is an interrupted export)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and len(p.name) == STEM_LEN)


def names_in(folder: Path) -> dict[str, str]:
    out = {}
    for f in sorted(folder.glob("*.json")):
        try:
            out[f.stem] = str(json.loads(f.read_bytes()).get("name", f.stem))
        except (ValueError, AttributeError, OSError):
            out[f.stem] = f.stem
    return out


def drop_problem(what: str, before: int | None, now: int | None, share: float) -> str | None:
    if not before or now is None:
        return None
    dropped = (before - now) / before
    if dropped > share:
        return f"{what} dropped from {before} to {now} ({dropped:.0%}, more than n8n.max_drop_share {share:.0%})"
    return None


def compare_exports(root: Path, *, share: float, credentials_before: int | None = None,
                    credentials_now: int | None = None) -> Tripwire:
    folders = export_folders(root)
    if not folders:
        return Tripwire(None, None)
    current = folders[-1]
    if len(folders) < 2:
        return Tripwire(current.name, None)
    previous = folders[-2]
    now, before = names_in(current), names_in(previous)
    t = Tripwire(current.name, previous.name)
    for wid in sorted(before.keys() - now.keys()):
        t.lost.append(Lost(wid, before[wid], previous.name, str(previous / f"{wid}.json")))
    for problem in (drop_problem("workflows", len(before), len(now), share),
                    drop_problem("credentials", credentials_before, credentials_now, share)):
        if problem:
            t.drops.append(problem)
    return t
