"""What point-in-time recovery reads of the settings, and nothing else.

PITR archives one server's WAL beside the nightly backups and ships it to the same
targets, so it needs its own section, the backups' folder, targets, key and
retention, the server it streams from, the zone times are read in, and the folder
node_exporter reads. Every function in this package takes this object, not the
whole settings file: it cannot read the bot token or n8n's database by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from homelab_ops.settings import BackupSettings, PitrSettings, PostgresSettings, Settings


@dataclass(frozen=True)
class PitrConfig:
    pitr: PitrSettings
    backups: BackupSettings  # local_dir (the archive's root), s3, encryption, retention, timeout
    postgres: PostgresSettings  # the server (dsn, also pitr.dsn's default) and its tools (pg_bin_dir)
    timezone: str  # a naive recovery time and the retention's days are read in it
    textfile_dir: str  # metrics.textfile_dir: the RPO gauge for node_exporter

    @classmethod
    def of(cls, settings: Settings) -> PitrConfig:
        return cls(pitr=settings.pitr, backups=settings.backups, postgres=settings.postgres,
                   timezone=settings.timezone, textfile_dir=settings.metrics.textfile_dir)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)
