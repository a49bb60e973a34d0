"""The operator's `homelab-ops backups ...` commands and the n8n workflow export, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
from click.testing import CliRunner

from homelab_ops.cli import main
from homelab_ops.defs.backups.n8n_workflows import n8n_workflows_asset
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.n8n.demo import SECRET_WORKFLOW_NAME, create_demo_database
from tests.conftest import ADMIN_DSN, dsn_for
from tests.test_backups import seed, stats


def test_list_and_restore_from_the_command_line(new_db, write_settings):
    db = new_db("cli")
    seed(db, "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 50);")
    path, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]}})
    runner = CliRunner()
    from homelab_ops.backups.backup import run_backup

    first = run_backup(settings, db)
    second = run_backup(settings, db)
    out = runner.invoke(main, ["--config", str(path), "backups", "list", db])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split() == ["DATABASE", "STORE", "BACKUP", "SIZE", "AGE", "ENC", "VERIFIED"]
    assert [ln.split()[2] for ln in lines[1:]] == [second.stem, first.stem]  # newest first

    target = new_db("cli_r", create=False)
    out = runner.invoke(main, ["--config", str(path), "backups", "restore", db, "--into", target,
                               "--at", first.stem])
    assert out.exit_code == 0, out.output
    assert f"backup {first.stem}" in out.output
    assert stats(target) == stats(db)

    again = runner.invoke(main, ["--config", str(path), "backups", "restore", db, "--into", target])
    assert again.exit_code == 1 and "already exists: refusing to overwrite" in again.output

    early = runner.invoke(main, ["--config", str(path), "backups", "restore", db, "--into", "never_made",
                                 "--at", "2000-01-01T00:00:00"])
    assert early.exit_code == 1 and "no complete backup" in early.output

    bad = runner.invoke(main, ["--config", str(path), "backups", "restore", db, "--into", "x", "--at", "soon"])
    assert bad.exit_code == 1 and "--at 'soon'" in bad.output


def test_bad_settings_are_a_clear_cli_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("backups: {timeout: forever}\n")
    out = CliRunner().invoke(main, ["--config", str(p), "backups", "list"])
    assert out.exit_code == 1 and "backups.timeout" in out.output and str(p) in out.output


def test_n8n_workflows_export_in_n8n_format(new_db, write_settings):
    n8n = new_db("n8n", create=False)
    counts = create_demo_database(ADMIN_DSN, n8n, workflows=6, executions=50)
    path, settings = write_settings({"n8n": {"dsn": dsn_for(n8n)}})
    result = dg.materialize([n8n_workflows_asset(settings)],
                            resources={"homelab": HomelabSettings(config_path=str(path))})
    meta = result.asset_materializations_for_node("n8n_workflows")[0].metadata
    folder = Path(meta["path"].value)
    files = sorted(folder.glob("*.json"))
    assert meta["workflow_count"].value == counts["workflows"] == len(files)
    docs = [json.loads(f.read_text()) for f in files]
    for doc, f in zip(docs, files):
        assert f.name == f"{doc['id']}.json"
        assert {"id", "name", "nodes", "connections", "settings", "versionId", "active", "tags"} <= doc.keys()
        assert isinstance(doc["nodes"], list) and doc["nodes"][0]["type"].startswith("n8n-nodes-base.")
    assert SECRET_WORKFLOW_NAME in {d["name"] for d in docs}
