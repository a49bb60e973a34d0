"""Off-site copies as their own step: a slow uplink, two providers with their own keys, an outage."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path

import boto3
import dagster as dg
import psycopg
import pytest

from homelab_ops.backups.catalog import read_listing
from homelab_ops.backups.offsite import Owed, backup_set, owed
from homelab_ops.backups.restore import locate
from homelab_ops.backups.stores import S3Store
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.settings import S3Target
from tests.conftest import ADMIN_DSN, free_port
from tests.faulty_proxy import FaultyProxy
from tests.backups.test_backups import seed
from tests.backups.test_backups_s3 import backup_and_copy, check_of, local_bytes, objects, offsite_meta
from homelab_ops.backups.config import BackupsConfig

NOISE = ("CREATE TABLE noise (id int, pad text); INSERT INTO noise SELECT i, md5(random()::text) || "
         "md5(random()::text) FROM generate_series(1, {rows}) i;")
S1, S2, S3 = "20261201T030000Z", "20261202T030000Z", "20261203T030000Z"


# The plan: pure functions over listings.

def test_owed_is_every_complete_local_backup_the_target_lacks_oldest_first_manifest_last():
    local = {f"{S1}.dump.zst": 10, f"{S1}.manifest.json": 2, f"{S1}.verified.json": 1,
             f"{S2}.dump.zst": 11, f"{S2}.n8n-key.age": 3, f"{S2}.manifest.json": 2,
             f"{S3}.dump.zst.partial": 5}  # S3: still being written, not a backup
    assert owed(local, {}) == [Owed(S1, [f"{S1}.dump.zst", f"{S1}.manifest.json"]),
                               Owed(S2, [f"{S2}.dump.zst", f"{S2}.n8n-key.age", f"{S2}.manifest.json"])]
    # What the target holds whole is not owed; a file of another size there is owed again.
    remote = {f"{S1}.dump.zst": 10, f"{S1}.manifest.json": 2, f"{S2}.dump.zst": 7}
    assert owed(local, remote) == [Owed(S2, [f"{S2}.dump.zst", f"{S2}.n8n-key.age", f"{S2}.manifest.json"])]
    remote.update({f"{S2}.dump.zst": 11, f"{S2}.n8n-key.age": 3, f"{S2}.manifest.json": 2})
    assert owed(local, remote) == []


def test_a_sidecar_is_part_of_its_set_and_the_verified_record_is_not():
    names = {f"{S1}.dump.zst.age": 1, f"{S1}.binary-data.tar.zst.age": 1, f"{S1}.manifest.json": 1,
             f"{S1}.verified.json": 1, f"{S2}.dump.zst": 1}
    assert backup_set(names, S1) == [f"{S1}.binary-data.tar.zst.age", f"{S1}.dump.zst.age", f"{S1}.manifest.json"]


# Against real servers.

def start_moto(env_extra: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **env_extra}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


@pytest.fixture
def two_authenticated_targets():
    """Two S3 servers (moto, a process each) that enforce signatures and IAM after their first four
    requests, which create a user, its key, its policy and a bucket: each accepts only its own key."""
    procs, targets = [], []
    try:
        for _ in range(2):
            proc, url = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
            procs.append(proc)
            iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                               aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
            iam.create_user(UserName="pi")
            key = iam.create_access_key(UserName="pi")["AccessKey"]
            iam.put_user_policy(UserName="pi", PolicyName="s3", PolicyDocument=(
                '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
            client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                                  aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
            bucket = f"b-{uuid.uuid4().hex[:10]}"
            client.create_bucket(Bucket=bucket)
            targets.append((url, bucket, key["AccessKeyId"], key["SecretAccessKey"], client))
        yield targets
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def test_two_targets_each_with_its_own_key(new_db, write_settings, two_authenticated_targets, monkeypatch):
    (nas_url, nas_bucket, nas_id, nas_secret, nas), (b2_url, b2_bucket, b2_id, b2_secret, b2) = \
        two_authenticated_targets
    db = new_db("twokeys")
    seed(db, NOISE.format(rows=150_000))  # a multipart upload on each
    monkeypatch.setenv("NAS_KEY_ID", nas_id)
    monkeypatch.setenv("NAS_SECRET", nas_secret)
    monkeypatch.setenv("B2_KEY_ID", b2_id)
    monkeypatch.setenv("B2_SECRET", b2_secret)
    # Nothing in the environment's default chain is valid on either server.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "default-chain")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "default-chain")

    def settings_with(b2_secret_ref: str, name: str):
        return write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]}, "backups": {"s3": [
            {"name": "nas", "endpoint_url": nas_url, "bucket": nas_bucket, "prefix": "pi/",
             "access_key_id": "${NAS_KEY_ID}", "secret_access_key": "${NAS_SECRET}"},
            {"name": "b2", "endpoint_url": b2_url, "bucket": b2_bucket, "prefix": "pi/",
             "access_key_id": "${B2_KEY_ID}", "secret_access_key": b2_secret_ref}]}}, name)

    path, settings = settings_with("${B2_SECRET}", "good.yaml")
    result = backup_and_copy(path, settings, db)
    assert result.success and check_of(result).passed
    first = locate(BackupsConfig.of(settings), db)
    on_nas = objects(nas, nas_bucket)
    assert set(on_nas) == set(objects(b2, b2_bucket)) == {f"pi/{db}/{f}" for f in first.backup.files}
    dump_key = f"pi/{db}/{first.backup.dump}"
    assert (nas.get_object(Bucket=nas_bucket, Key=dump_key)["Body"].read()
            == b2.get_object(Bucket=b2_bucket, Key=dump_key)["Body"].read() == local_bytes(first))

    # A wrong key on b2: b2 fails by name, the nas gets its copy complete all the same.
    monkeypatch.setenv("B2_WRONG", "wrong-" + b2_secret[6:])
    path, settings = settings_with("${B2_WRONG}", "wrong.yaml")
    result = backup_and_copy(path, settings, db)
    assert not result.success
    evaluation = check_of(result)
    assert not evaluation.passed
    assert "b2: not reached" in evaluation.description and "SignatureDoesNotMatch" in evaluation.description
    assert "nas" not in evaluation.description
    meta = offsite_meta(result, db)
    assert meta["nas/owed"].value == "0" and meta["b2/owed"].value == "unknown"
    newest = read_listing(os.listdir(Path(settings.backups.local_dir) / db)).backups[-1]
    assert meta["nas/newest_copy"].value.startswith(datetime.strptime(newest.stem, "%Y%m%dT%H%M%SZ")
                                                    .strftime("%Y-%m-%d %H:%M:%S"))
    assert {f"pi/{db}/{f}" for f in newest.files} <= set(objects(nas, nas_bucket))
    assert not any(newest.stem in k for k in objects(b2, b2_bucket))
    assert nas.list_multipart_uploads(Bucket=nas_bucket).get("Uploads", []) == []
    # The keys never reach the event log.
    logged = "\n".join(str(e) for e in result.all_events)
    assert nas_secret not in logged and b2_secret not in logged and b2_secret[6:] not in logged


def test_a_slow_uplink_holds_no_snapshot_and_the_copy_is_byte_identical(new_db, write_settings, s3_server,
                                                                        s3_bucket):
    """S3 behind a proxy that takes request bodies at 1 MB/s: pg_dump's session and its snapshot are
    gone before the first byte goes up, the local backup is finished before the upload starts, and
    the off-site copy is byte-identical."""
    client, bucket = s3_bucket
    db = new_db("slowlink")
    seed(db, NOISE.format(rows=120_000))
    sessions: list[float] = []  # when a session on `db` (pg_dump's, the snapshot's) was seen
    stop = threading.Event()

    def watch():
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            while not stop.is_set():
                if conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db,)).fetchone()[0]:
                    sessions.append(time.time())
                time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with FaultyProxy(s3_server, rate=1_000_000) as proxy:
            path, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]},
                                             "backups": {"s3": {"endpoint_url": proxy.url, "bucket": bucket}}})
            result = backup_and_copy(path, settings, db)
    finally:
        stop.set()
        watcher.join()
    assert result.success and check_of(result).passed
    local = locate(BackupsConfig.of(settings), db)
    size = local.manifest["size"]
    assert size > 3_000_000  # seconds of upload at 1 MB/s
    uploads = [r for r in proxy.requests if r.method in ("PUT", "POST") and r.size]
    first_byte, last_byte = min(r.started for r in uploads), max(r.ended for r in uploads)
    assert sessions, "the watcher never saw pg_dump"
    assert max(sessions) < first_byte, "a session on the database was still open when the upload started"
    assert datetime.fromisoformat(local.manifest["finished_at"]).timestamp() < first_byte
    body = client.get_object(Bucket=bucket, Key=f"{db}/{local.backup.dump}")["Body"].read()
    assert body == local_bytes(local)
    print(f"dump {size / 1e6:.1f} MB: backup step took "
          f"{result.asset_materializations_for_node(f'backups__{db}_backup')[0].metadata['duration_s'].value:.1f} s, "
          f"upload {last_byte - first_byte:.1f} s at 1 MB/s")


def nightly_backups_defs(path: Path, monkeypatch) -> dg.Definitions:
    """The backups domain as the code location loads it for this settings file."""
    monkeypatch.setenv("HOMELAB_CONFIG", str(path))
    from homelab_ops.defs.backups.defs import defs

    return dg.Definitions.merge(defs(), dg.Definitions(resources={"homelab": HomelabSettings(config_path=str(path))}))


def test_a_target_down_during_the_night_is_caught_up_without_a_new_dump(new_db, write_settings, s3_server,
                                                                         s3_bucket, monkeypatch):
    """The nightly job with the target down: the local backup is made, its copy is owed. The target
    back, `offsite_sync` uploads it from the local file (no pg_dump); the next night runs whole, the
    off-site step before the verification that may read its copy."""
    client, bucket = s3_bucket
    db = new_db("outage")
    seed(db, NOISE.format(rows=150_000))
    down = threading.Event()
    down.set()
    with FaultyProxy(s3_server, lambda method, p: down.is_set()) as proxy:
        path, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]},
                                         "backups": {"s3": {"endpoint_url": proxy.url, "bucket": bucket,
                                                            "name": "nas"}}})
        d = nightly_backups_defs(path, monkeypatch)
        with dg.instance_for_test() as instance:
            night = d.resolve_job_def("nightly_backup").execute_in_process(instance=instance, raise_on_error=False)
            assert not night.success
            [evaluation] = [e for e in night.get_asset_check_evaluations() if e.check_name == "copies_complete"
                            and e.asset_key == dg.AssetKey(["offsite", f"{db}_offsite"])]
            assert not evaluation.passed and "nas: not reached" in evaluation.description
            folder = Path(settings.backups.local_dir) / db
            before = sorted(os.listdir(folder))
            assert len(read_listing(before).backups) == 1
            down.clear()  # the target is back: the owner starts `offsite_sync` from the UI
            sync = d.resolve_job_def("offsite_sync").execute_in_process(instance=instance, raise_on_error=False)
            assert sync.success
            assert sorted(os.listdir(folder)) == before  # no new pg_dump: the owed copy came from the local file
            [backup] = read_listing(before).backups
            # the whole set went up; the local verification record stays local (each store keeps its own)
            assert {f"{db}/{f}" for f in backup_set(dict.fromkeys(before, 0), backup.stem)} <= set(objects(client, bucket))
            assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
            meta = sync.asset_materializations_for_node(f"offsite__{db}_offsite")[0].metadata
            assert meta["nas/owed"].value == "0"
            body = client.get_object(Bucket=bucket, Key=f"{db}/{backup.dump}")["Body"].read()
            assert body == (folder / backup.dump).read_bytes()

            second = d.resolve_job_def("nightly_backup").execute_in_process(instance=instance,
                                                                            raise_on_error=False)
            assert second.success
            started = [e.step_key for e in second.all_events if e.event_type == dg.DagsterEventType.STEP_START]
            assert started.index(f"offsite__{db}_offsite") < started.index(f"restore_verification__{db}_verification")
    assert proxy.copies() == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_owed_backups_go_up_oldest_first_with_the_next_nightly_backup(new_db, write_settings, s3_server,
                                                                      s3_bucket):
    client, bucket = s3_bucket
    db = new_db("catchup")
    seed(db, "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    down = threading.Event()
    down.set()
    with FaultyProxy(s3_server, lambda method, p: down.is_set()) as proxy:
        path, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]},
                                         "backups": {"s3": {"endpoint_url": proxy.url, "bucket": bucket}}})
        for _ in range(2):
            assert not backup_and_copy(path, settings, db).success
        down.clear()
        proxy.requests.clear()
        third = backup_and_copy(path, settings, db)
    assert third.success and check_of(third).passed
    stems = [b.stem for b in read_listing(os.listdir(Path(settings.backups.local_dir) / db)).backups]
    assert len(stems) == 3
    manifests = [r.path for r in proxy.requests if r.method == "PUT" and ".manifest.json" in r.path]
    assert [next(s for s in stems if s in p) for p in manifests] == stems  # oldest first
    assert {f"{db}/{s}.manifest.json" for s in stems} <= set(objects(client, bucket))


def test_bandwidth_limit_paces_the_upload(tmp_path, s3_server, s3_bucket):
    """`bandwidth_limit: 1MB/s`: 3 MB take at least about 3 s (a lower bound; a busy machine only
    makes it longer), and the copy is whole."""
    client, bucket = s3_bucket
    data = os.urandom(3_000_000)
    f = tmp_path / "x.bin"
    f.write_bytes(data)
    store = S3Store(S3Target(bucket=bucket, endpoint_url=s3_server, bandwidth_limit="1MB/s"))
    import hashlib

    t0 = time.monotonic()
    store.upload_file("db", "x.bin", f, hashlib.sha256(data).hexdigest())
    assert time.monotonic() - t0 >= 2.5
    assert client.get_object(Bucket=bucket, Key="db/x.bin")["Body"].read() == data


def test_credentials_come_in_pairs_or_as_a_profile(write_settings):
    from homelab_ops.settings import SettingsError

    for bad, message in (({"access_key_id": "a"}, "both access_key_id and secret_access_key"),
                         ({"profile": "p", "access_key_id": "a", "secret_access_key": "b"}, "either profile"),
                         ({"bandwidth_limit": "2MB"}, "not a rate")):
        with pytest.raises(SettingsError, match=message):
            write_settings({"backups": {"s3": {"bucket": "b", **bad}}})


def test_a_local_dump_that_rotted_is_not_copied_and_newer_backups_still_are(new_db, write_settings, s3_server,
                                                                           s3_bucket):
    from homelab_ops.backups.backup import run_backup
    from homelab_ops.backups.offsite import sync

    client, bucket = s3_bucket
    db = new_db("rot")
    seed(db, NOISE.format(rows=60_000))
    _, settings = write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]},
                                  "backups": {"s3": {"endpoint_url": s3_server, "bucket": bucket}}})
    old, new = run_backup(BackupsConfig.of(settings), db), run_backup(BackupsConfig.of(settings), db)
    damaged = bytearray(old.path.read_bytes())
    damaged[len(damaged) // 2] ^= 1
    old.path.write_bytes(bytes(damaged))
    [state] = sync(settings.backups, db)
    assert state.uploaded == [new.stem] and state.owed == [old.stem]
    assert f"{old.path.name} was not uploaded" in state.error and "sha256" in state.error
    held = set(objects(client, bucket))
    assert f"{db}/{new.path.name}" in held and not any(old.stem in k for k in held)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert state.newest == new.stem


def test_a_target_can_use_a_named_aws_profile(tmp_path, two_authenticated_targets, monkeypatch):
    (url, bucket, key_id, secret, client), _ = two_authenticated_targets
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[nas]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "default-chain")  # what the profile must win over
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "default-chain")
    store = S3Store(S3Target(bucket=bucket, endpoint_url=url, profile="nas"))
    store.put_bytes("db", "x.json", b"{}")
    assert client.get_object(Bucket=bucket, Key="db/x.json")["Body"].read() == b"{}"


def test_a_profile_that_is_missing_fails_its_target_by_name_and_the_other_still_gets_its_copy(
        tmp_path, write_settings, two_authenticated_targets, monkeypatch):
    """A profile gone from ~/.aws (a restored home folder, a typo) is that target's error; before,
    building the stores failed and no target got tonight's copy."""
    from homelab_ops.backups import offsite

    (url, bucket, key_id, secret, client), (other_url, other_bucket, *_) = two_authenticated_targets
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[nas]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    _, settings = write_settings({"backups": {"s3": [
        {"name": "b2", "endpoint_url": other_url, "bucket": other_bucket, "profile": "gone"},
        {"name": "nas", "endpoint_url": url, "bucket": bucket, "profile": "nas"}]}})
    folder = Path(settings.backups.local_dir) / "app"
    folder.mkdir(parents=True)
    (folder / "20261201T030000Z.dump.zst").write_bytes(b"dump")
    (folder / "20261201T030000Z.manifest.json").write_text("{}")

    b2, nas = offsite.sync(settings.backups, "app")
    assert b2.target == "b2" and "S3 target b2" in b2.error and "gone" in b2.error and b2.owed is None
    assert nas.error is None and nas.uploaded == ["20261201T030000Z"]
    assert sorted(objects(client, bucket)) == ["app/20261201T030000Z.dump.zst", "app/20261201T030000Z.manifest.json"]
