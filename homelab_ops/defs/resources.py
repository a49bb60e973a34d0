"""Resources shared by every domain: the settings file and what it points at."""

import dagster as dg
from pydantic import PrivateAttr

from homelab_ops import recovery
from homelab_ops import settings as settings_mod
from homelab_ops.backups.config import BackupsConfig
from homelab_ops.credentials.config import CredentialsConfig
from homelab_ops.pitr.config import PitrConfig


class HomelabSettings(dg.ConfigurableResource):
    """The homelab's settings file (HOMELAB_CONFIG, default ./homelab.yaml).

    Assets read their section from `.settings`; the file is parsed once per process.

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
            recovery.start_run(self.settings, context.instance, context.run.run_id, context.log)

    @property
    def settings(self) -> settings_mod.Settings:
        if self._settings is None:
            self._settings = settings_mod.current(self.config_path)
        return self._settings

    @property
    def pitr(self) -> PitrConfig:
        """What point-in-time recovery reads of the settings, for its assets and sensor."""
        return PitrConfig.of(self.settings)

    @property
    def backups(self) -> BackupsConfig:
        """What the backups, their sources and n8n's backup set read of the settings, for their assets."""
        return BackupsConfig.of(self.settings)

    @property
    def credentials(self) -> CredentialsConfig:
        """What the credential store and its rotations read of the settings, for the credential assets."""
        return CredentialsConfig.of(self.settings)


@dg.definitions
def defs() -> dg.Definitions:
    # Materializations started from the UI or `dagster asset materialize` run in one process too:
    # a process per step costs seconds each on a Pi (every job also chooses this explicitly).
    return dg.Definitions(resources={"homelab": HomelabSettings()}, executor=dg.in_process_executor)
