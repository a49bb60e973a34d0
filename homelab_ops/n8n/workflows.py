"""Export n8n's workflows as `n8n export:workflow --backup` would: one JSON file each.

Workflows are the owner's most valuable data, and a file per workflow restores
with `n8n import:workflow --separate --input=DIR` without a database restore.
"""

from __future__ import annotations

import json
from datetime import datetime

import psycopg
from psycopg.rows import dict_row

# Columns n8n 1.x writes in an exported workflow, when the schema has them.
_EXPORT_COLUMNS = [
    "createdAt", "updatedAt", "id", "name", "description", "active", "isArchived", "nodes",
    "connections", "settings", "staticData", "meta", "pinData", "versionId", "activeVersionId",
    "versionCounter", "triggerCount", "parentFolderId",
]


def _columns(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = %s", (table,)).fetchall()
    return {r[0] for r in rows}


def _jsonable(v):
    return v.isoformat() if isinstance(v, datetime) else v


def export_workflows(conn: psycopg.Connection) -> list[dict]:
    """Every workflow in n8n's export format, tags included, in one read-only snapshot."""
    have = _columns(conn, "workflow_entity")
    if not {"id", "name", "nodes", "connections"} <= have:
        raise ValueError("this database has no n8n workflow_entity table with id, name, nodes, connections")
    cols = [c for c in _EXPORT_COLUMNS if c in have]
    select = ", ".join(f'w."{c}"' for c in cols)
    with conn.cursor(row_factory=dict_row) as cur:
        workflows = cur.execute(f"SELECT {select} FROM workflow_entity w ORDER BY w.id").fetchall()
        tags: dict[str, list[dict]] = {}
        if _columns(conn, "workflows_tags") and _columns(conn, "tag_entity"):
            for row in cur.execute(
                    'SELECT wt."workflowId" AS wid, t.id, t.name, t."createdAt", t."updatedAt"'
                    ' FROM workflows_tags wt JOIN tag_entity t ON t.id = wt."tagId" ORDER BY t.name'):
                wid = row.pop("wid")
                tags.setdefault(wid, []).append({k: _jsonable(v) for k, v in row.items()})
    out = []
    for w in workflows:
        doc = {k: _jsonable(v) for k, v in w.items()}
        doc["tags"] = tags.get(w["id"], [])
        out.append(doc)
    return out


def to_file_bytes(workflow: dict) -> bytes:
    """The file as `n8n import:workflow` takes it. Written inactive: n8n deactivates every imported
    workflow anyway, and n8n 1.123.0 fails to import an active one into an instance that does not
    have it yet (it records the deactivation before the workflow exists: a foreign key error)."""
    doc = {**workflow, "active": False}
    if "activeVersionId" in doc:
        doc["activeVersionId"] = None
    return json.dumps(doc, indent=2, ensure_ascii=False).encode()
