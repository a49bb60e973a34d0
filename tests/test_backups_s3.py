"""Off-site copies against moto's S3 server on loopback, including outages."""

from __future__ import annotations

import hashlib
import json

from homelab_ops.backups.restore import locate, restore
from tests.conftest import ADMIN_DSN, free_port
from tests.faulty_proxy import FaultyProxy
from tests.test_backups import manifest_stats, materialize, seed, stats

BIG = ("CREATE TABLE noise (id int, pad text); "
       "INSERT INTO noise SELECT i, md5(random()::text) || md5(random()::text) FROM generate_series(1, 400000) i;")


def s3_settings(write_settings, db, endpoint, bucket, **extra):
    return write_settings({"postgres": {"dsn": ADMIN_DSN, "databases": [db]},
                           "backups": {"s3": {"endpoint_url": endpoint, "bucket": bucket, "prefix": "pi5/"},
                                       **extra}})


def test_offsite_copy_matches_and_restores_from_s3(new_db, write_settings, s3_server, s3_bucket):
    client, bucket = s3_bucket
    db = new_db("s3src")
    seed(db)
    seed(db, BIG)  # large enough for a multipart upload
    with FaultyProxy(s3_server, lambda method, p: False) as proxy:  # passes everything, records it
        path, settings = s3_settings(write_settings, db, proxy.url, bucket)
        result = materialize(path, settings, db)
    path, settings = s3_settings(write_settings, db, s3_server, bucket)  # the restore goes direct
    assert result.success
    meta = result.asset_materializations_for_node(f"backups__{db}")[0].metadata
    assert meta["s3_uri"].value.startswith(f"s3://{bucket}/pi5/{db}/")
    keys = {o["Key"]: o for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    dump_key = meta["s3_uri"].value.split(f"s3://{bucket}/")[1]
    head = client.head_object(Bucket=bucket, Key=dump_key)
    assert head["Metadata"]["sha256"] == meta["sha256"].value
    assert head["ContentLength"] == meta["size_bytes"].value
    body = client.get_object(Bucket=bucket, Key=dump_key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == meta["sha256"].value
    # Streamed as parts while pg_dump ran, completed, then stamped with its sha256 by ONE
    # server-side CopyObject (no bytes go up twice, and the server copies once).
    on_dump = [(m, p.split(dump_key, 1)[1]) for m, p, status in proxy.seen if dump_key in p and status == 200]
    assert sum(m == "PUT" and "partNumber=" in q for m, q in on_dump) >= 2, on_dump
    assert [q for m, q in on_dump if m == "POST" and "uploadId=" in q], on_dump
    assert [m for m, q in on_dump if m == "PUT" and not q.strip("?")] == ["PUT"], on_dump
    manifest_key = dump_key.replace(".dump.zst", ".manifest.json")
    assert manifest_key in keys
    target = new_db("from_s3", create=False)
    restore(settings, locate(settings, db, source="s3"), target)
    manifest = json.loads(client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    assert stats(target) == manifest_stats(manifest)


def test_s3_down_keeps_the_local_backup(new_db, write_settings):
    db = new_db("s3down")
    seed(db, "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    path, settings = s3_settings(write_settings, db, f"http://127.0.0.1:{free_port()}", "nowhere")
    result = materialize(path, settings, db)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "local backup complete, off-site copy failed" in error and "nowhere" in error
    local = locate(settings, db)  # the local backup is complete and usable
    assert local.manifest["row_count"] == 1


def test_s3_failing_midway_leaves_no_partial_object(new_db, write_settings, s3_server, s3_bucket):
    client, bucket = s3_bucket
    db = new_db("s3mid")
    seed(db, BIG)
    # Parts after the first fail: the upload dies in the middle of the stream.
    with FaultyProxy(s3_server, lambda method, p: "partNumber=2" in p or "partNumber=3" in p) as proxy:
        path, settings = s3_settings(write_settings, db, proxy.url, bucket)
        result = materialize(path, settings, db)
    assert not result.success
    assert any(status == 500 for _, _, status in proxy.seen)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert locate(settings, db).manifest["database"] == db


def test_a_copy_that_does_not_match_after_upload_is_removed(new_db, write_settings, s3_server, s3_bucket):
    """The HEAD after the upload reports another sha256 (a server that lies): the off-site copy is
    deleted rather than left to look good, the run fails saying so, the local backup stands."""
    client, bucket = s3_bucket
    db = new_db("s3lie")
    seed(db)
    lie = (lambda method, p, header, value:
           "0" * 64 if method == "HEAD" and header == "x-amz-meta-sha256" else value)
    with FaultyProxy(s3_server, lambda method, p: False, rewrite=lie) as proxy:
        path, settings = s3_settings(write_settings, db, proxy.url, bucket)
        result = materialize(path, settings, db)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "does not match after upload" in error and "sha256 differs" in error
    dumps = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []) if ".dump" in o["Key"]]
    assert dumps == []
    assert locate(settings, db).manifest["database"] == db
