"""deploy_monitoring, deploy_traefik and tune_monitoring against the real Docker Engine.

Images (tests/docker_images.py): REAL Prometheus, node_exporter and Alertmanager from
Debian's packages; STAND-INS (busybox httpd answering only health and /metrics paths) for
Grafana, Loki, Alloy, cAdvisor, Traefik and n8n's runners. Test names say "stand-in" where
that is what answers. One stack is deployed per module under a unique name prefix and
network; every test starts from it and leaves it as it found it.
"""

from __future__ import annotations

import calendar
import io
import json
import tarfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
import pytest
import yaml

from homelab_ops.defs.deploy.ops import RESOURCES, build_jobs
from homelab_ops.defs.deploy.resources import DockerResource
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.deploy.spec import LABEL_HASH, LABEL_SERVICE
from homelab_ops.settings import load
from tests import docker_images
from tests.conftest import DOCKER_HOST

pytestmark = pytest.mark.docker

JOBS = {j.name: j for j in build_jobs()}
SERVICES = ["node_exporter", "cadvisor", "loki", "alloy", "alertmanager", "prometheus", "grafana"]
PREFIX_ROOT = "deploytest-"


def _cleanup(client, prefix: str) -> None:
    doomed = [c["Id"] for c in client.api.containers(all=True, filters={"name": prefix})
              if any(n.lstrip("/").startswith(prefix) for n in c["Names"])]
    with ThreadPoolExecutor(4) as pool:  # vfs deletes a full copy per container
        list(pool.map(lambda cid: client.api.remove_container(cid, force=True), doomed))
    for n in client.api.networks():
        if n["Name"].startswith(prefix):
            client.api.remove_network(n["Id"])
    for v in client.api.volumes().get("Volumes") or []:
        if v["Name"].startswith(prefix):
            client.api.remove_volume(v["Name"], force=True)


class Stack:
    """One test stack: its settings files, and helpers to run the jobs and look at containers."""

    def __init__(self, client, root: Path):
        self.client = client
        self.root = root
        self.prefix = f"{PREFIX_ROOT}{uuid.uuid4().hex[:6]}-"
        self.textfile = root / "textfile"
        self.textfile.mkdir()
        (self.textfile / "homelab_pi.prom").write_text(
            "# TYPE homelab_pi_under_voltage_alarm gauge\nhomelab_pi_under_voltage_alarm 0\n")
        self._n = 0
        self.service_settings: dict = {"alertmanager": {"telegram_chat_id": "-1001"}}  # the stack's current

    def settings(self, **over) -> dict:
        """The module's baseline settings; `over` replaces top-level sections' keys (one level deep)."""
        base = {
            "docker": {"host": DOCKER_HOST, "name_prefix": self.prefix},
            "metrics": {"textfile_dir": str(self.textfile)},
            "notify": {"telegram": {"api_base": "http://127.0.0.1:9", "bot_token": "123456:test-token"}},
            "monitoring": {
                "network": f"{self.prefix}net",
                "state_dir": str(self.root / "state"),
                "health": {"interval": "1s", "timeout": "2s", "retries": 2, "start_period": "1s",
                           "wait": "25s", "verify": "60s"},
                "services": {k: dict(v) for k, v in self.service_settings.items()},
            },
            "traefik": {"listen": "127.0.0.1", "access_log_dir": str(self.root / "traefik-logs")},
        }
        for section, values in over.items():
            base[section] = {**base.get(section, {}), **values}
        return base

    def write(self, data: dict) -> Path:
        self._n += 1
        p = self.root / f"homelab-{self._n}.yaml"
        p.write_text(yaml.safe_dump(data))
        load(p)  # fail here, not in the job, on a bad test setting
        return p

    def run(self, job: str, settings: dict | None = None, config: dict | None = None):
        path = self.write(settings or self.settings())
        run_config = {"ops": config} if config else None
        return JOBS[job].execute_in_process(
            run_config=run_config, raise_on_error=False,
            resources={"homelab": HomelabSettings(config_path=str(path)),
                       "docker": DockerResource(host=DOCKER_HOST), **RESOURCES})

    def name(self, service: str) -> str:
        return self.prefix + service.replace("_", "-")

    def inspect(self, service: str) -> dict:
        return self.client.api.inspect_container(self.name(service))

    def ids(self) -> dict[str, str]:
        return {s: self.inspect(s)["Id"] for s in SERVICES}

    def names(self) -> set[str]:
        return {n.lstrip("/") for c in self.client.api.containers(all=True, filters={"name": self.prefix})
                for n in c["Names"]}

    def prometheus(self, path: str) -> dict:
        """Prometheus' HTTP API from another container on the network (busybox wget)."""
        if not getattr(self, "probe", None):
            self.probe = self.client.containers.run(
                docker_images.busybox_image(self.client), ["sleep", "3600"], detach=True,
                network=f"{self.prefix}net", name=f"{self.prefix}probe")
        code, out = self.probe.exec_run(["wget", "-q", "-O", "-", f"http://prometheus:9090{path}"])
        assert code == 0, out
        return json.loads(out)


def failure_text(result) -> str:
    return "\n".join(str(e.event_specific_data.error.message if getattr(e.event_specific_data, "error", None)
                         else "") + " " + (e.message or "") for e in result.all_events if e.is_failure)


def _stale_cleanup(client) -> None:
    """What a crashed earlier session left (over an hour old): a concurrent run keeps its stack."""
    for c in client.api.containers(all=True, filters={"name": PREFIX_ROOT}):
        if time.time() - c["Created"] > 3600:
            _cleanup(client, c["Names"][0].lstrip("/")[:len(PREFIX_ROOT) + 7])
    for n in client.api.networks():
        if n["Name"].startswith(PREFIX_ROOT) and not client.api.inspect_network(n["Id"]).get("Containers"):
            created = n.get("Created", "")[:19]
            if created and time.time() - calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%S")) > 3600:
                client.api.remove_network(n["Id"])


@pytest.fixture(scope="module")
def stack(docker_client, tmp_path_factory):
    _stale_cleanup(docker_client)
    s = Stack(docker_client, tmp_path_factory.mktemp("deploy"))
    try:
        defaults = load(s.write(s.settings()))
        for svc in SERVICES + ["n8n_runner"]:
            docker_images.service_image(docker_client, svc, getattr(defaults.monitoring.services, svc).image)
        docker_images.service_image(docker_client, "traefik", defaults.traefik.image)
        docker_images.busybox_image(docker_client)
        result = s.run("deploy_monitoring")
        assert result.success, failure_text(result)
        s.baseline = s.ids()
        yield s
    finally:
        _cleanup(docker_client, s.prefix)


def test_deploy_runs_real_prometheus_that_scrapes_every_target_up_including_standins(stack):
    targets = stack.prometheus("/api/v1/targets?state=active")["data"]["activeTargets"]
    health = {t["labels"]["job"]: t["health"] for t in targets}
    for job in SERVICES:
        assert health[job] == "up", (job, [t.get("lastError") for t in targets if t["labels"]["job"] == job])
    assert health["traefik"] != "up"  # not deployed in this module's stack: TraefikDown is what fires
    # The textfile metrics the snapshots write reach Prometheus through node_exporter's mount.
    q = stack.prometheus("/api/v1/query?query=homelab_pi_under_voltage_alarm")["data"]["result"]
    assert [r["value"][1] for r in q] == ["0"]
    rules = stack.prometheus("/api/v1/rules")["data"]["groups"]
    names = {r["name"] for g in rules for r in g["rules"]}
    assert {"PiUnderVoltage", "PiThrottled", "PiTemperatureHigh", "DiskAlmostFull", "MemoryLow",
            "HostOomKill", "ContainerOomKill", "ContainerDown", "ContainerRestarting", "TargetDown",
            "BackupStale", "TraefikDown", "TraefikServiceDown"} <= names
    ams = stack.prometheus("/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    assert ams and "alertmanager:9093" in ams[0]["url"]


def test_containers_carry_labels_limits_and_safeguards_from_settings(stack):
    settings = load(stack.write(stack.settings()))
    for svc in SERVICES:
        info = stack.inspect(svc)
        hc, cfg = info["HostConfig"], info["Config"]
        want = getattr(settings.monitoring.services, svc)
        assert cfg["Labels"][LABEL_SERVICE] == svc and len(cfg["Labels"][LABEL_HASH]) == 16
        assert hc["Memory"] == want.memory_mb * 1024 * 1024 == hc["MemorySwap"]
        assert hc["CpusetCpus"] == "0"
        assert hc["RestartPolicy"]["Name"] == "unless-stopped"
        assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
        assert cfg["Healthcheck"]["Test"][0] == "CMD" and info["State"]["Health"]["Status"] == "healthy"
        assert not hc.get("PortBindings"), f"{svc} publishes ports; only Traefik may"
        assert cfg["Image"] == want.image
        for m in info["Mounts"]:
            if m["Type"] == "bind":
                assert not m["RW"], f"{svc} mounts host path {m['Source']} writable"
    binds = {svc: {m["Destination"]: m["Source"] for m in stack.inspect(svc)["Mounts"] if m["Type"] == "bind"}
             for svc in SERVICES}
    assert binds["node_exporter"]["/host/proc"] == "/proc" and binds["node_exporter"]["/host/sys"] == "/sys"
    assert binds["node_exporter"]["/textfile"] == str(stack.textfile)
    assert binds["cadvisor"]["/var/run/docker.sock"] == DOCKER_HOST.removeprefix("unix://")
    assert binds["alloy"]["/var/run/docker.sock"] == DOCKER_HOST.removeprefix("unix://")
    for svc in ("prometheus", "grafana", "alertmanager", "loki"):  # nobody else gets the socket
        assert "/var/run/docker.sock" not in binds[svc]
    labels = stack.inspect("grafana")["Config"]["Labels"]
    assert labels["traefik.http.routers.grafana.middlewares"] == "homelab-auth@file"
    assert labels["traefik.http.routers.grafana.entrypoints"] == "websecure"


def test_second_deploy_changes_no_container_id(stack):
    result = stack.run("deploy_monitoring")
    assert result.success, failure_text(result)
    assert stack.ids() == stack.baseline
    actions = {o.service: o.action for o in result.output_for_node("deploy_service").values()}
    assert set(actions.values()) == {"unchanged"}


def test_changed_setting_replaces_exactly_one_container(stack):
    stack.service_settings["loki"] = {"retention_days": 7}  # the stack's settings from here on
    result = stack.run("deploy_monitoring")
    assert result.success, failure_text(result)
    after = stack.ids()
    assert {s for s in SERVICES if after[s] != stack.baseline[s]} == {"loki"}
    assert not any(n.endswith("-previous") for n in stack.names())  # the old one is gone once healthy
    actions = {o.service: o.action for o in result.output_for_node("deploy_service").values()}
    assert actions.pop("loki") == "replaced" and set(actions.values()) == {"unchanged"}
    config = _archive_text(stack.client, stack.name("loki"), "/etc/loki/config.yaml")
    assert yaml.safe_load(config)["limits_config"]["retention_period"] == "168h"
    stack.baseline = after


def test_replacement_that_never_turns_healthy_is_rolled_back_standin_grafana(stack, docker_client):
    broken = docker_images.never_healthy_image(docker_client, "grafana/grafana:12.0.2-never-healthy", "grafana")
    data = stack.settings()
    data["monitoring"]["services"] = {**data["monitoring"]["services"], "grafana": {"image": broken}}
    result = stack.run("deploy_monitoring", data)
    assert not result.success
    text = failure_text(result)
    assert "grafana" in text and "rolled back to the previous container" in text and "healthy again" in text
    info = stack.inspect("grafana")
    assert info["Id"] == stack.baseline["grafana"] and info["State"]["Status"] == "running"
    assert info["Config"]["Image"] == "grafana/grafana:12.0.2"
    assert stack.ids() == stack.baseline
    assert not any(n.endswith("-previous") for n in stack.names())


def test_plan_over_budget_or_missing_image_under_pull_never_changes_nothing(stack):
    started = {s: stack.inspect(s)["State"]["StartedAt"] for s in SERVICES}
    over = stack.settings(monitoring={**stack.settings()["monitoring"], "memory_budget_mb": 1000})
    result = stack.run("deploy_monitoring", over)
    assert not result.success and "the plan needs 1356 MB but monitoring.memory_budget_mb is 1000" in failure_text(result)
    big = stack.settings()
    big["monitoring"]["services"] = {**big["monitoring"]["services"], "grafana": {"memory_mb": 400}}
    result = stack.run("deploy_monitoring", big)
    assert not result.success and "grafana asks for 400 MB; at most 350 MB" in failure_text(result)
    air = stack.settings()
    air["monitoring"] = {**air["monitoring"], "pull": "never",
                         "services": {**air["monitoring"]["services"], "loki": {"image": "grafana/loki:9.9.9"}}}
    result = stack.run("deploy_monitoring", air)
    assert not result.success and "grafana/loki:9.9.9" in failure_text(result)
    assert "monitoring.pull is `never`" in failure_text(result)
    assert stack.ids() == stack.baseline
    assert {s: stack.inspect(s)["State"]["StartedAt"] for s in SERVICES} == started


def test_rerun_after_an_interrupted_replacement_converges(stack, docker_client):
    # What a crash between "stop and rename the old one" and "create the new one" leaves.
    name = stack.name("alertmanager")
    docker_client.api.stop(name, timeout=5)
    docker_client.api.rename(name, name + "-previous")
    result = stack.run("deploy_monitoring")
    assert result.success, failure_text(result)
    assert stack.ids() == stack.baseline
    assert stack.inspect("alertmanager")["State"]["Status"] == "running"
    assert name + "-previous" not in stack.names()


def test_n8n_runner_sidecar_standin_is_added_and_removed_the_same_way(stack, monkeypatch):
    monkeypatch.setenv("N8N_RUNNERS_AUTH_TOKEN", "runner-secret-token")
    data = stack.settings()
    data["monitoring"]["services"] = {**data["monitoring"]["services"], "n8n_runner": {"enabled": True}}
    result = stack.run("deploy_monitoring", data)
    assert result.success, failure_text(result)
    assert stack.ids() == stack.baseline
    info = stack.inspect("n8n_runner")
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert env["N8N_RUNNERS_MODE"] == "external" and env["N8N_RUNNERS_AUTH_TOKEN"] == "runner-secret-token"
    assert env["N8N_RUNNERS_TASK_BROKER_URI"] == "http://n8n:5679"
    assert "runner-secret-token" not in json.dumps(info["Config"]["Labels"])
    assert info["Config"]["Labels"][LABEL_SERVICE] == "n8n_runner"
    result = stack.run("deploy_monitoring")
    assert result.success, failure_text(result)
    assert stack.name("n8n_runner") not in stack.names() and stack.ids() == stack.baseline


def _archive_text(client, container: str, path: str) -> str:
    stream, _ = client.api.get_archive(container, path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as t:
        return t.extractfile(t.getmembers()[0]).read().decode()


def test_deploy_traefik_standin_routes_uis_behind_bcrypt_auth_and_publishes_only_80_443(stack, docker_client):
    from tests.conftest import free_port

    line = "owner:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    http, https = free_port(), free_port()
    base = stack.settings()
    refused = stack.run("deploy_traefik", stack.settings(traefik={**base["traefik"], "http_port": http,
                                                                  "https_port": https}))
    assert not refused.success and "without basic auth" in failure_text(refused)
    assert stack.name("traefik") not in stack.names()

    data = stack.settings(traefik={**base["traefik"], "http_port": http, "https_port": https,
                                   "basic_auth_users": [line], "ip_allowlist": ["192.168.1.0/24"]})
    result = stack.run("deploy_traefik", data)
    assert result.success, failure_text(result)
    info = stack.inspect("traefik")
    args = info["Config"]["Cmd"]
    assert not any("api.insecure" in a for a in args)
    for flag in ("--ping=true", "--providers.docker=true", "--providers.docker.exposedbydefault=false",
                 "--entrypoints.web.http.redirections.entrypoint.to=websecure",
                 "--entrypoints.websecure.address=:443", "--metrics.prometheus=true",
                 "--certificatesresolvers.letsencrypt.acme.httpchallenge.entrypoint=web",
                 "--accesslog.filepath=/var/log/traefik/access.log"):
        assert flag in args
    ports = info["HostConfig"]["PortBindings"]
    assert ports == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(http)}],
                     "443/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(https)}]}
    assert info["Config"]["Healthcheck"]["Test"] == ["CMD", "traefik", "healthcheck", "--ping"]
    assert (stack.root / "traefik-logs" / "access.log").exists()  # the host directory is mounted writable
    dynamic = yaml.safe_load(_archive_text(docker_client, stack.name("traefik"),
                                           "/etc/traefik/dynamic/homelab.yml"))["http"]
    assert dynamic["middlewares"]["homelab-auth"]["basicAuth"]["users"] == [line]
    assert dynamic["middlewares"]["homelab-allowlist"]["ipAllowList"]["sourceRange"] == ["192.168.1.0/24"]
    assert dynamic["routers"]["dashboard"]["service"] == "api@internal"
    assert dynamic["routers"]["dashboard"]["middlewares"][:2] == ["homelab-auth", "homelab-allowlist"]
    assert line.split(":", 1)[1] not in json.dumps(info["Config"]["Labels"])
    again = stack.run("deploy_traefik", data)
    assert again.success and stack.inspect("traefik")["Id"] == info["Id"]


def test_tune_applies_fitted_limits_in_place_and_refuses_what_does_not_fit(stack):
    before = {s: stack.inspect(s)["HostConfig"]["Memory"] for s in SERVICES}
    tight = stack.settings()
    tight["monitoring"] = {**tight["monitoring"], "memory_budget_mb": 400,
                           "services": {**tight["monitoring"]["services"],
                                        **{s: {"memory_mb": 40} for s in SERVICES}}}
    refused = stack.run("tune_monitoring", tight, {"measure_usage": {"config": {"window_seconds": 0}}})
    assert not refused.success
    assert "does not fit" in failure_text(refused) and "nothing was applied" in failure_text(refused)
    assert {s: stack.inspect(s)["HostConfig"]["Memory"] for s in SERVICES} == before

    result = stack.run("tune_monitoring", None, {"measure_usage": {"config": {"window_seconds": 1}}})
    assert result.success, failure_text(result)
    proposals = {p.service: p for p in result.output_for_node("propose_limits")}
    assert sum(p.after.memory_mb for p in proposals.values()) <= 1536
    for s in SERVICES:
        assert stack.inspect(s)["HostConfig"]["Memory"] == proposals[s].after.memory_mb * 1024 * 1024
    assert stack.ids() == stack.baseline  # `docker update`, no recreate
    tuned = json.loads((stack.root / "state" / "tuned-limits.json").read_text())
    assert tuned["prometheus"]["memory_mb"] == proposals["prometheus"].after.memory_mb
    # A later deploy keeps the tuned limits (settings unchanged) and every container.
    result = stack.run("deploy_monitoring")
    assert result.success, failure_text(result)
    assert stack.ids() == stack.baseline
    assert stack.inspect("loki")["HostConfig"]["Memory"] == proposals["loki"].after.memory_mb * 1024 * 1024


def test_a_limit_the_engine_refuses_is_a_deploy_error_and_changes_nothing(stack, docker_client):
    """tune_monitoring falls back to recreating a container when `docker update` is refused:
    the engine reports the refusal as LimitsRefused, with Docker's reason, not docker-py's type."""
    from homelab_ops.deploy import engine
    from homelab_ops.deploy.spec import Limits

    before = stack.inspect("loki")["HostConfig"]["Memory"]
    refused = f"^{stack.name('loki')}: Docker refused the new limits: .*(?i:memory)"  # names the container
    with pytest.raises(engine.LimitsRefused, match=refused):
        engine.update_limits(docker_client, stack.name("loki"), Limits(memory_mb=1))  # Docker's minimum is 6 MB
    assert stack.inspect("loki")["HostConfig"]["Memory"] == before
