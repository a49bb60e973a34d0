"""The settings file: bad input fails when the code location loads, naming file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from homelab_ops.settings import SettingsError, load, parse

ROOT = Path(__file__).resolve().parents[2]


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
    ({"backups": {"timeout": "forever"}}, "backups.timeout: 'forever' is not a duration like 90s, 15m (minutes)"),
    ({"postgres": {"databases": 5}}, "postgres.databases"),
    ({"backups": {"max_age_hours": "soon"}}, "backups.max_age_hours: Input should be a valid number"),
    ({"timezone": "Mars/Olympus"}, "timezone: 'Mars/Olympus' is not an IANA time zone"),
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


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path):
    p = write(tmp_path, "backups:\n  local_dir: /srv/backups\n  timeout: 1h\npostgres:\n  databases: [n8n]\n"
                        "backups:\n  timeout: 2h\n")
    with pytest.raises(SettingsError) as e:
        load(p)
    assert str(e.value) == (f"{p}: key 'backups' is written twice in the same mapping, on lines 1 and 6: "
                            "YAML would keep only the second; merge them into one")
    # Nested too; and a YAML merge key followed by an override is not a duplicate.
    p = write(tmp_path, "backups:\n  timeout: 1h\n  zstd_level: 3\n  timeout: 2h\n")
    with pytest.raises(SettingsError, match="key 'timeout' is written twice in the same mapping, on lines 2 and 4"):
        load(p)
    p = write(tmp_path, "x-base: &base {keep_daily: 7, keep_weekly: 4}\nbackups:\n  retention:\n"
                        "    <<: *base\n    keep_daily: 3\n")
    with pytest.raises(SettingsError, match="<top level>: unknown key|x-base: unknown key"):
        load(p)  # the anchor's own top-level key is unknown, but no "written twice"


@pytest.mark.parametrize("data, fragment", [
    ({"backups": {"timeout": "0"}}, "backups.timeout: 0 is zero, which means nothing here"),
    ({"backups": {"timeout": 0}}, "backups.timeout: 0 is zero"),
    ({"backups": {"timeout": "0s"}}, "backups.timeout: 0s is zero"),
    ({"backups": {"timeout": 3600}}, "backups.timeout: 3600 has no unit: write 3600s for seconds"),
    ({"backups": {"timeout": "3600"}}, "backups.timeout: 3600 has no unit: write 3600s for seconds"),
    ({"backups": {"timeout": "1y"}}, "(years and months exist only in retention.keep_within)"),
    ({"health": {"interval": "0m"}}, "health.interval: 0m is zero"),
    ({"credentials": {"managed": {"x": {"kind": "manual", "period": 30}}}},
     "credentials.managed.x.period: 30 has no unit: write 30s"),
    ({"notify": {"telegram": {"timeout": True}}}, "notify.telegram.timeout: True is not a duration"),
])
def test_durations_have_a_unit_and_are_positive_where_zero_means_nothing(tmp_path, data, fragment):
    with pytest.raises(SettingsError) as e:
        load(write(tmp_path, data))
    assert fragment in str(e.value), str(e.value)


def test_durations_that_load():
    s = parse({"backups": {"timeout": "3600s"}, "health": {"remedy_cooldown": 0},
               "monitoring": {"health": {"start_period": "0s"}}, "disk_hygiene": {"run_retention": 0}}, "h.yaml")
    assert s.backups.timeout.seconds == 3600
    assert s.health.remedy_cooldown.seconds == 0  # 0 means something here: no pause between remedies
    assert s.monitoring.health.start_period.seconds == 0
    assert s.disk_hygiene.run_retention.seconds == 0
    assert parse({"backups": {"timeout": "90m"}}, "h.yaml").backups.timeout.seconds == 5400  # m: minutes


@pytest.mark.parametrize("retention, fragment", [
    ({"keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}, "every keep_* rule is 0 and keep_within is unset"),
    ({"keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0, "keep_within": "0d"}, "every keep_* rule is 0"),
    ({"keep_within": "2w"}, "keep_within: invalid duration '2w': invalid unit 'w' found after number 2 "
                            "(restic's units: y, m = months, d, h"),
    ({"keep_within": "30"}, "no unit found after number 30"),
    ({"keep_within": "-1d"}, "negative values are not allowed"),
])
def test_retention_is_validated_at_load(tmp_path, retention, fragment):
    with pytest.raises(SettingsError) as e:
        load(write(tmp_path, {"backups": {"retention": retention}}))
    assert "backups.retention: " in str(e.value) and fragment in str(e.value), str(e.value)
    # m is months in keep_within (restic's syntax), minutes everywhere else
    s = parse({"backups": {"retention": {"keep_within": "6m"}, "timeout": "6m"}}, "h.yaml")
    assert str(s.backups.retention.keep_within) == "6m" and s.backups.timeout.seconds == 360
