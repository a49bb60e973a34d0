"""The alerting resource: where alerts go and how hard delivery tries."""

from typing import Optional

import dagster as dg

from homelab_ops.notify.config import NotifyConfig
from homelab_ops.notify.dispatch import Dispatcher, bot_token, dispatcher_for
from homelab_ops.notify.http import Retry
from homelab_ops.notify.redact import Redactor
from homelab_ops.notify.telegram import TelegramBot


class AlertChannels(dg.ConfigurableResource):
    """Telegram and the one-way channels (notify.channels), as the settings' `notify:` section configures them.

    The bot token comes from notify.telegram.bot_token, the credential named by
    notify.telegram.bot_token_credential, or `telegram_bot_token` (dg.EnvVar of
    TELEGRAM_BOT_TOKEN in the code location, so the UI shows the variable, not the value).
    Retry timing is configurable so tests run in milliseconds, not minutes.
    """

    telegram_bot_token: Optional[str] = None
    attempts: Optional[int] = None  # per message; default notify.telegram.attempts
    backoff_s: float = 1.0
    max_retry_after_s: float = 60.0
    deadline_s: float = 30.0  # all deliveries of one sensor tick stop trying after this
    redact_credentials: bool = True  # also redact every value in the credential store

    def _retry(self, config: NotifyConfig) -> Retry:
        return Retry(attempts=self.attempts or config.notify.telegram.attempts, backoff=self.backoff_s,
                     max_backoff=max(self.backoff_s, 30.0), max_retry_after=self.max_retry_after_s)

    def dispatcher(self, config: NotifyConfig, logger=None) -> Dispatcher:
        return dispatcher_for(config, token=self.telegram_bot_token, retry=self._retry(config),
                              deadline_s=self.deadline_s, logger=logger,
                              with_credentials=self.redact_credentials)

    def redactor(self, config: NotifyConfig) -> Redactor:
        return config.redactor(bot_token(config, self.telegram_bot_token) or "",
                               with_credentials=self.redact_credentials)

    def bot(self, config: NotifyConfig) -> Optional[TelegramBot]:
        token = bot_token(config, self.telegram_bot_token)
        if not token:
            return None
        tg = config.notify.telegram
        return TelegramBot(token, tg.api_base, timeout=tg.timeout.seconds, retry=self._retry(config))
