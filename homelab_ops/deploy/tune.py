"""Right-size the monitoring stack's limits from what its containers really use.

Pure: turning the Engine's stats into usage, proposing limits with headroom and
fitting them into the memory budget (all or nothing). I/O: `sample_usage` reads
the stats; `apply` lives in the Dagster op via `engine.update_limits`.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from homelab_ops.deploy.plan import MEMORY_CAPS_MB, parse_cpuset
from homelab_ops.deploy.spec import Limits

MB = 1024 * 1024
# Below these a service fails on its first busy moment, however idle the window was.
FLOOR_MB = {"prometheus": 128, "grafana": 128, "loki": 96, "alloy": 64, "cadvisor": 64,
            "node_exporter": 32, "alertmanager": 32, "n8n_runner": 96}
DEFAULT_FLOOR_MB = 32
STEP_MB = 8
CPU_FLOOR = 0.25  # cores: compaction and dashboard loads burst well above an idle window


class FitError(ValueError):
    """The measured needs do not fit: names the service, and nothing is applied."""

    def __init__(self, service: str, message: str):
        super().__init__(message)
        self.service = service


@dataclass(frozen=True)
class Usage:
    service: str
    samples: int
    peak_memory_mb: float  # the window's peak working set (page cache excluded)
    peak_cpu: float  # cores
    mean_cpu: float


@dataclass(frozen=True)
class Proposal:
    service: str
    before: Limits
    after: Limits
    need_mb: int  # the least it may get
    want_mb: int  # with full headroom

    @property
    def changed(self) -> bool:
        return self.before != self.after


def memory_used(stats: dict) -> int:
    """What `docker stats` shows: usage minus reclaimable page cache (cgroup v1 and v2)."""
    m = stats.get("memory_stats") or {}
    usage = m.get("usage") or 0
    s = m.get("stats") or {}
    cache = s.get("total_inactive_file", s.get("inactive_file", 0))
    return max(0, usage - cache)


def cpu_cores(stats: dict) -> float | None:
    """Cores in use between this sample and the Engine's previous one."""
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    try:
        d_cpu = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
        d_sys = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
    except (KeyError, TypeError):
        return None
    if d_sys <= 0 or d_cpu < 0:
        return None
    online = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or []) or 1
    return d_cpu / d_sys * online


def summarize(service: str, samples: list[dict]) -> Usage:
    mems = [memory_used(s) for s in samples]
    cpus = [c for c in (cpu_cores(s) for s in samples) if c is not None]
    peak = max(mems, default=0)
    return Usage(service=service, samples=len(samples), peak_memory_mb=round(peak / MB, 1),
                 peak_cpu=round(max(cpus, default=0.0), 3),
                 mean_cpu=round(sum(cpus) / len(cpus), 3) if cpus else 0.0)


def _round_up(mb: float, step: int = STEP_MB) -> int:
    return int(math.ceil(mb / step) * step)


def propose(usage: dict[str, Usage], current: dict[str, Limits], *, budget_mb: int, headroom: float = 1.5,
            min_headroom: float = 1.2, cpu_headroom: float = 2.0, order: list[str] | None = None,
            floors: dict[str, int] = FLOOR_MB, caps: dict[str, int] = MEMORY_CAPS_MB) -> list[Proposal]:
    """Limits with headroom, fitted into the budget, or FitError naming who does not fit.

    need = peak x min_headroom (at least the floor); want = peak x headroom. If the wants fit,
    everyone gets theirs; else the room left over the needs is shared in proportion to what
    each wanted beyond its need. A need over a service's cap, or needs over the budget, fail.
    """
    order = order or sorted(usage)
    need: dict[str, int] = {}
    want: dict[str, int] = {}
    for name in order:
        u = usage[name]
        floor = floors.get(name, DEFAULT_FLOOR_MB)
        need[name] = max(floor, _round_up(u.peak_memory_mb * min_headroom))
        want[name] = max(need[name], _round_up(u.peak_memory_mb * headroom))
        cap = caps.get(name)
        if cap is not None:
            if need[name] > cap:
                raise FitError(name, f"{name} needs {need[name]} MB (peak {u.peak_memory_mb} MB) but may have "
                                     f"at most {cap} MB; nothing was applied")
            want[name] = min(want[name], cap)
    if sum(need.values()) > budget_mb:
        total = 0
        for name in order:
            total += need[name]
            if total > budget_mb:
                detail = ", ".join(f"{n} {need[n]}" for n in order)
                raise FitError(name, f"{name} does not fit: the needs add up to {sum(need.values())} MB over a "
                                     f"budget of {budget_mb} MB ({detail}); nothing was applied")
    if sum(want.values()) <= budget_mb:
        memory = dict(want)
    else:
        room = budget_mb - sum(need.values())
        extra = {n: want[n] - need[n] for n in order}
        total_extra = sum(extra.values()) or 1
        memory = {n: need[n] + (room * extra[n] // total_extra) // STEP_MB * STEP_MB for n in order}
    out = []
    for name in order:
        before = current[name]
        ncores = len(parse_cpuset(before.cpuset)) if before.cpuset else None
        cpus = max(CPU_FLOOR, math.ceil(usage[name].peak_cpu * cpu_headroom * 20) / 20)
        if ncores is not None and cpus >= ncores:
            cpus = None  # the whole cpuset: a quota would only add throttling
        after = Limits(memory_mb=memory[name], cpuset=before.cpuset, cpus=cpus)
        out.append(Proposal(name, before, after, need[name], want[name]))
    return out


def tuned_record(proposals: list[Proposal], settings_limits: dict, at: float) -> dict[str, dict]:
    """What the deploy plan reads back: tuned limits, valid while the settings' values stay the same.

    `settings_limits` maps service -> anything with `memory_mb` and `cpus` (its settings section).
    """
    return {p.service: {"memory_mb": p.after.memory_mb, "cpus": p.after.cpus,
                        "settings_memory_mb": settings_limits[p.service].memory_mb,
                        "settings_cpus": settings_limits[p.service].cpus, "at": at}
            for p in proposals}


def load_tuned(state_dir: str) -> dict[str, dict]:
    p = Path(state_dir) / "tuned-limits.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def save_tuned(state_dir: str, record: dict[str, dict]) -> Path:
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "tuned-limits.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    tmp.replace(d / "tuned-limits.json")
    return d / "tuned-limits.json"


def sample_usage(client, containers: dict[str, str], window_s: float) -> dict[str, Usage]:
    """Read the Engine's stats for every container over the window, in parallel.

    Each non-streaming stats call takes about a second (the Engine waits for a second
    CPU sample), which sets the sampling rate.
    """
    def one(service: str, name: str) -> Usage:
        deadline = time.monotonic() + window_s
        samples = []
        while True:
            samples.append(client.api.stats(name, stream=False))
            if time.monotonic() >= deadline:
                return summarize(service, samples)

    with ThreadPoolExecutor(max_workers=max(1, len(containers))) as pool:
        futures = {svc: pool.submit(one, svc, name) for svc, name in containers.items()}
        return {svc: f.result() for svc, f in futures.items()}


def as_rows(proposals: list[Proposal], usage: dict[str, Usage]) -> list[dict]:
    return [{"service": p.service, **{f"before_{k}": v for k, v in asdict(p.before).items()},
             **{f"after_{k}": v for k, v in asdict(p.after).items()},
             "peak_memory_mb": usage[p.service].peak_memory_mb, "peak_cpu": usage[p.service].peak_cpu}
            for p in proposals]
