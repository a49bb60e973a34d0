"""What the credential store and its rotations read of the settings, and nothing else.

The store lives in the state database (state, and postgres for the server that database
is created on and the admin connection the postgres_role kind falls back to); rotations
read the credentials section, and restart consumers through the Docker Engine and wait
for them as a deploy does. Every function in homelab_ops.credentials that needs more than
one section takes this object, not the whole settings file: a rotation cannot read the
backups' key or the bot token by accident. Its SecretStr values stay masked in its repr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from homelab_ops.settings import (
        CredentialsSettings,
        DockerSettings,
        PostgresSettings,
        Settings,
        StateSettings,
    )


@dataclass(frozen=True)
class CredentialsConfig:
    credentials: CredentialsSettings
    state: StateSettings  # the store's database
    postgres: PostgresSettings  # the server the state database is created on; postgres_role's admin login
    docker: DockerSettings  # consumers restarted through the Engine (host, name_prefix)
    consumer_wait_seconds: float  # monitoring.health.wait: a restarted consumer not healthy by then fails

    @classmethod
    def of(cls, settings: Settings) -> CredentialsConfig:
        return cls(credentials=settings.credentials, state=settings.state, postgres=settings.postgres,
                   docker=settings.docker, consumer_wait_seconds=settings.monitoring.health.wait.seconds)
