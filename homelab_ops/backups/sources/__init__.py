"""Backup sources: one module per kind of thing backed up, found by its `type` (as borgmatic finds
its data source hooks). A source module declares:

- `Config`: a pydantic model derived from `SourceConfig` (so it has `name`) whose `type` is
  `Literal["<module name>"]`; the settings' `backups.sources` list is the union of every listed
  module's `Config`, discriminated on `type`;
- `LISTED`: whether owners write it in `backups.sources` (PostgreSQL's databases are listed in
  `postgres.databases` instead, since PITR, the roles dump and n8n read them there);
- `KINDS` (the assets' Dagster kinds), `describe(source, config)` (the backup asset's description)
  and `VERIFIES` (what its restore verification proves, for the verification asset's);
- `backup(source, config, log) -> BackupResult`: one backup into the local folder, through
  `homelab_ops.backups.backup.prepare` (the `.partial`, fsync, manifest and clean-up rules);
- `verify_restore(config, path, manifest, result)`: restore the checked file somewhere
  disposable and compare it with the manifest, filling the `Verification`;
- `refuse_existing(config, into)` and `restore(config, loc, into, progress)`: the CLI's restore;
- `probe(source) -> str` (listed sources): what `homelab-ops doctor` says when the server answers;
  raises SourceError naming the problem.

Which module handles a backup is said by its manifest's `source` (manifests written before
sources existed are PostgreSQL's). Retention, off-site copies, listing and the freshness check
need nothing from a source: they work on the folder. Adding one is one new file here plus its
test (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Union

from pydantic import Field

from homelab_ops.backups.config import BackupsConfig
from homelab_ops.backups.sources._base import SourceConfig, SourceError
from homelab_ops.plugins import discover_typed

if TYPE_CHECKING:  # the settings are made of these sources' models
    from homelab_ops.settings import BackupSettings

DEFAULT = "postgresql"  # the source of every name not in backups.sources, and of manifests without `source`


def _discover() -> dict[str, ModuleType]:
    found = discover_typed(__name__, __path__, requires=(
        "LISTED", "KINDS", "VERIFIES", "describe", "backup", "verify_restore", "refuse_existing", "restore"))
    for module in found.values():
        if module.LISTED and not hasattr(module, "probe"):
            raise TypeError(f"{module.__name__} is listed in backups.sources but does not declare probe")
    return found


MODULES: dict[str, ModuleType] = _discover()

# What `backups.sources` accepts: one entry per source, its `type` picks the module.
SourceSettings = Annotated[Union[tuple(m.Config for m in MODULES.values() if m.LISTED)],
                           Field(discriminator="type")]


def configured(backups: BackupSettings) -> dict[str, SourceConfig]:
    """`backups.sources` by name."""
    return {s.name: s for s in backups.sources}


def backed_up(config: BackupsConfig, warn: Callable[[str], None] = lambda message: None) -> list[str]:
    """Every folder the nightly backup writes, as the code location gives each its assets: the
    databases, then the `backups.sources` entries. The one answer for the definitions, the CLI, the
    digest and the `backup_age` health check.

    `postgres.databases: all` asks the server; when it does not answer, the databases already backed
    up here stand in (so a PostgreSQL outage leaves the code location, and the health sensors that
    report it, loaded; their backups fail, naming the server). Under `all`, names that cannot have
    assets of their own and names a source takes are skipped, and `warn` is told which and why
    (homelab_ops.backups.names); an explicit list was judged when the settings loaded."""
    import psycopg

    from homelab_ops.backups.catalog import GLOBALS, read_listing
    from homelab_ops.backups.names import op_name, usable_databases
    from homelab_ops.backups.postgresql import configured_databases
    from homelab_ops.backups.stores import LocalStore
    from homelab_ops.errors import first_line
    from homelab_ops.n8n.workflow_export import FOLDER as EXPORTS

    explicit = config.postgres.databases != "all"
    local = LocalStore(config.backups.local_dir)
    had = [] if explicit else [d for d in local.databases() if d not in (GLOBALS, EXPORTS)
                               and read_listing(local.list(d)).backups]
    try:
        names = configured_databases(config.postgres)
    except psycopg.OperationalError as e:
        names = had
        warn(f"postgres.databases is `all` but the server did not answer ({first_line(e)}); using the "
             f"databases backed up in {config.backups.local_dir}: {', '.join(names) or 'none'}")
    sources = configured(config.backups)
    taken = {op_name(n): n for n in sources}
    clash = [n for n in names if op_name(n) in taken]
    if clash:  # an explicit list that collides is refused when the settings load
        warn("not backed up as databases (a backups.sources entry has the name): "
             + ", ".join(f"{n!r} (source {taken[op_name(n)]!r})" for n in clash))
    return usable_databases([n for n in names if n not in clash], explicit=explicit, warn=warn,
                            backed_up=had) + list(sources)


def source_for(backups: BackupSettings, name: str) -> tuple[ModuleType, SourceConfig]:
    """The module and settings that back up the folder `name`: a `backups.sources` entry, else a
    PostgreSQL database of that name."""
    config = configured(backups).get(name)
    if config is None:
        config = MODULES[DEFAULT].Config(type=DEFAULT, name=name)
    return MODULES[config.type], config


def for_manifest(manifest: dict | None) -> ModuleType:
    """The module that restores what this manifest describes."""
    kind = (manifest or {}).get("source", DEFAULT)
    if kind not in MODULES:
        known = ", ".join(MODULES)
        raise ValueError(f"the manifest names the backup source {kind!r}, which this homelab-ops does not have "
                         f"(it has {known}): restore it with the version that wrote it")
    return MODULES[kind]


__all__ = ["DEFAULT", "MODULES", "SourceConfig", "SourceError", "SourceSettings", "backed_up", "configured", "for_manifest", "source_for"]
