"""s3-access-key: an IAM user's access key, replaced by a new one and deleted once that one works."""

from __future__ import annotations

import re
import time
from typing import Literal

from pydantic import Field

from homelab_ops.credentials.errors import CredentialError
from homelab_ops.credentials.kinds._base import Context, Kind, KindOptions

DAGSTER_KINDS = {"s3"}
HOW = "IAM CreateAccessKey, tested with STS, promoted, then the old key is deleted"


class Options(KindOptions):
    kind: Literal["s3-access-key"]
    user: str = Field(description="the IAM user")
    endpoint_url: str | None = Field(None, description="IAM/STS endpoint (default AWS)")
    region: str | None = Field(None, description="region (default us-east-1)")
    bucket: str | None = Field(None, description="also test the new key on this bucket")
    self_managed: bool | None = Field(None, description="the key rotates itself")
    test_timeout: float | None = Field(None, ge=0, description="seconds a new key may take to authenticate "
                                                                "(default 30)")


class S3AccessKey(Kind):
    """An IAM user's access key: CreateAccessKey, test, promote, then DeleteAccessKey the old one."""

    def _client(self, ctx: Context, service: str, creds: dict | None = None):
        kw = {"endpoint_url": ctx.option("endpoint_url"), "region_name": ctx.option("region", "us-east-1")}
        if creds:
            kw.update(aws_access_key_id=creds["access_key_id"], aws_secret_access_key=creds["value"])
        import boto3  # here, not at the top: the code location loads ~0.8 s faster without it

        return boto3.client(service, **kw)

    def _iam(self, ctx: Context):
        creds = None
        if ctx.option("self_managed", False) and ctx.status().current is not None:
            _, creds = ctx.read("current", "IAM calls")  # the key rotates itself
        return self._client(ctx, "iam", creds)

    def _keys(self, iam, user: str) -> list[dict]:
        return iam.list_access_keys(UserName=user)["AccessKeyMetadata"]

    def _key_id(self, ctx: Context, stage: str, why: str) -> str | None:
        st = ctx.status()
        if getattr(st, stage) is None:
            return None
        return ctx.read(stage, why)[1]["access_key_id"]

    def create(self, ctx: Context) -> None:
        user = ctx.option("user")
        iam = self._iam(ctx)
        keys = self._keys(iam, user)
        ids = {k["AccessKeyId"] for k in keys}
        if ctx.status().pending is not None:
            if self._key_id(ctx, "pending", "create") in ids:
                return
            ctx.store.discard_pending(ctx.name, "its access key no longer exists in IAM")
        current_id = self._key_id(ctx, "current", "create")
        known = {current_id, self._key_id(ctx, "previous", "create")} - {None}
        # IAM allows two keys per user: make room, first from keys the store never
        # recorded (left by a crash before the pending version was stored), then
        # from the retired previous key.
        for k in sorted(keys, key=lambda k: (k["AccessKeyId"] in known, k["CreateDate"])):
            if len(ids) < 2:
                break
            if k["AccessKeyId"] == current_id:
                continue
            iam.delete_access_key(UserName=user, AccessKeyId=k["AccessKeyId"])
            ids.discard(k["AccessKeyId"])
            ctx.notes.append(f"deleted access key {k['AccessKeyId']} to make room")
        new = iam.create_access_key(UserName=user)["AccessKey"]
        ctx.secrets.add(new["SecretAccessKey"])
        try:
            ctx.store.put_pending(ctx.name, {"value": new["SecretAccessKey"], "access_key_id": new["AccessKeyId"]})
        except BaseException:
            iam.delete_access_key(UserName=user, AccessKeyId=new["AccessKeyId"])  # never leave a key nobody has
            raise

    def set(self, ctx: Context) -> None:
        _, pending = ctx.read("pending", "set")
        self._iam(ctx).update_access_key(UserName=ctx.option("user"), AccessKeyId=pending["access_key_id"],
                                         Status="Active")

    def test(self, ctx: Context) -> None:
        _, pending = ctx.read("pending", "test")
        user = ctx.option("user")
        sts = self._client(ctx, "sts", pending)
        deadline = time.monotonic() + ctx.option("test_timeout", 30.0)
        while True:  # a new IAM key takes a few seconds to be accepted everywhere
            arn = sts.get_caller_identity()["Arn"]
            if re.search(rf":user/(?:.*/)?{re.escape(user)}$", arn):
                break
            if time.monotonic() >= deadline:
                raise CredentialError(f"the new access key {pending['access_key_id']} does not authenticate as "
                                      f"IAM user {user!r} (it is {arn})")
            time.sleep(2)
        if ctx.option("bucket"):
            self._client(ctx, "s3", pending).head_bucket(Bucket=ctx.option("bucket"))

    def finish(self, ctx: Context) -> None:
        super().finish(ctx)
        self.reconcile(ctx)

    def reconcile(self, ctx: Context) -> None:
        """Delete the previous key from IAM once the new one is current (also after a crash)."""
        user = ctx.option("user")
        iam = self._iam(ctx)
        ids = {k["AccessKeyId"] for k in self._keys(iam, user)}
        if len(ids) < 2 or ctx.status().previous is None:
            return
        old = self._key_id(ctx, "previous", "delete old key")
        if old in ids:
            try:
                iam.delete_access_key(UserName=user, AccessKeyId=old)
            except iam.exceptions.NoSuchEntityException:
                pass
            ctx.notes.append(f"deleted the old access key {old}")


BEHAVIOUR = S3AccessKey()
