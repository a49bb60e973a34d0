"""Where backups live: the local folder and zero or more S3 targets.

Both stores speak in file names under `<database>/`, so listing, retention and
restore read them alike. Writes are atomic in both: a local file is written as
`.partial`, fsynced and renamed; an S3 object appears only when its multipart
upload completes, and a failed upload is aborted.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol


from homelab_ops.files import fsync_dir, write_atomic
from homelab_ops.settings import S3Target

CHUNK = 1 << 20
PART = 8 << 20
COPY_LIMIT = 1 << 30  # larger objects are copied in parts (S3 allows 5 GiB in one request)


def s3_errors() -> tuple[type[Exception], ...]:
    """botocore's error types, imported when first needed: boto3 costs the code location ~0.8 s to load."""
    import botocore.exceptions

    return botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError


class StoreError(RuntimeError):
    """A store could not do what was asked; the message names the store."""


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
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

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
        import boto3
        import botocore.config

        self.client = client or boto3.client(
            "s3",
            endpoint_url=target.endpoint_url,
            region_name=target.region,
            # The sha256 is ours to check (HEAD + manifest); botocore's own per-request CRC32, on by
            # default since 1.36, would hash every part once more on the Pi and again at the server.
            config=botocore.config.Config(retries={"max_attempts": 3, "mode": "standard"},
                                          connect_timeout=10, read_timeout=120,
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"),
        )

    def key(self, database: str, name: str) -> str:
        return f"{self.target.prefix}{database}/{name}"

    def uri(self, database: str, name: str) -> str:
        return f"s3://{self.target.bucket}/{self.key(database, name)}"

    def _fail(self, action: str, err: Exception) -> StoreError:
        response = getattr(err, "response", None)
        detail = response["Error"].get("Code", "") if isinstance(response, dict) and "Error" in response else ""
        return StoreError(f"S3 target {self.label} ({self.target.uri_base}): {action} failed: "
                          f"{detail or type(err).__name__}: {err}")

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

    def open_stream(self, database: str, name: str) -> "MultipartStream":
        """Upload while the dump is still being written: the off-site copy costs no extra pass."""
        return MultipartStream(self, database, name)

    def put_bytes(self, database: str, name: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.target.bucket, Key=self.key(database, name), Body=data,
                                   Metadata={"sha256": hashlib.sha256(data).hexdigest()})
        except s3_errors() as e:
            raise self._fail(f"writing {name}", e) from None

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


class MultipartStream:
    """A multipart upload fed from the dump's pipeline, uploading in a thread of its own.

    `write` never raises and never blocks for long on a failed target: once a part
    fails, the rest is discarded and `finish` reports the error, so a dead S3
    target cannot stop the local backup. At most two parts wait in memory.
    """

    def __init__(self, store: S3Store, database: str, name: str):
        self.store, self.name = store, name
        self.key = store.key(database, name)
        self.buffer = bytearray()
        self.size = 0
        self.error: Exception | None = None
        self.upload_id: str | None = None
        self.parts: list[dict] = []
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client, bucket = self.store.client, self.store.target.bucket
        while (item := self.queue.get()) is not None:
            if self.error:
                continue
            try:
                if self.upload_id is None:
                    self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=self.key)["UploadId"]
                number = len(self.parts) + 1
                etag = client.upload_part(Bucket=bucket, Key=self.key, UploadId=self.upload_id,
                                          PartNumber=number, Body=bytes(item))["ETag"]
                self.parts.append({"ETag": etag, "PartNumber": number})
            except Exception as e:  # botocore's errors and the network's
                self.error = e

    def write(self, data) -> None:
        self.buffer += data
        self.size += len(data)
        if len(self.buffer) >= PART:
            self.queue.put(self.buffer)
            self.buffer = bytearray()

    def _drain(self) -> None:
        if self.thread.is_alive():
            self.queue.put(self.buffer)
            self.queue.put(None)
            self.thread.join()

    def abort(self) -> None:
        self.buffer = bytearray()
        self.error = self.error or RuntimeError("aborted")
        self._drain()
        self.store.abort_uploads(self.key)

    def finish(self, sha256: str) -> None:
        """Complete, stamp the sha256 into the metadata (a server-side copy), check with a HEAD."""
        self._drain()
        client, bucket = self.store.client, self.store.target.bucket
        try:
            if self.error:
                raise self.error
            if self.upload_id is None:  # an empty stream
                client.put_object(Bucket=bucket, Key=self.key, Body=b"", Metadata={"sha256": sha256})
            else:
                client.complete_multipart_upload(Bucket=bucket, Key=self.key, UploadId=self.upload_id,
                                                 MultipartUpload={"Parts": self.parts})
                from boto3.s3.transfer import TransferConfig

                # One CopyObject request up to 1 GiB: the server copies once, with nothing for the
                # Pi to do. Larger dumps go in 256 MiB part copies, each well inside read_timeout
                # on a server that copies the bytes without keep-alives.
                transfer = TransferConfig(multipart_threshold=COPY_LIMIT, multipart_chunksize=256 << 20,
                                          max_concurrency=2)
                client.copy({"Bucket": bucket, "Key": self.key}, bucket, self.key, Config=transfer,
                            ExtraArgs={"Metadata": {"sha256": sha256}, "MetadataDirective": "REPLACE"})
            head = client.head_object(Bucket=bucket, Key=self.key)
            stamped = head.get("Metadata", {}).get("sha256")
            if head["ContentLength"] != self.size or stamped != sha256:
                raise StoreError(f"{self.key} does not match after upload (size {head['ContentLength']} vs "
                                 f"{self.size}{'' if stamped == sha256 else ', sha256 differs'})")
        except Exception as e:
            self.store.abort_uploads(self.key)
            try:
                client.delete_object(Bucket=bucket, Key=self.key)  # never leave an unstamped or wrong copy
            except Exception:
                pass
            raise self.store._fail(f"uploading {self.name}", e) from None


def stores_for(settings) -> tuple[LocalStore, list[S3Store]]:
    return LocalStore(settings.backups.local_dir), [S3Store(t) for t in settings.backups.s3]


def read_json(store: Store, database: str, name: str) -> dict:
    with store.open_read(database, name) as f:
        return json.loads(f.read())
