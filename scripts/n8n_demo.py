"""`make demo`'s n8n database: n8n 1.123.0's real schema with realistic rows, on postgres.dsn.

Demo data is for trying homelab-ops and for its tests, so it lives beside them
(tests/n8n_demo.py), not in the package an owner installs.

    python scripts/n8n_demo.py [--name homelab_demo_n8n] [--replace] [--executions 2000]
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from homelab_ops.settings import SettingsError, load  # noqa: E402
from tests.n8n_demo import DEMO_DATABASE, DemoDatabaseExistsError, create_demo_database  # noqa: E402


@click.command()
@click.option("--config", default=None, help="Settings file (default: $HOMELAB_CONFIG, else ./homelab.yaml).")
@click.option("--name", default=DEMO_DATABASE, show_default=True,
              help="Database to create; never one this command did not create.")
@click.option("--replace", is_flag=True,
              help="Drop and recreate it when it exists and carries the demo marker (a database "
                   "this command created); any other database is refused.")
@click.option("--executions", default=2000, show_default=True)
def main(config: str | None, name: str, replace: bool, executions: int) -> None:
    """Create an n8n database with n8n 1.123.0's real schema and realistic rows."""
    try:
        settings = load(config)
        counts = create_demo_database(settings.postgres.dsn.get_secret_value(), name,
                                      replace=replace, executions=executions)
    except (SettingsError, DemoDatabaseExistsError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    statuses = ", ".join(f"{n} {s}" for s, n in counts["by_status"].items())
    click.echo(f"demo n8n database {name!r} (n8n 1.123.0's schema): {counts['workflows']} workflows, "
               f"{counts['executions']} executions ({statuses})")


if __name__ == "__main__":
    main()
