"""The code location: everything under `homelab_ops/defs/`, one folder per domain."""

import logging
from pathlib import Path

import dagster as dg

from homelab_ops.files import private_umask, tighten_tree
from homelab_ops.settings import SettingsError, current

# Before anything writes a file: dumps, manifests and the roles dump (SCRAM verifiers) are the
# owner's alone (0600 in 0700 folders), in the code server and in every run worker that imports this.
private_umask()


class _LocationNameNotice(logging.Filter):
    """Dagster warns once per defs folder when a load names the location differently from
    pyproject's `code_location_name` (`homelab_ops`, as the workspace and the code server do):
    `dagster ... -m homelab_ops.definitions` names it after the module. It concerns app-managed
    components only, which this location has none of: 70 lines of noise per command otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "configured on this project does not match the name" not in record.getMessage()


logging.getLogger("dagster.components.core.component_tree").addFilter(_LocationNameNotice())


@dg.definitions
def defs() -> dg.Definitions:
    # The settings are read once, here, before any domain builds: a mistake in the file is then the
    # error the UI and every `dagster` command show (file, key, problem), not the last line of a
    # component-tree traceback naming whichever domain happened to read them first.
    try:
        settings = current()
    except SettingsError as e:
        raise SettingsError(str(e)) from None
    from homelab_ops.notify.redact import install

    install(settings)  # every secret of the settings is redacted from this process's logs, events and output
    tighten_tree(settings.backups.local_dir)  # backups written before the umask become private too
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
