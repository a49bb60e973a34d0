"""What each kind of credential does at the four rotation steps: create, set, test, finish.

The steps follow AWS Secrets Manager's rotation functions. Each is idempotent
and safe to re-run: `create` reuses a pending version left by an interrupted
run, `set` applies the pending value again, `finish` promotes only once. A new
value is always stored as `pending` before anything outside the store changes,
so no crash can lose the only copy of a password that is already in use.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from homelab_ops.credentials import policy
from homelab_ops.credentials.errors import CredentialError
from homelab_ops.credentials.policy import Definition
from homelab_ops.credentials.store import Store
from homelab_ops.errors import first_line


@dataclass
class Context:
    """What a step needs: the store, the credential's definition, and where to put notes."""

    store: Store
    definition: Definition
    settings: Any = None
    notes: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set, repr=False)  # every value seen, redacted from errors
    left_to_restart: list[str] = field(default_factory=list)  # consumers the `restart` step left to the owner

    def __post_init__(self):
        for v in self.definition.secret_params.values():
            self.secrets.add(v)
            password = conninfo_to_dict(v).get("password") if "=" in v or "://" in v else None
            if password:
                self.secrets.add(password)

    @property
    def name(self) -> str:
        return self.definition.name

    def status(self):
        return self.store.status(self.name)

    def read(self, stage: str, why: str) -> tuple[int, dict]:
        version, payload = self.store.read(self.name, stage, purpose=f"rotation {why}")
        self.secrets.update(str(v) for v in payload.values())
        return version, payload

    def option(self, key: str, default: Any = None) -> Any:
        return self.definition.option(key, default)


class Kind:
    """A kind whose new value is made here (a password) and promoted once it works."""

    rotatable = True
    settable = False  # may `creds set` store a value directly?

    def new_payload(self, ctx: Context) -> dict:
        raise NotImplementedError

    def create(self, ctx: Context) -> None:
        if ctx.status().pending is None:
            payload = self.new_payload(ctx)
            ctx.secrets.update(str(v) for v in payload.values())
            ctx.store.put_pending(ctx.name, payload)

    def set(self, ctx: Context) -> None:
        pass

    def test(self, ctx: Context) -> None:
        pass

    def finish(self, ctx: Context) -> None:
        pending = ctx.status().pending
        if pending is not None:
            ctx.store.promote(ctx.name, pending.version)

    def reconcile(self, ctx: Context) -> None:
        """Tidy-up that runs on every rotation attempt, even when nothing is due."""

    def revert(self, ctx: Context) -> str:
        """Undo `set` when a consumer cannot use the new value, so the current one works again;
        returns what was done, for the error. Kinds whose current value stays valid until `finish`
        (an S3 key, a value only the store holds) have nothing to undo."""
        return "the current value still works: nothing is removed before finish"

    def payload_from_value(self, ctx: Context, value: str) -> dict:
        return {"value": value}


class PostgresRole(Kind):
    """A PostgreSQL role's password, changed with ALTER ROLE and proven by a login over TCP."""

    def new_payload(self, ctx: Context) -> dict:
        return {"value": policy.generate_secret(ctx.option("length", 32), "alnum"),
                "username": ctx.option("role")}

    def _admin_dsn(self, ctx: Context) -> str:
        dsn = ctx.definition.secret_params.get("dsn")
        if dsn:
            return dsn
        if ctx.settings is None:
            raise CredentialError("no admin connection: give the credential a dsn, or settings with postgres.dsn")
        return ctx.settings.postgres.dsn.get_secret_value()

    def _alter(self, ctx: Context, password: str) -> None:
        role = ctx.option("role")
        with psycopg.connect(self._admin_dsn(ctx), autocommit=True, connect_timeout=10,
                             application_name="homelab-ops rotation") as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                raise CredentialError(f"role {role!r} does not exist on the server")
            # The SCRAM verifier is computed here by libpq, so the server (and its
            # statement log) never sees the password itself.
            verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier)))

    def _refuse_own_login(self, ctx: Context) -> None:
        """homelab-ops connects as the roles in postgres.dsn and state.dsn: rotating one here would
        lock homelab-ops out of its own database (its settings file still holds the old password)."""
        if ctx.settings is None:
            return
        role = ctx.option("role")
        for key, secret in (("postgres.dsn", ctx.settings.postgres.dsn), ("state.dsn", ctx.settings.state.dsn)):
            user = conninfo_to_dict(secret.get_secret_value()).get("user") or "postgres"
            if user == role:
                raise CredentialError(
                    f"refused: homelab-ops itself connects as {role!r} ({key}); rotating it would lock homelab-ops "
                    f"out of its own database. Give {key} a role of its own, or change this password by hand "
                    "and update the settings in the same step")

    def _reader(self, ctx: Context, password: str) -> None:
        """`select_tables`: a read-only login (Grafana's) that may SELECT those tables and nothing
        else, created on its first rotation; the grants are re-applied on every rotation."""
        tables = [t.strip() for t in ctx.option("select_tables", "").split(",") if t.strip()]
        if not tables:
            return
        role = ctx.option("role")
        dbname = self._target(ctx)["dbname"]
        with psycopg.connect(self._admin_dsn(ctx), dbname=dbname, autocommit=True, connect_timeout=10,
                             application_name="homelab-ops rotation") as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT "
                                     "NOREPLICATION NOBYPASSRLS PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(verifier)))
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(dbname),
                                                                              sql.Identifier(role)))
            for t in tables:
                schema, _, table = t.rpartition(".")
                if schema:
                    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema),
                                                                                   sql.Identifier(role)))
                name = sql.Identifier(*([schema, table] if schema else [table]))
                conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(name, sql.Identifier(role)))

    def create(self, ctx: Context) -> None:
        self._refuse_own_login(ctx)
        super().create(ctx)

    def set(self, ctx: Context) -> None:
        self._refuse_own_login(ctx)
        _, pending = ctx.read("pending", "set")
        self._reader(ctx, pending["value"])
        self._alter(ctx, pending["value"])

    def _target(self, ctx: Context) -> dict:
        admin = conninfo_to_dict(self._admin_dsn(ctx))
        host = ctx.option("host") or admin.get("host") or "127.0.0.1"
        if host.startswith("/"):
            host = "127.0.0.1"  # the test is a TCP login, as the services make it
        return {"host": host, "port": ctx.option("port") or admin.get("port") or 5432,
                "dbname": ctx.option("dbname") or admin.get("dbname") or "postgres"}

    def login(self, ctx: Context, password: str) -> None:
        role = ctx.option("role")
        with psycopg.connect(**self._target(ctx), user=role, password=password, connect_timeout=10,
                             application_name="homelab-ops rotation test") as conn:
            if conn.execute("SELECT current_user").fetchone()[0] != role:
                raise CredentialError(f"logged in, but not as {role!r}")

    def test(self, ctx: Context) -> None:
        _, pending = ctx.read("pending", "test")
        try:
            self.login(ctx, pending["value"])
        except psycopg.Error as e:
            raise CredentialError(f"login as {ctx.option('role')!r} with the new password failed ({first_line(e)}); "
                                  + self.revert(ctx)) from None

    def revert(self, ctx: Context) -> str:
        """Put the current password back so its users keep working; the pending one waits for the next run."""
        if ctx.status().current is None:
            return "there is no earlier password to put back"
        try:
            _, current = ctx.read("current", "revert")
            self._alter(ctx, current["value"])
        except (psycopg.Error, CredentialError) as e:
            return f"putting the current password back failed too: {first_line(e)}"
        return "the current password was put back"


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


class Generated(Kind):
    """A random secret by policy (length, alphabet), optionally with its htpasswd (bcrypt) line."""

    settable = True

    def new_payload(self, ctx: Context) -> dict:
        return self._payload(ctx, policy.generate_secret(ctx.option("length", 32), ctx.option("alphabet", "alnum")))

    def _payload(self, ctx: Context, value: str) -> dict:
        payload = {"value": value}
        user = ctx.option("htpasswd_user")
        if user:
            payload["username"] = user
            payload["htpasswd"] = policy.htpasswd_line(user, value, ctx.option("bcrypt_rounds", 12))
        return payload

    def payload_from_value(self, ctx: Context, value: str) -> dict:
        return self._payload(ctx, value)

    def test(self, ctx: Context) -> None:
        _, p = ctx.read("pending", "test")
        chars = set(policy.resolve_alphabet(ctx.option("alphabet", "alnum")))
        if len(p["value"]) != ctx.option("length", 32) or not set(p["value"]) <= chars:
            raise CredentialError("the pending value does not meet the length and alphabet policy")
        if "htpasswd" in p and not policy.htpasswd_matches(p["htpasswd"], p["value"]):
            raise CredentialError("the pending htpasswd line does not verify against its password")


class Manual(Kind):
    """A secret no API can rotate (a Telegram bot token): tracked by age, replaced with `creds set`."""

    rotatable = False
    settable = True

    def payload_from_value(self, ctx: Context, value: str) -> dict:
        pattern = ctx.option("pattern")
        if pattern and not re.fullmatch(pattern, value):
            raise CredentialError(f"the value does not match {ctx.name}'s pattern; nothing stored")
        return {"value": value}


KIND_IMPLS: dict[str, Kind] = {
    "postgres-role": PostgresRole(),
    "s3-access-key": S3AccessKey(),
    "generated": Generated(),
    "manual": Manual(),
}


def kind_for(kind: str) -> Kind:
    policy.check_kind(kind)
    return KIND_IMPLS[kind]
