"""Message building without services: HTML escaping, splitting at 4096, redaction, chat commands."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from homelab_ops.notify import chats as ch
from homelab_ops.notify.alert import Alert
from homelab_ops.notify.redact import MASK, Redactor, settings_secrets
from homelab_ops.notify.telegram import LIMIT, Part, alert_parts, escape, split_html, utf16_len
from homelab_ops.notify.channels import ntfy
from homelab_ops.notify.channels.webhook import payload
from homelab_ops.settings import SettingsError, parse
from tests.fake_telegram import parse_html


def visible(messages: list[str]) -> str:
    out = []
    for m in messages:
        plain, problems = parse_html(m)
        assert problems == [], (problems, m[:200])
        out.append(plain)
    return "".join(out)


def test_escaping_of_what_telegram_html_requires():
    assert escape('a < b && c > "d"') == 'a &lt; b &amp;&amp; c &gt; "d"'
    msgs = split_html([Part("<script>&amp;</script>", "b"), Part("\nx"), Part("go", "a", 'http://h/?a=1&b="2"')])
    assert msgs == ['<b>&lt;script&gt;&amp;amp;&lt;/script&gt;</b>\nx<a href="http://h/?a=1&amp;b=&quot;2&quot;">go</a>']
    assert visible(msgs) == "<script>&amp;</script>\nxgo"


def test_a_long_error_is_split_into_valid_messages_at_line_ends():
    err = "\n".join(f"{i:05d} <tag> & more text to fill the line up" for i in range(600))  # ~27k chars
    alert = Alert("run", "nightly_backup", "run_failed", "fail", "❌ Run failed: nightly_backup", "Failed step: x",
                  link="http://127.0.0.1:3000/runs/1", preformatted=err)
    msgs = split_html(alert_parts(alert))
    assert len(msgs) >= 7 and all(utf16_len(m) <= LIMIT for m in msgs)
    assert visible(msgs) == f"{alert.title}\n{alert.body}\n{err}\nOpen in Dagster"
    for m in msgs[1:-1]:  # every middle message is one <pre> block cut after a whole line
        assert m.startswith("<pre>") and m.endswith("\n</pre>")


@hsettings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300),
                          st.sampled_from(["", "b", "pre", "code"])), max_size=8),
       st.integers(min_value=40, max_value=400))
def test_splitting_keeps_every_character_and_every_limit(parts, limit):
    messages = split_html([Part(t, tag) for t, tag in parts], limit)
    assert all(utf16_len(m) <= limit for m in messages)
    joined = visible(messages)
    original = "".join(t for t, _ in parts)
    # whitespace-only messages are not sent (Telegram refuses them); every other character arrives, in order
    assert "".join(joined.split()) == "".join(original.split())


def test_utf16_counting_of_emoji():
    msgs = split_html([Part("😀" * 3000)], LIMIT)  # 6000 UTF-16 units
    assert len(msgs) == 2 and all(utf16_len(m) <= LIMIT for m in msgs)


def test_redaction_of_known_values_and_patterns():
    r = Redactor(["s3cr3t-p@ss", "tok"])
    text = ("connect postgresql://n8n:s3cr3t-p@ss@db/n8n failed; encoded s3cr3t-p%40ss; "
            "bot 123456789:AAHfakeTokenForTestsOnly_abcdefghijkl; password=hunter2x; tok in stock")
    out = r(text)
    for leak in ("s3cr3t", "hunter2x", "AAHfake"):
        assert leak not in out
    assert "stock" in out and f"{MASK} in stock" in out  # a short value only as a whole word
    assert r("postgresql://postgres@127.0.0.1:5432/x and http://127.0.0.1:3000/runs/1") == \
        "postgresql://postgres@127.0.0.1:5432/x and http://127.0.0.1:3000/runs/1"
    assert "Bearer " + MASK in r("Authorization: Bearer abcdefghijklmnop")


def test_settings_secrets_include_notification_secrets():
    s = parse({"state": {"dsn": "postgresql://u:statepw@h/db"},
               "notify": {"telegram": {"bot_token": "42:tok"}, "channels": [
                   {"type": "webhook", "url": "https://gotify.lan/message?token=AbCdEf", "token": "wh-tk"},
                   {"type": "ntfy", "topic": "homelab-8f3k2", "token": "tk_ntfy"}]}}, "t")
    got = settings_secrets(s)
    for v in ("statepw", "42:tok", "AbCdEf", "wh-tk", "homelab-8f3k2", "tk_ntfy"):
        assert v in got


def test_the_old_webhook_keys_become_a_webhook_channel_and_channels_are_checked_by_type():
    s = parse({"notify": {"webhook_url": "https://gotify.lan/message?token=AbCdEf", "webhook_min_severity": "fail",
                          "channels": [{"type": "ntfy", "topic": "t1"}]}}, "t")
    assert [(c.type, c.label, c.min_severity) for c in s.notify.channels] == [
        ("webhook", "webhook", "fail"), ("ntfy", "ntfy", "warn")]
    with pytest.raises(SettingsError, match=r"notify.channels.0: .*'sms'.*'ntfy', 'webhook'"):
        parse({"notify": {"channels": [{"type": "sms", "to": "+49"}]}}, "t")
    with pytest.raises(SettingsError, match=r"notify.channels.0.ntfy.topic: required key is missing"):
        parse({"notify": {"channels": [{"type": "ntfy"}]}}, "t")
    with pytest.raises(SettingsError, match="two channels are called ntfy: give each a `name:`"):
        parse({"notify": {"channels": [{"type": "ntfy", "topic": "a"}, {"type": "ntfy", "topic": "b"}]}}, "t")
    two = parse({"notify": {"channels": [{"type": "ntfy", "topic": "a"},
                                         {"type": "ntfy", "topic": "b", "name": "ntfy-family"}]}}, "t")
    assert [c.label for c in two.notify.channels] == ["ntfy", "ntfy-family"]


def test_ntfy_message_uses_its_priority_scale_and_emoji_tags():
    a = Alert("check", "disk_free:/", "problem", "fail", "🔴 FAIL disk_free:/", "/: 2% free", link="http://x/y")
    m = ntfy.message(a, "homelab-8f3k2")
    assert m == {"topic": "homelab-8f3k2", "title": a.title, "message": "/: 2% free", "priority": 5,
                 "tags": ["rotating_light", "check", "problem"], "click": "http://x/y"}
    assert ntfy.message(Alert("check", "x", "recovered", "info", "✅ x", ""), "t")["priority"] == 3


def test_webhook_payload_is_what_ntfy_and_gotify_read():
    a = Alert("check", "disk_free:/", "problem", "fail", "🔴 FAIL disk_free:/", "/: 2% free", link="http://x/y")
    p = payload(a, topic="homelab")
    assert p["title"] == a.title and p["message"] == "/: 2% free" and p["priority"] == 5
    assert p["topic"] == "homelab" and p["click"] == "http://x/y" and p["tags"] == ["fail", "check"]


def test_chat_commands_and_who_receives():
    t0 = 1_790_000_000
    updates = [
        {"update_id": 5, "message": {"date": t0, "chat": {"id": 11, "username": "anna"}, "text": "/start"}},
        {"update_id": 6, "message": {"date": t0, "chat": {"id": -22, "title": "Family"}, "text": "/mute@homelab_bot 2h"}},
        {"update_id": 7, "message": {"date": t0, "chat": {"id": 11}, "text": "hello"}},
        {"update_id": 8, "message": {"date": t0, "chat": {"id": 11}, "text": "/mute soon"}},
        {"update_id": 9, "message": {"date": t0, "chat": {"id": 11}, "text": "/unmute"}},
    ]
    cmds, offset = ch.commands(updates)
    assert offset == 10
    assert [(c.chat_id, c.kind) for c in cmds] == [(11, "start"), (-22, "mute"), (11, "bad_mute"), (11, "unmute")]
    assert cmds[0].title == "@anna" and cmds[1].title == "Family"
    at = datetime.fromtimestamp(t0, timezone.utc)
    assert cmds[1].until == at + timedelta(hours=2)
    assert ch.parse_mute("") == timedelta(hours=8) and ch.parse_mute("90d") == timedelta(days=30)
    # The settings' duration syntax, plus a bare number meaning hours; anything else is refused.
    assert [ch.parse_mute(a) for a in ("3", "1.5", "30m", "2d", "1w", "90s")] == [
        timedelta(hours=3), timedelta(hours=1.5), timedelta(minutes=30), timedelta(days=2), timedelta(weeks=1),
        timedelta(seconds=90)]
    assert ch.parse_mute("soon") is None and ch.parse_mute("2y") is None and ch.parse_mute("-1h") is None
    now = at
    assert ch.receives(ch.Chat(1, min_severity="warn"), "fail", now)
    assert not ch.receives(ch.Chat(1, min_severity="fail"), "warn", now)
    assert not ch.receives(ch.Chat(1, status="pending"), "fail", now)
    assert not ch.receives(ch.Chat(1, muted_until=now + timedelta(minutes=1)), "fail", now)
    assert ch.receives(ch.Chat(1, muted_until=now - timedelta(minutes=1)), "fail", now)
