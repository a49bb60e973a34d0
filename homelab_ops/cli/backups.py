"""`homelab-ops backups ...`: list, restore and prune."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from homelab_ops import units
from homelab_ops.backups.catalog import DUMP_SUFFIXES, read_listing
from homelab_ops.backups.config import BackupsConfig
from homelab_ops.n8n.workflow_export import FOLDER as EXPORTS
from homelab_ops.backups.names import PITR_FOLDERS, DatabaseNameError, require_known_database
from homelab_ops.backups.prune import PruneError, databases_to_prune, policy_from, prune_database
from homelab_ops.backups.restore import (RestoreError, locate, manifest_state, parse_at, refuse_existing,
                                         restore)
from homelab_ops.backups.stores import StoreError, stores_for
from homelab_ops.backups.verify import copy_outcome
from homelab_ops.n8n.workflow_retention import prune_workflow_exports
from homelab_ops.cli.pitr import restore_at_point, wants_pitr


def store_databases(store) -> list[str]:
    """The database folders a store holds (an S3 target: the prefixes under its prefix), not PITR's."""
    if hasattr(store, "databases"):
        return [d for d in store.databases() if d not in PITR_FOLDERS]
    prefix = store.target.prefix
    try:
        names = set()
        for page in store.client.get_paginator("list_objects_v2").paginate(
                Bucket=store.target.bucket, Prefix=prefix, Delimiter="/"):
            names |= {p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])}
    except Exception as e:  # botocore's errors: the target is down or refuses
        raise StoreError(f"S3 target {store.label}: listing failed: {e}") from None
    return sorted(names - set(PITR_FOLDERS))


@click.group()
def backups() -> None:
    """Backups: list, restore, prune."""


@backups.command("list")
@click.argument("database", required=False)
@click.pass_obj
def list_(obj, database: str | None) -> None:
    """Backups in every store (local and each S3 target), newest first, with size, age, the manifest's
    state and each copy's own verification (restored, integrity-only, failed, or unverified: never read)."""
    config = obj.backups
    local, remotes = stores_for(config.backups)
    now = datetime.now(timezone.utc)
    _known(config, database)
    rows = []
    for store in [local, *remotes]:
        try:
            names = [database] if database else store_databases(store)
        except StoreError as e:
            click.echo(f"warning: {e}", err=True)
            continue
        for db in names:
            try:
                listing = read_listing(store.list(db))
            except StoreError as e:
                click.echo(f"warning: {e}", err=True)
                break
            for b in reversed(listing.backups):
                rows.append((db, store.label, b.stem, units.size(b.size), units.duration((now - b.time).total_seconds()),
                             "age" if b.encrypted else "", manifest_state(store, db, b),
                             copy_outcome(store, db, b)))
            for o in listing.orphans:
                dump = o[16:] in DUMP_SUFFIXES
                rows.append((db, store.label, o, "", "", "", "damaged: missing" if dump else "orphan", ""))
    if not rows:
        click.echo("no backups found")
        return
    header = ("DATABASE", "STORE", "BACKUP", "SIZE", "AGE", "ENC", "MANIFEST", "VERIFIED")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _known(config: BackupsConfig, database: str | None, *, any_name: bool = False) -> None:
    """DATABASE must be a known database name: `../other` must never become a path."""
    try:
        if database is not None:
            require_known_database(config, database, any_name=any_name)
    except DatabaseNameError as e:
        raise click.ClickException(str(e)) from None


def _configured(config: BackupsConfig) -> list[str]:
    from homelab_ops.backups.sources import backed_up

    return backed_up(config, warn=lambda message: click.echo(f"warning: {message}", err=True))


@backups.command("prune")
@click.argument("database", required=False)
@click.option("--dry-run", is_flag=True, help="Show what would go; delete nothing (like backups.retention.dry_run).")
@click.pass_obj
def prune_cmd(obj, database: str | None, dry_run: bool) -> None:
    """Apply backups.retention (restic's forget rules) to DATABASE, or to every database, _globals
    and (with n8n configured) the n8n_workflows export folders."""
    config = obj.backups
    _known(config, database)
    errors: list[str] = []
    exports = config.n8n is not None
    try:
        policy_from(config.backups.retention)  # an empty policy is refused before anything is listed
        names = [database] if database else (databases_to_prune(config.backups, _configured(config))
                                             + ([EXPORTS] if exports else []))
        for db in names:
            if exports and db == EXPORTS:
                result = prune_workflow_exports(config, dry_run=True if dry_run else None)
            else:
                result = prune_database(config, db, dry_run=True if dry_run else None)
            verb, gone = ("would free", "would remove") if result.dry_run else ("freed", "removed")
            if result.blocked:
                click.echo(f"{db}: nothing pruned: {result.blocked}")
            for plan in result.plans:
                if plan.error:
                    click.echo(f"{db} in {plan.store}: error: {plan.error}", err=True)
                    continue
                click.echo(f"{db} in {plan.store}: {len(plan.kept)} kept, {len(plan.removed)} {gone}, "
                           f"{units.size(plan.bytes_freed)} {verb}")
                for b, reasons in plan.kept:
                    click.echo(f"  keep     {b.stem}  {', '.join(reasons)}")
                for b in plan.removed:
                    click.echo(f"  {gone:<8} {b.stem}  {units.size(b.size)}")
                for x in plan.leftovers:
                    what = f"{gone} {x.kind}" if x.remove else f"{x.kind} kept for now (under a day old)"
                    click.echo(f"  {what}: {x.name}  {units.size(x.size)}")
                if plan.versioned:
                    click.echo(f"  versioned bucket: every version of each pruned object "
                               f"{'would be deleted' if result.dry_run else 'deleted'}")
                for key in plan.stale_uploads:
                    click.echo(f"  {'would abort' if result.dry_run else 'aborted'} incomplete upload {key}")
            errors += [f"{db} {e}" for e in result.errors]
    except PruneError as e:
        raise click.ClickException(str(e)) from None
    if errors:
        raise click.ClickException("retention failed in " + "; ".join(errors))


@backups.command("init")
@click.option("--identity-file", default=None, type=click.Path(dir_okay=False),
              help="Where to keep the host's verification identity (default: backups.encryption.identity_file, "
                   "else homelab-verify.key in the folder that holds backups.local_dir).")
@click.pass_obj
def init_cmd(obj, identity_file: str | None) -> None:
    """Create this host's age identity for restore verification and print the settings to add.

    Its recipient becomes a second age recipient beside the owner's, so the Pi can restore (and so verify)
    its own backups while the owner's identity stays offline. Nothing is written to the settings file:
    the lines to add are printed. Backups taken before the change stay encrypted to the owner alone."""
    from pathlib import Path

    from homelab_ops.backups.verify import VerifyError, host_identity

    settings = obj.settings
    enc = settings.backups.encryption
    # Beside the backups folder, never in it (the database folders go off-site) nor beside the settings
    # (deploy/ is a git checkout): in the deployment that is /var/lib/homelab-ops, with the master key.
    path = Path(identity_file or enc.identity_file
                or Path(settings.backups.local_dir).absolute().parent / "homelab-verify.key").absolute()
    try:
        recipient, created = host_identity(path)
    except (VerifyError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{'created' if created else 'kept the existing'} verification identity {path} (mode 0600)")
    if recipient in enc.age_recipients and enc.identity_file and Path(enc.identity_file).absolute() == path:
        click.echo("the settings already use it: nothing to change")
        return
    if not enc.age_recipients:
        click.echo("note: backups.encryption.age_recipients is empty, so backups are not encrypted and need no "
                   "identity to be restored; add your own (offline) recipient first, then this one")
    recipients = [r for r in enc.age_recipients if r != recipient] + [recipient]
    click.echo(f"add to {settings.source} (the owner's recipients kept, this host's added):\n")
    click.echo("backups:\n  encryption:\n    age_recipients:")
    for r in recipients:
        click.echo(f"      - {r}{'  # this host: restore verification' if r == recipient else ''}")
    click.echo(f"    identity_file: {path}")


@backups.command("restore")
@click.argument("database")
@click.option("--into", "into", required=True,
              help="New database to create, never an existing one; for a Redis source, the folder to write dump.rdb to.")
@click.option("--at", "at", default=None,
              help="Backup id (20261125T030000Z) or time: the newest at or before it. With pitr.enabled: a time "
                   "(naive: in `timezone`), restore point name, WAL position or `latest`, replayed from the WAL archive.")
@click.option("--from", "source", default="auto", show_default=True,
              help="auto (the newest in any store, local first on a tie), local, s3 (the first target), or an S3 target's name.")
@click.option("--ignore-manifest", is_flag=True,
              help="Restore a backup whose manifest is missing or damaged; its sha256 cannot be checked.")
@click.pass_obj
def restore_cmd(obj, database: str, into: str, at: str | None, source: str, ignore_manifest: bool) -> None:
    """Restore DATABASE's backup into a new database, after checking its sha256."""
    config = obj.backups
    # A name settings do not know is taken only when the owner names an off-site store (a new SD card
    # restoring what only S3 has); local and the default search refuse it before any work.
    _known(config, database, any_name=source not in ("local", "auto"))
    if at and wants_pitr(obj.pitr, at):  # a time, restore point or `latest`: point-in-time recovery
        return restore_at_point(obj.pitr, database, into, at, source)
    try:
        refuse_existing(config, database, into)
        loc = locate(config, database, at=parse_at(at) if at else None, source=source,
                     ignore_manifest=ignore_manifest)
        size = loc.backup.sizes.get(loc.backup.dump) or (loc.manifest or {}).get("size") or 0
        click.echo(f"restoring {database} backup {loc.backup.stem} ({units.size(size)}) from {loc.store.label}")
        if loc.manifest is None:
            click.echo(f"warning: the manifest of {loc.backup.stem} is missing or damaged: the sha256 of "
                       f"{loc.backup.dump} cannot be checked (--ignore-manifest)", err=True)
        label = "check sha256, then restore" if loc.manifest else "read, then restore (sha256 NOT checked)"
        with click.progressbar(length=2 * size, label=label) as bar:
            where = restore(config, loc, into, progress=bar.update)
    except (RestoreError, StoreError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"restored {database} backup {loc.backup.stem} from {loc.store.label} {where}")
