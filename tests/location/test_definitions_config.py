"""The definitions parse the settings once and hand each factory its part (docs/extending.md,
"What a function may read of the settings")."""

from pathlib import Path

import homelab_ops
from tests.settings_doors import functions_taking_settings

DEFS = Path(homelab_ops.__file__).parent / "defs"


def test_no_definitions_factory_takes_the_whole_settings():
    """A factory takes its domain's config (`backup_asset(name, BackupsConfig)`), a section and the
    zone (`host_metrics_daily_asset(metrics, zone)`), or a value (`build_digest(at, zone)`); the
    alert channels resource takes NotifyConfig."""
    found = functions_taking_settings(DEFS, set())
    assert not found, f"take the domain's config or section instead: {found}"
