"""The one settings file: YAML with ${VAR} interpolation, validated before any work.

Every domain reads its section from `Settings`; nothing else parses YAML or the
environment. Validation errors name the file, the key and the problem, so a bad
edit fails when the code location loads instead of at 03:00.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
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

DEFAULT_PATH = "./homelab.yaml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SettingsError(ValueError):
    """A settings problem, worded for the person who edits the file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration_seconds(text: str) -> float:
    """Parse `90s`, `15m`, `6h`, `2d`, `1w` (or a bare number of seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 6h, 2d or 1w")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    return float(m.group(1)) * unit


Duration = Annotated[str, Field(pattern=r"^\s*\d+(\.\d+)?\s*[smhdw]?\s*$")]


class StateSettings(_Section):
    dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/homelab")


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
            for name in v:
                if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}", name):
                    raise ValueError(f"{name!r} is not a database name this tool backs up")
            if len(set(v)) != len(v):
                raise ValueError("a database is listed twice")
        return v


class S3Target(_Section):
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    name: str | None = None  # how logs and the CLI call this target; defaults to the bucket

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
    keep_within: str | None = None
    dry_run: bool = False


class BackupSettings(_Section):
    local_dir: str = "./var/backups"
    s3: list[S3Target] = []
    encryption: EncryptionSettings = EncryptionSettings()
    timeout: Duration = "2h"
    max_age_hours: float = Field(26, gt=0)
    zstd_level: int = Field(3, ge=1, le=19)
    retention: RetentionSettings = RetentionSettings()
    verify_min_free_factor: float = Field(3.0, gt=0)  # free disk needed = factor x dump size

    @field_validator("s3", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        if v is None:
            return []
        return [v] if isinstance(v, dict) else v

    @property
    def timeout_seconds(self) -> float:
        return _duration_seconds(self.timeout)


class N8nSettings(_Section):
    dsn: SecretStr
    url: str | None = None  # e.g. http://127.0.0.1:5678, for /healthz
    workflows_dir: str | None = None  # a folder of exported workflow JSON to scan


class CredentialsSettings(_Section):
    key_file: str = "./var/master.key"
    managed: dict[str, dict[str, Any]] = {}
    env_template: str | None = None


class MetricsSettings(_Section):
    snapshot_every: Duration = "15m"
    raw_retention_days: int = Field(14, ge=1)
    textfile_dir: str = "./var/node_exporter"
    sys_root: str = "/sys"
    proc_root: str = "/proc"
    thresholds: dict[str, float] = {}


class HealthSettings(_Section):
    interval: Duration = "60s"
    realert_after: Duration = "6h"
    thresholds: dict[str, float] = {}
    remedies: dict[str, bool] = {}


class TelegramSettings(_Section):
    api_base: str = "https://api.telegram.org"
    bot_token: SecretStr | None = None
    bot_token_credential: str | None = None


class NotifySettings(_Section):
    telegram: TelegramSettings = TelegramSettings()
    webhook_url: str | None = None


class UiSettings(_Section):
    base_url: str = "http://127.0.0.1:3000"


class DockerSettings(_Section):
    host: str = "unix:///var/run/docker.sock"


class MonitoringSettings(_Section):
    model_config = ConfigDict(extra="allow", frozen=True)
    network: str = "homelab"
    memory_budget_mb: int = Field(1536, gt=0)
    pull: Literal["if-missing", "never"] = "if-missing"
    services: dict[str, dict[str, Any]] = {}


class TraefikSettings(_Section):
    model_config = ConfigDict(extra="allow", frozen=True)
    image: str = "traefik:v3.4"
    domain: str = "home.example.org"
    acme_email: str = "owner@example.org"


class DiskHygieneSettings(_Section):
    fstrim_mounts: list[str] = ["/"]


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
    source: str = Field("<embedded defaults>", exclude=True)

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

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def secrets(self) -> list[str]:
        """Every secret value the settings hold, for redaction."""
        out = []
        for s in (self.state.dsn, self.postgres.dsn, self.n8n.dsn if self.n8n else None,
                  self.notify.telegram.bot_token):
            if s is None:
                continue
            v = s.get_secret_value()
            m = re.search(r"://[^:/@]+:([^@]+)@", v)
            if m:
                out.append(m.group(1))
            elif s is self.notify.telegram.bot_token:
                out.append(v)
        return [v for v in out if v]


# Embedded defaults: what `make demo` runs on when no settings file exists.
EMBEDDED_DEFAULTS: dict[str, Any] = {
    "timezone": "Europe/Berlin",
    "n8n": {"dsn": "postgresql://postgres@127.0.0.1:5432/n8n"},
}


def interpolate(value: Any, env: dict[str, str], path: str = "") -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string; a missing VAR is an error."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise SettingsError(f"{path}: environment variable {name} is not set")
        return _VAR.sub(sub, value)
    return value


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    msg = err["msg"]
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
    try:
        data = interpolate(data, dict(os.environ) if env is None else env)
    except SettingsError as e:
        raise SettingsError(f"{source}: {e}") from None
    try:
        return Settings.model_validate({**data, "source": source})
    except ValidationError as e:
        problems = "\n  ".join(_describe(err) for err in e.errors())
        raise SettingsError(f"{source}: invalid settings:\n  {problems}") from None


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
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SettingsError(f"{p}: not valid YAML: {e}") from None
    return parse(data, str(p))


_cache: dict[str, Settings] = {}


def current(path: str | None = None) -> Settings:
    """`load`, once per process and path: the code location and its runs share one parse."""
    key = str(path or os.environ.get("HOMELAB_CONFIG") or DEFAULT_PATH)
    if key not in _cache:
        _cache[key] = load(path)
    return _cache[key]
