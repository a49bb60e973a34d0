"""One S3 target's upload with `checksum: crc32`, against moto's server through the recording proxy.

moto neither checks a part's CRC32 on receipt nor lists it in ListParts (S3 does both); it does
compute the object's composite CRC32 from the bytes it stored, so damage is caught after completion.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest

from homelab_ops.backups.stores import StoreError, S3Store, whole_object
from homelab_ops.settings import S3Target
from tests.faulty_proxy import FaultyProxy

PART = 8 << 20


@pytest.fixture
def dump(tmp_path):
    """A finished 'dump' of three parts (8 + 8 + 1 MB) and its sha256."""
    data = os.urandom(2 * PART + (1 << 20))
    path = tmp_path / "x.dump.zst"
    path.write_bytes(data)
    return path, data, hashlib.sha256(data).hexdigest()


def store(url: str, bucket: str, checksum: str = "crc32") -> S3Store:
    return S3Store(S3Target(bucket=bucket, endpoint_url=url, prefix="pi5/", checksum=checksum))


def crc(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def part_numbers(proxy) -> list[int]:
    return sorted(int(r.path.split("partNumber=")[1].split("&")[0]) for r in proxy.requests
                  if r.method == "PUT" and "partNumber=" in r.path and r.status == 200)


def test_parts_carry_their_crc32_and_the_object_is_checked_by_its_composite(dump, s3_server, s3_bucket):
    client, bucket = s3_bucket
    path, data, sha = dump
    with FaultyProxy(s3_server) as proxy:
        store(proxy.url, bucket).upload_file("db", "x.dump.zst", path, sha)
    [create] = [r for r in proxy.requests if r.method == "POST" and r.path.endswith("?uploads")]
    assert create.headers["x-amz-checksum-algorithm"] == "CRC32"
    parts = sorted((r for r in proxy.requests if r.method == "PUT" and "partNumber=" in r.path),
                   key=lambda r: int(r.path.split("partNumber=")[1].split("&")[0]))
    chunks = [data[i:i + PART] for i in range(0, len(data), PART)]
    assert [r.headers.get("x-amz-checksum-crc32") for r in parts] == [crc(c) for c in chunks]
    assert not any("content-md5" in r.headers for r in parts)  # no MD5 hashed for them
    assert client.get_object(Bucket=bucket, Key="pi5/db/x.dump.zst")["Body"].read() == data
    head = client.head_object(Bucket=bucket, Key="pi5/db/x.dump.zst", ChecksumMode="ENABLED")
    digests = [zlib.crc32(c).to_bytes(4, "big") for c in chunks]
    assert head["ChecksumCRC32"].split("-")[0] == whole_object("crc32", digests)
    assert head["Metadata"]["sha256"] == sha
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_part_damaged_on_the_way_is_caught_by_the_composite_and_nothing_is_left(dump, s3_server, s3_bucket):
    client, bucket = s3_bucket
    path, _, sha = dump
    flip = lambda method, p, body: body[:100] + bytes([body[100] ^ 1]) + body[101:] if "partNumber=2" in p else body
    with FaultyProxy(s3_server, mangle=flip) as proxy, pytest.raises(StoreError) as failed:
        store(proxy.url, bucket).upload_file("db", "x.dump.zst", path, sha)
    assert "does not match after upload" in str(failed.value) and "CRC32" in str(failed.value)
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_an_interrupted_upload_resumes_with_only_the_missing_parts(dump, s3_server, s3_bucket):
    """ListParts gives no CRC32 here (as MinIO's does not): a part already held is recognised by its
    ETag, the MD5 hashed for resumed parts alone."""
    client, bucket = s3_bucket
    path, data, sha = dump
    with FaultyProxy(s3_server, lambda method, p: "partNumber=2" in p) as proxy, pytest.raises(StoreError):
        store(proxy.url, bucket).upload_file("db", "x.dump.zst", path, sha)
    [upload] = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    held = {p["PartNumber"] for p in client.list_parts(Bucket=bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"]).get("Parts", [])}
    assert 2 not in held and held, held
    with FaultyProxy(s3_server) as proxy:
        store(proxy.url, bucket).upload_file("db", "x.dump.zst", path, sha)
    assert set(part_numbers(proxy)) == {1, 2, 3} - held
    assert not any(r.path.endswith("?uploads") for r in proxy.requests)  # the same upload, completed
    assert client.get_object(Bucket=bucket, Key="pi5/db/x.dump.zst")["Body"].read() == data
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_an_upload_begun_under_the_other_checksum_is_started_over(dump, s3_server, s3_bucket):
    """The owner switched the target to crc32 between two nights: parts sent with Content-MD5
    cannot join a CRC32 upload, so the old upload is aborted and the copy made whole."""
    client, bucket = s3_bucket
    path, data, sha = dump
    with FaultyProxy(s3_server, lambda method, p: "partNumber=3" in p) as proxy, pytest.raises(StoreError):
        store(proxy.url, bucket, "md5").upload_file("db", "x.dump.zst", path, sha)
    [old] = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    with FaultyProxy(s3_server) as proxy:
        store(proxy.url, bucket).upload_file("db", "x.dump.zst", path, sha)
    assert part_numbers(proxy) == [1, 2, 3]
    assert any(r.method == "DELETE" and f"uploadId={old['UploadId']}" in r.path for r in proxy.requests)
    assert client.get_object(Bucket=bucket, Key="pi5/db/x.dump.zst")["Body"].read() == data
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_server_that_reports_no_crc32_is_told_apart_and_named(dump, s3_server, s3_bucket):
    client, bucket = s3_bucket
    path, _, sha = dump
    silent = lambda method, p, header, value: "" if method == "HEAD" and header == "x-amz-checksum-crc32" else value
    with FaultyProxy(s3_server, rewrite=silent) as proxy, pytest.raises(StoreError) as failed:
        store(proxy.url, bucket).upload_file("db", "x.dump.zst", path, sha)
    assert "checksum: md5" in str(failed.value)
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []


def test_a_server_that_refuses_the_crc32_header_is_named_with_the_setting_to_change(dump, s3_server, s3_bucket):
    """Backblaze B2 answered `x-amz-checksum-*` headers with InvalidArgument (its docs list them as
    unsupported); the proxy answers the CRC32 upload's first request the same way."""
    client, bucket = s3_bucket
    path, _, sha = dump
    b2 = lambda method, p: (400, "InvalidArgument", "Unsupported header 'x-amz-checksum-algorithm' received for "
                            "this API call.") if method == "POST" and p.endswith("?uploads") else False
    with FaultyProxy(s3_server, b2) as proxy, pytest.raises(StoreError) as failed:
        store(proxy.url, bucket).upload_file("db", "x.dump.zst", path, sha)
    assert "InvalidArgument" in str(failed.value) and "set `checksum: md5`" in str(failed.value)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_the_checksum_setting_takes_md5_or_crc32(write_settings):
    from homelab_ops.settings import SettingsError

    assert write_settings({"backups": {"s3": {"bucket": "b"}}})[1].backups.s3[0].checksum == "md5"
    with pytest.raises(SettingsError, match="checksum"):
        write_settings({"backups": {"s3": {"bucket": "b", "checksum": "sha1"}}})
