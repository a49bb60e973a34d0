"""`homelab-ops backups ...`: list, restore and prune."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from homelab_ops.backups.catalog import read_listing
from homelab_ops.backups.n8n_export import FOLDER as EXPORTS
from homelab_ops.backups.prune import PruneError, databases_to_prune, policy_from, prune_database
from homelab_ops.backups.restore import RestoreError, locate, parse_at, refuse_existing, restore
from homelab_ops.backups.stores import StoreError, read_json, stores_for
from homelab_ops.backups.workflow_retention import prune_workflow_exports


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def verified_label(store, database: str, backup) -> str:
    if not backup.verified:
        return "-"
    try:
        v = read_json(store, database, backup.verified)
    except (OSError, ValueError, StoreError):
        return "unreadable"
    return v.get("outcome", "?")


@click.group()
def backups() -> None:
    """Backups: list, restore, prune."""


@backups.command("list")
@click.argument("database", required=False)
@click.pass_obj
def list_(obj, database: str | None) -> None:
    """Backups in every store, newest first, with size, age and verification."""
    settings = obj.settings
    local, remotes = stores_for(settings)
    now = datetime.now(timezone.utc)
    names = [database] if database else local.databases()
    rows = []
    for store in [local, *remotes]:
        for db in names:
            try:
                listing = read_listing(store.list(db))
            except StoreError as e:
                click.echo(f"warning: {e}", err=True)
                break
            for b in reversed(listing.backups):
                rows.append((db, store.label, b.stem, human_size(b.size), human_age((now - b.time).total_seconds()),
                             "age" if b.encrypted else "", verified_label(store, db, b)))
            for o in listing.orphans:
                rows.append((db, store.label, o, "", "", "", "orphan"))
    if not rows:
        click.echo("no backups found")
        return
    header = ("DATABASE", "STORE", "BACKUP", "SIZE", "AGE", "ENC", "VERIFIED")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _configured(settings) -> list[str]:
    from homelab_ops.backups.postgresql import configured_databases

    try:
        return configured_databases(settings)
    except Exception:  # server down: the folders that exist still get pruned
        return []


@backups.command("prune")
@click.argument("database", required=False)
@click.option("--dry-run", is_flag=True, help="Show what would go; delete nothing (like backups.retention.dry_run).")
@click.pass_obj
def prune_cmd(obj, database: str | None, dry_run: bool) -> None:
    """Apply backups.retention (restic's forget rules) to DATABASE, or to every database, _globals
    and (with n8n configured) the n8n_workflows export folders."""
    settings = obj.settings
    errors: list[str] = []
    exports = settings.n8n is not None
    try:
        policy_from(settings.backups.retention)  # an empty policy is refused before anything is listed
        names = [database] if database else (databases_to_prune(settings, _configured(settings))
                                             + ([EXPORTS] if exports else []))
        for db in names:
            if exports and db == EXPORTS:
                result = prune_workflow_exports(settings, dry_run=True if dry_run else None)
            else:
                result = prune_database(settings, db, dry_run=True if dry_run else None)
            verb, gone = ("would free", "would remove") if result.dry_run else ("freed", "removed")
            if result.blocked:
                click.echo(f"{db}: nothing pruned: {result.blocked}")
            for plan in result.plans:
                if plan.error:
                    click.echo(f"{db} in {plan.store}: error: {plan.error}", err=True)
                    continue
                click.echo(f"{db} in {plan.store}: {len(plan.kept)} kept, {len(plan.removed)} {gone}, "
                           f"{human_size(plan.bytes_freed)} {verb}")
                for b, reasons in plan.kept:
                    click.echo(f"  keep     {b.stem}  {', '.join(reasons)}")
                for b in plan.removed:
                    click.echo(f"  {gone:<8} {b.stem}  {human_size(b.size)}")
                for x in plan.leftovers:
                    what = f"{gone} {x.kind}" if x.remove else f"{x.kind} kept for now (under a day old)"
                    click.echo(f"  {what}: {x.name}  {human_size(x.size)}")
                for key in plan.stale_uploads:
                    click.echo(f"  {'would abort' if result.dry_run else 'aborted'} incomplete upload {key}")
            errors += [f"{db} {e}" for e in result.errors]
    except PruneError as e:
        raise click.ClickException(str(e)) from None
    if errors:
        raise click.ClickException("retention failed in " + "; ".join(errors))


@backups.command("restore")
@click.argument("database")
@click.option("--into", "into", required=True, help="New database to create; never an existing one.")
@click.option("--at", "at", default=None, help="Backup id (20261125T030000Z) or time: the newest at or before it.")
@click.option("--from", "source", default="local", show_default=True, help="local, s3, or an S3 target's name.")
@click.pass_obj
def restore_cmd(obj, database: str, into: str, at: str | None, source: str) -> None:
    """Restore DATABASE's backup into a new database, after checking its sha256."""
    settings = obj.settings
    try:
        refuse_existing(settings, into)
        loc = locate(settings, database, at=parse_at(at) if at else None, source=source)
        size = loc.backup.sizes.get(loc.backup.dump) or loc.manifest["size"]
        click.echo(f"restoring {database} backup {loc.backup.stem} ({human_size(size)}) from {loc.store.label}")
        with click.progressbar(length=2 * size, label="check sha256, then restore") as bar:
            restore(settings, loc, into, progress=bar.update)
    except (RestoreError, StoreError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"restored {database} backup {loc.backup.stem} from {loc.store.label} into {into}")
