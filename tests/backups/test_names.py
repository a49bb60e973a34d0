"""Database names cannot break the code location or the CLI (homelab_ops.backups.names).

A private cluster holds the hostile names (`_globals`, `n8n_workflows`, `chaos-dash` next to
`chaos_dash`), so `postgres.databases: all` on the shared server never sees them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from homelab_ops.backups.names import SCRATCH_PREFIX, DatabaseNameError, op_name, usable_databases
from homelab_ops.settings import SettingsError, load
from tests.pg_cluster import scram_pg  # noqa: F401  (module fixture)

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ["_globals", "n8n_workflows", "chaos-dash", "chaos_dash", "chaos.dash", "lost+found",
           "homelab_verify_good_abc123"]


def _write(tmp_path: Path, data: dict) -> Path:
    data.setdefault("backups", {}).setdefault("local_dir", str(tmp_path / "backups"))
    data.setdefault("metrics", {}).setdefault("textfile_dir", str(tmp_path / "textfile"))
    path = tmp_path / "homelab.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_reserved_names_are_the_folders_of_globals_and_exports():
    from homelab_ops.backups.catalog import GLOBALS
    from homelab_ops.n8n.workflow_export import FOLDER
    from homelab_ops.backups.names import PITR_FOLDERS, PITR_OFFSITE, RESERVED, name_problem

    assert set(RESERVED) == {GLOBALS, FOLDER, *PITR_FOLDERS, PITR_OFFSITE}
    # a database called `_pitr` would take the PITR archive's `offsite/_pitr_offsite` asset key
    assert "offsite/_pitr_offsite" in name_problem("_pitr")


def test_dagster_op_names_are_what_names_predicts():
    import dagster as dg

    for name in ("chaos-dash", "chaos.dash", "a_b"):
        assert dg.AssetKey(name).to_python_identifier() == op_name(name)


def test_all_skips_reserved_and_colliding_names_and_the_code_location_loads(scram_pg, tmp_path):
    with psycopg.connect(scram_pg.dsn(), autocommit=True) as conn:
        for name in [*HOSTILE, "good"]:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    path = _write(tmp_path, {"postgres": {"dsn": scram_pg.dsn(), "databases": "all"},
                             "state": {"dsn": scram_pg.dsn("homelab")},
                             "n8n": {"dsn": scram_pg.dsn("good")}})
    probe = ("import homelab_ops.definitions as m; d = m.defs(); "
             "print(sorted(k.to_user_string() for k in d.resolve_all_asset_keys() if k.path[0] == 'backups'))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOMELAB_CONFIG": str(path)}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "['backups/good_backup', 'backups/postgres_backup']"
    for name in HOSTILE:
        if name.startswith(SCRATCH_PREFIX):  # a verification's scratch database is no owner's: left out silently
            assert repr(name) not in proc.stderr
            continue
        assert repr(name) in proc.stderr, (name, proc.stderr[-3000:])
    assert "'chaos-dash': collides with 'chaos.dash', 'chaos_dash'" in proc.stderr


def test_a_colliding_name_cannot_take_the_backups_of_one_already_backed_up():
    warnings: list[str] = []
    kept = usable_databases(["chaos-dash", "chaos_dash", "n8n"], explicit=False, warn=warnings.append,
                            backed_up=["chaos_dash"])
    assert kept == ["chaos_dash", "n8n"]
    assert "'chaos-dash'" in warnings[0] and "collides with 'chaos_dash'" in warnings[0]
    # Neither backed up yet: neither is kept, whichever was created first.
    assert usable_databases(["chaos-dash", "chaos_dash"], explicit=False, warn=warnings.append) == []


@pytest.mark.parametrize("listed, problem", [
    (["n8n", "_globals"], "'_globals' reserved: the folder and retention asset of the roles dump"),
    (["n8n_workflows"], "'n8n_workflows' reserved: the folder and retention asset of n8n's workflow exports"),
    (["chaos-dash", "chaos_dash"], "'chaos-dash' collides with 'chaos_dash'"),
    (["a.b", "a-b"], "'a.b' collides with 'a-b'"),
    (["../other"], "'../other' not a name that can be a folder"),
])
def test_a_listed_reserved_or_colliding_name_is_refused_when_the_settings_load(tmp_path, listed, problem):
    path = _write(tmp_path, {"postgres": {"databases": listed}})
    with pytest.raises(SettingsError) as e:
        load(path)
    assert "postgres.databases" in str(e.value) and problem in str(e.value), str(e.value)
    with pytest.raises(DatabaseNameError):
        usable_databases(listed, explicit=True)


def test_the_cli_refuses_a_database_argument_that_is_a_path_or_unknown(tmp_path):
    """`backups restore ../other` must not read a backup that sits outside local_dir."""
    from click.testing import CliRunner

    from homelab_ops.cli import main

    outside = tmp_path / "other"
    outside.mkdir()
    (outside / "20261101T030000Z.dump.zst").write_bytes(b"not read")
    (outside / "20261101T030000Z.manifest.json").write_text('{"size": 8, "sha256": "0"}')
    (tmp_path / "backups" / "n8n").mkdir(parents=True)
    path = _write(tmp_path, {"postgres": {"dsn": "postgresql://postgres@127.0.0.1:1/postgres",
                                          "databases": ["n8n"]}})

    def cli(*args: str):
        result = CliRunner().invoke(main, ["--config", str(path), *args])
        # A refusal is a ClickException (exit 1, its message on stderr), never an escaped exception.
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result

    runs = [["backups", "restore", "../other", "--into", "nope_restored"],
            ["backups", "restore", str(outside), "--into", "nope_restored"],
            ["backups", "list", "../other"],
            ["backups", "prune", "--dry-run", "../other"]]
    for args in runs:
        result = cli(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "is not a database name" in result.stderr, (args, result.stderr)
        assert "20261101T030000Z" not in result.output
    result = cli("backups", "restore", "nosuch", "--into", "nope_restored")
    assert result.exit_code == 1
    assert "'nosuch' is not a database homelab-ops knows" in result.stderr and "known: _globals, n8n" in result.stderr
    # Known names still work (nothing to list is not an error).
    result = cli("backups", "list", "n8n")
    assert result.exit_code == 0, result.output
