"""Health checks that are one module each, found by name (as borgmatic finds its hooks).

A check module here declares:

- `CHECKS`: the check names it answers for (each becomes `unknown` when the module raises
  or runs past `check_timeout_s`); results may add `:<instance>` (`free_inodes:/`);
- `THRESHOLDS`: its numbers and their defaults, added to the one `thresholds:` vocabulary
  (so a misspelt key still fails when the settings load);
- `REMEDY`: the remedy key (homelab_ops.health.remedies) its failures start, or None;
- `judge(...)`: the pure judgement, plain readings in, `CheckResult`s out;
- `run(config, now)`: reads what it needs of its `HealthConfig` (homelab_ops.health.config) and
  calls `judge`; `config.thresholds.get(key)` reads a threshold.

Adding a check is one new file here plus its test (docs/extending.md). The sensor, the
`homelab_health` table, alerts, flapping and remedies need nothing else.
"""

from __future__ import annotations

from types import ModuleType

from homelab_ops.plugins import discover


MODULES: dict[str, ModuleType] = discover(__name__, __path__)


def thresholds() -> dict[str, float]:
    """Every plug-in's threshold defaults; two modules may not claim one key."""
    out: dict[str, float] = {}
    for name, m in MODULES.items():
        for key, value in m.THRESHOLDS.items():
            if key in out:
                raise TypeError(f"threshold {key} is declared twice (health/plugins/{name}.py and another)")
            out[key] = value
    return out


def remedy_families() -> tuple[str, ...]:
    """Check families whose failures start a remedy (health.remedies may switch them off)."""
    return tuple(f for m in MODULES.values() if m.REMEDY for f in m.CHECKS)


def groups() -> list[tuple]:
    """(run, names) for homelab_ops.health.evaluate's thread pool."""
    return [(m.run, tuple(m.CHECKS)) for m in MODULES.values()]
