"""The settings file: bad input fails when the code location loads, naming file, key and problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from homelab_ops.settings import SettingsError, load, parse

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, data) -> Path:
    p = tmp_path / "homelab.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_example_file_is_valid_and_documents_the_contract_keys():
    text = (ROOT / "homelab.example.yaml").read_text()
    s = parse(yaml.safe_load(text), "homelab.example.yaml",
              env={"S3_ACCESS_KEY_ID": "x", "TELEGRAM_BOT_TOKEN": "123:abc", "N8N_DB_PASSWORD": "pw"})
    assert s.timezone == "Europe/Berlin"
    assert s.state.dsn.get_secret_value().endswith("/homelab")
    assert s.backups.s3[0].bucket == "homelab-backups" and s.backups.s3[0].prefix == "pi5/"
    for key in ("timezone:", "state:", "postgres:", "databases:", "local_dir:", "endpoint_url:", "bucket:",
                "prefix:", "region:", "n8n:"):
        assert key in text


@pytest.mark.parametrize("data, fragment", [
    ({"n8n": {}}, "n8n.dsn: required key is missing"),
    ({"backups": {"timeout": "forever"}}, "backups.timeout: String should match pattern"),
    ({"postgres": {"databases": 5}}, "postgres.databases"),
    ({"backups": {"max_age_hours": "soon"}}, "backups.max_age_hours: Input should be a valid number"),
    ({"timezone": "Mars/Olympus"}, "timezone: Value error, 'Mars/Olympus' is not an IANA time zone"),
    ({"backups": {"local_dirr": "/x"}}, "backups.local_dirr: unknown key"),
    ({"backups": {"encryption": {"age_recipients": ["nope"]}}}, "is not an age X25519 public key"),
    ({"backups": {"s3": {"prefix": "x/"}}}, "backups.s3.0.bucket: required key is missing"),
])
def test_bad_settings_name_file_key_and_problem(tmp_path, data, fragment):
    p = write(tmp_path, data)
    with pytest.raises(SettingsError) as e:
        load(p)
    assert str(p) in str(e.value) and fragment in str(e.value)


def test_interpolation_and_missing_variable(tmp_path, monkeypatch):
    p = write(tmp_path, {"n8n": {"dsn": "postgresql://n8n:${N8N_PW}@127.0.0.1/n8n"}})
    monkeypatch.setenv("N8N_PW", "s3cret")
    s = load(p)
    assert s.n8n.dsn.get_secret_value().endswith("n8n:s3cret@127.0.0.1/n8n")
    assert "s3cret" not in repr(s) and "s3cret" in s.secrets()
    monkeypatch.delenv("N8N_PW")
    with pytest.raises(SettingsError, match=r"n8n\.dsn: environment variable N8N_PW is not set"):
        load(p)


def test_secret_values_never_appear_in_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("PW", "hunter2hunter2")
    p = write(tmp_path, {"state": {"dsn": "postgresql://a:${PW}@h/db", "extra": 1}})
    with pytest.raises(SettingsError) as e:
        load(p)
    assert "hunter2" not in str(e.value)


def test_explicit_path_must_exist(tmp_path):
    with pytest.raises(SettingsError, match="settings file not found"):
        load(tmp_path / "missing.yaml")


def test_code_location_refuses_to_load_with_bad_settings(tmp_path):
    p = write(tmp_path, {"backups": {"timeout": "forever"}})
    env = {**os.environ, "HOMELAB_CONFIG": str(p)}
    proc = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-m",
                           "homelab_ops.definitions"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode != 0
    assert "backups.timeout" in proc.stdout + proc.stderr and str(p) in proc.stdout + proc.stderr
