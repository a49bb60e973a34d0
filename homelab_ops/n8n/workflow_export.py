"""The n8n workflow export as a backup: a folder of JSON files per run, kept beside the dumps."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from homelab_ops.backups.catalog import stem_for
from homelab_ops.backups.config import BackupsConfig
from homelab_ops.backups.stores import StoreError, stores_for
from homelab_ops.files import PARTIAL_SUFFIX, fsync_dir
from homelab_ops.n8n.workflows import export_workflows, to_file_bytes, use_schema
from homelab_ops.state import connect

FOLDER = "n8n_workflows"


@dataclass
class WorkflowExport:
    path: Path
    count: int
    names: list[str]
    uris: list[str] = field(default_factory=list)
    offsite_errors: list[str] = field(default_factory=list)


def export_n8n_workflows(config: BackupsConfig) -> WorkflowExport:
    """Write `<local_dir>/n8n_workflows/<stem>/<id>.json`, then copy the folder off-site."""
    with connect(config.n8n.dsn.get_secret_value()) as conn:
        conn.read_only = True
        use_schema(conn, config.n8n.db_schema)
        workflows = export_workflows(conn, config.n8n.table_prefix)
    root = Path(config.backups.local_dir) / FOLDER
    stem = stem_for(datetime.now(timezone.utc))
    final = root / stem
    partial = root / (stem + PARTIAL_SUFFIX)
    partial.mkdir(parents=True, exist_ok=False)
    files = {}
    for wf in workflows:
        name = f"{wf['id']}.json"
        data = to_file_bytes(wf)
        with open(partial / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        files[name] = data
    fsync_dir(partial)
    os.replace(partial, final)
    fsync_dir(root)
    result = WorkflowExport(final, len(workflows), sorted(w["name"] for w in workflows))
    _, remotes = stores_for(config.backups)
    for store in remotes:
        try:
            for name, data in files.items():
                store.put_bytes(f"{FOLDER}/{stem}", name, data)
            result.uris.append(store.uri(f"{FOLDER}/{stem}", ""))
        except StoreError as e:
            result.offsite_errors.append(str(e))
    return result
