"""`homelab-ops pitr ...`: the WAL receiver, base backups, verification and retention by hand."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from homelab_ops.errors import first_line

if TYPE_CHECKING:
    from homelab_ops.pitr.config import PitrConfig


@click.group()
def pitr() -> None:
    """Point-in-time recovery: continuous WAL archiving and base backups."""


@pitr.command("receive")
@click.pass_obj
def receive_cmd(obj) -> None:
    """Stream WAL into <local_dir>/_wal/<cluster>/ until stopped (SIGTERM or Ctrl-C)."""
    from homelab_ops.pitr.receive import ReceiveError, run_receiver, wal_dir

    config = obj.pitr
    click.echo(f"receiving WAL of cluster {config.pitr.cluster} into {wal_dir(config)} "
               f"(slot {config.pitr.slot_name})")
    try:
        run_receiver(config, on_event=lambda msg: click.echo(msg, err=True))
    except ReceiveError as e:
        raise click.ClickException(str(e)) from None


@pitr.command("basebackup")
@click.pass_obj
def basebackup_cmd(obj) -> None:
    """Take, verify (pg_verifybackup) and store one base backup now."""
    from homelab_ops.pitr.base import BaseBackupError, run_base_backup

    try:
        b = run_base_backup(obj.pitr)
    except BaseBackupError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"base backup {b.stem}: WAL {b.manifest['start_lsn']} .. {b.manifest['end_lsn']}, "
               f"timeline {b.timeline}, verified with pg_verifybackup")


@pitr.command("verify")
@click.argument("database")
@click.pass_obj
def verify_cmd(obj, database: str) -> None:
    """Replay the WAL archive to the newest nightly dump's point and compare every table."""
    from homelab_ops.pitr.verify import verify_database

    result = verify_database(obj.pitr, database)
    click.echo(result.message)
    for t in result.tables:
        click.echo(f"  {t['table']}: {t['expected_rows']} / {t['restored_rows']} rows, "
                   f"checksum {'ok' if t['checksum_match'] else 'DIFFERS'}")
    if not result.passed:
        raise SystemExit(1)


@pitr.command("prune")
@click.option("--dry-run", is_flag=True, help="Show what would go; delete nothing.")
@click.pass_obj
def prune_cmd(obj, dry_run: bool) -> None:
    """Base backups by backups.retention; WAL older than the oldest kept base backup."""
    from homelab_ops.pitr.offsite import prune as prune_offsite
    from homelab_ops.pitr.retention import prune

    try:
        p = prune(obj.pitr, dry_run=dry_run)
    except Exception as e:
        raise click.ClickException(first_line(e)) from None
    verb = "would remove" if dry_run else "removed"
    for stem, reasons in p.keep:
        click.echo(f"keep     {stem}  {', '.join(reasons)}")
    for stem in p.remove:
        click.echo(f"{verb} base backup {stem}")
    click.echo(f"{verb} {len(p.wal_remove)} WAL segment files (keeping from segment {p.keep_wal_from or '-'})")
    for t in prune_offsite(obj.pitr, dry_run=dry_run):
        click.echo(f"{t.target}: {verb} {len(t.plan.remove)} base backup(s) and {len(t.plan.wal_remove)} WAL files"
                   if t.plan else f"{t.target}: not pruned: {t.error}")


@pitr.command("offsite")
@click.pass_obj
def offsite_cmd(obj) -> None:
    """Copy finished WAL segments and base backups to every S3 target now (what offsite/_pitr_offsite does)."""
    from homelab_ops.pitr.offsite import finish_segment, sync

    if not obj.pitr.backups.s3:
        raise click.ClickException("backups.s3 is not configured: there is no off-site target")
    click.echo(finish_segment(obj.pitr))
    failed = False
    for s in sync(obj.pitr):
        click.echo(f"{s.target}: copied {s.uploaded_wal} WAL file(s) and {len(s.uploaded_bases)} base backup(s); "
                   f"newest there: base backup {s.newest_base or 'none'}, segment {s.newest_segment or 'none'}")
        if not s.complete:
            failed = True
            owed = ("unknown" if s.owed_wal is None else
                    f"{len(s.owed_wal)} WAL file(s), {len(s.owed_bases or [])} base backup(s)")
            click.echo(f"{s.target}: still owed: {owed}" + (f" ({'; '.join(s.errors)})" if s.errors else ""), err=True)
    if failed:
        raise SystemExit(1)


@pitr.command("status")
@click.option("--heartbeat", is_flag=True,
              help="Only whether the receiver wrote its heartbeat lately (exit 1 if not): the container's "
                   "healthcheck, which must not query the server every minute.")
@click.pass_obj
def status_cmd(obj, heartbeat: bool) -> None:
    """The receiver's heartbeat and the health checks of the WAL stream."""
    from homelab_ops.pitr.health import pitr_results
    from homelab_ops.pitr.receive import heartbeat_age, read_status

    config = obj.pitr
    if heartbeat:
        age, limit = heartbeat_age(config), 3 * config.pitr.status_interval.seconds + 30
        if age is None or age > limit:
            raise click.ClickException(f"no receiver heartbeat for {'ever' if age is None else f'{age:.0f}s'} "
                                       f"(limit {limit:.0f}s): is `homelab-ops pitr receive` running?")
        click.echo(f"receiver heartbeat {age:.0f}s ago")
        return
    click.echo(json.dumps(read_status(config), indent=2))
    for r in pitr_results(config):
        click.echo(f"{r.state:<8} {r.name}: {r.reason}")


def wants_pitr(config: PitrConfig, at: str) -> bool:
    """`backups restore --at`: anything but a dump's stem goes to point-in-time recovery when it is on."""
    from homelab_ops.pitr.plan import is_pitr_target

    return config.pitr.enabled and is_pitr_target(at)


def restore_at_point(config: PitrConfig, database: str, into: str, at: str, source: str) -> None:
    """The point-in-time branch of `homelab-ops backups restore` (cli/backups.py calls it)."""
    import psycopg
    import pyrage

    from homelab_ops.backups.restore import RestoreError
    from homelab_ops.backups.stores import StoreError
    from homelab_ops.pitr.base import BaseBackupError
    from homelab_ops.pitr.plan import PlanError, parse_target
    from homelab_ops.pitr.recover import RecoverError, restore_at
    from homelab_ops.pitr.wal import WalError

    try:
        target = parse_target(at, config.tz)
        click.echo(f"restoring {database} as of {target.describe()} into {into}: base backup, WAL replay "
                   "in a temporary cluster, then pg_dump | pg_restore")
        r = restore_at(config, database, into, at, source=source)
    except (PlanError, RecoverError, BaseBackupError, RestoreError, StoreError, WalError) as e:
        raise click.ClickException(str(e)) from None
    except (psycopg.Error, pyrage.DecryptError) as e:  # the running server, or a key that does not fit
        raise click.ClickException(f"restoring {database} as of {at} failed: {first_line(e)}") from None
    click.echo(f"restored {database} as of {r.target} into {into} from {r.source} (base backup {r.base}; "
               f"{r.stop_reason or 'replayed to the end of the archive'}; "
               f"newest transaction: {r.last_commit or 'none replayed'})")
