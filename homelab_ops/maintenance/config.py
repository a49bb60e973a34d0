"""What disk hygiene and Dagster's run retention read of the settings, and nothing else:
the disk_hygiene section and the Docker host whose logs are measured and where fstrim runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from homelab_ops.settings import DiskHygieneSettings, Settings


@dataclass(frozen=True)
class MaintenanceConfig:
    disk_hygiene: DiskHygieneSettings
    docker_host: str

    @classmethod
    def of(cls, settings: Settings) -> MaintenanceConfig:
        return cls(disk_hygiene=settings.disk_hygiene, docker_host=settings.docker.host)
