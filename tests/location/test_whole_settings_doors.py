"""The settings file is parsed once and enters the code at a few named doors; everything else takes
its part (docs/extending.md, "What a function may read of the settings")."""

from pathlib import Path

import homelab_ops
from tests.settings_doors import functions_taking_settings

PACKAGE = Path(homelab_ops.__file__).parent

# (file, function): each builds a domain's config from the file, or reads every domain at once.
DOORS = {
    *((f"{domain}/config.py", "of") for domain in ("backups", "credentials", "deploy", "health", "notify", "pitr")),
    ("recovery.py", "of"),  # RecoveryConfig: backups' leftovers, the alert path, the UI's address
    ("health/checks.py", "from_settings"),  # Thresholds: `thresholds:` plus the two derived defaults
    ("health/machine.py", "from_settings"),  # the sensor's alert policy (health.*)
    ("notify/redact.py", "settings_secrets"),  # the walk that finds every secret of the file
    ("notify/digest.py", "gather"),  # the daily digest: one message about every domain
    ("doctor.py", "_checks"),  # `homelab-ops doctor`: one check per part of the file
}


def test_no_definitions_factory_takes_the_whole_settings():
    """A factory takes its domain's config (`backup_asset(name, BackupsConfig)`), a section and the
    zone (`host_metrics_daily_asset(metrics, zone)`), or a value (`build_digest(at, zone)`); the
    resources' methods take a domain config (`alert_channels.dispatcher(NotifyConfig)`)."""
    found = functions_taking_settings(PACKAGE / "defs", set())
    assert not found, f"take the domain's config or section instead: {found}"


def test_the_whole_settings_enter_only_at_the_doors():
    """A new function that takes the whole settings fails here: give it its domain's config, a
    section or a value, or name it a door above with the reason."""
    taking = {(f.split(":")[0], f.split(" ")[1]): f for f in functions_taking_settings(PACKAGE, set())}
    assert not [f for key, f in taking.items() if key not in DOORS], taking
    assert set(taking) == DOORS, f"doors that no longer take the settings: {DOORS - set(taking)}"
