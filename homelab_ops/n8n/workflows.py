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


def use_schema(conn: psycopg.Connection, schema: str) -> None:
    """n8n's tables are in `n8n.db_schema` (DB_POSTGRESDB_SCHEMA): unqualified names resolve there."""
    conn.execute(f'SET search_path TO "{schema}"')


def export_workflows(conn: psycopg.Connection, prefix: str = "") -> list[dict]:
    """Every workflow in n8n's export format, tags included, in one read-only snapshot. `prefix` is
    n8n's DB_TABLE_PREFIX (n8n.table_prefix); the tables are looked up in the current schema."""
    wf_table, wt_table, tag_table = (f"{prefix}workflow_entity", f"{prefix}workflows_tags", f"{prefix}tag_entity")
    have = _columns(conn, wf_table)
    if not {"id", "name", "nodes", "connections"} <= have:
        raise ValueError(f"this database has no n8n {wf_table} table with id, name, nodes, connections")
    cols = [c for c in _EXPORT_COLUMNS if c in have]
    select = ", ".join(f'w."{c}"' for c in cols)
    with conn.cursor(row_factory=dict_row) as cur:
        workflows = cur.execute(f'SELECT {select} FROM "{wf_table}" w ORDER BY w.id').fetchall()
        tags: dict[str, list[dict]] = {}
        if _columns(conn, wt_table) and _columns(conn, tag_table):
            for row in cur.execute(
                    f'SELECT wt."workflowId" AS wid, t.id, t.name, t."createdAt", t."updatedAt"'
                    f' FROM "{wt_table}" wt JOIN "{tag_table}" t ON t.id = wt."tagId" ORDER BY t.name'):
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
