"""The alert state machine: what to say when a check's state changes, or does not.

Pure functions over plain data, so dedup, re-alert, flapping and recovery are tested
without a sensor. The sensor keeps one `Memory` per check in its cursor (JSON) and calls
`advance` each tick with the new results and the time.

Rules:
- the first result of a check is announced unless it is ok;
- a change of state is announced (ok -> warn/fail/unknown, warn -> fail, ... and back to ok:
  `recovered`); an unchanged bad state is repeated at most every `realert_after`
  (`unknown` is not repeated: a check that cannot run says so once);
- `flap_changes` changes between ok and not ok within `flap_window` make a check flapping: announced once,
  then silent until it has kept one state for a whole window (`settled`);
- a check that is no longer reported is forgotten after `realert_after`, silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from homelab_ops.health.checks import FAIL, OK, UNKNOWN, WARN, CheckResult

if TYPE_CHECKING:
    from homelab_ops.settings import HealthSettings

FLAPPING = "flapping"
_SEVERITY = {OK: "info", UNKNOWN: "warn", WARN: "warn", FAIL: "fail", FLAPPING: "warn"}
_SEV_RANK = {"info": 0, "warn": 1, "fail": 2}


def severity_of(state: str) -> str:
    """The routing severity (info, warn, fail) of a check state."""
    return _SEVERITY.get(state, "warn")


def _max_sev(a: str | None, b: str) -> str:
    return b if a is None or _SEV_RANK[b] > _SEV_RANK[a] else a


@dataclass(frozen=True)
class Policy:
    realert_after: float = 6 * 3600
    flap_window: float = 3600
    flap_changes: int = 4
    remedy_cooldown: float = 3600

    @classmethod
    def of(cls, h: HealthSettings) -> Policy:
        return cls(h.realert_after.seconds, h.flap_window.seconds, h.flap_changes, h.remedy_cooldown.seconds)


@dataclass
class Memory:
    """What the sensor remembers about one check between ticks (kept in its cursor)."""

    state: str
    reason: str
    since: float  # when it entered `state`
    seen: float  # the last tick that reported it
    bad_since: float | None = None  # start of the current episode away from ok
    told: str | None = None  # the state last announced (FLAPPING while flapping)
    told_at: float | None = None
    peak: str | None = None  # highest severity announced since the last ok: routes the recovery
    changes: list[float] = field(default_factory=list)  # ok <-> not-ok changes within the flap window
    flapping: bool = False
    remedy_at: float | None = None
    remedy_episode: float | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Memory:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Notice:
    """Something to tell people about one check."""

    check: str
    kind: str  # problem, changed, reminder, flapping, settled, recovered
    state: str
    reason: str
    severity: str  # info, warn, fail: which chats receive it
    previous: str | None = None  # the state announced before
    since: float | None = None  # start of the episode (bad states) or of the bad episode that ended


def _tell(mem: Memory, now: float, state: str) -> None:
    mem.told, mem.told_at = state, now
    mem.peak = None if state == OK else _max_sev(mem.peak, severity_of(state))


def step(mem: Memory | None, r: CheckResult, now: float, policy: Policy) -> tuple[Memory, Notice | None]:
    """One check, one tick: the new memory and what (if anything) to announce."""
    bad = r.state != OK
    if mem is None:
        mem = Memory(r.state, r.reason, since=now, seen=now, bad_since=now if bad else None,
                     changes=[now] if bad else [])
        _tell(mem, now, r.state)
        return mem, (Notice(r.name, "problem", r.state, r.reason, severity_of(r.state), since=now) if bad else None)

    mem.seen = now
    ended_episode = mem.bad_since
    if r.state != mem.state:
        if (r.state == OK) != (mem.state == OK):  # flapping is between ok and not ok, not warn <-> fail
            mem.changes.append(now)
        mem.since = now
        mem.bad_since = (mem.bad_since or now) if bad else None
    mem.changes = [t for t in mem.changes if now - t < policy.flap_window]
    mem.state, mem.reason = r.state, r.reason

    if not mem.flapping and len(mem.changes) >= policy.flap_changes:
        mem.flapping = True
        previous = mem.told
        peak = _max_sev(mem.peak, "warn")
        mem.told, mem.told_at, mem.peak = FLAPPING, now, peak
        return mem, Notice(r.name, FLAPPING, r.state,
                           f"changed state {len(mem.changes)} times within {_human(policy.flap_window)}; now {r.state}: "
                           f"{r.reason}. Further changes are not announced until it settles.",
                           peak, previous=previous)
    if mem.flapping:
        if mem.changes:
            return mem, None
        mem.flapping = False
        peak = mem.peak or "warn"
        _tell(mem, now, r.state)
        return mem, Notice(r.name, "settled", r.state, r.reason, peak if r.state == OK else severity_of(r.state),
                           previous=FLAPPING)

    if r.state != mem.told:
        previous, peak = mem.told, mem.peak
        if r.state == OK:
            _tell(mem, now, OK)
            if previous is None:
                return mem, None
            return mem, Notice(r.name, "recovered", OK, r.reason, peak or severity_of(previous), previous=previous,
                               since=ended_episode)
        _tell(mem, now, r.state)
        kind = "problem" if previous in (None, OK) else "changed"
        return mem, Notice(r.name, kind, r.state, r.reason, severity_of(r.state), previous=previous,
                           since=mem.bad_since)

    if r.state in (WARN, FAIL) and mem.told_at is not None and now - mem.told_at >= policy.realert_after:
        mem.told_at = now
        return mem, Notice(r.name, "reminder", r.state, r.reason, severity_of(r.state), previous=r.state,
                           since=mem.bad_since)
    return mem, None


def advance(memories: dict[str, Memory], results: list[CheckResult], now: float,
            policy: Policy) -> tuple[dict[str, Memory], list[Notice]]:
    """Every check, one tick. Checks not reported this tick are kept for `realert_after`, then dropped."""
    out: dict[str, Memory] = {}
    notices: list[Notice] = []
    for r in results:
        mem, notice = step(memories.get(r.name), r, now, policy)
        out[r.name] = mem
        if notice:
            notices.append(notice)
    for name, mem in memories.items():
        if name not in out and now - mem.seen < policy.realert_after:
            out[name] = mem
    return out, notices


def remedy_key(mem: Memory, r: CheckResult, now: float, policy: Policy, on_states: frozenset[str]) -> str | None:
    """A run key when this check's episode should start its remedy now, else None.

    One run per episode (a continuous stretch away from ok), and at most one per
    `remedy_cooldown` per check, so a flapping disk does not start a run every minute.
    """
    if r.state not in on_states or mem.bad_since is None:
        return None
    if mem.remedy_episode == mem.bad_since:
        return None
    if mem.remedy_at is not None and now - mem.remedy_at < policy.remedy_cooldown:
        return None
    return f"health:{r.name}:{int(mem.bad_since)}"


def mark_remedied(mem: Memory, now: float) -> None:
    mem.remedy_at, mem.remedy_episode = now, mem.bad_since


def _human(seconds: float) -> str:
    from homelab_ops import units

    return units.duration(seconds)
