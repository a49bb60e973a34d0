"""`homelab-ops`: the operator's command line. One sub-group per domain."""

from __future__ import annotations

import click

from homelab_ops.configs import DomainConfigs
from homelab_ops.files import private_umask
from homelab_ops.settings import SettingsError, load


class Context(DomainConfigs):
    """Settings loaded lazily, so `--help` works without a settings file; `obj.backups`,
    `obj.credentials` and `obj.pitr` are a domain's part of them (homelab_ops.configs)."""

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

            install(self._settings.secrets())  # every secret of the settings out of this command's output
        return self._settings


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
