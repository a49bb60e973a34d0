"""`homelab-ops n8n ...`: n8n's execution log from the terminal (what the old exec-* scripts did)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import click
import psycopg

from homelab_ops.n8n import executions as ex
from homelab_ops.n8n.executions import EXECUTION_STATUSES
from homelab_ops.n8n.rollup import LayoutError, connect_n8n, detect_layout
from homelab_ops.settings import N8nSettings
from homelab_ops.units import duration_seconds


def _open(n8n: N8nSettings | None, source: str):
    """n8n's database and its table layout; `source` names the settings file when n8n has no section."""
    if n8n is None:
        raise click.ClickException(f"{source}: no n8n section (n8n.dsn) in the settings")
    try:
        conn = connect_n8n(n8n.dsn.get_secret_value())
    except psycopg.OperationalError as e:
        raise click.ClickException(f"cannot connect to n8n's database: {str(e).strip()}") from None
    try:
        return conn, detect_layout(conn, n8n.db_schema, n8n.table_prefix)
    except LayoutError as e:
        conn.close()
        raise click.ClickException(str(e)) from None


def _seconds(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f}s"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@click.group()
def n8n() -> None:
    """n8n: recent executions and per-workflow summaries, read from n8n's database."""


@n8n.command()
@click.option("--workflow", metavar="NAME", help="Workflow name (case-insensitive substring) or id.")
@click.option("--status", "statuses", multiple=True, type=click.Choice([*EXECUTION_STATUSES]),
              help="Only this status; repeat for several.")
@click.option("--since", default="24h", show_default=True, help="How far back: 90m, 24h, 7d.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.pass_obj
def executions(obj, workflow: str | None, statuses: tuple[str, ...], since: str, limit: int) -> None:
    """Executions newest first, with status, duration and whether n8n soft-deleted them."""
    try:
        start = datetime.now(timezone.utc) - timedelta(seconds=duration_seconds(since))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--since") from None
    settings = obj.settings
    conn, layout = _open(settings.n8n, settings.source)
    with conn:
        rows = ex.list_executions(conn, layout, since=start, workflow=workflow, statuses=statuses, limit=limit)
    tz = settings.tz
    _table(["ID", "STARTED", "WORKFLOW", "STATUS", "MODE", "DURATION", ""],
           [[str(r.id), r.started_at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if r.started_at else "(queued)",
             r.workflow, r.status, r.mode or "-", _seconds(r.duration_ms), "deleted" if r.deleted else ""]
            for r in rows])
    if not rows:
        click.echo(f"no executions since {start.astimezone(tz):%Y-%m-%d %H:%M %Z} matching the filters", err=True)
    elif len(rows) == limit:
        click.echo(f"(first {limit}; use --limit for more)", err=True)


@n8n.command()
@click.option("--days", default=7, show_default=True, type=click.IntRange(1, 3650))
@click.pass_obj
def summary(obj, days: int) -> None:
    """Per workflow over the last DAYS days: runs, failures (error + crashed), failure rate, p95."""
    settings = obj.settings
    now = datetime.now(timezone.utc)
    conn, layout = _open(settings.n8n, settings.source)
    with conn:
        rows = ex.summarize(conn, layout, since=now - timedelta(days=days), now=now)
    tz = settings.tz
    _table(["WORKFLOW", "RUNS", "FAILURES", "FAILURE RATE", "P95", "LAST RUN"],
           [[r.workflow, str(r.runs), str(r.failures),
             "-" if r.failure_rate is None else f"{r.failure_rate:.1%}", _seconds(r.p95_ms),
             r.last_started.astimezone(tz).strftime("%Y-%m-%d %H:%M") if r.last_started else "-"]
            for r in rows])
    if not rows:
        click.echo(f"no executions in the last {days} days", err=True)


@n8n.command("restore")
@click.option("--into", "into", required=True, help="New database to create; never an existing one.")
@click.option("--at", "at", default=None, help="Backup id (20261125T030000Z) or time: the newest at or before it.")
@click.option("--from", "source", default="local", show_default=True, help="local, s3, or an S3 target's name.")
@click.option("--config-out", "config_out", required=True, type=click.Path(file_okay=False),
              help="Folder for n8n's config (the key, mode 0600) and binary data: mount it at /home/node/.n8n.")
@click.pass_obj
def restore_cmd(obj, into: str, at: str | None, source: str, config_out: str) -> None:
    """Restore the whole n8n instance: its database, encryption key and binary data."""
    from pathlib import Path

    from homelab_ops.backups.restore import RestoreError, parse_at
    from homelab_ops.backups.stores import StoreError
    from homelab_ops.n8n.instance_restore import restore_instance

    try:
        done = restore_instance(obj.backups, into, Path(config_out), at=parse_at(at) if at else None, source=source)
    except (RestoreError, StoreError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"restored n8n backup {done.stem} into database {into}; key {done.key_fingerprint} written to "
               f"{done.config} (0600); {done.binary_files} binary data files")
    click.echo("start n8n on it:")
    for line in done.start_lines:
        click.echo(f"  {line}")
