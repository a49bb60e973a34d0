"""Where Traefik's basic-auth users come from.

The credential store's `generated` credentials with an `htpasswd_user` (named in
`traefik.basic_auth_credentials`: rotated, audited), plus any bcrypt lines in
`traefik.basic_auth_users`; with neither, env HOMELAB_BASIC_AUTH_USERS (lines
separated by newlines or commas).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from homelab_ops.deploy.config import DeployConfig

ENV_VAR = "HOMELAB_BASIC_AUTH_USERS"
_BCRYPT_LINE = re.compile(r"^[^:\s]+:\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$")


class AuthError(ValueError):
    """A basic-auth line Traefik should not be given."""


def check_line(line: str) -> str:
    """Only bcrypt htpasswd lines: MD5/SHA1/plain lines are refused, naming the user only."""
    line = line.strip()
    if not _BCRYPT_LINE.match(line):
        user = line.split(":", 1)[0] if ":" in line else "<no user>"
        raise AuthError(f"basic-auth line for {user!r} is not `user:<bcrypt hash>` (htpasswd -nbB user password)")
    return line


def stored_users(config: DeployConfig, actor: str) -> list[str]:
    """The htpasswd lines of `traefik.basic_auth_credentials`, read (and audited) from the store."""
    from homelab_ops.credentials import current_value

    return [current_value(config.credentials, name, actor=actor, field="htpasswd")
            for name in config.traefik.basic_auth_credentials]


def basic_auth_users(traefik_settings, env: dict[str, str], stored: list[str] = ()) -> list[str]:
    """The htpasswd lines for Traefik's `homelab-auth` middleware, validated."""
    lines = [*stored, *(s.get_secret_value() for s in traefik_settings.basic_auth_users)]
    if not lines and env.get(ENV_VAR):
        lines = [x for x in re.split(r"[\n,]+", env[ENV_VAR]) if x.strip()]
    users = [check_line(x) for x in lines]
    names = [u.split(":", 1)[0] for u in users]
    if len(set(names)) != len(names):
        raise AuthError("a basic-auth user is listed twice")
    return users
