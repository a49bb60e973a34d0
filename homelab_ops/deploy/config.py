"""What the deploy and tune graphs read of the settings, and nothing else.

A deploy renders the monitoring stack and Traefik: their own sections (monitoring,
traefik), the Docker host and its naming and log limits (docker), the numbers Prometheus'
rules judge with (the health sensor's thresholds and tick, so both judge alike), what the
wal_receiver archives (pitr, the server and its tools, the backups' folder and age
recipients, the zone), node_exporter's textfile folder, Alertmanager's default bot and
Grafana's default database. Grafana's role and Traefik's users are read from the
credential store. Every function in homelab_ops.deploy and the deploy ops takes this
object, not the whole settings file. The settings' secrets, for redacting a failed
deploy's message, are kept out of its repr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from homelab_ops.credentials.config import CredentialsConfig

if TYPE_CHECKING:
    from pydantic import SecretStr

    from homelab_ops.health.checks import Thresholds
    from homelab_ops.notify.redact import Redactor
    from homelab_ops.settings import (
        DockerSettings,
        MonitoringSettings,
        PitrSettings,
        PostgresSettings,
        Settings,
        TelegramSettings,
        TraefikSettings,
    )


@dataclass(frozen=True)
class DeployConfig:
    monitoring: MonitoringSettings
    traefik: TraefikSettings
    docker: DockerSettings  # the Engine's socket, container names, log limits
    thresholds: Thresholds  # Prometheus' rules judge with the health sensor's numbers
    health_interval_s: float  # the sensor's tick: Prometheus speaks when it falls silent
    pitr: PitrSettings  # the wal_receiver: on or off, cluster, slot, dsn, lag
    postgres: PostgresSettings  # the receiver's server (pitr.dsn's default) and pg_bin_dir
    backups_dir: str  # backups.local_dir: the receiver writes _wal/ there
    age_recipients: tuple[str, ...]  # the receiver encrypts each finished segment to them
    timezone: str
    textfile_dir: str  # metrics.textfile_dir: node_exporter's textfile collector
    telegram: TelegramSettings  # Alertmanager's bot token and API when it names none
    state_dsn: SecretStr  # Grafana's datasource when it names none
    credentials: CredentialsConfig  # Grafana's read-only role, Traefik's basic-auth users
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def of(cls, settings: Settings) -> DeployConfig:
        from homelab_ops.health.checks import Thresholds

        return cls(monitoring=settings.monitoring, traefik=settings.traefik, docker=settings.docker,
                   thresholds=Thresholds.from_settings(settings),
                   health_interval_s=settings.health.interval.seconds,
                   pitr=settings.pitr, postgres=settings.postgres, backups_dir=settings.backups.local_dir,
                   age_recipients=tuple(settings.backups.encryption.age_recipients),
                   timezone=settings.timezone, textfile_dir=settings.metrics.textfile_dir,
                   telegram=settings.notify.telegram, state_dsn=settings.state.dsn,
                   credentials=CredentialsConfig.of(settings), secrets=tuple(settings.secrets()))

    def redactor(self, *extra: str) -> Redactor:
        """The settings' secrets, every value in the credential store, and `extra` (what the
        deploy placed in a container) masked: a deploy error carries container log tails."""
        from homelab_ops.notify.redact import redactor_for

        return redactor_for(self.secrets, *extra, credentials=self.credentials)
