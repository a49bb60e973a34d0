"""Off-site copies against moto's S3 server on loopback, including outages and servers that lie."""

from __future__ import annotations

import json

import dagster as dg

from homelab_ops.backups.restore import locate, restore
from homelab_ops.defs.backups.assets import backup_asset, offsite_asset
from homelab_ops.defs.resources import HomelabSettings
from tests.conftest import ADMIN_DSN, free_port
from tests.faulty_proxy import FaultyProxy
from tests.backups.test_backups import manifest_stats, seed, stats
from homelab_ops.backups.config import BackupsConfig

BIG = ("CREATE TABLE noise (id int, pad text); "
       "INSERT INTO noise SELECT i, md5(random()::text) || md5(random()::text) FROM generate_series(1, 400000) i;")


def s3_settings(write_settings, db, endpoint, bucket, name="homelab.yaml", **extra):
    """Settings with one target; a new `name` for each endpoint (settings are cached per file)."""
    return write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]},
                           "backups": {"s3": {"endpoint_url": endpoint, "bucket": bucket, "prefix": "pi5/"},
                                       **extra}}, name)


def backup_and_copy(settings_path, settings, db, *, backup: bool = True) -> dg.ExecuteInProcessResult:
    """The nightly job's first two steps for one database: `backups/<db>_backup`, then `offsite/<db>_offsite`
    (with `backup=False`, the off-site step alone, as `offsite_sync` runs it)."""
    b = backup_asset(db, BackupsConfig.of(settings))
    config = BackupsConfig.of(settings)
    assets = [b, offsite_asset(db, b.key, config)] if backup else [offsite_asset(db, b.key, config)]
    return dg.materialize(assets, resources={"homelab": HomelabSettings(config_path=str(settings_path))},
                          raise_on_error=False)


def offsite_meta(result, db) -> dict:
    return result.asset_materializations_for_node(f"offsite__{db}_offsite")[0].metadata


def check_of(result) -> dg.AssetCheckEvaluation:
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation


def local_bytes(located) -> bytes:
    return located.store.path(located.database, located.backup.dump).read_bytes()


def objects(client, bucket) -> dict[str, dict]:
    return {o["Key"]: o for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_offsite_copy_matches_and_restores_from_s3(new_db, write_settings, s3_server, s3_bucket):
    client, bucket = s3_bucket
    db = new_db("s3src")
    seed(db)
    seed(db, BIG)  # large enough for a multipart upload
    with FaultyProxy(s3_server) as proxy:  # passes everything, records it
        path, settings = s3_settings(write_settings, db, proxy.url, bucket)
        result = backup_and_copy(path, settings, db)
    path, settings = s3_settings(write_settings, db, s3_server, bucket, "direct.yaml")  # the restore goes direct
    assert result.success and check_of(result).passed
    local = locate(BackupsConfig.of(settings), db)
    dump_key = f"pi5/{db}/{local.backup.dump}"
    manifest_key = f"pi5/{db}/{local.backup.manifest}"
    assert set(objects(client, bucket)) == {dump_key, manifest_key}
    assert offsite_meta(result, db)[f"{bucket}/owed"].value == "0"
    # The sha256 is known before the upload: it is in the object's metadata from CreateMultipartUpload
    # on, and no server-side copy ever rewrites the object.
    head = client.head_object(Bucket=bucket, Key=dump_key)
    assert head["Metadata"]["sha256"] == local.manifest["sha256"]
    assert head["ContentLength"] == local.manifest["size"]
    body = client.get_object(Bucket=bucket, Key=dump_key)["Body"].read()
    assert body == local_bytes(local)
    [create] = [r for r in proxy.requests if r.method == "POST" and r.path.endswith("?uploads")]
    assert create.headers["x-amz-meta-sha256"] == local.manifest["sha256"]
    parts = [r for r in proxy.requests if r.method == "PUT" and "partNumber=" in r.path]
    assert len(parts) >= 2 and all("content-md5" in r.headers for r in parts)
    assert proxy.copies() == []
    # The manifest goes last: a reader never finds a manifest whose dump is not there yet.
    puts = [r.path for r in proxy.requests if r.method in ("PUT", "POST") and r.status == 200]
    assert manifest_key in puts[-1] and all(manifest_key not in p for p in puts[:-1])
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    target = new_db("from_s3", create=False)
    restore(BackupsConfig.of(settings), locate(BackupsConfig.of(settings), db, source="s3"), target)
    manifest = json.loads(client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    assert stats(target) == manifest_stats(manifest)


def test_s3_down_keeps_the_local_backup_and_the_copy_stays_owed(new_db, write_settings):
    db = new_db("s3down")
    seed(db, "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    path, settings = s3_settings(write_settings, db, f"http://127.0.0.1:{free_port()}", "nowhere")
    result = backup_and_copy(path, settings, db)
    assert not result.success
    # The backup itself succeeded; the off-site step says which target failed, and why.
    assert result.asset_materializations_for_node(f"backups__{db}_backup")
    evaluation = check_of(result)
    assert not evaluation.passed and "nowhere" in evaluation.description
    assert "could not connect" in evaluation.description.lower() or "connect" in evaluation.description
    assert offsite_meta(result, db)["nowhere/newest_copy"].value == "none"
    local = locate(BackupsConfig.of(settings), db)  # the local backup is complete and usable
    assert local.manifest["row_count"] == 1


def test_an_upload_failing_midway_is_resumed_by_the_next_run(new_db, write_settings, s3_server, s3_bucket):
    """Part 2 fails for good in the first run (beyond botocore's retries): no object appears; the
    next run finds the incomplete upload and sends only the parts S3 does not hold yet."""
    client, bucket = s3_bucket
    db = new_db("s3mid")
    seed(db, BIG)
    seed(db, BIG.replace("noise", "noise2"))
    with FaultyProxy(s3_server, lambda method, p: "partNumber=2" in p) as proxy:
        path, settings = s3_settings(write_settings, db, proxy.url, bucket)
        first = backup_and_copy(path, settings, db)
    assert not first.success and not check_of(first).passed
    assert any(status == 500 for _, _, status in proxy.seen)
    assert objects(client, bucket) == {}
    [upload] = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    held = {p["PartNumber"] for p in client.list_parts(Bucket=bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])["Parts"]}
    assert 1 in held and 2 not in held
    with FaultyProxy(s3_server) as proxy:
        path, settings = s3_settings(write_settings, db, proxy.url, bucket, "second.yaml")
        second = backup_and_copy(path, settings, db, backup=False)
    assert second.success and check_of(second).passed
    sent = [r.path for r in proxy.requests if r.method == "PUT" and "partNumber=" in r.path]
    numbers = {int(p.split("partNumber=")[1].split("&")[0]) for p in sent}
    assert 2 in numbers and not numbers & held, (numbers, held)
    assert all(f"uploadId={upload['UploadId']}" in p for p in sent)
    local = locate(BackupsConfig.of(settings), db)
    body = client.get_object(Bucket=bucket, Key=upload["Key"])["Body"].read()
    assert body == local_bytes(local)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_copy_that_does_not_match_after_upload_is_removed(new_db, write_settings, s3_server, s3_bucket):
    """The HEAD after the upload reports another sha256 (a server that lies): the off-site copy is
    deleted rather than left to look good, the run fails saying so, the local backup stands."""
    client, bucket = s3_bucket
    db = new_db("s3lie")
    seed(db)
    lie = (lambda method, p, header, value:
           "0" * 64 if method == "HEAD" and header == "x-amz-meta-sha256" else value)
    with FaultyProxy(s3_server, rewrite=lie) as proxy:
        path, settings = s3_settings(write_settings, db, proxy.url, bucket)
        result = backup_and_copy(path, settings, db)
    assert not result.success
    description = check_of(result).description
    assert "does not match after upload" in description and "sha256 differs" in description
    assert [k for k in objects(client, bucket) if ".dump" in k] == []
    assert locate(BackupsConfig.of(settings), db).manifest["database"] == db


def test_a_part_damaged_on_the_way_is_caught_and_nothing_is_left(new_db, write_settings, s3_server, s3_bucket):
    """moto does not check Content-MD5 (real S3, MinIO and B2 refuse such a part with BadDigest):
    a byte flipped between the Pi and the server is still caught by the part's ETag."""
    client, bucket = s3_bucket
    db = new_db("s3flip")
    seed(db, BIG)

    def flip(method, p, body):
        if "partNumber=2" in p:
            return body[:100] + bytes([body[100] ^ 1]) + body[101:]
        return body

    # Part 1 is held until part 2's abort has happened: part 1 then fails with the server's own
    # error, and the damaged part is still the cause reported.
    held = lambda method, p: 2.0 if "partNumber=1&" in p + "&" else 0.0
    with FaultyProxy(s3_server, mangle=flip, hold=held) as proxy:
        path, settings = s3_settings(write_settings, db, proxy.url, bucket)
        result = backup_and_copy(path, settings, db)
    assert not result.success
    assert "part 2" in check_of(result).description and "arrived different" in check_of(result).description
    assert objects(client, bucket) == {}
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_wrong_etag_after_completion_deletes_the_object(new_db, write_settings, s3_server, s3_bucket):
    client, bucket = s3_bucket
    db = new_db("s3etag")
    seed(db, BIG)
    lie = (lambda method, p, header, value:
           '"00000000000000000000000000000000-2"' if method == "HEAD" and header == "etag" else value)
    with FaultyProxy(s3_server, rewrite=lie) as proxy:
        path, settings = s3_settings(write_settings, db, proxy.url, bucket)
        result = backup_and_copy(path, settings, db)
    assert not result.success
    description = check_of(result).description
    assert "does not match after upload" in description and "ETag" in description
    assert [k for k in objects(client, bucket) if ".dump" in k] == []
