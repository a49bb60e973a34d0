"""What the alert path reads of the settings, and nothing else.

Delivery reads the notify section (Telegram's token, chats, API and retries; the one-way
channels), the state database where chats and alerts are kept (state, and postgres for the
server it is created on), the UI's address an alert links to, the zone its times are told in,
and the credential store (a bot token kept there, and every
value in it, masked from what an alert says). Every secret of the settings file rides
along for the same masking, kept out of its repr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from homelab_ops.credentials.config import CredentialsConfig

if TYPE_CHECKING:
    from homelab_ops.notify.redact import Redactor
    from homelab_ops.settings import NotifySettings, PostgresSettings, Settings, StateSettings


@dataclass(frozen=True)
class NotifyConfig:
    notify: NotifySettings
    credentials: CredentialsConfig  # notify.telegram.bot_token_credential; the store's values are masked
    base_url: str  # ui.base_url: where an alert's link points
    timezone: str  # the zone an alert's and a reply's times are told in
    secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def of(cls, settings: Settings) -> NotifyConfig:
        return cls(notify=settings.notify, credentials=CredentialsConfig.of(settings),
                   base_url=settings.ui.base_url, timezone=settings.timezone, secrets=tuple(settings.secrets()))

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def state(self) -> StateSettings:
        """The database of homelab_ops.chats and homelab_ops.alerts: the credential store's."""
        return self.credentials.state

    @property
    def postgres(self) -> PostgresSettings:
        """The server the state database is created on."""
        return self.credentials.postgres

    def redactor(self, *extra: str, with_credentials: bool = True) -> Redactor:
        """The redactor every alert passes through: the settings' secrets, `extra` (a token from the
        environment), and unless told otherwise every value in the credential store."""
        from homelab_ops.notify.redact import redactor_for

        return redactor_for(self.secrets, *extra, credentials=self.credentials if with_credentials else None)
