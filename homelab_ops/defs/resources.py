"""Resources shared by every domain: the settings file and what it points at."""

import dagster as dg
from pydantic import PrivateAttr

from homelab_ops import recovery
from homelab_ops import settings as settings_mod
from homelab_ops.configs import DomainConfigs


class HomelabSettings(dg.ConfigurableResource, DomainConfigs):
    """The homelab's settings file (HOMELAB_CONFIG, default ./homelab.yaml).

    Assets read their domain's part as `.backups`, `.credentials` or `.pitr` (homelab_ops.configs),
    or one section from `.settings`; the file is parsed once per process.

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


@dg.definitions
def defs() -> dg.Definitions:
    # Materializations started from the UI or `dagster asset materialize` run in one process too:
    # a process per step costs seconds each on a Pi (every job also chooses this explicitly).
    return dg.Definitions(resources={"homelab": HomelabSettings()}, executor=dg.in_process_executor)
