"""`homelab-ops doctor`: is this deployment able to do its job? One line per check."""

from __future__ import annotations

import click


@click.command()
@click.pass_obj
def doctor(obj) -> None:
    """Check settings, databases, S3, Docker, Telegram and the key file; exit 1 when any check fails."""
    from homelab_ops import doctor as doc

    failed = 0
    for check in doc.run(obj.config):
        click.echo(check.line())
        failed += check.failed
    if failed:
        click.echo(f"{failed} check{'s' if failed != 1 else ''} failed", err=True)
        raise SystemExit(1)
