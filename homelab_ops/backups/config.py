"""What the backups, their sources and n8n's backup set read of the settings, and nothing else.

A backup reads its folder, targets, key and retention (backups), the server it dumps and
the tools (postgres), and, when the database is n8n's, n8n's section and the Docker host
its key and binary data are read through. Every function in homelab_ops.backups and
homelab_ops.n8n that needs more than one section takes this object, not the whole settings
file: it cannot read the bot token or the credential store by accident. The secrets it
carries are every secret in the settings, so that a message is redacted as before; they
are kept out of its repr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:  # the settings are made of the backup sources' models
    from homelab_ops.notify.redact import Redactor
    from homelab_ops.settings import BackupSettings, N8nSettings, PostgresSettings, Settings


@dataclass(frozen=True)
class BackupsConfig:
    backups: BackupSettings
    postgres: PostgresSettings  # the server (dsn, databases) and its tools (pg_bin_dir)
    n8n: N8nSettings | None  # the n8n database's backup set: its key, binary data and verification
    docker_host: str  # where n8n's key is read from its container, and n8n runs for verification
    timezone: str  # retention's days are read in it
    textfile_dir: str  # metrics.textfile_dir: where a passed verification publishes its time for Prometheus
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def of(cls, settings: Settings) -> BackupsConfig:
        return cls(backups=settings.backups, postgres=settings.postgres, n8n=settings.n8n,
                   docker_host=settings.docker.host, timezone=settings.timezone,
                   textfile_dir=settings.metrics.textfile_dir, secrets=tuple(settings.secrets()))

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def redactor(self, *extra: str) -> Redactor:
        """The settings' secrets and `extra` (a key read from a backup, a password) masked."""
        from homelab_ops.notify.redact import redactor_for

        return redactor_for(self.secrets, *extra)

    def redact(self, text: str) -> str:
        """Before a message reaches a record, a log or an alert."""
        return self.redactor()(text)
