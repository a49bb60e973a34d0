"""Would an n8n upgrade keep every workflow and credential? Asked of a scratch copy first.

Owners lose workflows to upgrades: a migration that crash-loops, node parameters reset
by a new node version. This restores the newest verified backup of n8n's database into a
scratch database, runs the new version's CLI on it (its migrations run; nothing is
activated), and compares every workflow's nodes and parameters with the workflow export
taken before, and every credential's decryption with what the old version stored.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from homelab_ops.backups import postgresql as pg
from homelab_ops.backups import verify as bv
from homelab_ops.n8n.workflow_export import FOLDER as EXPORTS
from homelab_ops.backups.restore import RestoreError, restore
from homelab_ops.backups.stores import StoreError, stores_for
from homelab_ops.n8n import backup_set, compare, keys
from homelab_ops.n8n import verification as nv
from homelab_ops.backups.config import BackupsConfig

if TYPE_CHECKING:
    from homelab_ops.settings import BackupSettings


class UpgradeCheckError(RuntimeError):
    """The check could not run (no verified backup, no key); not a verdict on the upgrade."""


@dataclass
class UpgradeReport:
    from_backup: str
    to_version: str
    baseline: str  # which export the workflows were compared with
    verdict: compare.Verdict = field(default_factory=compare.Verdict)
    duration_s: float = 0.0

    @property
    def go(self) -> bool:
        return self.verdict.passed

    def headline(self) -> str:
        return (f"n8n {self.to_version}: {'GO' if self.go else 'NO-GO'} "
                f"(backup {self.from_backup}, workflows compared with {self.baseline})")


def newest_verified_backup(backups: BackupSettings, database: str):
    """The newest backup a verification restored (in any store) whose check by n8n did not fail, and
    the store of the copy that was restored."""
    local, remotes = stores_for(backups)
    stores, listings = [], {}
    for store in [local, *remotes]:
        try:
            listings[store.label] = [b for b in bv.listing(store, database).backups
                                     if not nv.n8n_failed(store, database, b.stem)]
            stores.append(store)
        except (bv.VerifyError, StoreError):  # a target that is down: the others may hold it
            continue
    outcomes = bv.recorded_outcomes(stores, database, listings)
    stem = bv.newest_restored(outcomes)
    if stem is None:
        raise UpgradeCheckError(f"no restored backup of {database} in any store: run nightly_backup first")
    label = next(lbl for st, lbl, o in outcomes if st == stem and o == bv.RESTORED)
    store = next(s for s in stores if s.label == label)
    return store, next(b for b in listings[label] if b.stem == stem)


def export_before(local_dir: str, stem: str) -> tuple[str, dict[str, dict]] | None:
    """The newest workflow export at or before backup `stem` (local folder), as digests."""
    root = Path(local_dir) / EXPORTS
    if not root.is_dir():
        return None
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and len(p.name) == 16 and p.name <= stem)
    if not names:
        return None
    folder = root / names[-1]
    workflows = []
    for f in sorted(folder.glob("*.json")):
        try:
            workflows.append(json.loads(f.read_bytes()))
        except ValueError:
            workflows.append({"id": f.stem, "name": f.name, "nodes": None, "connections": None})
    return names[-1], compare.digests(workflows)


def check_upgrade(config: BackupsConfig, version: str, *, executable: str | None = None) -> UpgradeReport:
    started = time.monotonic()
    database = backup_set.n8n_database(config.n8n)
    if database is None:
        raise UpgradeCheckError("no n8n section (n8n.dsn) in the settings")
    store, backup = newest_verified_backup(config.backups, database)
    try:
        extras = backup_set.read_extras(store, database, backup.stem)
        if extras is None:
            raise UpgradeCheckError(f"backup {backup.stem} has no n8n key record: credentials cannot be checked")
        key = backup_set.open_key(config.backups, store, database, extras)
    except (keys.KeyError_, RestoreError, StoreError) as e:
        raise UpgradeCheckError(config.redact(str(e))) from None
    before = export_before(config.backups.local_dir, backup.stem)
    report = UpgradeReport(backup.stem, version, f"export {before[0]}" if before else "the backup itself")
    loc = nv.locate_set(config, database, store, backup.stem)
    scratch = nv.scratch_name("upgrade")
    admin = config.postgres.dsn.get_secret_value()
    try:
        restore(config, loc, scratch, keep_owners=False)
        if executable is None and config.n8n.command:
            executable = config.n8n.command.replace("{version}", version)
        report.verdict = nv.run_n8n_on(config, scratch, key, version=version, executable=executable,
                                       expected_workflows=before[1] if before else None, by_parameters=True)
    except RestoreError as e:
        report.verdict.problems.append(f"the backup does not restore: {e}")
    finally:
        del key
        pg.drop_database(admin, scratch)
        report.duration_s = time.monotonic() - started
    return report


def markdown(report: UpgradeReport) -> str:
    v = report.verdict
    lines = [f"**{report.headline()}**", "", v.summary(), ""]
    bad = [w for w in v.workflows if not w.ok]
    if bad:
        lines += ["| workflow | problem |", "| --- | --- |"] + [f"| {w.workflow} | {w.problem} |" for w in bad]
    return "\n".join(lines)
