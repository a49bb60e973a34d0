"""Each health check's judgement over plain readings, and the alert state machine: no services."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from homelab_ops.health import checks as c
from homelab_ops.health import machine as m
from homelab_ops.health import remedies
from homelab_ops.health.checks import FAIL, OK, UNKNOWN, WARN, CheckResult, ContainerReading
from homelab_ops.health.evaluate import host_results, n8n_failure_result
from homelab_ops.health.messages import notice_alert, run_failure_alert
from homelab_ops.metrics.collect import Sample
from homelab_ops.settings import parse

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
GiB = 1 << 30


# --------------------------------------------------------------------------- checks


def test_disk_free_is_judged_per_mount_with_its_remedy():
    got = c.disk_free({"/": (100 * GiB, 40 * GiB), "/var": (100 * GiB, 10 * GiB), "/boot": (GiB, GiB // 50)}, 15, 5)
    by = {r.name: r for r in got}
    assert [by["disk_free:/"].state, by["disk_free:/var"].state, by["disk_free:/boot"].state] == [OK, WARN, FAIL]
    assert "2.0% free" in by["disk_free:/boot"].reason and "below 5%" in by["disk_free:/boot"].reason
    assert all(r.remedy == c.FREE_DISK for r in got)


def test_cpu_temperature_prefers_the_cpu_zone_and_says_unknown_without_one():
    assert c.cpu_temperature({"cpu-thermal": 71.2, "rp1_adc": 90.0}, 70, 80).state == WARN
    assert c.cpu_temperature({"x86_pkg_temp": 85.0, "acpitz": 30.0}, 70, 80).state == FAIL
    assert c.cpu_temperature({"cpu-thermal": 45.0}, 70, 80).state == OK
    r = c.cpu_temperature({}, 70, 80)
    assert r.state == UNKNOWN and "no thermal sensor" in r.reason


def test_throttling_now_and_under_voltage_since_boot():
    assert c.throttled_now(None).state == UNKNOWN
    assert c.throttled_now({"under_voltage": False, "throttled": False}).state == OK
    assert c.throttled_now({"arm_frequency_capped": True}).state == WARN
    r = c.throttled_now({"under_voltage": True, "throttled": True})
    assert r.state == FAIL and "under-voltage" in r.reason
    assert c.under_voltage_since_boot(None, None).state == UNKNOWN
    assert c.under_voltage_since_boot(False, None).state == OK
    assert c.under_voltage_since_boot(None, True).state == WARN
    assert c.under_voltage_since_boot(True, False).state == WARN


def test_memory_available():
    assert c.memory_available(8 * GiB, 4 * GiB, 15, 5).state == OK
    assert c.memory_available(8 * GiB, GiB, 15, 5).state == WARN
    assert c.memory_available(8 * GiB, GiB // 4, 15, 5).state == FAIL
    assert c.memory_available(None, None, 15, 5).state == UNKNOWN


def test_host_results_from_metric_samples():
    samples = [
        Sample("node_thermal_zone_temp", {"type": "cpu-thermal", "zone": "0"}, 82.0),
        Sample("homelab_pi_throttled", {"flag": "under_voltage", "when": "now"}, 0.0),
        Sample("homelab_pi_throttled", {"flag": "throttled", "when": "now"}, 1.0),
        Sample("homelab_pi_throttled", {"flag": "under_voltage", "when": "since_boot"}, 1.0),
        Sample("node_filesystem_size_bytes", {"mountpoint": "/"}, 100.0),
        Sample("node_filesystem_avail_bytes", {"mountpoint": "/"}, 3.0),
        Sample("node_memory_MemTotal_bytes", {}, 100.0),
        Sample("node_memory_MemAvailable_bytes", {}, 50.0),
    ]
    by = {r.name: r.state for r in host_results(samples, c.Thresholds.defaults())}
    assert by == {"disk_free:/": FAIL, "cpu_temperature": FAIL, "throttled_now": FAIL,
                  "under_voltage_since_boot": WARN, "memory_available": OK}


def test_containers_health_restarts_oom_and_stack():
    stacks = {"grafana*": "monitoring", "traefik": "traefik"}
    unhealthy = ContainerReading("grafana", "running", health="unhealthy", health_output="curl: (7) refused\n")
    r = c.container(unhealthy, NOW, 3, stacks)
    assert (r.name, r.state, r.remedy) == ("container:grafana", FAIL, c.REDEPLOY_MONITORING)
    assert "unhealthy: curl: (7) refused" in r.reason
    looping = ContainerReading("n8n", "running", restart_count=5, started_at=NOW - timedelta(minutes=2))
    assert c.container(looping, NOW, 3).state == WARN
    calm = ContainerReading("n8n", "running", restart_count=5, started_at=NOW - timedelta(days=3), health="healthy")
    assert c.container(calm, NOW, 3).state == OK
    oom = ContainerReading("ollama", "exited", oom_killed=True, exit_code=137, restart_policy="unless-stopped")
    r = c.container(oom, NOW, 3)
    assert r.state == FAIL and "OOM" in r.reason and r.remedy is None
    assert c.container(ContainerReading("traefik", "restarting", restart_count=9), NOW, 3, stacks).remedy == \
        c.REDEPLOY_TRAEFIK
    assert c.container(ContainerReading("migrate", "exited", exit_code=0), NOW, 3).state == OK
    labelled = ContainerReading("prom-x", "dead", labels={"homelab-ops.stack": "monitoring"})
    assert c.container(labelled, NOW, 3).remedy == c.REDEPLOY_MONITORING
    listed = c.containers([unhealthy, ContainerReading("test-runner", "exited", exit_code=1)], NOW, 3,
                          stacks, ignore=["test-*"])
    assert [x.name for x in listed] == ["docker", "container:grafana"]


def test_services_backups_credentials():
    assert c.postgres_reachable("connection refused").state == FAIL
    assert c.postgres_reachable(None, 0.003).state == OK
    assert c.n8n_healthz(200).state == OK
    assert c.n8n_healthz(503).state == FAIL and "503" in c.n8n_healthz(503).reason
    assert c.n8n_healthz(None, "refused").state == FAIL
    fresh = c.backup_age("n8n", NOW - timedelta(hours=5), NOW - timedelta(hours=5), NOW, 26)
    assert fresh.state == OK and fresh.name == "backup_age:n8n"
    stale = c.backup_age("n8n", NOW - timedelta(hours=30), NOW - timedelta(hours=1), NOW, 26)
    assert stale.state == FAIL and "30.0h" in stale.reason and stale.remedy == c.NIGHTLY_BACKUP
    assert "not verified" in c.backup_age("n8n", None, NOW, NOW, 26).reason
    assert "no backup at all" in c.backup_age("n8n", None, None, NOW, 26).reason
    day = 86400
    assert c.credentials_overdue([]).state == OK
    r = c.credentials_overdue([("pg_n8n", 40 * day, 30 * day), ("s3_key", None, 90 * day)])
    assert r.state == WARN and "pg_n8n" in r.reason and "never set" in r.reason
    assert c.credentials_overdue([("old", 70 * day, 30 * day)]).state == FAIL


def test_n8n_failure_rate_from_rollup_rows():
    th = c.Thresholds.defaults(n8n_failure_rate_warn=0.2, n8n_failure_rate_fail=0.5)
    d = datetime(2026, 11, 25).date()
    rows = [(d, "1", "Mail", "success", 8), (d, "1", "Mail", "error", 2),
            (d, "2", "Backup ping", "success", 1), (d, "2", "Backup ping", "crashed", 3),
            (d - timedelta(days=1), "2", "Backup ping", "success", 50)]
    r = n8n_failure_result(rows, th)
    assert r.state == FAIL and "Backup ping" in r.reason and "3 of 4" in r.reason and "2026-11-25" in r.reason
    assert n8n_failure_result([(d, "1", "Mail", "success", 9), (d, "1", "Mail", "error", 1)], th).state == OK
    assert n8n_failure_result([], th).state == OK


def test_postgres_auth_failures_from_log_lines():
    tz = ZoneInfo("Europe/Berlin")
    log = [
        "2026-11-25 11:30:01.123 UTC [77] n8n@n8n FATAL:  password authentication failed for user \"n8n\"",
        "2026-11-25 11:30:01.124 UTC [77] n8n@n8n DETAIL:  Connection matched pg_hba.conf line 99",
        "2026-11-25 12:45:00 CET [78] FATAL:  no pg_hba.conf entry for host \"203.0.113.9\", user \"admin\", "
        "database \"x\", SSL off",
        "2026-11-25 12:59:00 CET [79] FATAL:  role \"root\" does not exist",
        "2026-11-25 09:00:00 UTC [80] FATAL:  password authentication failed for user \"old\"",  # outside the hour
        "2026-11-25 11:59:00 UTC [81] LOG:  checkpoint complete",
    ]
    lines = [(c.parse_pg_time(line, tz), line) for line in log]
    count, users, untimed = c.pg_auth_failures(lines, NOW)
    assert (count, untimed) == (3, 0) and users == Counter({"n8n": 1, "admin": 1, "root": 1})
    assert c.postgres_auth_failures(count, users, 0, 10, 100).state == OK
    assert c.postgres_auth_failures(12, Counter({"postgres": 12}), 0, 10, 100).state == WARN
    assert c.postgres_auth_failures(150, Counter(), 0, 10, 100).state == FAIL
    r = c.postgres_auth_failures(0, Counter(), 4, 10, 100)
    assert r.state == UNKNOWN and "log_line_prefix" in r.reason


def test_traefik_denied_bursts_in_json_and_common_log_format():
    json_line = ('{"ClientHost":"198.51.100.7","DownstreamStatus":401,"RequestPath":"/login",'
                 '"StartUTC":"2026-11-25T11:58:00.123456789Z"}')
    clf = '198.51.100.8 - - [25/Nov/2026:12:58:30 +0100] "GET /admin HTTP/1.1" 403 19 "-" "curl" 5 "r@docker" "-" 1ms'
    ok = '198.51.100.8 - - [25/Nov/2026:12:58:31 +0100] "GET / HTTP/1.1" 200 19 "-" "curl" 6 "r@docker" "-" 1ms'
    old = '198.51.100.9 - - [25/Nov/2026:10:00:00 +0000] "GET /x HTTP/1.1" 401 19 "-" "-" 7 "-" "-" 1ms'
    entries = [c.parse_access_line(x) for x in [json_line, clf, ok, old, "garbage"]] + \
        [c.parse_access_line(json_line)] * 30
    count, clients = c.http_denied_counts(entries, NOW, 300)
    assert count == 32 and clients["198.51.100.7"] == 31
    r = c.http_denied(count, clients, 300, 20, 100)
    assert r.state == WARN and "198.51.100.7 (31)" in r.reason
    assert c.http_denied(0, Counter(), 300, 20, 100).state == OK


def test_thresholds_come_from_one_section_then_the_sections_they_derive_from():
    s = parse({"thresholds": {"temperature_warn_c": 65, "temperature_fail_c": 77, "disk_free_warn_pct": 20},
               "backups": {"max_age_hours": 30}, "n8n": {"dsn": "postgresql://x@y/n8n", "failure_rate_warn": 0.1}}, "t")
    th = c.Thresholds.from_settings(s)
    assert (th.temperature_warn_c, th.temperature_fail_c, th.disk_free_warn_pct) == (65, 77, 20)
    assert (th.backup_age_fail_hours, th.n8n_failure_rate_warn, th.pg_auth_failures_warn) == (30, 0.1, 10)


@pytest.mark.parametrize("data, fragment", [
    ({"thresholds": {"temperature_wran_c": 1}}, "unknown threshold temperature_wran_c"),
    ({"health": {"remedies": {"postgres": False}}}, "no remedy for postgres"),
])
def test_health_settings_are_validated(data, fragment):
    from homelab_ops.settings import SettingsError

    with pytest.raises(SettingsError, match=fragment):
        parse(data, "t")


# --------------------------------------------------------------------------- the state machine

POLICY = m.Policy(realert_after=6 * 3600, flap_window=3600, flap_changes=4, remedy_cooldown=3600)


def run(sequence: list[tuple[float, str]], name: str = "disk_free:/", policy: m.Policy = POLICY):
    """Feed (time, state) pairs through the machine; returns [(time, kind, state)] announced."""
    mem: dict = {}
    said = []
    for t, state in sequence:
        mem, notices = m.advance(mem, [CheckResult(name, state, f"{state} at {t}")], t, policy)
        said += [(t, n.kind, n.state) for n in notices]
    return said


def test_first_ok_is_silent_first_problem_is_announced():
    assert run([(0, OK), (60, OK)]) == []
    assert run([(0, FAIL)]) == [(0, "problem", FAIL)]
    assert run([(0, UNKNOWN)]) == [(0, "problem", UNKNOWN)]


def test_dedup_and_re_alert_after_realert_after():
    seq = [(i * 60.0, FAIL) for i in range(0, 6 * 60 + 2)]  # six hours and a minute, every minute
    assert run(seq) == [(0, "problem", FAIL), (6 * 3600.0, "reminder", FAIL)]


def test_unknown_is_not_repeated_but_its_end_is_announced():
    seq = [(i * 3600.0, UNKNOWN) for i in range(13)] + [(13 * 3600.0, OK)]
    assert run(seq) == [(0, "problem", UNKNOWN), (13 * 3600.0, "recovered", OK)]


def test_escalation_and_recovery_routes_to_the_worst_severity_announced():
    mem: dict = {}
    kinds = []
    for t, state in [(0, OK), (60, WARN), (120, FAIL), (180, WARN), (240, OK)]:
        mem, notices = m.advance(mem, [CheckResult("x", state, "r")], t, POLICY)
        kinds += [(n.kind, n.state, n.severity) for n in notices]
    assert kinds == [("problem", WARN, "warn"), ("changed", FAIL, "fail"), ("changed", WARN, "warn"),
                     ("recovered", OK, "fail")]


def test_flapping_is_reported_once_then_settles():
    flips = [(i * 120.0, OK if i % 2 else FAIL) for i in range(20)]  # 40 minutes of flipping
    settle = [(flips[-1][0] + 60.0 * k, OK) for k in range(1, 62)]  # then ok for an hour
    said = run(flips + settle)
    kinds = [k for _, k, _ in said]
    assert kinds.count("flapping") == 1
    assert kinds[:4] == ["problem", "recovered", "problem", "flapping"]
    assert kinds[-1] == "settled" and said[-1][2] == OK
    assert len(said) == 5


def test_vanished_checks_are_kept_for_a_while_then_forgotten():
    mem, _ = m.advance({}, [CheckResult("container:x", FAIL, "r")], 0, POLICY)
    mem, notices = m.advance(mem, [], 60, POLICY)
    assert "container:x" in mem and notices == []
    mem, notices = m.advance(mem, [CheckResult("container:x", FAIL, "r")], 120, POLICY)
    assert notices == []  # back within realert_after: not announced again
    mem, _ = m.advance(mem, [], 120 + POLICY.realert_after, POLICY)
    assert mem == {}


def test_memory_survives_json():
    mem, _ = m.advance({}, [CheckResult("x", FAIL, "r")], 5, POLICY)
    back = {k: m.Memory.from_json(v.to_json()) for k, v in mem.items()}
    assert back == mem


# --------------------------------------------------------------------------- remedies


def test_one_remedy_run_per_failure_episode_with_cooldown():
    mem: dict = {}
    runs = []
    jobs = {"nightly_backup"}
    seq = [(0, OK), (60, FAIL), (120, FAIL), (180, OK), (240, FAIL), (4000, OK), (4060, FAIL), (4120, FAIL)]
    for t, state in seq:
        results = [CheckResult("backup_age:n8n", state, "r", c.NIGHTLY_BACKUP)]
        mem, _ = m.advance(mem, results, t, POLICY)
        planned, skipped = remedies.plan(mem, results, t, POLICY, {}, jobs)
        runs += [(t, p.job, p.run_key) for p in planned]
    # 60: first failure; 240: a new episode inside the cooldown, no run; 4060: after the cooldown
    assert [(t, j) for t, j, _ in runs] == [(60, "nightly_backup"), (4060, "nightly_backup")]
    assert runs[0][2] == "health:backup_age:n8n:60:nightly_backup" and runs[1][2] != runs[0][2]


def test_remedies_switched_off_or_missing_are_skipped_with_a_reason():
    results = [CheckResult("disk_free:/boot", FAIL, "r", c.FREE_DISK), CheckResult("disk_free:/", WARN, "r", c.FREE_DISK),
               CheckResult("cpu_temperature", FAIL, "r", c.TUNE_MONITORING),
               CheckResult("container:grafana", WARN, "r", c.REDEPLOY_MONITORING)]
    mem, _ = m.advance({}, results, 0, POLICY)
    planned, skipped = remedies.plan(mem, results, 0, POLICY, {"disk_free:/boot": False}, {"free_disk_space"})
    assert [(p.check, p.job) for p in planned] == [("disk_free:/", "free_disk_space")]  # warn starts disk cleanup
    whys = " | ".join(s.why for s in skipped)
    assert "switched off" in whys and "disk_free:/boot" in whys
    assert "tune_monitoring for cpu_temperature is not in this code location" in whys
    assert "grafana" not in whys  # a warn does not redeploy
    assert remedies.enabled("disk_free:/", {"disk_free": False}) is False
    assert remedies.enabled("disk_free:/", {"disk_free": False, "disk_free:/": True}) is True


# --------------------------------------------------------------------------- words


def test_notice_and_run_failure_wording():
    n = m.Notice("backup_age:n8n", "reminder", FAIL, "n8n: newest verified backup is 31.0h old", "fail",
                 previous=FAIL, since=0)
    a = notice_alert(n, 6 * 3600, ZoneInfo("UTC"), ["nightly_backup"])
    assert a.title.endswith("STILL FAIL backup_age:n8n") and "Since Thu 00:00 (6.0h)" in a.body
    assert "Remedy started: nightly_backup" in a.body and a.severity == "fail"
    err = "\n".join(f"line {i}" for i in range(40))
    r = run_failure_alert("nightly_backup", "abc-123", [("backups__n8n_backup", err)], "", "http://pi:3000/")
    assert r.link == "http://pi:3000/runs/abc-123" and "backups__n8n_backup" in r.body
    assert r.preformatted.startswith("line 0") and "line 11" in r.preformatted and "line 12" not in r.preformatted
    timeout = run_failure_alert("nightly_backup", "r1", [], "Exceeded maximum runtime of 18000 seconds.", "http://x")
    assert "No step failed" in timeout.body and "Exceeded maximum runtime" in timeout.preformatted
