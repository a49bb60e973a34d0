"""The doors from the whole settings file to each domain's part of it.

The `homelab` resource (for assets and sensors) and the CLI's context (for commands) both
hold the parsed settings; this mixin gives both the same views, so an asset and a
command of one domain read the same config (docs/extending.md, "What a function may read").
"""

from __future__ import annotations

from homelab_ops.backups.config import BackupsConfig
from homelab_ops.credentials.config import CredentialsConfig
from homelab_ops.deploy.config import DeployConfig
from homelab_ops.health.config import HealthConfig
from homelab_ops.maintenance.config import MaintenanceConfig
from homelab_ops.metrics.config import MetricsConfig
from homelab_ops.n8n.config import N8nConfig
from homelab_ops.notify.config import NotifyConfig
from homelab_ops.pitr.config import PitrConfig
from homelab_ops.recovery import RecoveryConfig


class DomainConfigs:
    """Needs a `settings` attribute (the parsed file); each property builds a small frozen config."""

    @property
    def backups(self) -> BackupsConfig:
        """What the backups, their sources and n8n's backup set read."""
        return BackupsConfig.of(self.settings)

    @property
    def credentials(self) -> CredentialsConfig:
        """What the credential store and its rotations read."""
        return CredentialsConfig.of(self.settings)

    @property
    def deploy(self) -> DeployConfig:
        """What the deploy and tune graphs read."""
        return DeployConfig.of(self.settings)

    @property
    def health(self) -> HealthConfig:
        """What the health sensor's checks read."""
        return HealthConfig.of(self.settings)

    @property
    def maintenance(self) -> MaintenanceConfig:
        """What disk hygiene and Dagster's run retention read."""
        return MaintenanceConfig.of(self.settings)

    @property
    def metrics(self) -> MetricsConfig:
        """What the metrics snapshots and their rollup read."""
        return MetricsConfig.of(self.settings)

    @property
    def n8n(self) -> N8nConfig:
        """What n8n's rollup and the workflow secrets scan read (n8n's backups read `backups`)."""
        return N8nConfig.of(self.settings)

    @property
    def notify(self) -> NotifyConfig:
        """What the alert path reads: channels, the chats' table, the secrets it masks."""
        return NotifyConfig.of(self.settings)

    @property
    def recovery(self) -> RecoveryConfig:
        """What the crash sweep reads: the backups' leftovers, the alert path, the UI's address."""
        return RecoveryConfig.of(self.settings)

    @property
    def pitr(self) -> PitrConfig:
        """What point-in-time recovery reads."""
        return PitrConfig.of(self.settings)
