"""The daily digest: the disk forecast and the text are pure; the job gathers from a real backup and
its real verification, the state database's metrics, credentials and n8n rollups, and sends one
message to the fake Bot API."""

from __future__ import annotations

import re

from datetime import date, datetime, timedelta, timezone

import pytest

from homelab_ops.backups.backup import run_backup
from homelab_ops.backups.verify import verify_backup
from homelab_ops.defs.health.resources import AlertChannels
from homelab_ops.defs.health.sensors import build_digest
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.notify import chats as ch
from homelab_ops.notify.digest import BackupLine, DiskLine, Facts, compose, days_until_full
from tests.conftest import ADMIN_DSN, dsn_for
from tests.fake_telegram import TOKEN
from homelab_ops.backups.config import BackupsConfig

GB = 1 << 30
DAY = 86400.0


def test_disk_forecast_is_a_straight_line_to_zero():
    t0 = 1_790_000_000.0
    falling = [(t0 + i * 3600, 10 * GB - i * (GB / 24)) for i in range(48)]  # 1 GiB a day, 8 GiB left at the end
    assert days_until_full(falling) == pytest.approx(8 + 1 / 24, abs=0.01)
    assert days_until_full([(t, 5 * GB + (i % 2) * 1e6) for i, (t, _) in enumerate(falling)]) is None  # flat
    assert days_until_full([(t, 20 * GB - v) for t, v in falling]) is None  # being freed
    assert days_until_full(falling[:5]) is None  # too little history to say


def test_compose_says_what_needs_a_look():
    now = datetime(2026, 12, 3, 7, 0, tzinfo=timezone.utc)
    ok = Facts(date(2026, 12, 3), backups=[BackupLine("n8n", now - timedelta(hours=4), now - timedelta(hours=3), "b2")],
               disks=[DiskLine("/", 40 * GB, 100 * GB, None)])
    alert = compose(ok, now)
    assert alert.title == "📋 Homelab digest 2026-12-03" and alert.severity == "info"
    assert "✅ n8n: newest 4 hours ago, restored 3 hours ago from b2" in alert.body
    assert "/: 40.0 GiB free of 100.0 GiB, not filling up" in alert.body
    bad = Facts(date(2026, 12, 3), backups=[BackupLine("app", now - timedelta(days=3), None, None)],
                disks=[DiskLine("/", 2 * GB, 100 * GB, 5.2)])
    alert = compose(bad, now)
    assert alert.title.endswith(": needs a look")
    assert "⚠️ app: newest 3 days ago, never restored" in alert.body and "full in 5 days" in alert.body
    late = Facts(date(2026, 12, 3), backups=[BackupLine("n8n", now - timedelta(hours=40), now - timedelta(hours=39),
                                                         "local")], disks=[])
    assert "n8n: newest 1 day and 16 hours ago, restored 1 day and 15 hours ago" in compose(late, now).body


def test_the_digest_job_reports_real_backups_metrics_credentials_and_n8n(
        new_db, write_settings, fresh_state_db, telegram):
    db = new_db("digest")
    import psycopg

    with psycopg.connect(dsn_for(db), autocommit=True) as c:
        c.execute("CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 100) g")
    path, settings = write_settings({
        "postgres": {"dsn": ADMIN_DSN, "databases": [db]},
        "state": {"dsn": dsn_for(fresh_state_db)},
        "n8n": {"dsn": dsn_for(db)},
        "notify": {"telegram": {"api_base": telegram.url}, "digest_at": "08:30"},
    })
    backup = run_backup(BackupsConfig.of(settings), db)
    assert verify_backup(BackupsConfig.of(settings), db).outcome == "restored"

    now = datetime.now(timezone.utc)
    with ch.state_connection(settings.state, settings.postgres) as conn:
        ch.add(conn, 42, "owner", "info")
        for i in range(48):  # the root filesystem loses 1 GiB a day: 20 GiB left
            taken = now - timedelta(hours=47 - i)
            for metric, value in (("node_filesystem_avail_bytes", 22 * GB - i * GB / 24),
                                  ("node_filesystem_size_bytes", 100 * GB)):
                conn.execute("INSERT INTO homelab_ops.host_metrics (taken_at, metric, labels, value) "
                             "VALUES (%s, %s, '{\"mountpoint\": \"/\"}', %s)", (taken, metric, value))
        conn.execute("INSERT INTO homelab_ops.credential (name, kind, period) VALUES ('grafana_admin', 'generated', '30d')")
        conn.execute("INSERT INTO homelab_ops.credential_version (credential, version, stage, ciphertext, origin, "
                     "created_by, promoted_at) VALUES ('grafana_admin', 1, 'current', 'x', 'set', 'test', %s)",
                     (now - timedelta(days=45),))
        yesterday = now.astimezone(settings.tz).date() - timedelta(days=1)
        for wf, status, n in (("Gmail to Telegram", "success", 40), ("Gmail to Telegram", "error", 3),
                              ("RSS digest", "success", 24)):
            conn.execute("INSERT INTO homelab_ops.n8n_execution_daily (day, workflow_id, workflow_name, status, "
                         "executions) VALUES (%s, %s, %s, %s, %s)", (yesterday, wf[:3], wf, status, n))

    (job,), (schedule,) = build_digest(settings.notify.digest_at, settings.timezone)
    assert schedule.cron_schedule == "30 8 * * *" and schedule.execution_timezone == settings.timezone
    resources = {"homelab": HomelabSettings(config_path=str(path)),
                 "alert_channels": AlertChannels(telegram_bot_token=TOKEN, backoff_s=0.01, redact_credentials=False)}
    result = job.execute_in_process(resources=resources)
    assert result.success
    (msg,) = [m["plain"] for m in telegram.sent if m["chat_id"] == 42]
    assert re.search(rf"✅ {db}: newest (a moment|a second|\d+ seconds|a minute|\d+ minutes) ago, restored "
                     rf"(a moment|a second|\d+ seconds|a minute|\d+ minutes) ago from local", msg), msg
    assert backup.stem  # the digest's "newest" is this backup
    assert "/: 20.0 GiB free of 100.0 GiB, full in 20 days" in msg
    assert "⚠️ grafana_admin: 45 days old (rotates every 30)" in msg
    assert "n8n yesterday: 67 executions, 3 failed" in msg and "Gmail to Telegram: 3 of 43 failed" in msg


def test_no_digest_unless_asked(write_settings):
    _, settings = write_settings({})
    assert build_digest(settings.notify.digest_at, settings.timezone) == ([], [])
