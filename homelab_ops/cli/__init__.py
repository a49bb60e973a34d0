"""`homelab-ops`: the operator's command line. One sub-group per domain."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from homelab_ops.files import private_umask
from homelab_ops.settings import SettingsError, load

if TYPE_CHECKING:
    from homelab_ops.backups.config import BackupsConfig
    from homelab_ops.credentials.config import CredentialsConfig
    from homelab_ops.pitr.config import PitrConfig


class Context:
    """Settings loaded lazily, so `--help` works without a settings file."""

    def __init__(self, config: str | None):
        self.config = config
        self._settings = None

    @property
    def settings(self):
        if self._settings is None:
            try:
                self._settings = load(self.config)
            except SettingsError as e:
                raise click.ClickException(str(e)) from None
            from homelab_ops.notify.redact import install

            install(self._settings)  # every secret of the settings out of this command's output
        return self._settings

    @property
    def pitr(self) -> PitrConfig:
        """What point-in-time recovery reads of the settings (its commands take this, not the whole file)."""
        from homelab_ops.pitr.config import PitrConfig

        return PitrConfig.of(self.settings)

    @property
    def backups(self) -> BackupsConfig:
        """What the backups and n8n's backup set read of the settings (their commands take this)."""
        from homelab_ops.backups.config import BackupsConfig

        return BackupsConfig.of(self.settings)

    @property
    def credentials(self) -> CredentialsConfig:
        """What the credential store and its rotations read of the settings (the `creds` commands take this)."""
        from homelab_ops.credentials.config import CredentialsConfig

        return CredentialsConfig.of(self.settings)


@click.group()
@click.option("--config", envvar="HOMELAB_CONFIG", default=None,
              help="Settings file (default: $HOMELAB_CONFIG, then ./homelab.yaml).")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """Operate the homelab: backups, credentials, n8n, notifications."""
    private_umask()  # a restore's temp file, a prune's listing: nothing this CLI writes is world-readable
    ctx.obj = Context(config)


def _register() -> None:
    from homelab_ops.cli import backups

    main.add_command(backups.backups)
    from homelab_ops.cli import notify

    main.add_command(notify.notify)
    from homelab_ops.cli import creds, workflows

    main.add_command(creds.creds)
    main.add_command(workflows.workflows)
    from homelab_ops.cli import n8n

    main.add_command(n8n.n8n)
    from homelab_ops.cli import doctor

    main.add_command(doctor.doctor)
    from homelab_ops.cli import pitr

    main.add_command(pitr.pitr)


_register()
