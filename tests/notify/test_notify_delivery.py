"""Delivery end to end: the fake Bot API and webhook on loopback, the real state database.

What arrived is asserted on the receiving side; what was recorded, in homelab_ops.alerts.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from click.testing import CliRunner

from homelab_ops.cli import main
from homelab_ops.notify import chats as ch
from homelab_ops.notify.alert import Alert
from homelab_ops.notify.config import NotifyConfig
from homelab_ops.notify.dispatch import dispatcher_for
from homelab_ops.notify.http import Retry
from tests.conftest import database_exists, dsn_for, free_port
from tests.fake_telegram import TOKEN, FakeWebhook
from homelab_ops.credentials.config import CredentialsConfig

@contextlib.contextmanager
def _nothing():
    yield None


FAST = Retry(attempts=3, backoff=0.01, max_backoff=0.05, max_retry_after=5)


@pytest.fixture
def webhook():
    fake = FakeWebhook().start()
    yield fake
    fake.stop()


@pytest.fixture
def notify_settings(state_db, write_settings, telegram):
    """A settings file with the module's state database (alerts and chats emptied) and the fake Bot API."""
    db = state_db
    with psycopg.connect(dsn_for(db), autocommit=True) if database_exists(db) else _nothing() as conn:
        if conn is not None and conn.execute("SELECT to_regclass('homelab_ops.alerts')").fetchone()[0]:
            conn.execute("TRUNCATE homelab_ops.alerts, homelab_ops.notify_chats")

    def make(notify: dict | None = None, state_dsn: str | None = None, **extra):
        tg = {"api_base": telegram.url, "bot_token": TOKEN, **(notify or {}).pop("telegram", {})}
        return write_settings({"state": {"dsn": state_dsn or dsn_for(db)},
                               "notify": {"telegram": tg, **(notify or {})}, **extra})

    return make


def alerts_rows(settings) -> list[tuple]:
    with psycopg.connect(settings.state.dsn.get_secret_value()) as conn:
        return conn.execute("SELECT source, subject, kind, severity, text, recipients, delivery, delivered"
                            " FROM homelab_ops.alerts ORDER BY id").fetchall()


def seed_chats(settings):
    with ch.state_connection(settings.state, settings.postgres) as conn:
        ch.add(conn, 11, "owner", "warn")
        ch.apply_commands(conn, [ch.Command(1, 22, "start", "@stranger", datetime.now(timezone.utc))], settings.tz)
        ch.add(conn, 33, "muted", "info")
        conn.execute("UPDATE homelab_ops.notify_chats SET muted_until = now() + interval '8 hours'"
                     " WHERE chat_id = 33")
        ch.add(conn, 44, "pager", "fail")


WARN_ALERT = Alert("check", "disk_free:/", "problem", "warn", "🟠 WARN disk_free:/", "/: 12.0% free")


def test_only_approved_unmuted_chats_severe_enough_receive_and_everything_is_recorded(notify_settings, telegram):
    _, s = notify_settings()
    seed_chats(s)
    delivered, chats = dispatcher_for(NotifyConfig.of(s), retry=FAST).deliver([WARN_ALERT])
    assert telegram.texts_to(11) == ["🟠 WARN disk_free:/\n/: 12.0% free"]
    assert telegram.texts_to(22) == [] and telegram.texts_to(33) == [] and telegram.texts_to(44) == []
    assert {c.chat_id for c in chats} == {11, 22, 33, 44}
    source, subject, kind, severity, text, recipients, delivery, ok = alerts_rows(s)[0]
    assert (source, subject, kind, severity, ok) == ("check", "disk_free:/", "problem", "warn", True)
    assert recipients == ["telegram:11"] and delivery[0]["ok"] and delivery[0]["attempts"] == 1
    assert text == "🟠 WARN disk_free:/\n/: 12.0% free"

    fail = Alert("check", "postgres", "problem", "fail", "🔴 FAIL postgres", "PostgreSQL not reachable")
    dispatcher_for(NotifyConfig.of(s), retry=FAST).deliver([fail])
    assert telegram.texts_to(44) == ["🔴 FAIL postgres\nPostgreSQL not reachable"]
    assert telegram.texts_to(22) == []  # the pending chat never hears anything


def test_429_retry_after_is_honoured(notify_settings, telegram):
    _, s = notify_settings()
    seed_chats(s)
    telegram.fail_next("sendMessage", 429, retry_after=1)
    delivered, _ = dispatcher_for(NotifyConfig.of(s), retry=FAST).deliver([WARN_ALERT])
    calls = telegram.method_calls("sendMessage")
    assert len(calls) == 2 and calls[1][1] - calls[0][1] >= 0.95  # waited the second Telegram asked for
    assert delivered[0].ok and delivered[0].outcomes[0].attempts == 2
    assert telegram.texts_to(11) == ["🟠 WARN disk_free:/\n/: 12.0% free"]


def test_server_errors_are_retried_then_recorded_as_failed_never_raised(notify_settings, telegram):
    _, s = notify_settings()
    seed_chats(s)
    telegram.fail_next("sendMessage", 502, times=1)
    delivered, _ = dispatcher_for(NotifyConfig.of(s), retry=FAST).deliver([WARN_ALERT])
    assert delivered[0].ok and delivered[0].outcomes[0].attempts == 2

    telegram.fail_next("sendMessage", 500, times=10)
    delivered, _ = dispatcher_for(NotifyConfig.of(s), retry=FAST).deliver([WARN_ALERT])  # no exception
    assert not delivered[0].ok and delivered[0].outcomes[0].attempts == 3
    *_, last = alerts_rows(s)
    assert last[7] is False and "HTTP 500" in last[6][0]["detail"] and last[6][0]["attempts"] == 3
    assert TOKEN not in str(last)


def test_a_429_asking_for_too_long_is_not_waited_for(notify_settings, telegram):
    _, s = notify_settings()
    seed_chats(s)
    telegram.fail_next("sendMessage", 429, retry_after=3600)
    start = time.monotonic()
    delivered, _ = dispatcher_for(NotifyConfig.of(s), retry=FAST).deliver([WARN_ALERT])
    assert time.monotonic() - start < 3 and not delivered[0].ok
    assert "asked to wait 3600s" in delivered[0].outcomes[0].detail


def test_no_retry_waits_past_the_ticks_deadline(notify_settings, telegram):
    """A backoff that would end after the deadline is not slept: the tick ends, the failure is recorded."""
    _, s = notify_settings()
    seed_chats(s)
    telegram.fail_next("sendMessage", 503, times=10)
    start = time.monotonic()
    slow = dispatcher_for(NotifyConfig.of(s), retry=Retry(attempts=5, backoff=10), deadline_s=2)
    delivered, _ = slow.deliver([WARN_ALERT])
    assert time.monotonic() - start < 2
    outcome = delivered[0].outcomes[0]
    assert not outcome.ok and outcome.attempts == 1 and "HTTP 503" in outcome.detail
    assert "no time left to retry" in outcome.detail


def test_a_long_alert_arrives_split_and_whole(notify_settings, telegram):
    _, s = notify_settings()
    seed_chats(s)
    err = "\n".join(f"{i:04d} Traceback <frame> & {'x' * 60}" for i in range(300))
    alert = Alert("run", "nightly_backup", "run_failed", "fail", "❌ Run failed: nightly_backup", "Failed step: s",
                  link="http://127.0.0.1:3000/runs/r1", preformatted=err)
    delivered, _ = dispatcher_for(NotifyConfig.of(s), retry=FAST).deliver([alert])
    got = telegram.texts_to(11)
    assert delivered[0].ok and len(got) >= 6  # the fake refuses anything over 4096 or badly formed
    assert "".join(got) == f"{alert.title}\n{alert.body}\n{err}\nOpen in Dagster"
    assert '<a href="http://127.0.0.1:3000/runs/r1">' in telegram.sent[-1]["text"]


def test_planted_secrets_do_not_arrive_anywhere(notify_settings, telegram, webhook, tmp_path):
    from homelab_ops.credentials.rotation import set_value
    from homelab_ops.credentials.store import init_store, open_store

    planted_pw, credential = "Pl4nted-Passw0rd", "Zq9-planted-credential-value"
    # trust authentication ignores the password, so the state DSN can carry one to leak
    db = psycopg.conninfo.conninfo_to_dict(notify_settings()[1].state.dsn.get_secret_value())["dbname"]
    dsn = f"postgresql://postgres:{planted_pw}@127.0.0.1:5432/{db}"
    path, s = notify_settings(
        state_dsn=dsn, notify={"webhook_url": f"{webhook.url}/hook?token=HookSecret99"},
        credentials={"key_file": str(tmp_path / "master.key"), "managed": {"api_key": {"kind": "manual"}}})
    init_store(CredentialsConfig.of(s), "test")
    with open_store(CredentialsConfig.of(s), "test") as store:
        set_value(store, "api_key", credential)
    seed_chats(s)
    leaky = Alert("run", "nightly_backup", "run_failed", "fail", "❌ Run failed: nightly_backup",
                  f"could not connect to {dsn}", preformatted=f"token {TOKEN}\napi said {credential}\n"
                                                            f"hook {webhook.url}/hook?token=HookSecret99")
    delivered, _ = dispatcher_for(NotifyConfig.of(s), retry=FAST).deliver([leaky])
    assert delivered[0].ok and [o.to for o in delivered[0].outcomes] == ["telegram:11", "telegram:44", "webhook"]
    arrived = " ".join(m["text"] for m in telegram.sent) + str([b for _, b, _ in webhook.received])
    recorded = str(alerts_rows(s))
    for secret in (planted_pw, TOKEN, credential, "HookSecret99"):
        assert secret not in arrived and secret not in recorded
    assert "[REDACTED]" in arrived and "could not connect to postgresql://postgres:[REDACTED]@" in arrived


def test_webhook_json_post_with_retry_after_and_bearer_token(notify_settings, webhook):
    _, s = notify_settings(notify={"webhook_url": f"{webhook.url}/", "webhook_topic": "homelab",
                                   "webhook_token": "tk_abc", "webhook_min_severity": "warn",
                                   "telegram": {"bot_token": None}})
    webhook.fail_next("POST", 429, retry_after=1)
    webhook.fail_next("POST", 503)
    start = time.monotonic()
    delivered, _ = dispatcher_for(NotifyConfig.of(s), retry=FAST).deliver(
        [WARN_ALERT, Alert("check", "x", "recovered", "info", "✅ RECOVERED x", "fine")])
    assert time.monotonic() - start >= 0.95
    assert delivered[0].ok and delivered[0].outcomes[0].attempts == 3
    assert delivered[1].outcomes == []  # below webhook_min_severity
    path, body, headers = webhook.received[0]
    assert body["topic"] == "homelab" and body["title"] == WARN_ALERT.title and body["priority"] == 4
    assert headers["Authorization"] == "Bearer tk_abc"


def test_state_database_down_still_reaches_the_settings_and_known_chats(notify_settings, telegram):
    _, s = notify_settings(state_dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
                           notify={"telegram": {"chats": [77]}})
    known = [ch.Chat(11, "owner"), ch.Chat(22, status="pending")]
    dispatcher = dispatcher_for(NotifyConfig.of(s), retry=FAST, with_credentials=False)
    delivered, chats = dispatcher.deliver([WARN_ALERT], known_chats=known)
    assert chats is None and not delivered[0].recorded
    assert telegram.texts_to(11) and telegram.texts_to(77) and not telegram.texts_to(22)


def test_cli_lists_approves_adds_removes_and_tests(notify_settings, telegram):
    path, s = notify_settings()
    with ch.state_connection(s.state, s.postgres) as conn:
        ch.apply_commands(conn, [ch.Command(1, 555, "start", "@bob", datetime.now(timezone.utc))], s.tz)
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(main, ["--config", str(path), "notify", *args], catch_exceptions=False)

    out = cli("list").output
    assert "555" in out and "pending" in out and "@bob" in out
    r = cli("test")
    assert r.exit_code != 0 and "no recipient" in r.output  # nobody approved yet: nothing sent
    assert telegram.sent == []
    assert cli("approve", "555", "--min-severity", "fail").exit_code == 0
    assert cli("approve", "999").exit_code != 0
    assert cli("add", "-100123", "--title", "Family").exit_code == 0
    out = cli("list").output
    assert "approved  fail" in out and "Family" in out
    r = cli("test", "--severity", "fail")
    assert r.exit_code == 0 and "telegram:555: ok" in r.output and "telegram:-100123: ok" in r.output
    assert "telegram bot: @homelab_test_bot" in r.output and telegram.method_calls("getMe")
    assert cli("remove", "555").exit_code == 0 and cli("remove", "555").exit_code != 0
    assert "555" not in cli("list").output


def test_mute_from_an_approved_chat_silences_it(notify_settings, telegram):
    _, s = notify_settings()
    now = datetime.now(timezone.utc)
    with ch.state_connection(s.state, s.postgres) as conn:
        ch.add(conn, 11, "owner")
        replies = ch.apply_commands(conn, [ch.Command(1, 11, "mute", "", now, until=now + timedelta(hours=8)),
                                           ch.Command(2, 66, "mute", "", now, until=now + timedelta(hours=8))], s.tz)
    assert [c for c, _ in replies] == [11]  # the unknown chat gets no reply
    dispatcher_for(NotifyConfig.of(s), retry=FAST).deliver([WARN_ALERT])
    assert telegram.texts_to(11) == []
    with ch.state_connection(s.state, s.postgres) as conn:
        ch.apply_commands(conn, [ch.Command(3, 11, "unmute", "", now)], s.tz)
    dispatcher_for(NotifyConfig.of(s), retry=FAST).deliver([WARN_ALERT])
    assert len(telegram.texts_to(11)) == 1


def test_a_wrong_token_fails_at_once_and_is_not_retried(notify_settings, telegram):
    wrong = "987654321:AAHwrongTokenForTestsOnly_zyxwvutsrqpo"
    _, s = notify_settings(notify={"telegram": {"bot_token": wrong}})
    seed_chats(s)
    delivered, _ = dispatcher_for(NotifyConfig.of(s), retry=FAST).deliver([WARN_ALERT])
    [outcome] = delivered[0].outcomes
    assert not outcome.ok and outcome.attempts == 1 and outcome.detail == "HTTP 401: Unauthorized"
    assert wrong not in str(alerts_rows(s))


def test_ntfy_and_webhook_channels_each_get_what_their_min_severity_lets_through(notify_settings, webhook):
    ntfy_server = FakeWebhook().start()
    try:
        _, s = notify_settings(notify={"telegram": {"bot_token": None}, "channels": [
            {"type": "ntfy", "server": ntfy_server.url, "topic": "homelab-8f3k2", "token": "tk_ntfy123",
             "min_severity": "info"},
            {"type": "webhook", "name": "gotify", "url": f"{webhook.url}/message?token=GotifyApp1"}]})
        ntfy_server.fail_next("POST", 503)
        info = Alert("check", "x", "recovered", "info", "✅ RECOVERED x", "fine again")
        delivered, _ = dispatcher_for(NotifyConfig.of(s), retry=FAST).deliver([WARN_ALERT, info])
    finally:
        ntfy_server.stop()
    assert [(o.to, o.ok) for o in delivered[0].outcomes] == [("ntfy", True), ("gotify", True)]
    assert delivered[0].outcomes[0].attempts == 2  # the 503 was retried
    assert [(o.to, o.ok) for o in delivered[1].outcomes] == [("ntfy", True)]  # info: below gotify's warn
    (p1, warn_body, headers), (_, info_body, _) = ntfy_server.received
    assert p1 == "/" and headers["Authorization"] == "Bearer tk_ntfy123"
    assert warn_body == {"topic": "homelab-8f3k2", "title": WARN_ALERT.title, "message": WARN_ALERT.body,
                         "priority": 4, "tags": ["warning", WARN_ALERT.source, WARN_ALERT.kind]}
    assert info_body["priority"] == 3 and info_body["title"] == "✅ RECOVERED x"
    assert [p for p, _, _ in webhook.received] == ["/message"]  # the fake keeps the path only
    rows = alerts_rows(s)
    assert [r[5] for r in rows] == [["ntfy", "gotify"], ["ntfy"]] and all(r[7] for r in rows)
