"""Resources shared by every domain: the settings file and what it points at."""



import dagster as dg
from pydantic import PrivateAttr

from homelab_ops import settings as settings_mod


class HomelabSettings(dg.ConfigurableResource):
    """The homelab's settings file (HOMELAB_CONFIG, default ./homelab.yaml).

    Assets read their section from `.settings`; the file is parsed once per process.
    """

    config_path: str | None = None
    _settings: settings_mod.Settings | None = PrivateAttr(default=None)

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
