"""What the metrics snapshots and their daily rollup read of the settings, and nothing else.

The host snapshot reads where to look (metrics: sysfs, procfs, mounts, the textfile folder), the
container snapshot the Docker host and which containers; both judge with the one set of
thresholds; the rollup's days are days in the settings' zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from homelab_ops.health.checks import Thresholds

if TYPE_CHECKING:
    from homelab_ops.settings import MetricsSettings, Settings


@dataclass(frozen=True)
class MetricsConfig:
    metrics: MetricsSettings
    thresholds: Thresholds
    docker_host: str
    timezone: str

    @classmethod
    def of(cls, settings: Settings) -> MetricsConfig:
        return cls(metrics=settings.metrics, thresholds=Thresholds.from_settings(settings),
                   docker_host=settings.docker.host, timezone=settings.timezone)
