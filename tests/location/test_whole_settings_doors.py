"""The settings file is parsed once and enters the code at a few named doors; everything else takes
its part (docs/extending.md, "What a function may read of the settings")."""

import ast
from pathlib import Path

import homelab_ops

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
    ("defs/resources.py", "setting_at"),  # PostgresResource: a DSN by the settings key its UI page names
}


def functions_taking_settings() -> dict[tuple[str, str], int]:
    """(path below the package, name) -> line of every function with a parameter named `settings`."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
                if "settings" in names:
                    found[(rel, node.name)] = node.lineno
    return found


def test_the_whole_settings_enter_only_at_the_doors():
    """A new function that takes the whole settings fails here. Give it its domain's config (the table
    in docs/extending.md: `backup_asset(name, BackupsConfig)`, `run(config: HealthConfig, now)`), a
    section and the zone (`host_metrics_daily_asset(metrics, zone)`) or a value; or name it a door
    above, with the reason. A door that no longer takes the settings fails too."""
    taking = functions_taking_settings()
    strays = [f"{path}:{line} {name}" for (path, name), line in taking.items() if (path, name) not in DOORS]
    assert not strays, f"take the domain's config, a section or a value: {strays}"
    assert set(taking) == DOORS, f"doors that no longer take the settings: {DOORS - set(taking)}"
