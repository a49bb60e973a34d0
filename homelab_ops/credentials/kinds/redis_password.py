"""redis-password: a Redis ACL user's password, added beside the current one, proven by a login, then made its only one.

Redis 6+ lets an ACL user hold several passwords, so the rotation never has a moment in which
neither works: `set` adds the pending password to the user (`ACL SETUSER <user> #<sha256>`),
`test` logs in as the user with it, and `finish` leaves it the user's only password
(`resetpass #<sha256>`, one atomic command: the old current one and any set by hand go) before it
is promoted. Only the SHA-256 of a password ever reaches Redis, and only on redis-cli's stdin; the
passwords themselves go to redis-cli as REDISCLI_AUTH (the backup source's `_client`), never on a
command line. After each change the ACL is saved where the server keeps it (`ACL SAVE` with an
`aclfile`, else `CONFIG REWRITE` of its config file), so a restarted Redis does not bring the old
password back; a server with neither file keeps the change in memory, and the rotation notes it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from homelab_ops.credentials import policy
from homelab_ops.credentials.errors import CredentialError
from homelab_ops.credentials.kinds._base import Context, Kind, KindOptions, Length, rule

DAGSTER_KINDS = {"redis"}
HOW = ("a new random password is stored as pending, added to the Redis ACL user beside the current one (as its "
       "SHA-256), proven by a login as the user, then made the user's only password and promoted")

TIMEOUT_S = 30
_NAME = re.compile(r"[^\s\"'\\]+")  # redis-cli reads the commands from stdin: no spaces, quotes or backslashes


class Options(KindOptions):
    kind: Literal["redis-password"]
    username: str = Field(description="the Redis ACL user whose password rotates (it must exist)")
    host: str = Field("127.0.0.1", description="the Redis server's host")
    port: int = Field(6379, ge=1, le=65535, description="the Redis server's port")
    admin_user: str | None = Field(None, description="the ACL user the steps log in as to change passwords "
                                                     "(default: default)")
    admin_password: SecretStr | None = Field(None, description="the admin user's password (default: none, "
                                                               "for a server whose admin user has nopass)")
    length: Length = None
    alphabet: Annotated[str | None, rule(policy.resolve_alphabet)] = Field(
        None, description=f"{', '.join(policy.ALPHABETS)} or chars:<chars> (default alnum)")

    @field_validator("username", "admin_user")
    @classmethod
    def _acl_name(cls, v: str | None, info) -> str | None:
        if v is not None and not _NAME.fullmatch(v):
            raise ValueError(f"{info.field_name} may not be empty or contain spaces, quotes or backslashes")
        return v

    @model_validator(mode="after")
    def _not_the_admin(self):
        """The steps log in as the admin user with the password in the settings: rotating that user's
        password would lock homelab-ops out of Redis once `finish` removes the old one."""
        if self.username == (self.admin_user or "default"):
            raise ValueError(f"username {self.username!r} is the user the rotation logs in as (admin_user); rotating "
                             "it would lock homelab-ops out of Redis: give admin_user another ACL user")
        return self


class ReplyError(str):
    """An error reply from Redis (`ERR ...`, `NOPERM ...`), as redis-cli's --json prints it."""


def password_hash(password: str) -> str:
    """The form Redis keeps and ACL SETUSER takes after `#`: SHA-256, hex."""
    return hashlib.sha256(password.encode()).hexdigest()


class RedisPassword(Kind):
    """A Redis ACL user's password: added beside the current one, proven by a login, then made its only one."""

    def new_payload(self, ctx: Context) -> dict:
        # The value alone: every field of a payload is redacted from errors, and these name the user.
        return {"value": policy.generate_secret(ctx.option("length", 32), ctx.option("alphabet", "alnum"))}

    # ------------------------------------------------------------ redis-cli

    def _where(self, ctx: Context) -> str:
        return f"{ctx.option('host', '127.0.0.1')}:{ctx.option('port', 6379)}"

    def _cli(self, ctx: Context, commands: list[str], user: str | None, password: str | None) -> tuple[list, str]:
        """Run `commands` (one a line, on stdin) in one redis-cli session logged in as `user`; returns
        the replies (a ReplyError for an error reply, None for nil) and what redis-cli said on stderr."""
        from homelab_ops.backups.sources import redis  # here: the code location loads without the backups
        from homelab_ops.backups.sources._base import SourceError

        source = redis.Config(type="redis", name=ctx.name, host=ctx.option("host", "127.0.0.1"),
                              port=ctx.option("port", 6379), username=user,
                              password=SecretStr(password) if password is not None else None)
        try:
            args, env = redis._client(source)  # the password goes to REDISCLI_AUTH, never into args
        except SourceError as e:
            raise CredentialError(str(e)) from None
        try:
            proc = subprocess.run([*args, "--json"], input="".join(c + "\n" for c in commands), capture_output=True,
                                  text=True, timeout=TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired:
            raise CredentialError(f"no answer from Redis at {self._where(ctx)} within {TIMEOUT_S} s") from None
        replies = []
        for line in proc.stdout.splitlines():
            if line.startswith("error:"):
                replies.append(ReplyError(json.loads(line.removeprefix("error:"))))
            elif line.strip():
                replies.append(json.loads(line))
        stderr = proc.stderr.strip()
        if len(replies) < len(commands):  # redis-cli could not connect, or the connection dropped
            said = stderr.splitlines()[-1] if stderr else f"redis-cli exited {proc.returncode}"
            raise CredentialError(f"Redis at {self._where(ctx)} did not answer: {said}")
        return replies, stderr

    def _admin(self, ctx: Context, *commands: str) -> list:
        """`commands` as the admin user; a refused login is a CredentialError, error replies are returned."""
        admin = ctx.option("admin_user")
        password = ctx.definition.secret_params.get("admin_password")
        replies, stderr = self._cli(ctx, list(commands), admin, password)
        refused = re.search(r"AUTH failed: (.*)", stderr)
        if refused or any(isinstance(r, ReplyError) and r.startswith("NOAUTH") for r in replies):
            why = refused.group(1) if refused else "it needs a password"
            raise CredentialError(f"Redis at {self._where(ctx)} refused the admin login as {admin or 'default'!r} "
                                  f"({why}): check admin_user and admin_password")
        return replies

    def _ok(self, reply, what: str):
        if isinstance(reply, ReplyError):
            raise CredentialError(f"{what} failed: {reply}")
        return reply

    def _passwords(self, ctx: Context) -> list[str]:
        """The user's password hashes; a CredentialError naming the user when it does not exist."""
        user = ctx.option("username")
        info = self._ok(self._admin(ctx, f"ACL GETUSER {user}")[0], f"ACL GETUSER {user}")
        if info is None:
            raise CredentialError(f"Redis ACL user {user!r} does not exist on {self._where(ctx)}: create it first "
                                  f"(ACL SETUSER {user} on ... and save the ACL); homelab-ops changes passwords, "
                                  "it does not create users")
        return list(info.get("passwords") or [])

    def _setuser(self, ctx: Context, *rules: str) -> None:
        user = ctx.option("username")
        self._ok(self._admin(ctx, f"ACL SETUSER {user} {' '.join(rules)}")[0], f"ACL SETUSER {user}")
        self._save(ctx)

    def _save(self, ctx: Context) -> None:
        """Save the ACL where the server reads it at start, so a restart keeps the change."""
        aclfile = self._ok(self._admin(ctx, "CONFIG GET aclfile")[0], "CONFIG GET aclfile").get("aclfile")
        reply = self._admin(ctx, "ACL SAVE" if aclfile else "CONFIG REWRITE")[0]
        if isinstance(reply, ReplyError) and "without a config file" in reply:
            note = (f"Redis at {self._where(ctx)} has no config file or aclfile: the password change lasts until "
                    "it restarts")
            if note not in ctx.notes:
                ctx.notes.append(note)
        elif isinstance(reply, ReplyError):
            raise CredentialError(f"the ACL change was made but {'ACL SAVE' if aclfile else 'CONFIG REWRITE'} failed "
                                  f"({reply}): a restarted Redis would forget it; let Redis write its "
                                  f"{'aclfile' if aclfile else 'config file'} and run the rotation again")

    # ------------------------------------------------------------ the steps

    def set(self, ctx: Context) -> None:
        """Add the pending password beside the current one; adding it again is a no-op."""
        _, pending = ctx.read("pending", "set")
        self._passwords(ctx)  # ACL SETUSER would create a missing user: refuse instead
        self._setuser(ctx, "#" + password_hash(pending["value"]))

    def login(self, ctx: Context, password: str) -> None:
        """A login as the user with `password` (REDISCLI_AUTH and --user) that Redis accepts."""
        user = ctx.option("username")
        replies, stderr = self._cli(ctx, ["PING"], user, password)
        refused = re.search(r"AUTH failed: (.*)", stderr)
        if refused:
            raise CredentialError(f"Redis refused the login ({refused.group(1)})")
        # NOPERM: logged in, only not allowed to PING
        if not (replies[0] == "PONG" or (isinstance(replies[0], ReplyError) and replies[0].startswith("NOPERM"))):
            raise CredentialError(f"Redis answered {replies[0]!r}")

    def test(self, ctx: Context) -> None:
        _, pending = ctx.read("pending", "test")
        try:
            self.login(ctx, pending["value"])
        except CredentialError as e:
            raise CredentialError(f"login as Redis user {ctx.option('username')!r} with the new password failed "
                                  f"({e}); " + self.revert(ctx)) from None

    def finish(self, ctx: Context) -> None:
        """Leave the pending password the user's only one, then promote it; re-run after a crash, the
        first part finds it done already."""
        st = ctx.status()
        if st.pending is not None:
            _, pending = ctx.read("pending", "finish")
            new = password_hash(pending["value"])
            if new not in self._passwords(ctx):
                raise CredentialError(f"the new password is not on Redis user {ctx.option('username')!r} (did Redis "
                                      "restart without saving it?): the next run sets it again")
            self._setuser(ctx, "resetpass", "#" + new)
        super().finish(ctx)

    def revert(self, ctx: Context) -> str:
        """Take the pending password off the user, so it is as before `set`."""
        user = ctx.option("username")
        if ctx.status().pending is None:
            return "there is no new password to take off"
        try:
            _, pending = ctx.read("pending", "revert")
            new = password_hash(pending["value"])
            passwords = self._passwords(ctx)
            if new not in passwords:
                return f"the new password was not on Redis user {user!r}: nothing to take off"
            if passwords == [new]:  # an interrupted finish removed the others: taking it off would lock the user
                return f"the new password is Redis user {user!r}'s only one now, so it stays"
            self._setuser(ctx, "!" + new)
        except CredentialError as e:
            return f"taking the new password off failed too: {e}"
        return f"the new password was taken off Redis user {user!r}; its current one still works"


BEHAVIOUR = RedisPassword()
