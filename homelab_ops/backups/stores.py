"""Where backups live: the local folder and zero or more S3 targets.

Both stores speak in file names under `<database>/`, so listing, retention and
restore read them alike. Writes are atomic in both: a local file is written as
`.partial`, fsynced and renamed; an S3 object is uploaded from a finished local
file and appears only when its multipart upload completes. Every part carries a
checksum the server checks on receipt: its Content-MD5, or with `checksum: crc32` its
CRC32 (a fifth of MD5's CPU; S3 and MinIO take it, B2 refuses the header).
After completion the object's ETag (the MD5 of the parts' MD5s) or composite CRC32, and
the sha256 in its metadata, are compared with the local file's; a copy that does not
match is deleted.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Protocol


from homelab_ops.files import fsync_dir, write_atomic
from homelab_ops.settings import BackupSettings, S3Target

CHUNK = 1 << 20
PART = 8 << 20
MAX_PARTS = 10_000  # S3's limit for one multipart upload
# A bucket encrypting with SSE-KMS or SSE-C gives ETags that are not MD5s, so no copy there can be
# checked this way; the message says so rather than leave the owner guessing.
ETAG_HINT = "; a bucket with SSE-KMS or SSE-C encryption has ETags that are not MD5s and is not supported"
NO_CRC32_HINT = "; the server reports no CRC32 for the object: set `checksum: md5` for this target"
UPLOAD_THREADS = 4  # parts in flight: enough to fill a fast link, few enough for the Pi's memory


def part_digest(checksum: str, data: bytes) -> bytes:
    """The digest a part is sent with under a target's `checksum`."""
    return hashlib.md5(data).digest() if checksum == "md5" else zlib.crc32(data).to_bytes(4, "big")


def whole_object(checksum: str, digests: list[bytes]) -> str:
    """What the server reports for the completed object made of parts with these digests: the
    multipart ETag (MD5 of the MD5s, `-N`) or S3's composite checksum (CRC32 of the CRC32s)."""
    if checksum == "md5":
        return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
    return base64.b64encode(zlib.crc32(b"".join(digests)).to_bytes(4, "big")).decode()


def s3_errors() -> tuple[type[Exception], ...]:
    """botocore's error types, imported when first needed: boto3 costs the code location ~0.8 s to load."""
    import botocore.exceptions

    return botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError


class StoreError(RuntimeError):
    """A store could not do what was asked; the message names the store."""


class LocalFileChanged(StoreError):
    """The local file no longer holds what was recorded when it was written: not copied off-site."""


class Store(Protocol):
    label: str

    def list(self, database: str) -> dict[str, int]: ...
    def open_read(self, database: str, name: str) -> IO[bytes]: ...
    def put_bytes(self, database: str, name: str, data: bytes) -> None: ...
    def delete(self, database: str, names: list[str]) -> None: ...
    def uri(self, database: str, name: str) -> str: ...


class LocalStore:
    label = "local"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def folder(self, database: str) -> Path:
        return self.root / database

    def list(self, database: str) -> dict[str, int]:
        d = self.folder(database)
        if not d.is_dir():
            return {}
        return {p.name: p.stat().st_size for p in d.iterdir() if p.is_file()}

    def databases(self) -> list[str]:
        """The folders with backups; not a hidden one (a verification's scratch folder: no database
        name starts with a dot)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def path(self, database: str, name: str) -> Path:
        return self.folder(database) / name

    def open_read(self, database: str, name: str) -> IO[bytes]:
        return open(self.path(database, name), "rb")

    def put_bytes(self, database: str, name: str, data: bytes) -> None:
        """A crash leaves the old file or a .partial (which retention clears), never half a file."""
        write_atomic(self.path(database, name), data)

    def delete(self, database: str, names: list[str]) -> None:
        for name in names:
            self.path(database, name).unlink(missing_ok=True)
        if names:
            fsync_dir(self.folder(database))

    def uri(self, database: str, name: str) -> str:
        return str(self.path(database, name))


class S3Store:
    def __init__(self, target: S3Target, client=None):
        self.target = target
        self.label = target.label
        rate = target.bytes_per_second
        self.limit = RateLimit(rate) if rate else None
        if client is not None:
            self.client = client

    @functools.cached_property
    def client(self):
        """Made on first use: a step that picks one store out of `stores_for` (a restore, n8n's
        verification) builds one boto3 client, not one per target (0.1 s each here, more on a Pi). A
        profile that is missing is then that target's StoreError, not a failure before any target."""
        import boto3
        import botocore.config

        target = self.target
        # Each target its own credentials (a NAS's MinIO and B2 hold different keys); none set:
        # boto3's default chain (environment, ~/.aws, instance role).
        keys = target.access_key_id and target.secret_access_key
        session = boto3.session.Session(
            profile_name=target.profile,
            aws_access_key_id=keys and target.access_key_id.get_secret_value(),
            aws_secret_access_key=keys and target.secret_access_key.get_secret_value())
        return session.client(
            "s3",
            endpoint_url=target.endpoint_url,
            region_name=target.region,
            # Integrity is the part's checksum (Content-MD5 or CRC32, checked by the server on receipt)
            # and the object's after completion, computed here once: botocore's own per-request CRC32
            # and payload sha256 would hash every part twice more on the Pi (and B2 refuses the
            # CRC32 header), and the payload hash would read a rate-limited body twice.
            config=botocore.config.Config(retries={"max_attempts": 3, "mode": "standard"},
                                          connect_timeout=10, read_timeout=120,
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required",
                                          s3={"payload_signing_enabled": False}),
        )

    def key(self, database: str, name: str) -> str:
        return f"{self.target.prefix}{database}/{name}"

    def uri(self, database: str, name: str) -> str:
        return f"s3://{self.target.bucket}/{self.key(database, name)}"

    def _fail(self, action: str, err: Exception) -> StoreError:
        response = getattr(err, "response", None)
        detail = response["Error"].get("Code", "") if isinstance(response, dict) and "Error" in response else ""
        # B2 answers a CRC32 header with InvalidArgument "Unsupported header 'x-amz-checksum-...'".
        hint = ("; this target does not take CRC32 checksums: set `checksum: md5` for it"
                if self.target.checksum == "crc32" and detail == "InvalidArgument" and "checksum" in str(err).lower()
                else "")
        return StoreError(f"S3 target {self.label} ({self.target.uri_base}): {action} failed: "
                          f"{detail or type(err).__name__}: {err}{hint}")

    def list(self, database: str) -> dict[str, int]:
        prefix = self.key(database, "")
        out: dict[str, int] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.target.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix):]
                    if "/" not in name:
                        out[name] = obj["Size"]
        except s3_errors() as e:
            raise self._fail("listing", e) from None
        return out

    def open_read(self, database: str, name: str) -> IO[bytes]:
        try:
            return self.client.get_object(Bucket=self.target.bucket, Key=self.key(database, name))["Body"]
        except s3_errors() as e:
            raise self._fail(f"reading {name}", e) from None

    def put_bytes(self, database: str, name: str, data: bytes) -> None:
        self._upload(database, name, io.BytesIO(data), len(data), hashlib.sha256(data).hexdigest())

    def upload_file(self, database: str, name: str, path: Path, sha256: str) -> None:
        """Copy a finished local file; `sha256` is what it should hold (the manifest's), so a
        local file that rotted since it was written is refused, not copied off-site as good."""
        with open(path, "rb") as f:
            self._upload(database, name, f, path.stat().st_size, sha256)

    def _upload(self, database: str, name: str, f: IO[bytes], size: int, sha256: str) -> None:
        key = self.key(database, name)
        try:
            if size <= PART:
                etag, got = self._put(key, f.read(), sha256)
                check = "md5"
            else:
                etag, got = self._multipart(key, f, size, sha256)
                check = self.target.checksum
            if got != sha256:
                self._discard(key)
                raise LocalFileChanged(f"S3 target {self.label}: {name} was not uploaded: the local file's sha256 "
                                 f"{got[:12]}... differs from {sha256[:12]}... recorded when it was written")
            head = self.client.head_object(Bucket=self.target.bucket, Key=key,
                                           **({"ChecksumMode": "ENABLED"} if check == "crc32" else {}))
            # S3 writes a composite CRC32 as `<base64>-<parts>`; MinIO and moto leave the count out.
            server = (head["ETag"].strip('"') if check == "md5"
                      else (head.get("ChecksumCRC32") or "none").split("-")[0])
            problems = [what for what, ok in (
                (f"size {head['ContentLength']} vs {size}", head["ContentLength"] == size),
                (f"{'ETag' if check == 'md5' else 'CRC32'} {server} vs {etag}", server == etag),
                ("sha256 differs", head.get("Metadata", {}).get("sha256") == sha256)) if not ok]
            if problems:
                self._discard(key)
                hint = (ETAG_HINT if any("ETag" in p for p in problems) else
                        NO_CRC32_HINT if check == "crc32" and not head.get("ChecksumCRC32") else "")
                raise StoreError(f"S3 target {self.label}: {key} does not match after upload "
                                 f"({', '.join(problems)}{hint}); the copy was deleted")
        except s3_errors() as e:  # transient: an incomplete upload stays, the next attempt resumes it
            raise self._fail(f"uploading {name}", e) from None

    def _body(self, data: bytes) -> IO[bytes]:
        return _Throttled(data, self.limit) if self.limit else data

    def _put(self, key: str, data: bytes, sha256: str) -> tuple[str, str]:
        md5 = hashlib.md5(data)
        self.client.put_object(Bucket=self.target.bucket, Key=key, Body=self._body(data),
                               ContentMD5=base64.b64encode(md5.digest()).decode(), Metadata={"sha256": sha256})
        return md5.hexdigest(), hashlib.sha256(data).hexdigest()

    def _multipart(self, key: str, f: IO[bytes], size: int, sha256: str) -> tuple[str, str]:
        """Upload in parts, resuming an incomplete upload of the same key: a part already there
        with the same checksum is not sent again. Parts go up UPLOAD_THREADS at a time while the
        next is read and hashed, as boto3's upload_file does. Returns (what the server should
        report for the object, sha256 of the bytes read)."""
        bucket, checksum = self.target.bucket, self.target.checksum
        upload_id, sent = self._resumable(key)
        if upload_id is None:
            upload_id = self.client.create_multipart_upload(
                Bucket=bucket, Key=key, Metadata={"sha256": sha256},
                **({"ChecksumAlgorithm": "CRC32"} if checksum == "crc32" else {}))["UploadId"]
        part_size = max(PART, -(-size // MAX_PARTS))
        sha, parts = hashlib.sha256(), []

        def send(number: int, data: bytes) -> dict:
            """One part (unless S3 holds it already), hashed here to use another core; its entry
            for CompleteMultipartUpload, with the digest under `digest`."""
            digest = part_digest(checksum, data)
            b64 = base64.b64encode(digest).decode()
            entry = {"PartNumber": number, "digest": digest}
            if checksum == "crc32":
                entry["ChecksumCRC32"] = b64
            held = sent.get(number)
            # A part already there is ours when its checksum, or (where ListParts gives none, as
            # MinIO's and moto's do not) its ETag, is this part's: MD5 only for resumed parts.
            if held and (held["ChecksumCRC32"] == b64 if held["ChecksumCRC32"]
                         else held["ETag"] == (digest if checksum == "md5" else hashlib.md5(data).digest()).hex()):
                return entry | {"ETag": held["ETag"]}
            answer = self.client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=self._body(data),
                **({"ContentMD5": b64} if checksum == "md5" else {"ChecksumCRC32": b64}))
            etag = answer["ETag"].strip('"')
            same = etag == digest.hex() if checksum == "md5" else answer.get("ChecksumCRC32", b64) == b64
            if not same:
                self._discard(key)
                raise StoreError(f"S3 target {self.label}: part {number} of {key} arrived different "
                                 f"(its {'ETag is not the MD5' if checksum == 'md5' else 'CRC32 is not the one'} "
                                 f"sent{ETAG_HINT if checksum == 'md5' else ''}); the upload was aborted")
            return entry | {"ETag": etag}

        def collect(in_flight: deque) -> dict:
            """The oldest part's entry. When it failed, a part found damaged is the cause to report:
            its abort makes the parts still in flight fail with the server's own error."""
            try:
                return in_flight.popleft().result()
            except Exception as first:
                damaged = [e for e in (f.exception() for f in in_flight) if isinstance(e, StoreError)]
                raise (damaged[0] if damaged and not isinstance(first, StoreError) else first) from None

        with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
            in_flight: deque = deque()
            for number in range(1, -(-size // part_size) + 1):
                data = f.read(part_size)
                sha.update(data)
                if len(in_flight) == UPLOAD_THREADS:
                    parts.append(collect(in_flight))
                in_flight.append(pool.submit(send, number, data))
            while in_flight:
                parts.append(collect(in_flight))
        digests = [p.pop("digest") for p in parts]
        self.client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                              MultipartUpload={"Parts": parts})
        return whole_object(checksum, digests), sha.hexdigest()

    def _resumable(self, key: str) -> tuple[str | None, dict[int, dict]]:
        """The newest incomplete upload of `key` begun under this target's checksum, and its parts
        (ETag, and ChecksumCRC32 where the server lists it); every other one is aborted. Only a
        CRC32 upload takes CRC32 parts; any other (S3 may list its own default algorithm for an
        upload that named none) takes Content-MD5 ones."""
        uploads = sorted((u for u in self.incomplete_uploads(key) if u["Key"] == key), key=lambda u: u["Initiated"])
        keep = (uploads[-1] if uploads and (uploads[-1].get("ChecksumAlgorithm") == "CRC32")
                == (self.target.checksum == "crc32") else None)
        for old in uploads:
            if old is not keep:
                self.client.abort_multipart_upload(Bucket=self.target.bucket, Key=key, UploadId=old["UploadId"])
        if keep is None:
            return None, {}
        sent: dict[int, dict] = {}
        for page in self.client.get_paginator("list_parts").paginate(Bucket=self.target.bucket, Key=key,
                                                                      UploadId=keep["UploadId"]):
            sent.update({p["PartNumber"]: {"ETag": p["ETag"].strip('"'), "ChecksumCRC32": p.get("ChecksumCRC32")}
                         for p in page.get("Parts", [])})
        return keep["UploadId"], sent

    def _discard(self, key: str) -> None:
        """A copy that does not match is worse than none: abort its upload, delete the object."""
        self.abort_uploads(key)
        try:
            self.client.delete_object(Bucket=self.target.bucket, Key=key)
        except Exception:  # the store is down: it will not be listed as complete without its manifest
            pass

    def delete(self, database: str, names: list[str]) -> int:
        """DeleteObjects in batches of 1000 (the API's limit); returns the number of requests."""
        requests = 0
        for i in range(0, len(names), 1000):
            batch = [{"Key": self.key(database, n)} for n in names[i:i + 1000]]
            try:
                resp = self.client.delete_objects(Bucket=self.target.bucket,
                                                  Delete={"Objects": batch, "Quiet": True})
            except s3_errors() as e:
                raise self._fail("deleting", e) from None
            requests += 1
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise StoreError(f"S3 target {self.label}: could not delete {first['Key']}: {first.get('Code')}")
        return requests

    def incomplete_uploads(self, prefix: str | None = None) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.target.bucket, Prefix=prefix or self.target.prefix):
            yield from page.get("Uploads", [])

    def abort_uploads(self, key: str) -> None:
        """Best effort: leave no incomplete multipart upload for a key whose upload failed."""
        try:
            for up in self.incomplete_uploads(key):
                if up["Key"] == key:
                    self.client.abort_multipart_upload(Bucket=self.target.bucket, Key=key,
                                                       UploadId=up["UploadId"])
        except Exception:  # the store is down: retention aborts old uploads later
            pass


class RateLimit:
    """`backups.s3[].bandwidth_limit`: bytes leave at `rate` a second on average, in 8 KiB steps
    (http.client's block size), so the uplink keeps room for n8n and Ollama."""

    def __init__(self, rate: float):
        self.rate = rate
        self.due = time.monotonic()
        self._lock = threading.Lock()  # UPLOAD_THREADS parts share one target's limit

    def take(self, n: int) -> None:
        with self._lock:
            self.due = due = max(self.due, time.monotonic()) + n / self.rate
        time.sleep(max(0.0, due - time.monotonic()))


class _Throttled(io.BytesIO):
    """A request body read no faster than its target's limit (a retry's re-read is paced too)."""

    def __init__(self, data: bytes, limit: RateLimit):
        super().__init__(data)
        self.limit = limit

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.limit.take(len(data))
        return data


def stores_for(backups: BackupSettings) -> tuple[LocalStore, list[S3Store]]:
    """The local folder and every off-site target; an S3 client is made on a store's first use."""
    return LocalStore(backups.local_dir), [S3Store(t) for t in backups.s3]


def read_json(store: Store, database: str, name: str) -> dict:
    with store.open_read(database, name) as f:
        return json.loads(f.read())
