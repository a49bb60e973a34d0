"""The settings file is parsed once and enters the code at a few named doors; everything else takes
its part (docs/extending.md, "What a function may read of the settings")."""

import ast
from pathlib import Path

import homelab_ops

PACKAGE = Path(homelab_ops.__file__).parent

# (file, function): each builds a domain's config from the file, or reads every domain at once.
DOORS = {
    *((f"{domain}/config.py", "of") for domain in ("backups", "credentials", "deploy", "health", "maintenance",
                                                   "metrics", "n8n", "notify", "pitr")),
    ("recovery.py", "of"),  # RecoveryConfig: backups' leftovers, the alert path, the UI's address
    ("health/checks.py", "from_settings"),  # Thresholds: `thresholds:` plus the two derived defaults
    ("notify/redact.py", "settings_secrets"),  # the walk that finds every secret of the file
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


def test_steps_and_sensors_read_their_domains_config_not_the_whole_file():
    """Inside an asset, check, op or sensor the `homelab` resource gives a domain's config
    (`homelab.backups`, `homelab.metrics`, `homelab.notify` ...), never `homelab.settings`: a step
    cannot read the bot token or another domain's keys by accident. The file is read whole only at
    load, by each domain's `defs()` (and the Docker resource it builds), which hands its factories parts."""
    strays, loaders = [], set()
    for path in sorted((PACKAGE / "defs").rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text())
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(fn):
                if (isinstance(node, ast.Attribute) and node.attr == "settings"
                        and isinstance(node.value, ast.Name) and node.value.id == "homelab"):
                    strays.append(f"{rel}:{node.lineno} homelab.settings")
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "current":
                    loaders.add((rel, fn.name))
    assert not strays, f"read the domain's config from the resource: {sorted(set(strays))}"
    assert {(rel, name) for rel, name in loaders if not (rel.endswith("/defs.py") and name == "defs")} == {
        ("defs/deploy/resources.py", "docker_resource")}
