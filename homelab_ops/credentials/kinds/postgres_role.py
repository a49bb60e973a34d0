"""postgres-role: a PostgreSQL role's password, changed with ALTER ROLE and proven by a TCP login."""

from __future__ import annotations

from typing import Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, SecretStr, field_validator

from homelab_ops.credentials import policy
from homelab_ops.credentials.errors import CredentialError
from homelab_ops.credentials.kinds._base import Context, Kind, KindOptions, Length
from homelab_ops.errors import first_line

DAGSTER_KINDS = {"postgres"}
HOW = ("a new random password is stored as pending, set with ALTER ROLE (as a SCRAM verifier), "
       "proven by a TCP login, then promoted")


class Options(KindOptions):
    kind: Literal["postgres-role"]
    role: str = Field(description="the role whose password rotates")
    dsn: SecretStr | None = Field(None, description="admin connection (default: postgres.dsn)")
    host: str | None = Field(None, description="host for the TCP login test")
    port: int | None = Field(None, description="port for the TCP login test")
    dbname: str | None = Field(None, description="database for the login test")
    length: Length = None
    select_tables: str | None = Field(None, description="comma-separated tables a read-only login may SELECT "
                                                        "(the role is created on its first rotation)")

    @field_validator("role")
    @classmethod
    def _role_fits(cls, v: str) -> str:
        if len(v.encode()) > 63:
            raise ValueError("role name is longer than PostgreSQL's 63 bytes")
        return v


class PostgresRole(Kind):
    """A PostgreSQL role's password, changed with ALTER ROLE and proven by a login over TCP."""

    def new_payload(self, ctx: Context) -> dict:
        return {"value": policy.generate_secret(ctx.option("length", 32), "alnum"),
                "username": ctx.option("role")}

    def _admin_dsn(self, ctx: Context) -> str:
        dsn = ctx.definition.secret_params.get("dsn")
        if dsn:
            return dsn
        if ctx.config is None:
            raise CredentialError("no admin connection: give the credential a dsn, or settings with postgres.dsn")
        return ctx.config.postgres.dsn.get_secret_value()

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
        if ctx.config is None:
            return
        role = ctx.option("role")
        for key, secret in (("postgres.dsn", ctx.config.postgres.dsn), ("state.dsn", ctx.config.state.dsn)):
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


BEHAVIOUR = PostgresRole()
