"""Everything under backups.local_dir is its owner's alone: 0600 files in 0700 folders.

Through the real entry points: `dagster asset materialize` of the code location (backup, roles
dump, verification), then the CLI's `backups restore` and `backups prune`.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from homelab_ops.files import make_dirs, tighten_tree, write_atomic
from tests.conftest import ADMIN_DSN, drop_database, dsn_for

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("homelab-ops"))


def modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def not_private(root: Path) -> dict[str, str]:
    return {name: oct(m) for name, m in modes(root).items()
            if m != (0o700 if (root / name).is_dir() else 0o600)}


@pytest.fixture
def loose_umask():
    """The tests' own process keeps the usual 022: only the entry points may make things private."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_backups_verification_restore_and_prune_leave_only_private_files(new_db, write_settings, tmp_path,
                                                                         loose_umask):
    db = new_db("modes")
    with psycopg.connect(dsn_for(db), autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 500) g")
    path, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]},
                                     "backups": {"local_dir": str(tmp_path / "var" / "backups"),
                                                 "retention": {"keep_last": 1, "keep_daily": 0,
                                                               "keep_weekly": 0, "keep_monthly": 0}}})
    env = {**os.environ, "HOMELAB_CONFIG": str(path), "DAGSTER_HOME": str(tmp_path / "dagster")}
    (tmp_path / "dagster").mkdir()
    for _ in range(2):  # two backups, so prune has one to remove
        proc = subprocess.run(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "homelab_ops.definitions",
             "--select", f"backups/{db}_backup,backup_globals,restore_verification/{db}_verification"],
            capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    local = Path(settings.backups.local_dir)
    names = {str(p.relative_to(local)) for p in local.rglob("*")}
    assert any(n.startswith(f"{db}/") and n.endswith(".dump.zst") for n in names), names
    assert any(n.startswith(f"{db}/") and n.endswith(".manifest.json") for n in names), names
    assert any(n.startswith(f"{db}/") and n.endswith(".verified.json") for n in names), names
    assert any(n.startswith("_globals/") and ".globals.sql" in n for n in names), names
    assert not_private(local) == {}
    assert stat.S_IMODE(local.parent.stat().st_mode) == 0o700  # `var`, created for the backups too

    restored = f"{db}_restored"
    try:
        proc = subprocess.run([CLI, "backups", "restore", db, "--into", restored],
                              capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        proc = subprocess.run([CLI, "backups", "prune", db], capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "1 removed" in proc.stdout, proc.stdout
    finally:
        drop_database(restored)
    assert not_private(local) == {}


def test_backups_written_before_the_umask_become_private_when_the_code_location_loads(write_settings, tmp_path,
                                                                                      loose_umask, monkeypatch):
    path, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": ["n8n"]}})
    old = Path(settings.backups.local_dir) / "n8n"
    old.mkdir(parents=True, mode=0o755)
    (old / "20261101T030000Z.dump.zst").write_bytes(b"x")
    (old / "20261101T030000Z.manifest.json").write_text("{}")
    os.chmod(old.parent, 0o755)
    assert not_private(old.parent)
    import homelab_ops.definitions as location

    monkeypatch.setenv("HOMELAB_CONFIG", str(path))
    location.defs()  # as the code server and each run worker load it
    assert not_private(old.parent) == {}
    assert tighten_tree(old.parent) == 0  # nothing left to change


def test_write_atomic_is_private_unless_told_otherwise(tmp_path, loose_umask):
    p = write_atomic(tmp_path / "a" / "b" / "manifest.json", b"{}")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    # A file other users read (node_exporter's textfile) says so; its new folders are then 0755.
    t = write_atomic(tmp_path / "textfile" / "x.prom", b"m 1\n", mode=0o644)
    assert stat.S_IMODE(t.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "textfile").stat().st_mode) == 0o755
    assert stat.S_IMODE(make_dirs(tmp_path / "c" / "d").stat().st_mode) == 0o700
    # An existing folder keeps its mode.
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)
    write_atomic(tmp_path / "open" / "f", b"x")
    assert stat.S_IMODE((tmp_path / "open").stat().st_mode) == 0o755
