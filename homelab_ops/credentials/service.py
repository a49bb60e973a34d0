"""What one credential asset or one scan does end to end, as plain functions the Dagster defs call.

Returns plain data with no secret in it; the assets only turn it into metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from homelab_ops.credentials.config import CredentialsConfig
from homelab_ops.credentials.envfile import render_env_file
from homelab_ops.credentials.kinds import kind_for
from homelab_ops.credentials.rotation import RotationResult, rotate
from homelab_ops.credentials.store import Status, open_store
from homelab_ops.n8n.workflow_scan import Finding, scan_database, scan_paths

if TYPE_CHECKING:
    from homelab_ops.settings import N8nSettings


@dataclass
class CredentialReport:
    status: Status
    rotation: RotationResult | None  # None for manual credentials
    env_file: Path | None = None

    @property
    def next_due(self) -> datetime | None:
        since = self.status.current_since
        return since + timedelta(seconds=self.status.definition.period_seconds) if since else None


def rotate_and_report(config: CredentialsConfig, name: str, actor: str) -> CredentialReport:
    """Rotate `name` if due (finishing any interrupted rotation), then describe where it stands.

    After a rotation the settings' env file is rendered again, so the
    consumers only need a restart.
    """
    with open_store(config, actor) as store:
        d = store.get_definition(name)
        result = rotate(store, name, config=config) if kind_for(d.kind).rotatable else None
        env_file = None
        c = config.credentials
        if result and result.rotated and c.env_template and c.env_file:
            render_env_file(store, c.env_template, c.env_file)
            env_file = Path(c.env_file)
        return CredentialReport(store.status(name), result, env_file)


@dataclass
class ScanReport:
    sources: list[str] = field(default_factory=list)
    workflows: int = 0
    findings: list[Finding] = field(default_factory=list)


def scan_configured(n8n: N8nSettings | None) -> ScanReport:
    """n8n's database (settings `n8n.dsn`) and the export folder (`n8n.workflows_dir`), when configured."""
    report = ScanReport()
    if n8n is None:
        return report
    findings, count = scan_database(n8n.dsn.get_secret_value(), schema=n8n.db_schema,
                                    prefix=n8n.table_prefix)
    report.sources.append("n8n database")
    report.workflows += count
    report.findings += findings
    folder = n8n.workflows_dir
    if folder:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"n8n.workflows_dir {folder} is not a folder")
        report.sources.append(str(folder))
        found = scan_paths([folder])
        report.workflows += len({(f.source, f.workflow_id) for f in found})
        report.findings += found
    return report
