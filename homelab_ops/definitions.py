"""The code location: everything under `homelab_ops/defs/`, one folder per domain."""

import warnings
from pathlib import Path

import dagster as dg

from homelab_ops.files import private_umask, tighten_tree
from homelab_ops.settings import SettingsError, current

# Before anything writes a file: dumps, manifests and the roles dump (SCRAM verifiers) are the
# owner's alone (0600 in 0700 folders), in the code server and in every run worker that imports this.
private_umask()


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

    install(settings.secrets())  # every secret of the settings is redacted from this process's logs, events and output
    tighten_tree(settings.backups.local_dir)  # backups written before the umask become private too
    # From the module, not from pyproject's [tool.dg]: the image installs the package into
    # site-packages, where no pyproject.toml or dg.toml is found above it.
    import homelab_ops.defs

    with warnings.catch_warnings():  # Dagster's notes on its own preview and beta APIs, as load_from_defs_folder
        warnings.simplefilter("ignore", dg.PreviewWarning)
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.ComponentTree.from_module(defs_module=homelab_ops.defs,
                                            project_root=Path(__file__).parent.parent).build_defs()
