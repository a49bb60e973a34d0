"""A mistake in the settings file is what `dagster` commands (and the UI's code-location error,
which shows the same serialized error) put first: file, key and problem, not a component tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_a_settings_error_is_the_error_dagster_shows(tmp_path):
    bad = tmp_path / "homelab.yaml"
    bad.write_text("backups:\n  timeout: soon\n")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    env = {**os.environ, "HOMELAB_CONFIG": str(bad), "DAGSTER_HOME": str(home)}
    dagster = Path(sys.executable).with_name("dagster")
    out = subprocess.run([str(dagster), "definitions", "validate", "-m", "homelab_ops.definitions"],
                         env=env, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    lines = [ln for ln in text.splitlines() if ln.strip()]
    error_at = next(i for i, ln in enumerate(lines) if "SettingsError" in ln)
    assert str(bad) in lines[error_at] and "backups.timeout" in lines[error_at + 1]
    assert "ComponentTreeException" not in text and "├──" not in text
    # The module path loads under the location name the workspace uses: no mismatch warning per folder.
    assert "does not match the name" not in text
    assert len(lines) < 20, text
