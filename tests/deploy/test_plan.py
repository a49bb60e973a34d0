"""Planning, rendering, hashing and limit fitting: pure logic, checked with Debian's real
promtool and amtool where a config is involved. No Docker Engine needed."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import bcrypt
import pytest
import yaml

from homelab_ops.deploy import render, tune
from homelab_ops.deploy.config import DeployConfig
from homelab_ops.deploy.engine import files_tar
from homelab_ops.deploy.plan import (
    HostFacts,
    PlanError,
    build_monitoring_plan,
    build_traefik_plan,
    effective_limits,
)
from homelab_ops.deploy.spec import Limits
from homelab_ops.settings import SettingsError, parse

ROOT = Path(__file__).resolve().parents[2]
HOST = HostFacts(ncpu=4, docker_socket="/var/run/docker.sock", docker_root="/var/lib/docker",
                 textfile_dir="/srv/homelab-ops/node_exporter", access_log_dir="/srv/homelab-ops/traefik")
BCRYPT = "owner:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
STOCK = ["node_exporter", "cadvisor", "loki", "alloy", "alertmanager", "grafana", "prometheus"]


def settings(**data):
    return parse(data, "test.yaml")


def deploy(**data) -> DeployConfig:
    return DeployConfig.of(settings(**data))


def plan_of(s=None, **kw):
    return build_monitoring_plan(DeployConfig.of(s or settings()), HOST, env=kw.pop("env", {}), **kw)


def write_rendered(plan, service: str, root: Path) -> Path:
    for path, content in plan.service(service).files.items():
        out = root / path.lstrip("/")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(content)
    return root


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


# --- Rendered configs against the real tools ----------------------------------------------------

def test_rendered_prometheus_config_and_rules_pass_promtool(tmp_path):
    plan = plan_of(settings(monitoring={"services": {"prometheus": {"scrape_interval": "45s"}}}))
    root = write_rendered(plan, "prometheus", tmp_path)
    cfg = root / "etc/prometheus/prometheus.yml"
    proc = run(["promtool", "check", "config", str(cfg)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout
    rules = sorted((root / "etc/prometheus/rules").glob("*.yml"))
    proc = run(["promtool", "check", "rules", *map(str, rules)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = yaml.safe_load(cfg.read_text())
    assert data["global"]["scrape_interval"] == "45s"
    assert {j["job_name"] for j in data["scrape_configs"]} == set(STOCK) | {"traefik"}
    assert plan.rule_count == render.count_rules(rules[0].read_text())
    args = plan.service("prometheus").command
    assert "--storage.tsdb.retention.time=15d" in args


PROMTOOL_TESTS = """
rule_files: [rules/homelab.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'homelab_pi_under_voltage_alarm{instance="node-exporter:9100",job="node_exporter"}'
        values: '0 1x10'
      - series: 'homelab_pi_throttled{flag="throttled",when="now",instance="n",job="node_exporter"}'
        values: '1x10'
      - series: 'homelab_backup_last_success_timestamp_seconds{database="n8n",job="node_exporter"}'
        values: '0x30'
      - series: 'homelab_deploy_expected{service="loki",job="node_exporter"}'
        values: '1x10'
      - series: 'homelab_deploy_expected{service="grafana",job="node_exporter"}'
        values: '1x10'
      - series: 'container_last_seen{container_label_homelab_ops_service="grafana",name="g",job="cadvisor"}'
        values: '1x10'
      - series: 'up{job="cadvisor",instance="cadvisor:8080"}'
        values: '1x10'
      - series: 'up{job="traefik",instance="traefik:8082"}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 3m
        alertname: PiUnderVoltage
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations:
              summary: "Under-voltage on the Pi: the power supply cannot keep up (use the 27 W PSU)"
      - eval_time: 6m
        alertname: PiThrottled
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations:
              summary: "The Pi is throttled now (vcgencmd get_throttled)"
              description: "Throttling flags set: throttled "
      - eval_time: 6m
        alertname: ContainerDown
        exp_alerts:
          - exp_labels: {severity: critical, service: loki}
            exp_annotations: {summary: "The loki container is not running"}
      - eval_time: 3m
        alertname: TraefikDown
        exp_alerts:
          - exp_labels: {severity: critical, job: traefik, instance: "traefik:8082"}
            exp_annotations: {summary: "Traefik is down: no UI and no n8n webhook is reachable"}
      - eval_time: 5m
        alertname: BackupStale
        exp_alerts: []
"""


def test_alert_rules_fire_on_textfile_and_deploy_metrics_promtool_test_rules(tmp_path):
    root = write_rendered(plan_of(settings(backups={"max_age_hours": 0.05})), "prometheus", tmp_path)
    tests = yaml.safe_load(PROMTOOL_TESTS)
    # backups.max_age_hours 0.05 = 180 s: stale from minute 4, firing after its 10 minutes.
    tests["tests"][0]["alert_rule_test"].append({
        "eval_time": "16m", "alertname": "BackupStale",
        "exp_alerts": [{"exp_labels": {"severity": "critical", "database": "n8n"},
                        "exp_annotations": {"summary": "The newest backup of n8n is older than 0.05 hours"}}]})
    (root / "etc/prometheus/tests.yml").write_text(yaml.safe_dump(tests))
    proc = run(["promtool", "test", "rules", "tests.yml"], cwd=root / "etc/prometheus")
    assert proc.returncode == 0, proc.stdout + proc.stderr


ONE_PATH_TESTS = """
rule_files: [rules/homelab.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # 72 °C: above thresholds.temperature_warn_c (70), the health sensor's own number
      - series: 'node_thermal_zone_temp{type="cpu-thermal",zone="0",job="node_exporter"}'
        values: '72x40'
      - series: 'up{job="traefik",instance="traefik:8082"}'
        values: '0x40'
      # the sensor ticks every minute for 15 minutes, then stops (the daemon died)
      - series: 'homelab_health_tick_timestamp_seconds{job="node_exporter"}'
        values: '0+60x15 900x25'
    alert_rule_test:
      # while the sensor ticks it alone speaks for the temperature; Traefik is Prometheus' own
      - eval_time: 14m
        alertname: PiTemperatureHigh
        exp_alerts: []
      - eval_time: 14m
        alertname: HomelabOpsSilent
        exp_alerts: []
      - eval_time: 14m
        alertname: TraefikDown
        exp_alerts:
          - exp_labels: {severity: critical, job: traefik, instance: "traefik:8082"}
            exp_annotations: {summary: "Traefik is down: no UI and no n8n webhook is reachable"}
      # 10 minutes without a tick (at 25m), then each rule's own `for`
      - eval_time: 31m
        alertname: HomelabOpsSilent
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations:
              summary: "homelab-ops' health sensor has not run for 10 minutes: is the Dagster daemon down?"
              description: "Until it runs again, Prometheus alerts on the conditions the health sensor judges (temperature, disk, memory, containers, backups)."
      - eval_time: 36m
        alertname: PiTemperatureHigh
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations:
              summary: "Pi SoC at 72°C"
              description: "Above 70°C for 10 minutes: check the fan and the case's airflow."
"""


def test_a_condition_the_health_sensor_judges_reaches_alertmanager_only_while_the_sensor_is_silent(tmp_path):
    """One condition, one path: temperature is the sensor's (same threshold) while it ticks;
    Prometheus takes over once homelab_health.prom goes stale, and says so once."""
    root = write_rendered(plan_of(), "prometheus", tmp_path)
    (root / "etc/prometheus/tests.yml").write_text(ONE_PATH_TESTS)
    proc = run(["promtool", "test", "rules", "tests.yml"], cwd=root / "etc/prometheus")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_rules_read_the_thresholds_and_the_old_alert_keys_fold_into_them(caplog):
    s = settings(thresholds={"temperature_warn_c": 65, "disk_free_warn_pct": 12})
    rules = yaml.safe_load(plan_of(s).service("prometheus").files["/etc/prometheus/rules/homelab.yml"])
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert "> 65 unless on () (time() - max(homelab_health_tick_timestamp_seconds) < 600)" in exprs["PiTemperatureHigh"]
    assert "< 12" in exprs["DiskAlmostFull"] and "> 80 unless" in exprs["PiTemperatureCritical"]
    assert "unless" not in exprs["TraefikDown"] and "unless on ()" not in exprs["TargetDown"]
    # The health sensor judges every container's restarts (container:<name>): Prometheus' rule waits.
    assert "> 2 unless on () (time() - max(homelab_health_tick_timestamp_seconds) < 600)" in exprs["ContainerRestarting"]
    old = settings(monitoring={"alerts": {"temperature_crit_c": 85, "memory_free_pct": 8,
                                          "expected_containers": ["n8n"]}})
    assert old.thresholds == {"temperature_fail_c": 85, "memory_available_warn_pct": 8}
    assert old.monitoring.alerts.expected_containers == ["n8n"]
    assert "monitoring.alerts.temperature_crit_c is deprecated: write thresholds.temperature_fail_c" in caplog.text
    # the newer section wins over the old key
    both = settings(monitoring={"alerts": {"disk_free_pct": 20}}, thresholds={"disk_free_warn_pct": 9})
    assert both.thresholds["disk_free_warn_pct"] == 9


def test_alertmanager_config_with_telegram_passes_amtool(tmp_path):
    s = settings(notify={"telegram": {"bot_token": "123:abc"}},
                 monitoring={"services": {"alertmanager": {"telegram_chat_id": "-100200"}}})
    plan = plan_of(s)
    root = write_rendered(plan, "alertmanager", tmp_path)
    cfg = root / "etc/alertmanager/alertmanager.yml"
    proc = run(["amtool", "check-config", str(cfg)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tg = yaml.safe_load(cfg.read_text())["receivers"][0]["telegram_configs"][0]
    assert tg["chat_id"] == -100200 and tg["bot_token"] == "123:abc" and tg["send_resolved"] is True
    assert not any(w.startswith("alertmanager") for w in plan.warnings)


def test_alertmanager_without_telegram_credentials_is_valid_but_warned(tmp_path):
    plan = plan_of()
    root = write_rendered(plan, "alertmanager", tmp_path)
    proc = run(["amtool", "check-config", str(root / "etc/alertmanager/alertmanager.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any("not delivered" in w for w in plan.warnings)
    with pytest.raises(PlanError, match="not a Telegram chat id"):
        plan_of(settings(monitoring={"services": {"alertmanager": {"telegram_chat_id": "@me"}}}))


def test_expected_services_textfile_is_valid_exposition_text():
    plan = plan_of(settings(monitoring={"alerts": {"expected_containers": ["n8n", "postgres"]}}))
    (path, text), = plan.textfiles.items()
    assert path.endswith("homelab_deploy.prom")
    proc = run(["promtool", "check", "metrics"], input=text)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'homelab_deploy_expected{service="loki"} 1' in text
    assert 'homelab_deploy_expected_container{name="postgres"} 1' in text


def test_loki_alloy_and_grafana_configs_say_what_the_issue_asks():
    plan = plan_of(settings(monitoring={"services": {"loki": {"retention_days": 10},
                                                      "alloy": {"drop_lines": ["kube-probe"]}}}))
    loki = yaml.safe_load(plan.service("loki").files["/etc/loki/config.yaml"])
    assert loki["limits_config"]["retention_period"] == "240h"
    assert loki["compactor"]["retention_enabled"] is True
    assert loki["common"]["storage"] == {"filesystem": {"chunks_directory": "/loki/chunks",
                                                        "rules_directory": "/loki/rules"}}
    alloy = plan.service("alloy").files["/etc/alloy/config.alloy"].decode()
    assert alloy.count("stage.drop {") == 5 and '"kube-probe"' in alloy
    assert 'loki.source.docker "containers"' in alloy and "http://loki:3100/loki/api/v1/push" in alloy
    assert alloy.count("{") == alloy.count("}")
    with pytest.raises(Exception):
        plan_of(settings(monitoring={"services": {"alloy": {"drop_lines": ["(unclosed"]}}}))
    files = plan.service("grafana").files
    ds = yaml.safe_load(files["/etc/grafana/provisioning/datasources/homelab.yaml"])["datasources"]
    assert {d["uid"] for d in ds} == {"prometheus", "loki", "alertmanager", "homelab-state"}
    pg = next(d for d in ds if d["uid"] == "homelab-state")
    assert pg["type"] == "grafana-postgresql-datasource" and pg["url"] == "postgres:5432"
    assert pg["jsonData"]["database"] == "homelab"


def test_every_password_file_grafana_provisioning_reads_is_a_secret_the_plan_places():
    import re

    plan = plan_of(settings(monitoring={"services": {"grafana": {
        "dagster_postgres_dsn": "postgresql://d:pw@postgres/dagster", "admin_password": "adm"}}}))
    g = plan.service("grafana")
    sources = g.files["/etc/grafana/provisioning/datasources/homelab.yaml"].decode()
    read = set(re.findall(r"\$__file\{([^}]+)\}", sources))
    assert read == {"/run/secrets/grafana-homelab-state-password", "/run/secrets/grafana-dagster-password"}
    assert read <= set(g.secrets) and g.secrets["/run/secrets/grafana-dagster-password"] == b"pw"


def test_grafana_provisions_every_dashboard_json_in_the_folder():
    boards = {p.name: p.read_bytes() for p in (ROOT / "deploy/grafana/dashboards").glob("*.json")}
    plan = plan_of(dashboards={**boards, "extra.json": b'{"title": "x"}'})
    files = plan.service("grafana").files
    for name in [*boards, "extra.json"]:
        assert f"/etc/grafana/dashboards/{name}" in files
    provider = yaml.safe_load(files["/etc/grafana/provisioning/dashboards/homelab.yaml"])
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    with pytest.raises(PlanError, match="broken.json is not valid JSON"):
        plan_of(dashboards={"broken.json": b"{"})


# --- The plan's rules ---------------------------------------------------------------------------

def test_plan_over_budget_or_grafana_over_350_is_refused_naming_the_numbers():
    plan = plan_of()
    assert plan.memory_mb == 1356 <= 1536
    with pytest.raises(PlanError, match=r"needs 1356 MB but monitoring.memory_budget_mb is 1200 "
                                        r"\(prometheus 400, grafana 300, loki 256"):
        plan_of(settings(monitoring={"memory_budget_mb": 1200}))
    with pytest.raises(PlanError, match="grafana asks for 351 MB; at most 350 MB"):
        plan_of(settings(monitoring={"services": {"grafana": {"memory_mb": 351}}}))


def test_issue_example_settings_and_defaults():
    s = settings(docker={"host": "unix:///var/run/docker.sock"},
                 monitoring={"network": "homelab", "memory_budget_mb": 1536, "pull": "if-missing",
                             "services": {"prometheus": {"image": "prom/prometheus:v3.4.2", "memory_mb": 400,
                                                         "cpuset": "0"},
                                          "grafana": {"image": "grafana/grafana:12.0.2", "memory_mb": 300}}},
                 traefik={"image": "traefik:v3.7", "domain": "home.example.org",
                          "acme_email": "owner@example.org"})
    plan = plan_of(s)
    assert [x.service for x in plan.services] == STOCK
    for spec in plan.services:
        assert ":" in spec.image and not spec.image.endswith(":latest")
        assert spec.limits.cpuset == "0"  # monitoring on one core, the others for Ollama
        assert spec.name == "homelab-" + spec.service.replace("_", "-")
    with pytest.raises(SettingsError, match="monitoring.services.promethus: unknown key"):
        settings(monitoring={"services": {"promethus": {"memory_mb": 1}}})


@pytest.mark.parametrize("data, fragment", [
    ({"monitoring": {"services": {"prometheus": {"scrape_interval": "15s"}}}}, "between 30s and 60s"),
    ({"monitoring": {"services": {"loki": {"retention_days": 30}}}}, "retention_days"),
    ({"monitoring": {"services": {"cadvisor": {"housekeeping_interval": "5s"}}}}, "below 15s"),
    ({"monitoring": {"pull": "always"}}, "monitoring.pull"),
    ({"monitoring": {"services": {"grafana": {"cpuset": "zero"}}}}, "cpuset"),
    ({"traefik": {"acme_challenge": "dns"}}, "needs dns_provider"),
])
def test_bad_deploy_settings_fail_at_load(data, fragment):
    with pytest.raises(SettingsError, match=fragment):
        settings(**data)


def test_every_container_gets_restart_healthcheck_log_cap_labels_and_read_only_host_mounts():
    plan = plan_of()
    for spec in plan.services:
        assert spec.restart == "unless-stopped"
        assert spec.healthcheck.test and spec.healthcheck.retries >= 1
        assert (spec.log_max_size, spec.log_max_files) == ("10m", 3)
        labels = spec.all_labels
        assert labels["homelab-ops.service"] == spec.service and labels["homelab-ops.config-hash"] == spec.config_hash
        assert not spec.ports, f"{spec.service} must not publish ports (Traefik fronts the UIs)"
        for m in spec.mounts:
            if m.type == "bind":
                assert m.read_only, (spec.service, m)
    socket_users = {s.service for s in plan.services if any(m.source == "/var/run/docker.sock" for m in s.mounts)}
    assert socket_users == {"cadvisor", "alloy"}
    ne = {m.target: m.source for m in plan.service("node_exporter").mounts}
    assert ne == {"/host/proc": "/proc", "/host/sys": "/sys", "/rootfs": "/", "/textfile": HOST.textfile_dir}
    assert "--collector.textfile.directory=/textfile" in plan.service("node_exporter").command
    assert "--housekeeping_interval=15s" in plan.service("cadvisor").command
    assert "--docker_only=true" in plan.service("cadvisor").command
    for svc, port in render.FRONTED.items():
        labels = plan.service(svc).labels
        assert labels[f"traefik.http.routers.{svc}.rule"] == f"Host(`{svc}.home.example.org`)"
        assert labels[f"traefik.http.routers.{svc}.middlewares"] == "homelab-auth@file,homelab-allowlist@file"
        assert labels[f"traefik.http.routers.{svc}.tls.certresolver"] == "letsencrypt"
        assert labels[f"traefik.http.services.{svc}.loadbalancer.server.port"] == str(port)


def test_config_hash_changes_only_for_what_changed_and_never_for_limits():
    base = {s.service: s.config_hash for s in plan_of().services}
    assert base == {s.service: s.config_hash for s in plan_of().services}
    loki = {s.service: s.config_hash for s in plan_of(settings(
        monitoring={"services": {"loki": {"retention_days": 7}}})).services}
    assert {k for k in base if base[k] != loki[k]} == {"loki"}
    mem = plan_of(settings(monitoring={"services": {"prometheus": {"memory_mb": 350, "cpus": 0.5}}}))
    assert {s.service: s.config_hash for s in mem.services} == base
    assert mem.service("prometheus").limits == Limits(350, "0", 0.5)
    allow = {s.service: s.config_hash for s in plan_of(settings(
        traefik={"ip_allowlist": ["10.0.0.0/8"]})).services}
    assert allow == base  # the allow-list lives in Traefik's file: no UI container is replaced for it


def test_host_facts_are_checked_before_anything_changes():
    with pytest.raises(PlanError, match="cpuset '3' names a core this host lacks"):
        build_monitoring_plan(deploy(monitoring={"services": {"loki": {"cpuset": "3"}}}),
                              HostFacts(ncpu=2, docker_socket="/s", textfile_dir="/t"), env={})
    with pytest.raises(PlanError, match="unix socket"):
        build_monitoring_plan(deploy(docker={"host": "tcp://10.0.0.2:2375"}),
                              HostFacts(ncpu=4, textfile_dir="/t"), env={})


def test_n8n_runner_sidecar_needs_a_token_and_joins_the_plan_the_same_way():
    on = settings(monitoring={"services": {"n8n_runner": {"enabled": True}}})
    with pytest.raises(PlanError, match="N8N_RUNNERS_AUTH_TOKEN"):
        plan_of(on)
    base = {s.service: s.config_hash for s in plan_of().services}
    plan = plan_of(on, env={"N8N_RUNNERS_AUTH_TOKEN": "Rtk7f3e9a"})
    runner = plan.service("n8n_runner")
    assert runner.image.startswith("n8nio/runners:") and runner.env["N8N_RUNNERS_MODE"] == "external"
    assert runner.secrets == {"/run/secrets/n8n-runners-auth-token": b"Rtk7f3e9a"} and runner.secrets_uid == 1000
    assert runner.env["N8N_RUNNERS_AUTH_TOKEN_FILE"] == "/run/secrets/n8n-runners-auth-token"
    assert "Rtk7f3e9a" not in json.dumps(runner.env) + json.dumps(runner.all_labels)
    assert {s.service: s.config_hash for s in plan.services if s.service != "n8n_runner"} == base
    assert any("N8N_RUNNERS_MODE=external" in w for w in plan.warnings)
    assert plan.memory_mb == 1356 + 160


def test_wal_receiver_joins_the_plan_with_pitr_inside_the_budget_and_its_password_only_in_a_passfile():
    """`pitr.enabled` deploys `homelab-ops pitr receive` with the monitoring stack: counted in the
    budget, the loopback DSN pointed at the PostgreSQL container, its own settings file without the
    password, which goes to a 0400 libpq passfile (`:` and `\\` escaped as libpq reads them)."""
    from dataclasses import replace
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    from homelab_ops.deploy.spec import Mount

    off = plan_of()
    assert "wal_receiver" not in [s.service for s in off.services]
    assert "homelab-wal-receiver" in off.disabled  # switching pitr off removes a deployed receiver
    pw = "Wr:x\\9#q'"
    on = dict(pitr={"enabled": True, "cluster": "pi", "status_interval": "5s"},
              postgres={"dsn": f"postgresql://rx:{quote(pw)}@127.0.0.1:5433/postgres?sslmode=disable"},
              backups={"local_dir": "/var/lib/homelab-ops/backups",
                       "encryption": {"age_recipients": ["age1" + "q" * 58]}})
    host = replace(HOST, backups_dir="/srv/homelab-ops/backups")
    plan = build_monitoring_plan(deploy(**on), host, env={})
    rx = plan.service("wal_receiver")
    assert [s.service for s in plan.services][0] == "wal_receiver"
    assert plan.memory_mb == 1356 + 128 and rx.limits == Limits(128, "0", 0.25)
    assert rx.command == ("homelab-ops", "pitr", "receive") and rx.stop_timeout_s == 45
    assert rx.least_privilege and not any(s.least_privilege for s in plan.services if s is not rx)
    assert "least_privilege" not in plan.service("prometheus").hash_input()  # deployed containers keep their hash
    assert rx.healthcheck.test == ("homelab-ops", "pitr", "status", "--heartbeat")
    assert rx.mounts == (Mount("/var/lib/homelab-ops/backups", "/srv/homelab-ops/backups", read_only=False),)
    assert rx.env == {"HOMELAB_CONFIG": "/etc/homelab-ops/homelab.yaml"}
    rendered = rx.files["/etc/homelab-ops/homelab.yaml"].decode()
    loaded = parse(yaml.safe_load(rendered), "receiver.yaml")  # what the container loads
    assert loaded.pitr.enabled and loaded.pitr.cluster == "pi" and loaded.pitr.slot_name == "homelab_ops_pi"
    assert loaded.pitr.status_interval.seconds == 5 and loaded.backups.local_dir == "/var/lib/homelab-ops/backups"
    assert loaded.backups.encryption.age_recipients == ["age1" + "q" * 58]
    dsn = conninfo_to_dict(loaded.pitr.dsn.get_secret_value())
    assert dsn == {"host": "postgres", "port": "5433", "user": "rx", "dbname": "postgres", "sslmode": "disable",
                   "passfile": "/run/secrets/wal-receiver-pgpass"}
    assert rx.secrets == {"/run/secrets/wal-receiver-pgpass": b"*:*:*:rx:Wr\\:x\\\\9#q'\n"} and rx.secrets_uid == 1000
    assert pw not in rendered + json.dumps(rx.env) + json.dumps(rx.all_labels) + " ".join(rx.command)
    assert "wal_receiver" in render.expected_textfile([s.service for s in plan.services], [])  # ContainerDown
    with pytest.raises(PlanError, match=r"needs 1484 MB but monitoring.memory_budget_mb is 1400 .*wal_receiver 128"):
        build_monitoring_plan(deploy(**on, monitoring={"memory_budget_mb": 1400}), host, env={})
    with pytest.raises(PlanError, match="names a passfile on this host"):
        build_monitoring_plan(deploy(pitr={"enabled": True},
                                     postgres={"dsn": "host=db user=rx passfile=/root/.pgpass"}),
                              host, env={})
    remote = build_monitoring_plan(deploy(pitr={"enabled": True, "dsn": "postgresql://rx@db.lan/postgres"}),
                                   host, env={})
    assert conninfo_to_dict(yaml.safe_load(remote.service("wal_receiver").files[
        "/etc/homelab-ops/homelab.yaml"])["pitr"]["dsn"])["host"] == "db.lan"
    assert remote.service("wal_receiver").secrets == {}  # no password, no passfile (trust or cert auth)


def test_a_deploy_failure_hides_the_secrets_it_placed_and_keeps_their_file_paths():
    """A deploy error carries container log tails: the runner's token and an owner's own *PASSWORD
    env value are hidden; the *_FILE variable's value is only a path, and stays readable."""
    from dataclasses import replace

    from homelab_ops.defs.deploy.ops import _fail

    on = settings(monitoring={"services": {"n8n_runner": {"enabled": True}}})
    runner = plan_of(on, env={"N8N_RUNNERS_AUTH_TOKEN": "Rtk7f3e9a"}).service("n8n_runner")
    owned = replace(runner, env={**runner.env, "EXTRA_PASSWORD": "Pw0wner9"})
    text = _fail(RuntimeError("token Rtk7f3e9a read from /run/secrets/n8n-runners-auth-token; db Pw0wner9"),
                 DeployConfig.of(on), [owned]).description
    assert "Rtk7f3e9a" not in text and "Pw0wner9" not in text
    assert "/run/secrets/n8n-runners-auth-token" in text, text


# --- Traefik -------------------------------------------------------------------------------------

def test_traefik_plan_flags_auth_and_routes():
    plan = build_traefik_plan(deploy(traefik={"basic_auth_users": [BCRYPT], "ip_allowlist": ["192.168.0.0/16"],
                                                "routes": {"n8n": {"url": "http://n8n:5678",
                                                                   "public_paths": ["/webhook/"]},
                                                           "dagster": {"url": "http://host.docker.internal:3000"}}}),
                              HOST, env={})
    (spec,) = plan.services
    args = spec.command
    assert not any("insecure" in a for a in args)
    for flag in ("--providers.docker.exposedbydefault=false", "--ping=true", "--api.dashboard=true",
                 "--entrypoints.web.http.redirections.entrypoint.to=websecure",
                 "--entrypoints.web.http.redirections.entrypoint.scheme=https",
                 "--certificatesresolvers.letsencrypt.acme.email=owner@example.org",
                 "--certificatesresolvers.letsencrypt.acme.httpchallenge.entrypoint=web",
                 "--metrics.prometheus=true", "--accesslog.filepath=/var/log/traefik/access.log"):
        assert flag in args
    assert spec.ports == {80: ("0.0.0.0", 80), 443: ("0.0.0.0", 443)}
    assert spec.extra_hosts == {"host.docker.internal": "host-gateway"}
    mounts = {m.target: m for m in spec.mounts}
    assert mounts["/var/run/docker.sock"].read_only and not mounts["/var/log/traefik"].read_only
    assert mounts["/var/log/traefik"].source == HOST.access_log_dir
    dyn = yaml.safe_load(spec.files["/etc/traefik/dynamic/homelab.yml"])["http"]
    assert dyn["middlewares"]["homelab-auth"]["basicAuth"] == {"users": [BCRYPT], "removeHeader": True}
    assert dyn["routers"]["n8n"]["middlewares"][:2] == ["homelab-auth", "homelab-allowlist"]
    assert dyn["routers"]["n8n-public"]["rule"] == "Host(`n8n.home.example.org`) && (PathPrefix(`/webhook/`))"
    assert "homelab-auth" not in dyn["routers"]["n8n-public"]["middlewares"]
    assert dyn["routers"]["dashboard"]["service"] == "api@internal"
    assert BCRYPT.split(":")[1] not in json.dumps(spec.all_labels)


def test_traefik_dns_challenge_and_auth_sources():
    s = settings(traefik={"acme_challenge": "dns", "dns_provider": "cloudflare",
                          "dns_env": {"CF_DNS_API_TOKEN": "cf-token"}})
    with pytest.raises(PlanError, match="without basic auth"):
        build_traefik_plan(DeployConfig.of(s), HOST, env={})
    (spec,) = build_traefik_plan(DeployConfig.of(s), HOST, env={"HOMELAB_BASIC_AUTH_USERS": BCRYPT}).services
    assert "--certificatesresolvers.letsencrypt.acme.dnschallenge.provider=cloudflare" in spec.command
    assert not any("httpchallenge" in a for a in spec.command)
    assert spec.env == {"CF_DNS_API_TOKEN_FILE": "/run/secrets/traefik-CF_DNS_API_TOKEN"}
    assert spec.secrets == {"/run/secrets/traefik-CF_DNS_API_TOKEN": b"cf-token"}
    with pytest.raises(PlanError, match="'admin' is not `user:<bcrypt hash>`"):
        build_traefik_plan(deploy(traefik={"basic_auth_users": ["admin:$apr1$abc$def"]}), HOST, env={})


# --- Tuning --------------------------------------------------------------------------------------

def usage(**peaks) -> dict[str, tune.Usage]:
    return {k: tune.Usage(k, 10, float(v), 0.05, 0.02) for k, v in peaks.items()}


def test_tune_gives_full_headroom_when_it_fits():
    cur = {k: Limits(400, "0") for k in ("prometheus", "loki")}
    props = tune.propose(usage(prometheus=200, loki=100), cur, budget_mb=1536, order=["prometheus", "loki"])
    assert [(p.service, p.after.memory_mb) for p in props] == [("prometheus", 304), ("loki", 152)]
    assert all(p.after.cpuset == "0" and p.after.cpus is not None and p.after.cpus >= 0.25 for p in props)


def test_tune_shares_what_is_left_when_tight_and_names_who_does_not_fit():
    cur = {k: Limits(400, "0") for k in ("prometheus", "loki")}
    props = tune.propose(usage(prometheus=200, loki=100), cur, budget_mb=400, order=["prometheus", "loki"])
    after = {p.service: p.after.memory_mb for p in props}
    assert sum(after.values()) <= 400 and after["prometheus"] >= 240 and after["loki"] >= 120
    with pytest.raises(tune.FitError, match="loki does not fit") as e:
        tune.propose(usage(prometheus=200, loki=100), cur, budget_mb=300, order=["prometheus", "loki"])
    assert e.value.service == "loki"
    with pytest.raises(tune.FitError, match="grafana needs 360 MB") as e:
        tune.propose(usage(grafana=300), {"grafana": Limits(300, "0")}, budget_mb=1536)
    assert e.value.service == "grafana"


def test_tuned_limits_hold_until_the_setting_they_came_from_changes():
    s = settings()
    rec = tune.tuned_record([tune.Proposal("loki", Limits(256, "0"), Limits(120, "0", 0.25), 100, 150)],
                            {"loki": s.monitoring.services.loki}, 0.0)
    assert effective_limits("loki", s.monitoring.services.loki, rec) == Limits(120, "0", 0.25)
    changed = settings(monitoring={"services": {"loki": {"memory_mb": 300}}})  # the CPU setting did not
    assert effective_limits("loki", changed.monitoring.services.loki, rec) == Limits(300, "0", 0.25)
    both = settings(monitoring={"services": {"loki": {"memory_mb": 300, "cpus": 1.0}}})
    assert effective_limits("loki", both.monitoring.services.loki, rec) == Limits(300, "0", 1.0)


def test_engine_stats_become_usage():
    sample = {"memory_stats": {"usage": 150 * 2**20, "stats": {"total_inactive_file": 50 * 2**20}},
              "cpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000}, "system_cpu_usage": 20_000_000_000,
                            "online_cpus": 2},
              "precpu_stats": {"cpu_usage": {"total_usage": 1_000_000_000}, "system_cpu_usage": 10_000_000_000}}
    assert tune.memory_used(sample) == 100 * 2**20
    assert tune.cpu_cores(sample) == pytest.approx(0.2)
    u = tune.summarize("x", [sample, {**sample, "memory_stats": {"usage": 90 * 2**20}}])
    assert u.peak_memory_mb == 100.0 and u.peak_cpu == pytest.approx(0.2)


def test_config_files_tar_carries_parents_and_contents():
    data = files_tar({"/etc/grafana/provisioning/a.yaml": b"a", "/etc/grafana/dashboards/b.json": b"{}"})
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        names = t.getnames()
        assert names.index("etc/grafana") < names.index("etc/grafana/provisioning/a.yaml")
        assert t.extractfile("etc/grafana/dashboards/b.json").read() == b"{}"
        assert t.getmember("etc/grafana/provisioning/a.yaml").mode == 0o644


def test_shipped_templates_are_jinja_with_strict_values_and_keep_prometheus_own_templates():
    from homelab_ops.health.checks import Thresholds

    rules = render.alert_rules(Thresholds.defaults(temperature_warn_c=72.5), silent_after_s=300)
    assert "> 72.5 unless on ()" in rules and "[[" not in rules
    assert "{{ $labels.database }}" in rules  # Alertmanager's template, left for it to fill
    with pytest.raises(ValueError, match=r"templates/config.alloy: 'host_label' is undefined"):
        render._render("config.alloy", {"extra_drops": ""})
    alloy = render.alloy_config(host_label="pi5", extra_drops=[r"GET /healthz"])
    assert 'external_labels = {host = "pi5"}' in alloy and "settings_0" in alloy
