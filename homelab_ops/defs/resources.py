"""Resources shared by every domain: the settings file and what it points at."""

import os
from collections.abc import Mapping

import dagster as dg
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import PrivateAttr, SecretStr

from homelab_ops import recovery
from homelab_ops import settings as settings_mod
from homelab_ops import state
from homelab_ops.configs import DomainConfigs
from homelab_ops.notify.redact import embedded_secrets
from homelab_ops.settings import VARIABLE


class HomelabSettings(dg.ConfigurableResource, DomainConfigs):
    """The homelab's settings file (HOMELAB_CONFIG, default ./homelab.yaml).

    Assets, checks and sensors read their domain's part (`.backups`, `.metrics`, `.notify` ...,
    homelab_ops.configs), never `.settings` whole; the file is parsed once per process.

    Every run of this code location that touches the homelab starts here, once, before any
    step claims a pool slot: so this is where a run takes its crash guard and sweeps up after
    runs that died (homelab_ops.recovery says why it is done this way).
    """

    config_path: str | None = None
    _settings: settings_mod.Settings | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # No teardown here: it would make this a context-manager resource for every sensor test and
        # caller. The guard lives until the process ends or the next run in it starts (recovery).
        if context.run is not None and context.instance is not None:  # not in sensors
            recovery.start_run(self.recovery, context.instance, context.run.run_id, context.log)

    @property
    def settings(self) -> settings_mod.Settings:
        if self._settings is None:
            self._settings = settings_mod.current(self.config_path)
        return self._settings


def password_source(dsn: str, template: str | None, env: Mapping[str, str]) -> str:
    """Where a DSN's password comes from, in words the UI can show: never the password itself.

    `template` is the key as the settings file writes it when it reads the environment
    (Settings.templates): the variable named where the password sits is its source."""
    if not conninfo_to_dict(dsn).get("password"):
        return "none in the DSN (trust, peer, PGPASSWORD or ~/.pgpass)"
    if template is None:
        return "written in the settings file"
    # The whole DSN a variable, or the variable where the password is written in it.
    whole = VARIABLE.fullmatch(template.strip()) or next(
        (m for p in embedded_secrets(template, whole_is_secret=False) if (m := VARIABLE.fullmatch(p))), None)
    if whole is None:
        return "written in the settings file"
    if whole.group(1) not in env:
        return f"written in the settings file (the default of ${{{whole.group(1)}}}, which is not set)"
    return f"environment variable {whole.group(1)}"


def setting_at(settings: settings_mod.Settings, key: str) -> SecretStr:
    """The DSN at a dotted settings key (`state.dsn`): PostgresResource's one way into the file."""
    value = settings
    for part in key.split("."):
        value = getattr(value, part, None)
        if value is None:
            raise settings_mod.SettingsError(f"{settings.source}: {key} is not set")
    return value


class PostgresResource(dg.ConfigurableResource):
    """A PostgreSQL database the steps connect to, as the settings key `setting` configures it.

    Its fields are what the UI's resource page shows: where the database is and where its password
    comes from, never the password. A step connects with these fields over the DSN at `setting`,
    which still supplies the password and any other libpq option: the settings file stays the one
    source, read when the step connects, and the password never becomes resource config.
    """

    setting: str  # the settings key holding the DSN, e.g. state.dsn
    host: str = ""  # "": libpq's default (PGHOST, then the local socket)
    port: str = ""  # "": libpq's default (PGPORT, then 5432)
    dbname: str = ""
    user: str = ""
    password: str = ""  # where it comes from, in words (password_source)
    created_via: str = ""  # the settings key of the server that creates it on first use, if any
    config_path: str | None = None

    @classmethod
    def of(cls, setting: str, dsn: SecretStr, template: str | None, created_via: str = "",
           config_path: str | None = None) -> "PostgresResource":
        """Its fields for the DSN at `setting`, written as `template` in the file. A DSN libpq
        cannot parse still loads (the steps that connect fail, as before), and its text is never shown."""
        try:
            info = conninfo_to_dict(dsn.get_secret_value())
        except psycopg.ProgrammingError:  # its message may quote part of the password
            return cls(setting=setting, password=f"unknown: {setting} is not a connection string libpq reads",
                       created_via=created_via, config_path=config_path)
        return cls(setting=setting, host=info.get("host") or "", port=info.get("port") or "",
                   dbname=info.get("dbname") or "", user=info.get("user") or "",
                   password=password_source(dsn.get_secret_value(), template, os.environ),
                   created_via=created_via, config_path=config_path)

    def conninfo(self) -> SecretStr:
        """The connection string a step uses: these fields over the settings' DSN."""
        dsn = setting_at(settings_mod.current(self.config_path), self.setting).get_secret_value()
        shown = {"host": self.host, "port": self.port, "dbname": self.dbname, "user": self.user}
        return SecretStr(make_conninfo(dsn, **{k: v for k, v in shown.items() if v}))

    def open_state(self) -> psycopg.Connection:
        """The state database, created through `created_via`'s server and migrated on first use."""
        settings = settings_mod.current(self.config_path)
        return state.open_state_at(self.conninfo(), setting_at(settings, self.created_via or self.setting))


def resources_for(config_path: str | None = None) -> dict[str, dg.ConfigurableResource]:
    """The resources every domain shares, for the settings file at `config_path` (None: the location's)."""
    settings = settings_mod.current(config_path)
    databases = {"state_database": ("state.dsn", "postgres.dsn")}
    if settings.n8n is not None:
        databases["n8n_database"] = ("n8n.dsn", "")
    shared: dict[str, dg.ConfigurableResource] = {"homelab": HomelabSettings(config_path=config_path)}
    for name, (key, created_via) in databases.items():
        shared[name] = PostgresResource.of(key, setting_at(settings, key), settings.templates.get(key),
                                           created_via=created_via, config_path=config_path)
    return shared


@dg.definitions
def defs() -> dg.Definitions:
    # Materializations started from the UI or `dagster asset materialize` run in one process too:
    # a process per step costs seconds each on a Pi (every job also chooses this explicitly).
    return dg.Definitions(resources=resources_for(), executor=dg.in_process_executor)
