"""What the n8n rollup and the workflow secrets scan read of the settings, and nothing else: n8n's
section (where its tables are, its API), the settings' zone (a day of executions is a local day) and
the thresholds a day's failure rate is judged with. n8n's backups read BackupsConfig instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from homelab_ops.health.checks import Thresholds

if TYPE_CHECKING:
    from homelab_ops.settings import N8nSettings, Settings


@dataclass(frozen=True)
class N8nConfig:
    n8n: N8nSettings | None  # None: n8n is not configured
    thresholds: Thresholds
    timezone: str

    @classmethod
    def of(cls, settings: Settings) -> N8nConfig:
        return cls(n8n=settings.n8n, thresholds=Thresholds.from_settings(settings), timezone=settings.timezone)
