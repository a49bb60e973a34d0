"""From settings to the containers a stack should have, refused before anything changes.

Pure: the caller passes in what it learned from the host (CPU count, Docker's socket
and data root as the host sees them, dashboards read from disk, tuned limits).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from homelab_ops.deploy import render
from homelab_ops.deploy.auth import AuthError, basic_auth_users
from homelab_ops.deploy.config import DeployConfig
from homelab_ops.deploy.spec import ContainerSpec, Healthcheck, Limits, Mount
from homelab_ops.health.overview import silent_after_s
from homelab_ops.settings import MonitoringServices, ServiceSettings

# The order services are deployed in: Prometheus last, so its first scrape of every target
# finds the target running (a failed first scrape costs a whole scrape interval).
MONITORING_ORDER = ["wal_receiver", "node_exporter", "cadvisor", "loki", "alloy", "alertmanager", "grafana",
                    "n8n_runner", "prometheus"]
MEMORY_CAPS_MB = {"grafana": 350}  # the roadmap's ceiling for Grafana on a 8 GB Pi
ACME_CA_PATH = "/etc/traefik/acme-ca.pem"
GRAFANA_UID = 472  # the grafana/grafana image's user
RUNNER_UID = 1000  # the n8nio/runners image's user `runner`
HOMELAB_UID = 1000  # deploy/Dockerfile's user `homelab`


class PlanError(ValueError):
    """The settings ask for something that must not be deployed; nothing was changed."""


@dataclass(frozen=True)
class HostFacts:
    """What the plan needs to know about the Docker host, as the host sees it."""

    ncpu: int | None = None
    docker_socket: str | None = None  # host path of the Engine's unix socket
    docker_root: str = "/var/lib/docker"
    textfile_dir: str | None = None  # host path of metrics.textfile_dir
    access_log_dir: str | None = None  # host path of traefik.access_log_dir
    backups_dir: str | None = None  # host path of backups.local_dir


@dataclass(frozen=True)
class StackPlan:
    stack: str
    network: str
    services: list[ContainerSpec]
    budget_mb: int | None = None
    rule_count: int = 0
    warnings: list[str] = field(default_factory=list)
    local_dirs: list[str] = field(default_factory=list)  # bind-mount sources, as this process sees them
    disabled: list[str] = field(default_factory=list)  # container names of services switched off
    textfiles: dict[str, str] = field(default_factory=dict)  # path in this process -> content
    route_hosts: list[str] = field(default_factory=list)  # Traefik: hosts its file provider routes

    @property
    def memory_mb(self) -> int:
        return sum(s.limits.memory_mb for s in self.services)

    def service(self, name: str) -> ContainerSpec:
        for s in self.services:
            if s.service == name:
                return s
        raise KeyError(name)

    @property
    def images(self) -> list[str]:
        return sorted({s.image for s in self.services})


def socket_path(docker_host: str) -> str:
    """The Engine's unix socket; cAdvisor, Alloy and Traefik get it mounted read-only."""
    u = urlsplit(docker_host)
    if u.scheme != "unix":
        raise PlanError(f"docker.host is {docker_host!r}: cAdvisor, Alloy and Traefik need the Engine's "
                        "unix socket on this host (unix:///var/run/docker.sock)")
    return u.path


def parse_cpuset(cpuset: str) -> set[int]:
    cores: set[int] = set()
    for part in cpuset.split(","):
        lo, _, hi = part.partition("-")
        cores.update(range(int(lo), int(hi or lo) + 1))
    return cores


def effective_limits(name: str, svc: ServiceSettings, tuned: dict[str, dict]) -> Limits:
    """Settings' limits, unless tune_monitoring measured better ones since the settings last changed."""
    t = tuned.get(name) or {}
    memory = svc.memory_mb
    cpus = svc.cpus
    if t.get("settings_memory_mb") == svc.memory_mb and t.get("memory_mb"):
        memory = int(t["memory_mb"])
    if t.get("settings_cpus") == svc.cpus and "cpus" in t:
        cpus = t["cpus"]
    return Limits(memory_mb=memory, cpuset=svc.cpuset, cpus=cpus)


def check_budget(memory: dict[str, int], budget_mb: int, caps: dict[str, int] = MEMORY_CAPS_MB) -> None:
    """Refuse a plan over the budget, or a service over its cap, naming the numbers."""
    for name, cap in caps.items():
        if memory.get(name, 0) > cap:
            raise PlanError(f"{name} asks for {memory[name]} MB; at most {cap} MB is allowed on the Pi")
    total = sum(memory.values())
    if total > budget_mb:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(memory.items(), key=lambda kv: -kv[1]))
        raise PlanError(f"the plan needs {total} MB but monitoring.memory_budget_mb is {budget_mb} "
                        f"({parts}); lower a service's memory_mb or raise the budget")


def _check_cpusets(specs: list[ContainerSpec], ncpu: int | None) -> None:
    if not ncpu:
        return
    for s in specs:
        if s.limits.cpuset and max(parse_cpuset(s.limits.cpuset)) >= ncpu:
            raise PlanError(f"{s.service}: cpuset {s.limits.cpuset!r} names a core this host lacks "
                            f"(it has {ncpu}: 0-{ncpu - 1})")


def _health(config: DeployConfig, test: list[str]) -> Healthcheck:
    h = config.monitoring.health
    return Healthcheck(test=tuple(test), interval_s=h.interval.seconds,
                       timeout_s=h.timeout.seconds, retries=h.retries,
                       start_period_s=h.start_period.seconds)


def _wget(port: int, path: str) -> list[str]:
    return ["wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}{path}"]


def _bash_http(port: int, path: str) -> list[str]:
    """For images with bash but no wget or curl (Alloy's Ubuntu base)."""
    script = (f"exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 "
              "&& read -r status <&3 && [[ $status == *' 200 '* || $status == *' 200' ]]")
    return ["bash", "-c", script]


def read_dashboards(files: dict[str, bytes]) -> dict[str, bytes]:
    """Every JSON file in the dashboards folder, checked to be JSON (named on failure)."""
    out = {}
    for name, content in sorted(files.items()):
        try:
            json.loads(content)
        except ValueError as e:
            raise PlanError(f"dashboard {name} is not valid JSON: {e}") from None
        out[name] = content
    return out


def switched_off(service: str, services: MonitoringServices, pitr_enabled: bool) -> str:
    """Why a monitoring service is not deployed ("" when it is): its `enabled`, and for the
    wal_receiver PITR's, since the receiver only archives for point-in-time recovery."""
    if not getattr(services, service).enabled:
        return f"monitoring.services.{service}.enabled is false"
    if service == "wal_receiver" and not pitr_enabled:
        return "pitr.enabled is false"
    return ""


def build_monitoring_plan(config: DeployConfig, host: HostFacts, *, env: dict[str, str] | None = None,
                          dashboards: dict[str, bytes] | None = None,
                          tuned: dict[str, dict] | None = None,
                          grafana_login: tuple[str, str] | None = None) -> StackPlan:
    """The monitoring stack's containers; raises PlanError before anything changes.
    `grafana_login`: (role, password) of grafana.postgres_credential, read by the caller."""
    env = dict(os.environ) if env is None else env
    tuned = tuned or {}
    mon = config.monitoring
    svcs = mon.services
    enabled = [n for n in MONITORING_ORDER if not switched_off(n, svcs, config.pitr.enabled)]
    limits = {n: effective_limits(n, getattr(svcs, n), tuned) for n in enabled}
    check_budget({n: limits[n].memory_mb for n in enabled}, mon.memory_budget_mb)
    sock = host.docker_socket or socket_path(config.docker.host)
    warnings: list[str] = []
    prefix = config.docker.name_prefix
    net = mon.network
    traefik = config.traefik
    scrape = mon.services.prometheus.scrape_interval

    def spec(name: str, **kw) -> ContainerSpec:
        svc = getattr(svcs, name)
        labels = kw.pop("labels", {})
        if name in render.FRONTED:
            labels = {**labels, **render.router_labels(
                name, host=f"{name}.{traefik.domain}", port=render.FRONTED[name], network=net)}
        return ContainerSpec(service=name, stack="monitoring", name=f"{prefix}{render.alias(name)}",
                             image=svc.image, network=net, limits=limits[name], labels=labels,
                             log_max_size=config.docker.log_max_size,
                             log_max_files=config.docker.log_max_files, **kw)

    def vol(name: str, target: str) -> Mount:
        return Mount(target=target, source=f"{prefix}{render.alias(name)}-data", type="volume",
                     read_only=False)

    jobs = [n for n in enabled if n in render.SCRAPE] + ["traefik"]
    specs: list[ContainerSpec] = []
    local_dirs: list[str] = []
    rule_count = 0
    for name in enabled:
        if name == "wal_receiver":
            rx = svcs.wal_receiver
            backups = host.backups_dir or config.backups_dir
            if not PurePosixPath(backups).is_absolute():
                raise PlanError(f"backups.local_dir {backups!r} must resolve to an absolute host path "
                                "(the wal_receiver container writes _wal/ there)")
            try:
                conninfo, pgpass = render.receiver_conninfo(
                    (config.pitr.dsn or config.postgres.dsn).get_secret_value(), loopback_host=rx.postgres_host)
            except ValueError as e:
                raise PlanError(str(e)) from None
            p = config.pitr
            local_dirs.append(config.backups_dir)
            specs.append(spec(
                name,
                command=("homelab-ops", "pitr", "receive"),
                env={"HOMELAB_CONFIG": render.RECEIVER_SETTINGS},
                files={render.RECEIVER_SETTINGS: render.receiver_settings(
                    timezone=config.timezone, conninfo=conninfo, pg_bin_dir=config.postgres.pg_bin_dir,
                    age_recipients=list(config.age_recipients),
                    pitr={"cluster": p.cluster, "slot": p.slot_name, "max_lag": str(p.max_lag),
                          "status_interval": str(p.status_interval)}).encode()},
                secrets={render.RECEIVER_PASSFILE: pgpass.encode()} if pgpass else {},
                secrets_uid=HOMELAB_UID,
                mounts=(Mount(render.RECEIVER_BACKUPS, backups, read_only=False),),
                least_privilege=True,
                stop_timeout_s=45,  # pg_receivewal flushes on SIGINT; the wrapper encrypts what finished
                healthcheck=_health(config, ["homelab-ops", "pitr", "status", "--heartbeat"]),  # a file read
            ))
        elif name == "node_exporter":
            textfile = host.textfile_dir or config.textfile_dir
            if not PurePosixPath(textfile).is_absolute():
                raise PlanError(f"metrics.textfile_dir {textfile!r} must resolve to an absolute host path")
            local_dirs.append(config.textfile_dir)
            specs.append(spec(
                name,
                command=("--path.procfs=/host/proc", "--path.sysfs=/host/sys", "--path.rootfs=/rootfs",
                         "--collector.textfile.directory=/textfile",
                         "--collector.filesystem.mount-points-exclude=^/(dev|proc|run|sys|var/lib/docker/.+)($|/)",
                         "--web.listen-address=:9100"),
                mounts=(Mount("/host/proc", "/proc"), Mount("/host/sys", "/sys"), Mount("/rootfs", "/"),
                        Mount("/textfile", textfile)),
                healthcheck=_health(config, _wget(9100, "/")),
            ))
        elif name == "cadvisor":
            c = svcs.cadvisor
            specs.append(spec(
                name,
                command=(f"--housekeeping_interval={c.housekeeping_interval}", "--docker_only=true",
                         "--store_container_labels=false",
                         "--whitelisted_container_labels=homelab-ops.service,com.docker.compose.service",
                         "--disable_metrics=advtcp,cpu_topology,cpuset,disk,diskIO,hugetlb,memory_numa,"
                         "percpu,process,referenced_memory,resctrl,sched,tcp,udp",
                         "--port=8080"),
                mounts=(Mount("/rootfs", "/"), Mount("/sys", "/sys"), Mount("/var/run/docker.sock", sock),
                        Mount("/var/lib/docker", host.docker_root)),
                devices=("/dev/kmsg:/dev/kmsg:r",),  # OOM events; without it cAdvisor only warns
                healthcheck=_health(config, _wget(8080, "/healthz")),
            ))
        elif name == "loki":
            specs.append(spec(
                name,
                command=("-config.file=/etc/loki/config.yaml",),
                files={"/etc/loki/config.yaml": render.loki_config(
                    retention_days=svcs.loki.retention_days).encode()},
                mounts=(vol(name, "/loki"),),
                healthcheck=_health(config, _wget(3100, "/ready")),
            ))
        elif name == "alloy":
            specs.append(spec(
                name,
                command=("run", "--server.http.listen-addr=0.0.0.0:12345", "--storage.path=/var/lib/alloy/data",
                         "--disable-reporting", "/etc/alloy/config.alloy"),
                files={"/etc/alloy/config.alloy": render.alloy_config(
                    host_label=mon.host_label, extra_drops=svcs.alloy.drop_lines).encode()},
                mounts=(Mount("/var/run/docker.sock", sock), vol(name, "/var/lib/alloy/data")),
                healthcheck=_health(config, _bash_http(12345, "/-/ready")),
            ))
        elif name == "alertmanager":
            am = svcs.alertmanager
            token = am.telegram_bot_token or config.telegram.bot_token
            token_value = token.get_secret_value() if token else None
            if am.telegram_chat_id is not None and not am.telegram_chat_id.lstrip("-").isdigit():
                raise PlanError(f"monitoring.services.alertmanager.telegram_chat_id {am.telegram_chat_id!r} "
                                "is not a Telegram chat id (an integer)")
            if not (token_value and am.telegram_chat_id):
                warnings.append("alertmanager: no Telegram bot token and chat id "
                                "(monitoring.services.alertmanager.telegram_chat_id, notify.telegram.bot_token): "
                                "alerts are shown in Grafana but not delivered")
            specs.append(spec(
                name,
                command=("--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager",
                         "--cluster.listen-address=",
                         f"--web.external-url=https://alertmanager.{traefik.domain}/"),
                files={"/etc/alertmanager/alertmanager.yml": render.alertmanager_config(
                    bot_token=token_value, chat_id=am.telegram_chat_id,
                    api_url=config.telegram.api_base, repeat_interval=am.repeat_interval).encode()},
                mounts=(vol(name, "/alertmanager"),),
                healthcheck=_health(config, _wget(9093, "/-/ready")),
            ))
        elif name == "prometheus":
            p = svcs.prometheus
            rules = render.alert_rules(config.thresholds,
                                       silent_after_s=silent_after_s(config.health_interval_s))
            rule_count = render.count_rules(rules)
            specs.append(spec(
                name,
                command=("--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
                         f"--storage.tsdb.retention.time={p.retention_days}d", "--web.enable-lifecycle",
                         f"--web.external-url=https://prometheus.{traefik.domain}/", "--web.route-prefix=/"),
                files={
                    "/etc/prometheus/prometheus.yml": render.prometheus_config(
                        jobs, scrape_interval=scrape, host_label=mon.host_label,
                        alertmanager="alertmanager" in enabled).encode(),
                    "/etc/prometheus/rules/homelab.yml": rules.encode(),
                },
                mounts=(vol(name, "/prometheus"),),
                healthcheck=_health(config, _wget(9090, "/-/ready")),
            ))
        elif name == "grafana":
            g = svcs.grafana
            dsn = g.postgres_dsn or config.state_dsn
            pg = render.grafana_postgres(dsn.get_secret_value(), loopback_host=g.postgres_host)
            if grafana_login is not None:
                pg = dataclasses.replace(pg, user=grafana_login[0], password=grafana_login[1])
            elif g.postgres_dsn is None:
                warnings.append(f"grafana: reads the state database as {pg.user!r} (state.dsn's user); set "
                                "monitoring.services.grafana.postgres_credential to a read-only postgres-role "
                                "credential (docs/credentials.md)")
            dagster_pg = (render.grafana_postgres(g.dagster_postgres_dsn.get_secret_value(),
                                                  loopback_host=g.postgres_host)
                          if g.dagster_postgres_dsn else None)
            files = {
                "/etc/grafana/provisioning/datasources/homelab.yaml": render.grafana_datasources(
                    pg, scrape_interval=scrape, alertmanager="alertmanager" in enabled,
                    loki="loki" in enabled, dagster_pg=dagster_pg).encode(),
                "/etc/grafana/provisioning/dashboards/homelab.yaml": render.grafana_dashboard_provider().encode(),
            }
            boards = read_dashboards(dashboards or {})
            if not boards:
                warnings.append("grafana: the dashboards folder has no JSON files; none are provisioned")
            for fname, content in boards.items():
                files[f"/etc/grafana/dashboards/{fname}"] = content
            genv = {"GF_SERVER_ROOT_URL": f"https://grafana.{traefik.domain}/",
                    "GF_ANALYTICS_REPORTING_ENABLED": "false", "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
                    "GF_USERS_ALLOW_SIGN_UP": "false", "GF_LOG_LEVEL": "warn"}
            secrets = {render.grafana_password_path(render.STATE_DATASOURCE): pg.password.encode()}
            if dagster_pg is not None:
                secrets[render.grafana_password_path(render.DAGSTER_DATASOURCE)] = dagster_pg.password.encode()
            if g.admin_password:
                path = render.secret_path("grafana-admin-password")
                secrets[path] = g.admin_password.get_secret_value().encode()
                genv["GF_SECURITY_ADMIN_PASSWORD__FILE"] = path
            else:
                warnings.append("grafana: no admin_password; Grafana starts with admin/admin until the "
                                "first login changes it")
            specs.append(spec(name, env=genv, files=files, secrets=secrets, secrets_uid=GRAFANA_UID,
                              mounts=(vol(name, "/var/lib/grafana"),),
                              healthcheck=_health(config, _wget(3000, "/api/health"))))
        elif name == "n8n_runner":
            r = svcs.n8n_runner
            token = r.auth_token.get_secret_value() if r.auth_token else env.get("N8N_RUNNERS_AUTH_TOKEN")
            if not token:
                raise PlanError("monitoring.services.n8n_runner is enabled but has no auth token "
                                "(auth_token in settings or env N8N_RUNNERS_AUTH_TOKEN; n8n needs the same)")
            warnings.append("n8n_runner: n8n itself needs N8N_RUNNERS_ENABLED=true, N8N_RUNNERS_MODE=external, "
                            "N8N_RUNNERS_BROKER_LISTEN_ADDRESS=0.0.0.0 and the same N8N_RUNNERS_AUTH_TOKEN")
            # task-runner-launcher reads any setting from <NAME>_FILE (since 1.4.0): the token stays out of
            # `docker inspect`, which cAdvisor and Alloy (the Docker socket's holders) can read
            token_path = render.secret_path("n8n-runners-auth-token")
            specs.append(spec(
                name,
                env={"N8N_RUNNERS_MODE": "external", "N8N_RUNNERS_TASK_BROKER_URI": r.broker_uri,
                     "N8N_RUNNERS_AUTH_TOKEN_FILE": token_path, "N8N_RUNNERS_LAUNCHER_HEALTH_CHECK_PORT": "5680",
                     "N8N_RUNNERS_AUTO_SHUTDOWN_TIMEOUT": "15"},
                secrets={token_path: token.encode()}, secrets_uid=RUNNER_UID,
                healthcheck=_health(config, _wget(5680, "/healthz")),
            ))
    _check_cpusets(specs, host.ncpu)
    disabled = [f"{prefix}{render.alias(n)}" for n in MONITORING_ORDER if n not in enabled]
    textfiles = {}
    if "node_exporter" in enabled:
        textfiles[str(PurePosixPath(config.textfile_dir) / render.EXPECTED_TEXTFILE)] = \
            render.expected_textfile(enabled, mon.alerts.expected_containers)
    return StackPlan(stack="monitoring", network=net, services=specs, budget_mb=mon.memory_budget_mb,
                     rule_count=rule_count, warnings=warnings, local_dirs=local_dirs, disabled=disabled,
                     textfiles=textfiles)


def build_traefik_plan(config: DeployConfig, host: HostFacts, *, env: dict[str, str] | None = None,
                       stored_users: list[str] = ()) -> StackPlan:
    """Traefik alone: the only container that publishes host ports."""
    env = dict(os.environ) if env is None else env
    t = config.traefik
    try:
        users = basic_auth_users(t, env, stored_users)
    except AuthError as e:
        raise PlanError(str(e)) from None
    if not users:
        raise PlanError("Traefik would expose the UIs without basic auth: set traefik.basic_auth_credentials "
                        "(credential-store names), traefik.basic_auth_users (htpasswd -nbB lines) "
                        "or env HOMELAB_BASIC_AUTH_USERS")
    sock = host.docker_socket or socket_path(config.docker.host)
    log_dir = host.access_log_dir or t.access_log_dir
    if not PurePosixPath(log_dir).is_absolute():
        raise PlanError(f"traefik.access_log_dir {log_dir!r} must resolve to an absolute host path")
    routes = {name: (r.url, r.subdomain or name, list(r.public_paths)) for name, r in t.routes.items()}
    dns_env = {k: v.get_secret_value() for k, v in t.dns_env.items()} if t.acme_challenge == "dns" else {}
    prefix = config.docker.name_prefix
    files = {"/etc/traefik/dynamic/homelab.yml": render.traefik_dynamic(
        domain=t.domain, users=users, allowlist=t.ip_allowlist, routes=routes).encode()}
    # lego reads every provider variable from <NAME>_FILE too: the values stay out of `docker inspect`.
    traefik_env = {f"{k}_FILE": render.secret_path(f"traefik-{k}") for k in dns_env}
    traefik_secrets = {render.secret_path(f"traefik-{k}"): v.encode() for k, v in dns_env.items()}
    if t.acme_ca_certificate:
        try:
            files[ACME_CA_PATH] = Path(t.acme_ca_certificate).read_bytes()
        except OSError as e:
            raise PlanError(f"traefik.acme_ca_certificate {t.acme_ca_certificate!r}: {e.strerror}") from None
        if b"-----BEGIN CERTIFICATE-----" not in files[ACME_CA_PATH]:
            raise PlanError(f"traefik.acme_ca_certificate {t.acme_ca_certificate!r} holds no PEM certificate")
        traefik_env["LEGO_CA_CERTIFICATES"] = ACME_CA_PATH  # lego (Traefik's ACME client) trusts it
    spec = ContainerSpec(
        service="traefik", stack="traefik", name=f"{prefix}traefik", image=t.image,
        network=config.monitoring.network, limits=Limits(t.memory_mb, t.cpuset, t.cpus),
        command=tuple(render.traefik_args(network=config.monitoring.network, acme_email=t.acme_email,
                                          challenge=t.acme_challenge, dns_provider=t.dns_provider,
                                          ca_server=t.acme_ca_server)),
        env=traefik_env,
        labels={"traefik.enable": "true"},
        files=files, secrets=traefik_secrets,
        mounts=(Mount("/var/run/docker.sock", sock), Mount("/var/log/traefik", log_dir, read_only=False),
                Mount("/letsencrypt", f"{prefix}traefik-acme", type="volume", read_only=False)),
        ports={80: (t.listen, t.http_port), 443: (t.listen, t.https_port)},
        extra_hosts=({"host.docker.internal": "host-gateway"}
                     if render.uses_host_gateway([r[0] for r in routes.values()]) else {}),
        healthcheck=_health(config, ["traefik", "healthcheck", "--ping"]),
        log_max_size=config.docker.log_max_size, log_max_files=config.docker.log_max_files,
    )
    _check_cpusets([spec], host.ncpu)
    hosts = [f"traefik.{t.domain}"] + sorted(f"{r[1]}.{t.domain}" for r in routes.values())
    return StackPlan(stack="traefik", network=config.monitoring.network, services=[spec],
                     local_dirs=[t.access_log_dir], route_hosts=hosts)
