"""`homelab-ops demo`: the demo data `make demo` backs up."""

from __future__ import annotations

import click

from homelab_ops.n8n.demo import DEMO_DATABASE, DemoDatabaseExistsError, create_demo_database


@click.group()
def demo() -> None:
    """Demo data for trying homelab-ops on a fresh machine."""


@demo.command("n8n")
@click.option("--name", default=DEMO_DATABASE, show_default=True,
              help="Database to create; never one this command did not create.")
@click.option("--replace", is_flag=True,
              help="Drop and recreate it when it exists and carries the demo marker (a database "
                   "this command created); any other database is refused.")
@click.option("--executions", default=2000, show_default=True)
@click.pass_obj
def demo_n8n(obj, name: str, replace: bool, executions: int) -> None:
    """Create an n8n database with n8n 1.123.0's real schema and realistic rows."""
    try:
        counts = create_demo_database(obj.settings.postgres.dsn.get_secret_value(), name,
                                      replace=replace, executions=executions)
    except (DemoDatabaseExistsError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    statuses = ", ".join(f"{n} {s}" for s, n in counts["by_status"].items())
    click.echo(f"demo n8n database {name!r} (n8n 1.123.0's schema): {counts['workflows']} workflows, "
               f"{counts['executions']} executions ({statuses})")
