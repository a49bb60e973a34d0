"""What the health checks read of the settings, and nothing else.

The checks look at the whole homelab, so this is the widest domain config: where to look
(health: logs, containers, stacks; metrics: sysfs, procfs, mounts, the textfile folder),
the numbers to judge with (thresholds), the Docker host, the two databases (reachability,
n8n's rollup), n8n's /healthz, the zone, and the backups', credentials' and PITR's own
configs for their checks. It holds no notify section: a check judges, the sensor tells.
Every group in homelab_ops.health.evaluate and every plug-in's `run` takes this object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from homelab_ops.backups.config import BackupsConfig
from homelab_ops.credentials.config import CredentialsConfig
from homelab_ops.health.checks import Thresholds
from homelab_ops.pitr.config import PitrConfig

if TYPE_CHECKING:
    from pydantic import SecretStr

    from homelab_ops.settings import HealthSettings, MetricsSettings, N8nSettings, Settings


@dataclass(frozen=True)
class HealthConfig:
    health: HealthSettings  # the logs and containers to read, the stacks, the alert policy
    thresholds: Thresholds  # the one set of numbers every judgement reads
    metrics: MetricsSettings  # sysfs/procfs roots and mounts; textfile_dir, where verification publishes
    docker_host: str
    postgres_dsn: SecretStr  # is the server up
    state_dsn: SecretStr  # n8n's daily rollup
    n8n: N8nSettings | None  # its /healthz; None: n8n's checks are not run
    timezone: str  # "yesterday" for n8n's failures, PostgreSQL's log times
    backups: BackupsConfig  # what is backed up, where
    credentials: CredentialsConfig  # which credentials are overdue
    pitr: PitrConfig  # the receiver, its lag, the slot, the newest verified point

    @classmethod
    def of(cls, settings: Settings) -> HealthConfig:
        return cls(health=settings.health, thresholds=Thresholds.from_settings(settings), metrics=settings.metrics,
                   docker_host=settings.docker.host, postgres_dsn=settings.postgres.dsn,
                   state_dsn=settings.state.dsn, n8n=settings.n8n, timezone=settings.timezone,
                   backups=BackupsConfig.of(settings), credentials=CredentialsConfig.of(settings),
                   pitr=PitrConfig.of(settings))

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)
