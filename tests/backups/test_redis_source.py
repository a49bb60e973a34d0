"""The Redis backup source: the RDB a replica receives, checked by redis-check-rdb, proved by a scratch
redis-server; the nightly job backs it up, copies, verifies and prunes it like a database."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from homelab_ops.backups import sources
from homelab_ops.backups import verify as v
from homelab_ops.backups.catalog import read_listing
from homelab_ops.backups.config import BackupsConfig
from homelab_ops.backups.sources import redis as rs
from homelab_ops.backups.stores import LocalStore
from homelab_ops.cli import main
from homelab_ops.settings import SettingsError
from tests.backups.test_offsite import nightly_backups_defs
from tests.backups.test_verification import seed
from tests.conftest import free_port
from tests.redis_server import redis_server

PASSWORD = "PLANTredis" + "9f3c1d2e7a"

CHECK_OK = """[offset 0] Checking RDB file dump.rdb
[offset 27] AUX FIELD redis-ver = '7.0.15'
[offset 165] Selecting DB ID 0
[offset 654] Checksum OK
[offset 654] \\o/ RDB looks OK! \\o/
[info] 52 keys read
[info] 3 expires
[info] 0 already expired
"""


# ---------------------------------------------------------------- pure

def test_what_redis_check_rdb_read_is_taken_from_its_report_and_a_bad_file_is_named():
    assert rs.read_check(CHECK_OK) == {"keys": 52, "expires": 3, "redis_version": "7.0.15"}
    bad = CHECK_OK.replace("[offset 654] Checksum OK\n[offset 654] \\o/ RDB looks OK! \\o/\n",
                           "--- RDB ERROR DETECTED ---\n[offset 600] Unexpected EOF reading RDB file\n"
                           "[additional info] Reading key 'k43'\n")
    with pytest.raises(ValueError, match=r"does not accept the RDB: \[offset 600\] Unexpected EOF reading RDB file / \[additional info\] Reading key 'k43'$"):
        rs.read_check(bad)


def test_keys_without_a_ttl_must_all_be_restored_keys_with_one_may_have_expired():
    manifest = {"keys": 52, "expires": 3}
    ok, why, expected, restored = rs.compare_keys(manifest, {0: (48, 1), 3: (2, 0)})  # two TTL keys expired
    assert ok and (expected, restored) == (49, 49) and "1 of 3 with a TTL still live" in why
    ok, why, *_ = rs.compare_keys(manifest, {0: (47, 1), 3: (2, 0)})  # a persistent key is missing
    assert not ok and "48 keys without a TTL, the manifest 49" in why
    assert rs.parse_keyspace("# Keyspace\r\ndb0:keys=50,expires=2,avg_ttl=0\r\ndb3:keys=2,expires=0,avg_ttl=0\r\n") \
        == {0: (50, 2), 3: (2, 0)}


def test_a_source_is_refused_when_its_name_or_type_is_not_usable(write_settings):
    def sources_(*entries, databases=("n8n",)):
        return write_settings({"postgres": {"databases": list(databases)}, "backups": {"sources": list(entries)}})

    for entries, says in [
        ([{"type": "redis", "name": "n8n"}], "collides with the database 'n8n'"),
        ([{"type": "redis", "name": "_globals"}], "reserved"),
        ([{"type": "redis", "name": "../etc"}], "not a name that can be a folder"),
        ([{"type": "redis", "name": "a-b"}, {"type": "redis", "name": "a_b"}], "two sources"),
        ([{"type": "mongodb", "name": "m"}], "'mongodb' found using 'type' does not match any of the expected tags: 'redis'"),
        ([{"type": "redis", "name": "c", "pasword": "x"}], "pasword"),
    ]:
        with pytest.raises(SettingsError, match=says):
            sources_(*entries)
    _, settings = sources_({"type": "redis", "name": "cache", "password": PASSWORD})
    module, config = sources.source_for(settings.backups, "cache")
    assert module is rs and config.port == 6379
    assert sources.source_for(settings.backups, "n8n")[0] is sources.MODULES["postgresql"]
    assert PASSWORD in settings.secrets()  # the redactor knows it


def test_one_list_of_what_is_backed_up_for_the_location_the_cli_and_the_digest(new_db, write_settings):
    """Under `all`, a database that a source names is the source's, once; with the server down, the
    folders with backups stand in, for the digest as for the code location."""
    from homelab_ops.health.config import HealthConfig
    from homelab_ops.health.evaluate import check_backups
    from homelab_ops.notify.digest import gather

    db = new_db("clash")
    redis_entry = {"type": "redis", "name": db, "port": free_port()}
    _, settings = write_settings({"postgres": {"databases": "all"}, "backups": {"sources": [redis_entry]}})
    said: list[str] = []
    names = sources.backed_up(BackupsConfig.of(settings), warn=said.append)
    assert names.count(db) == 1 and names[-1] == db and "postgres" in names
    assert any(repr(db) in m and "backups.sources" in m for m in said), said
    assert [line.database for line in gather(HealthConfig.of(settings)).backups].count(db) == 1

    _, down = write_settings({"postgres": {"dsn": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
                                           "databases": "all"}, "backups": {"sources": [redis_entry]}}, "down.yaml")
    folder = Path(down.backups.local_dir) / "app"
    folder.mkdir(parents=True)
    (folder / "20261101T030000Z.dump.zst").write_bytes(b"x")
    (folder / "20261101T030000Z.manifest.json").write_text("{}")
    said.clear()
    assert sources.backed_up(BackupsConfig.of(down), warn=said.append) == ["app", db]
    assert "did not answer" in said[0]
    facts = gather(HealthConfig.of(down))
    assert [line.database for line in facts.backups] == ["app", db]
    assert any("did not answer" in why for why in facts.unread), facts.unread  # said in the digest
    ages = check_backups(HealthConfig.of(down), datetime.now(timezone.utc))
    assert [r.name for r in ages] == ["backup_age:app", f"backup_age:{db}"]


# ---------------------------------------------------------------- against a real redis-server

SEED = ["SET plain 1", "HSET h a 1 b 2", "RPUSH l x y z", "SADD s m n", "ZADD z 1 one 2 two",
        "SET later 1 EX 86400", "SELECT 3", "SET other-db 1", "SET bin \"\\x00\\xff\""]


@pytest.fixture
def redis(tmp_path):
    with redis_server(tmp_path / "redis", PASSWORD) as server:
        server.cli(stdin="\n".join(SEED) + "\n")
        server.cli(stdin="".join(f"SET k{i} {'v' * (1 + i % 50)}\n" for i in range(2000)))
        yield server


def _settings(write_settings, redis, db: str, **backups):
    return write_settings({"postgres": {"databases": [db]},
                           "backups": {"sources": [{"type": "redis", "name": "cache", "port": redis.port,
                                                    "password": PASSWORD}], **backups}})


def test_the_nightly_job_backs_up_copies_verifies_and_prunes_redis_beside_a_database(
        redis, new_db, write_settings, monkeypatch, tmp_path):
    db = new_db("beside_redis")
    seed(db)
    path, settings = _settings(write_settings, redis, db)
    defs = nightly_backups_defs(path, monkeypatch)
    specs = {s.key: s for s in defs.resolve_all_asset_specs()}
    for key in (["backups", "cache_backup"], ["restore_verification", "cache_verification"]):
        assert "redis" in specs[dg.AssetKey(key)].kinds, key
    assert dg.AssetKey(["backup_retention", "cache_retention"]) in specs
    assert "redis-check-rdb" in specs[dg.AssetKey(["restore_verification", "cache_verification"])].description
    result = defs.resolve_job_def("nightly_backup").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success

    mats = result.asset_materializations_for_node("backups__cache_backup")
    assert mats[0].metadata["key_count"].value == 2008  # the seeded keys, both databases, the TTL one too
    listing = read_listing(LocalStore(settings.backups.local_dir).list("cache"))
    (backup,) = listing.backups
    manifest = json.loads((Path(settings.backups.local_dir) / "cache" / backup.manifest).read_text())
    assert manifest["source"] == "redis" and manifest["keys"] == 2008 and manifest["expires"] == 1
    assert manifest["redis_version"]
    verified = result.asset_materializations_for_node("restore_verification__cache_verification")[0].metadata
    assert verified["outcome"].value == v.RESTORED, verified["message"].value
    assert "2007 keys without a TTL, 1 of 1 with a TTL still live" in verified["message"].value
    folder = Path(settings.backups.local_dir) / "cache"
    assert not [p for p in folder.iterdir() if ".partial" in p.name or p.name.endswith(".rdb")]
    assert not list(Path(settings.backups.local_dir).glob(".verify-redis-*"))  # the scratch folder went
    checks = {(c.asset_key.path[-1], c.check_name): c.passed for c in result.get_asset_check_evaluations()}
    assert checks[("cache_verification", "matches_manifest")] and checks[(f"{db}_verification", "matches_manifest")]
    # The password never reached the manifest, the record, or a log line of the run.
    stored = b"".join(p.read_bytes() for p in folder.iterdir())
    assert PASSWORD.encode() not in stored
    logs = [e.message or "" for e in result.all_events]
    assert not [line for line in logs if PASSWORD in line]


def test_a_restore_that_lost_keys_fails_its_verification_by_name(redis, write_settings):
    path, settings = _settings(write_settings, redis, "n8n")
    module, config = sources.source_for(settings.backups, "cache")
    result = module.backup(config, BackupsConfig.of(settings), dg.get_dagster_logger())
    manifest_file = result.path.with_name(result.stem + ".manifest.json")
    manifest = json.loads(manifest_file.read_text())
    manifest["keys"] += 1  # the manifest saw a key the file does not hold
    manifest_file.write_text(json.dumps(manifest))
    outcome = v.verify_backup(BackupsConfig.of(settings), "cache")
    assert outcome.outcome == v.FAILED and outcome.restored
    assert "2007 keys without a TTL, the manifest 2008" in outcome.message
    # A file that is not an RDB (damaged before it was hashed) does not restore, and says why.
    bad = result.path.parent / "not-an-rdb"
    bad.write_bytes(b"REDIS0009 garbage")
    with pytest.raises(sources.SourceError, match="does not accept the RDB: .*Invalid object type"):
        rs.check_rdb(bad)


def test_a_wrong_password_fails_the_backup_naming_redis_and_leaves_nothing(redis, write_settings):
    path, settings = write_settings({"backups": {"sources": [{"type": "redis", "name": "cache", "port": redis.port,
                                                              "password": "not-" + PASSWORD}]}})
    module, config = sources.source_for(settings.backups, "cache")
    from homelab_ops.backups.backup import BackupError

    with pytest.raises(BackupError, match="redis-cli --rdb of cache failed") as e:
        module.backup(config, BackupsConfig.of(settings), dg.get_dagster_logger())
    assert PASSWORD not in str(e.value)
    assert not list((Path(settings.backups.local_dir) / "cache").iterdir())


def test_the_cli_restores_an_encrypted_backup_as_a_dump_rdb_redis_loads(redis, write_settings, tmp_path):
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    key = tmp_path / "id.key"
    key.write_text(str(identity) + "\n")
    path, settings = _settings(write_settings, redis, "n8n",
                               encryption={"age_recipients": [str(identity.to_public())], "identity_file": str(key)})
    module, config = sources.source_for(settings.backups, "cache")
    backup = module.backup(config, BackupsConfig.of(settings), dg.get_dagster_logger())
    assert backup.path.name.endswith(".age")
    redis.cli("FLUSHALL")  # the data is lost
    into = tmp_path / "restored"
    run = CliRunner().invoke(main, ["--config", str(path), "backups", "restore", "cache", "--into", str(into)])
    assert run.exit_code == 0, run.output
    assert f"as {into / 'dump.rdb'}" in run.output and PASSWORD not in run.output
    with redis_server(into, PASSWORD) as again:  # Redis started on the restored folder loads it
        assert again.cli("-n", "3", "GET", "other-db").strip() == "1"
        assert again.cli("HGET", "h", "b").strip() == "2"
        assert again.cli("DBSIZE").strip() == "2006"  # db 0; db 3 holds the other two
    again_run = CliRunner().invoke(main, ["--config", str(path), "backups", "restore", "cache", "--into", str(into)])
    assert again_run.exit_code != 0 and "already exists: refusing to overwrite it" in again_run.output
    listed = CliRunner().invoke(main, ["--config", str(path), "backups", "list", "cache"])
    assert listed.exit_code == 0 and "cache" in listed.output and "unverified" in listed.output


def test_the_password_reaches_redis_cli_only_through_its_environment(write_settings):
    _, settings = write_settings({"backups": {"sources": [{"type": "redis", "name": "cache", "password": PASSWORD,
                                                           "username": "backup"}]}})
    args, env = rs._client(settings.backups.sources[0])
    assert PASSWORD not in " ".join(args) and env["REDISCLI_AUTH"] == PASSWORD
    assert args[-2:] == ["--user", "backup"]


def test_doctor_says_whether_each_source_answers_without_printing_its_password(redis, write_settings):
    from homelab_ops import doctor

    _, good = _settings(write_settings, redis, "n8n")
    check = doctor.check_source(good.backups.sources[0])
    assert check.status == "ok" and check.detail.startswith("Redis 7.") and f":{redis.port} answers" in check.detail
    _, bad = write_settings({"backups": {"sources": [{"type": "redis", "name": "cache", "port": redis.port,
                                                      "password": "not-" + PASSWORD}]}})
    check = doctor.check_source(bad.backups.sources[0])
    assert check.failed and ("WRONGPASS" in check.detail or "NOAUTH" in check.detail), check
    assert "backups.sources entry 'cache'" in check.fix and PASSWORD not in check.detail + check.fix


KILLED_CHILD = """
import sys
import dagster as dg
from homelab_ops.backups import sources
from homelab_ops.backups.config import BackupsConfig
from homelab_ops.backups.verify import verify_backup
from homelab_ops.settings import load
config = BackupsConfig.of(load(sys.argv[1]))
module, source = sources.source_for(config.backups, "cache")
while True:
    module.backup(source, config, dg.get_dagster_logger()) if sys.argv[2] == "backup" else verify_backup(config, "cache")
"""


@pytest.mark.parametrize("step", ["backup", "verify"])
def test_a_sigkill_mid_backup_or_mid_verification_leaves_nothing_the_sweep_does_not_clear(
        step, redis, write_settings, tmp_path):
    """Killed while the raw RDB is on disk, or while the scratch redis-server holds the restore: no server
    outlives the run (it dies with it), and the recovery sweep removes the files; the next night works."""
    import signal
    import sys
    import time

    from homelab_ops.backups.verify import SCRATCH_DIR_PREFIX
    from homelab_ops.recovery import remove_leftovers

    redis.cli("--pipe", stdin="".join(f"SET big{i} {'x' * 200}\n" for i in range(100_000)))
    path, settings = _settings(write_settings, redis, "n8n")
    local = Path(settings.backups.local_dir)
    module, config = sources.source_for(settings.backups, "cache")
    if step == "verify":
        module.backup(config, BackupsConfig.of(settings), dg.get_dagster_logger())
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(path), step], cwd=str(Path(__file__).parents[2]))
    deadline, seen = time.monotonic() + 120, None
    try:
        while time.monotonic() < deadline and seen is None:
            if step == "backup":
                seen = next(iter((local / "cache").glob("*.rdb.partial")), None) if (local / "cache").exists() else None
            else:
                seen = next((d for d in local.glob(SCRATCH_DIR_PREFIX + "*") if (d / "redis.log").exists()), None)
            time.sleep(0.002)
        assert seen is not None, f"never reached the {step} step's files"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    time.sleep(1)
    assert not [p for p in Path("/proc").glob("[0-9]*") if _is_scratch_server(p, local)]  # died with the run
    assert seen.exists()  # what the kill left (files only: the sweep's job)
    removed, complete = remove_leftovers(BackupsConfig.of(settings), dg.get_dagster_logger())
    assert complete and str(seen) in removed, removed
    assert not list(local.glob(SCRATCH_DIR_PREFIX + "*")) and not list((local / "cache").glob("*.partial"))
    assert LocalStore(str(local)).databases() == ["cache"]
    module.backup(config, BackupsConfig.of(settings), dg.get_dagster_logger())
    assert v.verify_backup(BackupsConfig.of(settings), "cache").outcome == v.RESTORED


def _is_scratch_server(proc: Path, local: Path) -> bool:
    try:
        cmd = (proc / "cmdline").read_bytes()
        return b"redis-server" in cmd and Path(os.readlink(proc / "cwd")).is_relative_to(local)
    except (OSError, ValueError):
        return False


def test_the_source_registry_finds_modules_by_name_and_refuses_one_that_declares_less(tmp_path, monkeypatch):
    import importlib

    from homelab_ops.plugins import discover_typed

    assert set(sources.MODULES) == {"postgresql", "redis"}
    assert [m for m in sources.MODULES.values() if m.LISTED] == [rs]  # PostgreSQL's are postgres.databases
    package = tmp_path / "fake_sources"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_shared.py").write_text("raise RuntimeError('shared code is not a plug-in')\n")
    (package / "mongodb.py").write_text("from typing import Literal\nfrom pydantic import BaseModel\n"
                                        "class Config(BaseModel):\n    type: Literal['mongo']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = importlib.import_module("fake_sources")
    with pytest.raises(TypeError, match=r"fake_sources.mongodb.Config.type must be Literal\['mongodb'\]"):
        discover_typed(fake.__name__, fake.__path__)
    (package / "mongodb.py").write_text("from typing import Literal\nfrom pydantic import BaseModel\n"
                                        "class Config(BaseModel):\n    type: Literal['mongodb']\nLISTED = True\n")
    importlib.invalidate_caches()
    import sys

    sys.modules.pop("fake_sources.mongodb", None)
    with pytest.raises(TypeError, match="fake_sources.mongodb does not declare KINDS, VERIFIES"):
        discover_typed(fake.__name__, fake.__path__, requires=("LISTED", "KINDS", "VERIFIES"))
