"""A full disk is an ordinary, named failure: a small tmpfs as `backups.local_dir`, full at each write."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from homelab_ops.backups.backup import run_backup
from homelab_ops.backups.catalog import read_listing
from tests.conftest import ADMIN_DSN
from tests.backups.test_backups import materialize, seed
from homelab_ops.backups.config import BackupsConfig

NOISE = ("CREATE TABLE noise (id int, pad text); INSERT INTO noise SELECT i, md5(random()::text) || "
         "md5(random()::text) FROM generate_series(1, 60000) i;")  # a dump of ~2 MB
# Many tables with long names: a small dump, a large manifest (one entry per table).
MANY_TABLES = ("DO $$ BEGIN FOR i IN 1..2000 LOOP EXECUTE format('CREATE TABLE %I (x int)', "
               "'manifest_entry_with_a_long_name_' || i); END LOOP; END $$;")


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk(kib)`: a tmpfs of that size (needs root, as CI runs the tests), unmounted after."""
    mounts: list[Path] = []

    def mount(kib: int) -> Path:
        d = tmp_path / f"disk{len(mounts)}"
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k,mode=0700", "tmpfs", str(d)], check=True)
        mounts.append(d)
        return d

    yield mount
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], check=False)


def settings_on(write_settings, db: str, local_dir: Path, name: str = "homelab.yaml", **backups):
    return write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]},
                           "backups": {"local_dir": str(local_dir), **backups}}, name)


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    [failure] = result.get_step_failure_events()
    return failure.step_failure_data.user_failure_data.description


def fill(disk: Path, leave: int) -> None:
    """Fill `disk` up to `leave` bytes free."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "ab") as f:
        f.write(b"\0" * max(0, free - leave))


def failed_backup_message(path, settings, db: str, disk) -> str:
    """Materialize the backup on the small disk; it must fail with one line naming what it could not write."""
    result = materialize(path, settings, db)
    assert not result.success
    message = failure_message(result)
    assert "\n" not in message, message
    assert message.startswith(f"disk full: the backup of {db} could not write {disk / db}/")
    return message


def test_disk_full_during_the_dump_is_one_line_and_leaves_nothing(new_db, write_settings, small_disk):
    db = new_db("fulldump")
    seed(db, NOISE)
    disk = small_disk(512)
    path, settings = settings_on(write_settings, db, disk)
    message = failed_backup_message(path, settings, db, disk)
    assert ".dump.zst.partial" in message and "512.0 KiB free in" in message
    assert os.listdir(disk / db) == []


def test_disk_full_at_the_manifest_removes_the_dump_too(new_db, write_settings, small_disk, tmp_path):
    """The dump fits, its manifest does not: the failure path runs for the manifest's write as for
    the dump's, so no dump without manifest stays to keep the disk full."""
    db = new_db("fullmanifest")
    seed(db, MANY_TABLES)
    _, trial_settings = settings_on(write_settings, db, tmp_path / "trial", "trial.yaml")
    trial = run_backup(BackupsConfig.of(trial_settings), db)
    dump_size = trial.path.stat().st_size
    manifest_size = len(trial.path.with_name(f"{trial.stem}.manifest.json").read_bytes())
    assert manifest_size > 100_000  # room to miss by a few pages
    disk = small_disk((dump_size + manifest_size // 2) // 1024 + 8)
    path, settings = settings_on(write_settings, db, disk)
    message = failed_backup_message(path, settings, db, disk)
    assert message.split(" could not write ")[1].split(";")[0].endswith(".manifest.json"), message
    assert os.listdir(disk / db) == []


def test_disk_full_at_the_verification_record_is_one_line_and_leaves_nothing(new_db, write_settings, small_disk):
    from homelab_ops.backups.verify import verify_backup

    db = new_db("fullrec")
    seed(db, "CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 100) g;")
    disk = small_disk(2048)
    # the restore goes to PostgreSQL, not to this disk: no free-space margin is needed to restore
    _, settings = settings_on(write_settings, db, disk, verify_min_free_factor=1e-9)
    backup = run_backup(BackupsConfig.of(settings), db)
    fill(disk, 0)
    result = verify_backup(BackupsConfig.of(settings), db)
    assert result.outcome == "restored"  # the restore itself was fine; only its record could not be written
    [error] = result.record_errors
    record = disk / db / f"{backup.stem}.verified.json"
    assert error.startswith(f"disk full: the verification record {record} of {db} could not be written; ")
    assert error.endswith(f"free in {disk / db}") and "\n" not in error
    assert sorted(os.listdir(disk / db)) == sorted([backup.path.name, f"{backup.stem}.manifest.json"])


def test_a_backup_that_cannot_fit_is_refused_before_the_dump(new_db, write_settings, small_disk):
    db = new_db("nofit")
    seed(db, NOISE)
    disk = small_disk(8 * 1024)
    path, settings = settings_on(write_settings, db, disk)
    first = run_backup(BackupsConfig.of(settings), db)
    before = sorted(os.listdir(disk / db))
    fill(disk, leave=first.path.stat().st_size // 2)
    result = materialize(path, settings, db)
    assert not result.success
    message = failure_message(result)
    assert "\n" not in message
    assert message.startswith(f"disk full: not backing up {db}: ") and first.stem in message
    assert sorted(os.listdir(disk / db)) == before  # nothing new, nothing partial


def test_the_nightly_job_still_prunes_after_a_failed_backup_so_a_full_disk_heals(
        new_db, write_settings, small_disk, monkeypatch):
    db = new_db("heal")
    seed(db, NOISE)
    disk = small_disk(12 * 1024)
    path, settings = settings_on(write_settings, db, disk, retention={"keep_last": 1, "keep_daily": 0,
                                                                      "keep_weekly": 0, "keep_monthly": 0})
    backups = [run_backup(BackupsConfig.of(settings), db) for _ in range(3)]
    fill(disk, leave=backups[-1].path.stat().st_size)  # less than the next backup needs
    monkeypatch.setenv("HOMELAB_CONFIG", str(path))
    from homelab_ops.defs.backups.defs import defs
    from homelab_ops.defs.resources import HomelabSettings

    d = dg.Definitions.merge(defs(), dg.Definitions(resources={"homelab": HomelabSettings(config_path=str(path))}))
    with dg.instance_for_test() as instance:
        nightly = d.resolve_job_def("nightly_backup").execute_in_process(instance=instance, raise_on_error=False)
        assert not nightly.success
        failed = [e.step_key for e in nightly.get_step_failure_events()]
        assert failed == [f"backups__{db}_backup"]
        assert "disk full" in failure_message(nightly)
        run = instance.get_run_by_id(nightly.run_id)
        [event] = instance.all_logs(nightly.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        sensor = d.get_sensor_def("prune_after_failed_backup")
        context = dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_instance=instance,
                                                     dagster_run=run, dagster_event=event.dagster_event,
                                                     ).for_run_failure()
        request = sensor(context)
        assert request.asset_selection == [dg.AssetKey(["backup_retention", f"{db}_retention"])]
        prune = d.resolve_job_def(request.job_name or "prune_backups").execute_in_process(
            instance=instance, asset_selection=request.asset_selection, raise_on_error=False)
        assert prune.success
    kept = read_listing(os.listdir(disk / db)).backups
    assert [b.stem for b in kept] == [backups[-1].stem]
    os.remove(disk / "filler")
    assert run_backup(BackupsConfig.of(settings), db).stem  # and the next night's backup fits again


def test_a_pitr_fetch_that_fills_the_disk_names_the_local_disk_not_the_target(small_disk, tmp_path):
    """ENOSPC while a fetched file is written is the local disk's fault: LocalDiskError (a restore
    stops there), not the StoreError that sends it on to the next target."""
    from homelab_ops.backups.stores import LocalStore
    from homelab_ops.pitr.offsite import LocalDiskError, _download

    source = tmp_path / "source"
    (source / "_wal" / "main").mkdir(parents=True)
    (source / "_wal" / "main" / "000000010000000000000003.gz").write_bytes(os.urandom(300 * 1024))
    disk = small_disk(128)
    with pytest.raises(LocalDiskError, match=r"000000010000000000000003.gz \(fetched from local\) failed: "
                                             r"No space left on device"):
        _download(LocalStore(source), "_wal/main", "000000010000000000000003.gz", disk / "000000010000000000000003.gz")
