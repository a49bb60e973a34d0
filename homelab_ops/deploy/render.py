"""Config files and command lines for each service, rendered from plain values.

No I/O here except reading the shipped templates: every function returns text
(or args/labels) that the tests check with the real tools (promtool, amtool).
Configs stay compatible with Prometheus 2.42+/3.x and Alertmanager 0.25+/0.28:
Debian's tools check what the pinned upstream images run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import jinja2
import yaml

from homelab_ops.health.overview import TICK_METRIC as HEALTH_TICK_METRIC

CERT_RESOLVER = "letsencrypt"  # deploy/docker-compose.yml labels Dagster's webserver with it
ENTRYPOINT_HTTPS = "websecure"
AUTH_MIDDLEWARE = "homelab-auth@file"
ALLOWLIST_MIDDLEWARE = "homelab-allowlist@file"
ANYWHERE = ["0.0.0.0/0", "::/0"]

# service -> (DNS alias on the network, port Prometheus scrapes, metrics path)
SCRAPE = {
    "prometheus": ("prometheus", 9090, "/metrics"),
    "node_exporter": ("node-exporter", 9100, "/metrics"),
    "cadvisor": ("cadvisor", 8080, "/metrics"),
    "loki": ("loki", 3100, "/metrics"),
    "alloy": ("alloy", 12345, "/metrics"),
    "grafana": ("grafana", 3000, "/metrics"),
    "alertmanager": ("alertmanager", 9093, "/metrics"),
    "traefik": ("traefik", 8082, "/metrics"),
}

# The UIs Traefik fronts among the services homelab-ops deploys: service -> port.
FRONTED = {"grafana": 3000, "prometheus": 9090, "alertmanager": 9093}
# Their health paths: Traefik checks them, so traefik_service_server_up (TraefikServiceDown) exists.
FRONTED_HEALTH = {"grafana": "/api/health", "prometheus": "/-/ready", "alertmanager": "/-/ready"}


def alias(service: str) -> str:
    """Network alias: DNS names take no underscores."""
    return service.replace("_", "-")


def _dump(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)


# The shipped templates hold Prometheus' and Alertmanager's own Go templates ({{ $labels.x }}),
# so ours use other delimiters: [[ value ]], [% block %], [# comment #].
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("homelab_ops.deploy", "templates"), undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True, autoescape=False,
    variable_start_string="[[", variable_end_string="]]", block_start_string="[%", block_end_string="%]",
    comment_start_string="[#", comment_end_string="#]")


def _render(name: str, values: dict[str, object]) -> str:
    """A shipped template with every value it names; a value missing is an error, not an empty string."""
    try:
        return _TEMPLATES.get_template(name).render(values)
    except jinja2.UndefinedError as e:
        raise ValueError(f"templates/{name}: {e.message}") from None


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


# --- Prometheus -------------------------------------------------------------------------------

def prometheus_config(jobs: list[str], *, scrape_interval: str, host_label: str,
                      alertmanager: bool) -> str:
    """prometheus.yml; rule files are relative to it (rules/*.yml) so promtool finds them too."""
    scrape_configs = []
    for job in jobs:
        host, port, path = SCRAPE[job]
        target = "localhost:9090" if job == "prometheus" else f"{host}:{port}"
        cfg = {"job_name": job, "static_configs": [{"targets": [target]}]}
        if path != "/metrics":
            cfg["metrics_path"] = path
        scrape_configs.append(cfg)
    data = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "external_labels": {"host": host_label}},
        "rule_files": ["rules/*.yml"],
    }
    if alertmanager:
        data["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]}
    data["scrape_configs"] = scrape_configs
    return _dump(data)


def alert_rules(thresholds, *, silent_after_s: float) -> str:
    """The shipped rules (templates/alerts.yml) with the numbers the health checks judge with
    (`health.checks.Thresholds`). A rule the health sensor also judges holds back while the sensor
    has ticked within `silent_after_s`: one condition reaches the owner by one path."""
    th = thresholds
    return _render("alerts.yml", {
        "temperature_warn_c": _num(th.temperature_warn_c),
        "temperature_fail_c": _num(th.temperature_fail_c),
        "disk_free_warn_pct": _num(th.disk_free_warn_pct),
        "memory_available_warn_pct": _num(th.memory_available_warn_pct),
        "backup_max_age_s": int(th.backup_age_fail_hours * 3600),
        "backup_max_age_h": _num(th.backup_age_fail_hours),
        "silent_after_s": int(silent_after_s),
        "silent_after_min": _num(round(silent_after_s / 60, 1)),
        "unless_homelab_ops_judges": f"unless on () (time() - max({HEALTH_TICK_METRIC}) < {int(silent_after_s)})",
    })


EXPECTED_TEXTFILE = "homelab_deploy.prom"


def expected_textfile(services: list[str], containers: list[str]) -> str:
    """node_exporter textfile: what must be running, read by the ContainerDown rules."""
    lines = ["# HELP homelab_deploy_expected A service homelab-ops deployed and expects running.",
             "# TYPE homelab_deploy_expected gauge"]
    lines += [f'homelab_deploy_expected{{service="{s}"}} 1' for s in sorted(services)]
    lines += ["# HELP homelab_deploy_expected_container A container not deployed here, expected by name.",
              "# TYPE homelab_deploy_expected_container gauge"]
    lines += [f'homelab_deploy_expected_container{{name="{n}"}} 1' for n in sorted(containers)]
    return "\n".join(lines) + "\n"


def count_rules(*rule_files: str) -> int:
    return sum(len(g.get("rules") or []) for text in rule_files
               for g in (yaml.safe_load(text).get("groups") or []))


# --- Alertmanager -----------------------------------------------------------------------------

def alertmanager_config(*, bot_token: str | None, chat_id: str | None, api_url: str,
                        repeat_interval: str) -> str:
    """Everything goes to Telegram; without a token and chat id the receiver is empty (reported)."""
    receiver: dict = {"name": "telegram"}
    if bot_token and chat_id:
        receiver["telegram_configs"] = [{
            "bot_token": bot_token,
            "chat_id": int(chat_id),
            "api_url": api_url,
            "parse_mode": "HTML",
            "send_resolved": True,
        }]
    data = {
        "global": {"resolve_timeout": "5m"},
        "route": {"receiver": "telegram", "group_by": ["alertname", "service", "job"],
                  "group_wait": "30s", "group_interval": "5m", "repeat_interval": repeat_interval},
        "inhibit_rules": [{
            "source_matchers": ['severity="critical"'],
            "target_matchers": ['severity="warning"'],
            "equal": ["alertname"],
        }],
        "receivers": [receiver],
    }
    return _dump(data)


# --- Loki and Alloy ---------------------------------------------------------------------------

def loki_config(*, retention_days: int) -> str:
    """Single binary, filesystem store, compactor retention (7-14 days on a Pi's disk)."""
    hours = retention_days * 24
    data = {
        "auth_enabled": False,
        "server": {"http_listen_port": 3100, "grpc_listen_port": 9096, "log_level": "warn"},
        "common": {
            "instance_addr": "127.0.0.1",
            "path_prefix": "/loki",
            "storage": {"filesystem": {"chunks_directory": "/loki/chunks", "rules_directory": "/loki/rules"}},
            "replication_factor": 1,
            "ring": {"kvstore": {"store": "inmemory"}},
        },
        "schema_config": {"configs": [{
            "from": "2024-01-01", "store": "tsdb", "object_store": "filesystem", "schema": "v13",
            "index": {"prefix": "index_", "period": "24h"},
        }]},
        "limits_config": {
            "retention_period": f"{hours}h",
            "reject_old_samples": True,
            "reject_old_samples_max_age": "168h",
            "ingestion_rate_mb": 4,
            "ingestion_burst_size_mb": 8,
        },
        "compactor": {
            "working_directory": "/loki/compactor",
            "compaction_interval": "10m",
            "retention_enabled": True,
            "retention_delete_delay": "2h",
            "delete_request_store": "filesystem",
        },
        "query_range": {"results_cache": {"cache": {"embedded_cache": {"enabled": True, "max_size_mb": 32}}}},
        "pattern_ingester": {"enabled": False},
        "analytics": {"reporting_enabled": False},
    }
    return _dump(data)


def _alloy_string(s: str) -> str:
    return json.dumps(s)  # Alloy strings take JSON's escapes


def alloy_config(*, host_label: str, extra_drops: list[str]) -> str:
    """Container logs (Docker API) -> drop noisy lines -> Loki."""
    drops = "".join(
        f"  stage.drop {{\n    expression          = {_alloy_string(rx)}\n"
        f"    drop_counter_reason = \"settings_{i}\"\n  }}\n"
        for i, rx in enumerate(extra_drops))
    for rx in extra_drops:
        re.compile(rx)  # a bad expression fails here, not in Alloy at 03:00
    return _render("config.alloy", {"extra_drops": drops.rstrip("\n"), "host_label": host_label})


# --- Grafana ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PostgresSource:
    host: str
    port: int
    database: str
    user: str
    password: str


def container_host(host: str | None, loopback_host: str) -> str:
    """A DSN's host as a container on the network reaches it: loopback or a unix socket means the
    container itself there, so the PostgreSQL container's name on the network stands in."""
    host = host or "localhost"
    if host in ("localhost", "127.0.0.1", "::1") or host.startswith("/"):
        return loopback_host
    return host


def grafana_postgres(dsn: str, *, loopback_host: str) -> PostgresSource:
    """The state database as Grafana's container sees it: a loopback host means the container."""
    import psycopg

    d = psycopg.conninfo.conninfo_to_dict(dsn)
    host = container_host(d.get("host"), loopback_host)
    return PostgresSource(host=host, port=int(d.get("port") or 5432), database=d.get("dbname") or "postgres",
                          user=d.get("user") or "postgres", password=d.get("password") or "")


# What the shipped dashboards' SQL panels read from the state database: a Grafana reader role
# (a postgres-role credential) gets SELECT on these and nothing else (docs/credentials.md).
GRAFANA_TABLES = ("homelab_ops.host_metrics", "homelab_ops.host_metrics_daily",
                  "homelab_ops.n8n_execution_daily", "homelab_ops.container_metrics")

SECRETS_DIR = "/run/secrets"


def secret_path(name: str) -> str:
    return f"{SECRETS_DIR}/{name}"


# --- The WAL receiver (homelab-ops pitr receive) ------------------------------------------------

RECEIVER_SETTINGS = "/etc/homelab-ops/homelab.yaml"
RECEIVER_PASSFILE = secret_path("wal-receiver-pgpass")
RECEIVER_BACKUPS = "/var/lib/homelab-ops/backups"


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def receiver_conninfo(dsn: str, *, loopback_host: str) -> tuple[str, str | None]:
    """pitr.dsn as the receiver's container uses it, and the libpq passfile line for its password.

    The password goes to a 0400 file (libpq's `passfile`), never the rendered settings or the
    environment: `docker inspect` shows those to every holder of the Docker socket.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    d = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    if "passfile" in d:
        raise ValueError("pitr.dsn names a passfile on this host, which the wal_receiver container cannot "
                         "read: put the password in the DSN (as a ${VAR}) and deploy hands it over as a secret file")
    d["host"] = container_host(d.get("host"), loopback_host)
    password = d.pop("password", None)
    if not password:
        return make_conninfo("", **d), None
    d["passfile"] = RECEIVER_PASSFILE
    user = d.get("user") or "postgres"
    return make_conninfo("", **d), f"*:*:*:{_pgpass_field(user)}:{_pgpass_field(password)}\n"


def receiver_settings(*, timezone: str, pitr: dict, conninfo: str, age_recipients: list[str],
                      pg_bin_dir: str | None) -> str:
    """The receiver's own settings file: only what `pitr receive` reads, and no secret."""
    doc: dict = {"timezone": timezone,
                 "backups": {"local_dir": RECEIVER_BACKUPS, "encryption": {"age_recipients": list(age_recipients)}},
                 "pitr": {**pitr, "enabled": True, "dsn": conninfo}}
    if pg_bin_dir:
        doc["postgres"] = {"pg_bin_dir": pg_bin_dir}
    return "# Rendered by deploy_monitoring for the wal_receiver container; edit homelab.yaml instead.\n" + \
        yaml.safe_dump(doc, sort_keys=False)


STATE_DATASOURCE, DAGSTER_DATASOURCE = "homelab-state", "dagster"  # Grafana datasource names (and uids)


def grafana_password_path(datasource: str) -> str:
    """Where a PostgreSQL datasource's password file is: the plan writes it, provisioning reads it."""
    return secret_path(f"grafana-{datasource}-password")


def _pg_source(name: str, pg: PostgresSource) -> dict:
    """The password stays in a 0400 file; Grafana's provisioning reads it with $__file{}."""
    return {"name": name, "type": "grafana-postgresql-datasource", "uid": name,
            "url": f"{pg.host}:{pg.port}", "user": pg.user, "editable": False,
            "jsonData": {"database": pg.database, "sslmode": "disable", "postgresVersion": 1500,
                         "timescaledb": False},
            "secureJsonData": {"password": "$__file{%s}" % grafana_password_path(name)}}


def grafana_datasources(pg: PostgresSource | None, *, scrape_interval: str, alertmanager: bool,
                        loki: bool, dagster_pg: PostgresSource | None = None) -> str:
    """Names and uids are a contract with deploy/grafana/dashboards: prometheus, loki,
    homelab-state (homelab-ops' tables) and dagster (Dagster's storage, when configured)."""
    sources = [{"name": "Prometheus", "type": "prometheus", "uid": "prometheus", "access": "proxy",
                "url": "http://prometheus:9090", "isDefault": True, "editable": False,
                "jsonData": {"timeInterval": scrape_interval}}]
    if loki:
        sources.append({"name": "Loki", "type": "loki", "uid": "loki", "access": "proxy",
                        "url": "http://loki:3100", "editable": False})
    if alertmanager:
        sources.append({"name": "Alertmanager", "type": "alertmanager", "uid": "alertmanager",
                        "access": "proxy", "url": "http://alertmanager:9093", "editable": False,
                        "jsonData": {"implementation": "prometheus"}})
    if pg is not None:
        sources.append(_pg_source(STATE_DATASOURCE, pg))
    if dagster_pg is not None:
        sources.append(_pg_source(DAGSTER_DATASOURCE, dagster_pg))
    return _dump({"apiVersion": 1, "prune": True, "datasources": sources})


def grafana_dashboard_provider() -> str:
    return _dump({"apiVersion": 1, "providers": [{
        "name": "homelab", "folder": "Homelab", "type": "file", "disableDeletion": True,
        "allowUiUpdates": False, "updateIntervalSeconds": 300,
        "options": {"path": "/etc/grafana/dashboards", "foldersFromFilesStructure": False},
    }]})


# --- Traefik ----------------------------------------------------------------------------------

def router_labels(name: str, *, host: str, port: int, network: str) -> dict[str, str]:
    """Labels that put one container behind Traefik on HTTPS with basic auth and the allow-list
    (both defined in Traefik's file: changing who may connect redeploys Traefik only)."""
    middlewares = [AUTH_MIDDLEWARE, ALLOWLIST_MIDDLEWARE]
    r = f"traefik.http.routers.{name}"
    return {
        "traefik.enable": "true",
        "traefik.docker.network": network,
        f"{r}.rule": f"Host(`{host}`)",
        f"{r}.entrypoints": ENTRYPOINT_HTTPS,
        f"{r}.tls": "true",
        f"{r}.tls.certresolver": CERT_RESOLVER,
        f"{r}.middlewares": ",".join(middlewares),
        f"{r}.service": name,
        f"traefik.http.services.{name}.loadbalancer.server.port": str(port),
        **({f"traefik.http.services.{name}.loadbalancer.healthcheck.path": FRONTED_HEALTH[name],
            f"traefik.http.services.{name}.loadbalancer.healthcheck.interval": "30s"}
           if name in FRONTED_HEALTH else {}),
    }


def traefik_args(*, network: str, acme_email: str, challenge: str, dns_provider: str | None,
                 ca_server: str | None) -> list[str]:
    """Static configuration as flags: visible in `docker inspect`, part of the config hash.

    Never `--api.insecure`: the dashboard is only a router behind basic auth.
    """
    acme = f"--certificatesresolvers.{CERT_RESOLVER}.acme"
    args = [
        "--global.checknewversion=false",
        "--global.sendanonymoususage=false",
        "--log.level=INFO",
        "--providers.docker=true",
        "--providers.docker.exposedbydefault=false",
        f"--providers.docker.network={network}",
        "--providers.file.directory=/etc/traefik/dynamic",
        "--entrypoints.web.address=:80",
        "--entrypoints.web.http.redirections.entrypoint.to=websecure",
        "--entrypoints.web.http.redirections.entrypoint.scheme=https",
        "--entrypoints.web.http.redirections.entrypoint.permanent=true",
        "--entrypoints.websecure.address=:443",
        f"--entrypoints.websecure.http.tls.certresolver={CERT_RESOLVER}",
        "--entrypoints.metrics.address=:8082",
        f"{acme}.email={acme_email}",
        f"{acme}.storage=/letsencrypt/acme.json",
    ]
    if ca_server:
        args.append(f"{acme}.caserver={ca_server}")
    if challenge == "dns":
        args += [f"{acme}.dnschallenge=true", f"{acme}.dnschallenge.provider={dns_provider}"]
    else:
        args.append(f"{acme}.httpchallenge.entrypoint=web")
    args += [
        "--ping=true",
        "--api.dashboard=true",
        "--metrics.prometheus=true",
        "--metrics.prometheus.entrypoint=metrics",
        "--metrics.prometheus.addentrypointslabels=true",
        "--metrics.prometheus.addserviceslabels=true",
        "--metrics.prometheus.addrouterslabels=true",
        "--accesslog=true",
        "--accesslog.filepath=/var/log/traefik/access.log",
        "--accesslog.format=json",
    ]
    assert not any(a.startswith("--api.insecure") for a in args)
    return args


def traefik_dynamic(*, domain: str, users: list[str], allowlist: list[str],
                    routes: dict[str, tuple[str, str, list[str]]]) -> str:
    """File provider: the auth and allow-list middlewares, the dashboard, and UIs not deployed here.

    `routes` is name -> (url, subdomain, public path prefixes). Middlewares live here rather than
    in labels so the bcrypt hashes never show in `docker inspect`.
    """
    ui_mw = [AUTH_MIDDLEWARE.removesuffix("@file")]
    middlewares: dict = {"homelab-auth": {"basicAuth": {"users": list(users), "removeHeader": True}},
                         "security-headers": {"headers": {
                             "stsSeconds": 31536000, "stsIncludeSubdomains": True,
                             "contentTypeNosniff": True, "referrerPolicy": "same-origin"}}}
    # Always defined (the UIs' labels name it); empty settings = every address.
    middlewares["homelab-allowlist"] = {"ipAllowList": {"sourceRange": list(allowlist) or ANYWHERE}}
    ui_mw.append("homelab-allowlist")
    tls = {"certResolver": CERT_RESOLVER}
    routers: dict = {"dashboard": {
        "rule": f"Host(`traefik.{domain}`)", "entryPoints": [ENTRYPOINT_HTTPS], "service": "api@internal",
        "middlewares": ui_mw + ["security-headers"], "tls": tls}}
    services: dict = {}
    for name, (url, sub, public) in sorted(routes.items()):
        host = f"{sub}.{domain}"
        routers[name] = {"rule": f"Host(`{host}`)", "entryPoints": [ENTRYPOINT_HTTPS], "service": name,
                         "middlewares": ui_mw + ["security-headers"], "tls": tls}
        if public:
            prefixes = " || ".join(f"PathPrefix(`{p}`)" for p in public)
            routers[f"{name}-public"] = {"rule": f"Host(`{host}`) && ({prefixes})",
                                         "entryPoints": [ENTRYPOINT_HTTPS], "service": name,
                                         "middlewares": ["security-headers"], "tls": tls}
        services[name] = {"loadBalancer": {"servers": [{"url": url}]}}
    http: dict = {"middlewares": middlewares, "routers": routers}
    if services:  # Traefik rejects the whole file on an empty `services:` ("standalone element")
        http["services"] = services
    return _dump({"http": http})


def uses_host_gateway(urls: list[str]) -> bool:
    return any(urlsplit(u).hostname == "host.docker.internal" for u in urls)
