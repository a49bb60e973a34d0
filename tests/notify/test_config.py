"""The alert path takes its part of the settings, not the whole file (homelab_ops.notify.config)."""

import dataclasses

import pytest

from homelab_ops.notify.config import NotifyConfig
from homelab_ops.notify.dispatch import bot_token, dispatcher_for
from homelab_ops.settings import parse

TOKEN = "123456:AAplanted-bot-token-for-the-notify-config"
NTFY_TOKEN = "tk_planted-ntfy-access-token"


def _settings():
    # nothing listens on port 1: the credential store is not there, and nothing waits for it
    return parse({"state": {"dsn": "postgresql://homelab:Pl4nted-pw@127.0.0.1:1/homelab"},
                  "timezone": "Asia/Tokyo", "ui": {"base_url": "http://pi5:3000/"},
                  "backups": {"local_dir": "/tmp/x"},
                  "notify": {"telegram": {"bot_token": TOKEN, "chats": [42]},
                             "channels": [{"type": "ntfy", "server": "https://ntfy.example.org",
                                           "topic": "homelab-alerts", "token": NTFY_TOKEN}]}}, "test.yaml")


def test_the_config_holds_the_alert_path_and_hides_its_secrets():
    c = NotifyConfig.of(_settings())
    assert c.notify.telegram.chats == [42] and c.state.dsn.get_secret_value().endswith(":1/homelab")
    assert c.credentials.state == c.state  # the store the bot token may be kept in
    assert c.base_url == "http://pi5:3000/" and str(c.tz) == "Asia/Tokyo"  # an alert's link and its times
    assert not hasattr(c, "backups") and not hasattr(c, "monitoring")
    assert TOKEN not in repr(c) and NTFY_TOKEN not in repr(c) and "Pl4nted-pw" not in repr(c)
    assert bot_token(c) == TOKEN
    text = c.redactor(with_credentials=False)(f"sent with {TOKEN} and {NTFY_TOKEN} as Pl4nted-pw")
    assert TOKEN not in text and NTFY_TOKEN not in text and "Pl4nted-pw" not in text
    d = dispatcher_for(c, with_credentials=False)
    assert d.telegram is not None and [ch.name for ch, _ in d.channels] == ["ntfy"]
    assert NTFY_TOKEN not in d.redact(f"ntfy said 401 for {NTFY_TOKEN}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.notify = None
