"""The alerting sensors, evaluated with build_sensor_context against a real Dagster instance.

Check results are scripted tick by tick (the checks themselves are tested elsewhere);
alerts go to the fake Bot API on loopback and into the real state database.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml
from click.testing import CliRunner

from homelab_ops.cli import main
from homelab_ops.defs.health.resources import AlertChannels
from homelab_ops.defs.health.sensors import (
    build_asset_check_sensor,
    build_health_sensor,
    build_run_failure_sensor,
    build_telegram_inbox_sensor,
)
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.health.checks import FAIL, OK, WARN, CheckResult
from homelab_ops.notify import chats as ch
from tests.conftest import dsn_for
from tests.fake_telegram import TOKEN, FakeTelegram

OWNER = 11
SECRET = "Pl4nted-S3cret-pw"


@pytest.fixture(scope="module")
def telegram():
    fake = FakeTelegram().start()
    yield fake
    fake.stop()


@pytest.fixture
def setup(state_db, write_settings, telegram, instance):
    """Settings (fake Bot API, own state DB with the owner's chat approved) and the Dagster instance."""
    with telegram.lock:
        telegram.sent.clear()
        telegram.calls.clear()
        telegram.updates.clear()

    def make(**extra):
        dsn = f"postgresql://postgres:{SECRET}@127.0.0.1:5432/{state_db}"  # trust auth: the password only leaks
        path, s = write_settings({"state": {"dsn": dsn}, "ui": {"base_url": "http://pi.lan:3000"},
                                  "notify": {"telegram": {"api_base": telegram.url}}, **extra})
        with ch.state_connection(s.state, s.postgres) as conn:
            conn.execute("TRUNCATE homelab_ops.alerts, homelab_ops.notify_chats")
            ch.add(conn, OWNER, "owner", "warn")
        resources = {"homelab": HomelabSettings(config_path=str(path)),
                     "alert_channels": AlertChannels(telegram_bot_token=TOKEN, backoff_s=0.01,
                                                     redact_credentials=False)}
        return path, s, resources

    return make, instance


def rows(s, *cols) -> list[tuple]:
    with psycopg.connect(dsn_for(psycopg.conninfo.conninfo_to_dict(s.state.dsn.get_secret_value())["dbname"])) as c:
        return c.execute(f"SELECT {', '.join(cols)} FROM homelab_ops.alerts ORDER BY id").fetchall()


@dg.op
def _noop():
    pass


def tiny_job(name: str) -> dg.JobDefinition:
    return dg.GraphDefinition(name=name, node_defs=[_noop]).to_job(tags={"dagster/max_runtime": "60"})


class Script:
    """Check results and the clock, tick by tick."""

    def __init__(self):
        self.now = 1_790_000_000.0
        self.results: list[CheckResult] = []

    def evaluate(self, settings):
        return list(self.results)

    def clock(self):
        return self.now


def tick(sensor, instance, resources, jobs, cursor):
    defs = dg.Definitions(jobs=jobs, sensors=[sensor], resources=resources)
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources)
    data = sensor.evaluate_tick(ctx)
    return data.run_requests, data.cursor


def test_health_sensor_dedups_realerts_reports_flapping_and_recovery(setup, telegram):
    make, instance = setup
    _, s, resources = make()
    script = Script()
    jobs = [tiny_job("nightly_backup")]
    sensor = build_health_sensor(jobs, evaluate=script.evaluate, clock=script.clock)
    cursor = None

    def step(minutes: float, **states):
        nonlocal cursor
        script.now += minutes * 60
        script.results = [CheckResult(name.replace("__", ":"), st, f"{name} is {st} ({SECRET})") for name, st in
                          states.items()]
        requests, cursor = tick(sensor, instance, resources, jobs, cursor)
        return requests

    step(0, postgres=OK, disk_free__root=OK)
    assert telegram.texts_to(OWNER) == []
    step(1, postgres=FAIL, disk_free__root=OK)
    step(1, postgres=FAIL, disk_free__root=OK)
    step(60, postgres=FAIL, disk_free__root=WARN)
    got = telegram.texts_to(OWNER)
    assert [t.splitlines()[0] for t in got] == ["🔴 FAIL postgres", "🟠 WARN disk_free:root"]
    step(300, postgres=FAIL, disk_free__root=WARN)  # six hours after the first alert, five after the second
    got = telegram.texts_to(OWNER)
    assert [t.splitlines()[0] for t in got[2:]] == ["🔴 STILL FAIL postgres"]  # disk warned 5h ago: not yet
    step(1, postgres=OK, disk_free__root=OK)
    got = telegram.texts_to(OWNER)
    assert got[-2].startswith("✅ RECOVERED postgres after 6.0h") and got[-1].startswith("✅ RECOVERED disk_free:root")
    before = len(got)
    for i in range(10):  # flapping every two minutes
        step(2, postgres=FAIL if i % 2 == 0 else OK, disk_free__root=OK)
    flaps = telegram.texts_to(OWNER)[before:]
    assert [t.splitlines()[0] for t in flaps] == ["🔴 FAIL postgres", "✅ RECOVERED postgres after 2m",
                                                  "🔁 FLAPPING postgres"]
    assert all(SECRET not in t for t in telegram.texts_to(OWNER))
    kinds = [k for k, in rows(s, "kind")]
    assert kinds == ["problem", "problem", "reminder", "recovered", "recovered", "problem", "recovered", "flapping"]
    state = json.loads(cursor)
    assert state["checks"]["postgres"]["flapping"] is True and SECRET not in cursor
    assert state["chats"][0]["chat_id"] == OWNER


def test_health_sensor_with_the_real_checks(setup, telegram, tmp_path):
    """No scripted results: the real checks on this machine, whatever they find, alert without crashing."""
    from tests.conftest import DOCKER_HOST

    make, instance = setup
    _, s, resources = make(docker={"host": DOCKER_HOST}, backups={"local_dir": str(tmp_path)},
                           metrics={"sys_root": str(tmp_path / "sys")})
    jobs = [tiny_job("nightly_backup")]
    sensor = build_health_sensor(jobs)
    requests, cursor = tick(sensor, instance, resources, jobs, None)
    checks = json.loads(cursor)["checks"]
    assert checks["postgres"]["state"] == OK and checks["docker"]["state"] == OK
    assert checks["backup_age:n8n"]["state"] == FAIL  # an empty backup folder
    assert [r.job_name for r in requests] == ["nightly_backup"]
    titles = [t.splitlines()[0] for t in telegram.texts_to(OWNER)]
    assert "🔴 FAIL backup_age:n8n" in titles and "❔ UNKNOWN cpu_temperature" in titles
    assert not any(t.endswith(" postgres") or t.endswith(" docker") for t in titles)


def test_remedies_start_one_run_per_failure_and_respect_switches(setup, telegram):
    make, instance = setup
    _, s, resources = make(health={"remedies": {"disk_free:/boot": False}})
    script = Script()
    jobs = [tiny_job("nightly_backup"), tiny_job("free_disk_space")]
    sensor = build_health_sensor(jobs, evaluate=script.evaluate, clock=script.clock)
    script.results = [CheckResult("backup_age:n8n", FAIL, "n8n: no verified backup", "nightly_backup"),
                      CheckResult("disk_free:/boot", FAIL, "/boot: 1% free", "free_disk"),
                      CheckResult("cpu_temperature", WARN, "cpu-thermal at 75 °C", "tune_monitoring")]
    requests, cursor = tick(sensor, instance, resources, jobs, None)
    assert [(r.job_name, r.run_key, r.tags["homelab-ops/remedy-for"]) for r in requests] == [
        ("nightly_backup", f"health:backup_age:n8n:{int(script.now)}:nightly_backup", "backup_age:n8n")]
    texts = telegram.texts_to(OWNER)
    assert any("Remedy started: nightly_backup" in t for t in texts)
    assert not any("Remedy started" in t for t in texts if "boot" in t or "cpu" in t)
    for _ in range(3):  # the same failure: no second run
        script.now += 60
        requests, cursor = tick(sensor, instance, resources, jobs, cursor)
        assert requests == []
    # recovered and failing again after the cooldown: a new episode, a new run key
    script.results = [CheckResult("backup_age:n8n", OK, "n8n: fresh", "nightly_backup")]
    script.now += 3600
    _, cursor = tick(sensor, instance, resources, jobs, cursor)
    script.results = [CheckResult("backup_age:n8n", FAIL, "n8n: stale", "nightly_backup")]
    script.now += 60
    requests, cursor = tick(sensor, instance, resources, jobs, cursor)
    assert len(requests) == 1 and requests[0].run_key.endswith(f":{int(script.now)}:nightly_backup")


def test_run_failure_sensor_alerts_on_a_real_failed_run(setup, telegram):
    make, instance = setup
    _, s, resources = make()

    @dg.op
    def boom():
        raise RuntimeError(f"could not reach postgresql://backup:{SECRET}@db/n8n\nsecond line\nthird line")

    @dg.job(tags={"dagster/max_runtime": "60"})
    def tiny_failing_job():
        boom()

    sensor = build_run_failure_sensor()
    _, cursor = tick(sensor, instance, resources, [tiny_failing_job], None)  # starts after what exists
    result = tiny_failing_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    _, cursor = tick(sensor, instance, resources, [tiny_failing_job], cursor)
    [text] = telegram.texts_to(OWNER)
    assert text.startswith("❌ Run failed: tiny_failing_job\nFailed step: boom\n")
    assert "RuntimeError: could not reach postgresql://backup:[REDACTED]@db/n8n" in text
    assert SECRET not in text and text.endswith("Open the run")
    html_text = telegram.sent[-1]["text"]
    assert f'<a href="http://pi.lan:3000/runs/{result.run_id}">' in html_text and "<pre>" in html_text
    assert rows(s, "source", "subject", "run_id", "delivered") == [("run", "tiny_failing_job", result.run_id, True)]
    _, cursor = tick(sensor, instance, resources, [tiny_failing_job], cursor)
    assert len(telegram.texts_to(OWNER)) == 1  # each failed run alerts once


def test_a_hung_run_stopped_by_run_monitoring_is_alerted(setup, telegram):
    """Dagster's own run-monitoring check fails a run past dagster/max_runtime; the sensor says so."""
    import logging

    from dagster._core.events import DagsterEvent, DagsterEventType
    from dagster._daemon.monitoring.run_monitoring import check_run_timeout

    make, instance = setup
    _, s, resources = make()
    hung = tiny_job("hung_job")
    sensor = build_run_failure_sensor()
    _, cursor = tick(sensor, instance, resources, [hung], None)
    run = instance.create_run_for_job(job_def=hung, tags=dict(hung.tags))  # dagster/max_runtime: 60
    for kind in (DagsterEventType.PIPELINE_STARTING, DagsterEventType.RUN_START):
        instance.handle_run_event(run.run_id, DagsterEvent(event_type_value=kind.value, job_name=run.job_name))
    record = instance.get_run_record_by_id(run.run_id)
    record = record._replace(start_time=record.start_time - 120)  # started two minutes ago
    check_run_timeout(instance, record, logging.getLogger("run_monitoring"), 14400)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    tick(sensor, instance, resources, [hung], cursor)
    [text] = telegram.texts_to(OWNER)
    assert text.startswith("❌ Run failed: hung_job\nNo step failed")
    assert "exceeding maximum runtime of 60 seconds" in text


def test_an_interrupted_run_is_not_alerted_twice(setup, telegram):
    """homelab_ops.recovery alerts a crashed run once as interrupted; run_failure_alert leaves it."""
    from dagster._core.events import DagsterEvent, DagsterEventType

    from homelab_ops.recovery import INTERRUPTED_TAG

    make, instance = setup
    _, s, resources = make()
    crashed = tiny_job("crashed_job")
    sensor = build_run_failure_sensor()
    _, cursor = tick(sensor, instance, resources, [crashed], None)
    run = instance.create_run_for_job(job_def=crashed, tags=dict(crashed.tags))
    for kind in (DagsterEventType.PIPELINE_STARTING, DagsterEventType.RUN_START):
        instance.handle_run_event(run.run_id, DagsterEvent(event_type_value=kind.value, job_name=run.job_name))
    instance.add_run_tags(run.run_id, {INTERRUPTED_TAG: "2026-12-03T03:00:00+00:00"})
    instance.report_run_failed(instance.get_run_by_id(run.run_id), message="interrupted")
    tick(sensor, instance, resources, [crashed], cursor)
    assert telegram.texts_to(OWNER) == []


def test_error_severity_asset_check_failure_alerts_once_and_recovers(setup, telegram):
    make, instance = setup
    _, s, resources = make()
    verdict = {"passed": False}

    @dg.asset
    def ledger():
        return 1

    @dg.asset_check(asset=ledger)
    def ledger_balanced():
        return dg.AssetCheckResult(passed=verdict["passed"], severity=dg.AssetCheckSeverity.ERROR,
                                   description=f"3 rows missing (dsn password {SECRET})")

    @dg.asset_check(asset=ledger)
    def ledger_tidy():
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, description="untidy")

    sensor = build_asset_check_sensor()

    def evaluate(cursor):
        defs = dg.Definitions(assets=[ledger], asset_checks=[ledger_balanced, ledger_tidy], sensors=[sensor],
                              resources=resources)
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources)
        return sensor.evaluate_tick(ctx).cursor

    dg.materialize([ledger, ledger_balanced, ledger_tidy], instance=instance, raise_on_error=False)
    cursor = evaluate(None)
    cursor = evaluate(cursor)
    [text] = telegram.texts_to(OWNER)
    assert text.startswith("🔴 Asset check failed: ledger_balanced on ledger\n3 rows missing")
    assert SECRET not in text and "untidy" not in text
    verdict["passed"] = True
    dg.materialize([ledger, ledger_balanced, ledger_tidy], instance=instance, raise_on_error=False)
    evaluate(cursor)
    assert telegram.texts_to(OWNER)[-1].startswith("✅ RECOVERED asset check ledger_balanced on ledger")


def test_telegram_inbox_start_approve_mute(setup, telegram):
    make, instance = setup
    path, s, resources = make()
    sensor = build_telegram_inbox_sensor()

    def evaluate(cursor):
        defs = dg.Definitions(sensors=[sensor], resources=resources)
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources)
        return sensor.evaluate_tick(ctx).cursor

    first = telegram.push_message(555, "/start", username="bob")
    cursor = evaluate(None)
    assert cursor == str(first + 1)
    with ch.state_connection(s.state, s.postgres) as conn:
        assert ch.get_chat(conn, 555).status == "pending"
    assert telegram.texts_to(555) == []  # nothing to a chat that is not approved
    assert "555 (@bob)" in telegram.texts_to(OWNER)[-1] and "notify approve" in telegram.texts_to(OWNER)[-1]

    telegram.push_message(555, "/mute 1h")  # not approved yet: ignored, no reply
    cursor = evaluate(cursor)
    assert telegram.texts_to(555) == []
    r = CliRunner().invoke(main, ["--config", str(path), "notify", "approve", "555"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    telegram.push_message(555, "/mute 8h")
    cursor = evaluate(cursor)
    assert telegram.texts_to(555)[-1].startswith("Muted until")
    with ch.state_connection(s.state, s.postgres) as conn:
        assert ch.get_chat(conn, 555).muted_until is not None
    assert telegram.offsets[-1] == int(cursor) - 1 and telegram.offsets[0] is None
    evaluate(cursor)
    assert len(telegram.texts_to(555)) == 1  # confirmed updates are not processed twice


def test_inbox_without_a_token_skips(setup, telegram, monkeypatch):
    make, instance = setup
    _, s, resources = make()
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    resources["alert_channels"] = AlertChannels()
    sensor = build_telegram_inbox_sensor()
    defs = dg.Definitions(sensors=[sensor], resources=resources)
    data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs, resources=resources))
    assert "no Telegram bot token" in data.skip_message


def test_every_job_carries_a_max_runtime_and_the_alerting_sensors_run_by_default():
    """Hung runs are stopped by run monitoring (dagster.yaml) at each job's dagster/max_runtime."""
    from homelab_ops.definitions import defs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        repo = defs().get_repository_def()
    jobs = {j.name: j for j in repo.get_all_jobs() if not j.name.startswith("__ASSET_JOB")}
    assert "nightly_backup" in jobs
    missing = sorted(n for n, j in jobs.items() if not j.tags.get("dagster/max_runtime"))
    assert missing == [], f"jobs without a dagster/max_runtime tag: {missing}"
    assert all(float(j.tags["dagster/max_runtime"]) > 0 for j in jobs.values())
    monitoring = yaml.safe_load((Path(__file__).parents[2] / "dagster.yaml").read_text())["run_monitoring"]
    assert monitoring["enabled"] and monitoring["max_runtime_seconds"] > 0  # the implicit asset job's runs too
    sensors = {s.name: s for s in repo.sensor_defs}
    for name in ("health_sensor", "run_failure_alert", "asset_check_alert", "telegram_inbox", "interrupted_runs"):
        assert sensors[name].default_status == dg.DefaultSensorStatus.RUNNING
    health = sensors["health_sensor"]
    assert health.minimum_interval_seconds == 60
    targets = {t.job_name for t in health.targets}
    assert "nightly_backup" in targets and targets <= set(jobs)
    if "free_disk_space" in targets:
        selected = {k.to_user_string() for k in jobs["free_disk_space"].asset_layer.executable_asset_keys}
        assert "disk_hygiene" in selected and any(k.startswith("backup_retention/") for k in selected)
