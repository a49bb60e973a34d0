"""`homelab-ops doctor` against real PostgreSQL, moto's S3, the test Docker Engine and a loopback Telegram."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from homelab_ops.cli import main
from tests.conftest import ADMIN_DSN, DOCKER_HOST, dsn_for, free_port

GOOD_TOKEN = "123456789:AAGoodTokenGoodTokenGoodTokenGood00"
BAD_TOKEN = "987654321:AABadTokenBadTokenBadTokenBadToken1"
DB_PASSWORD = "Pw-not-for-output-7d1f"  # trust auth ignores it; it must still never be printed


class FakeTelegram(BaseHTTPRequestHandler):
    """Bot API's getMe as Telegram answers it, by GET or POST: 200 for the good token, 401 for any other."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def do_GET(self):  # noqa: N802
        good = self.path == f"/bot{GOOD_TOKEN}/getMe"
        body = ({"ok": True, "result": {"id": 123456789, "is_bot": True, "username": "homelab_test_bot"}}
                if good else {"ok": False, "error_code": 401, "description": "Unauthorized"})
        data = json.dumps(body).encode()
        self.send_response(200 if good else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def telegram():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTelegram)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def good(tmp_path, new_db, s3_server, s3_bucket, telegram, docker_client):
    """A settings dict that passes every check; tests break one thing each."""
    _, bucket = s3_bucket
    db = new_db("doc")
    key = tmp_path / "master.key"
    key.write_bytes(Fernet.generate_key() + b"\n")
    key.chmod(0o600)
    return {
        "state": {"dsn": dsn_for(db)},
        "postgres": {"dsn": ADMIN_DSN, "databases": [db]},
        "n8n": {"dsn": dsn_for(db)},
        "backups": {"local_dir": str(tmp_path / "backups"),
                    "s3": {"endpoint_url": s3_server, "bucket": bucket, "prefix": "pi5/"}},
        "docker": {"host": DOCKER_HOST},
        "notify": {"telegram": {"api_base": telegram, "bot_token": GOOD_TOKEN}},
        "credentials": {"key_file": str(key)},
    }


def doctor(write_settings, data: dict, env: dict | None = None):
    path, _ = write_settings(data)
    result = CliRunner().invoke(main, ["--config", str(path), "doctor"], env=env or {})
    lines = result.stdout.splitlines()
    for secret in (GOOD_TOKEN, BAD_TOKEN, DB_PASSWORD, os.environ.get("AWS_SECRET_ACCESS_KEY", "x" * 9)):
        assert secret not in result.output, f"a secret was printed:\n{result.output}"
    return result, lines


def line_for(lines: list[str], name: str) -> str:
    found = [line for line in lines if line[6:].startswith(f"{name}:")]  # status is padded to 4, then 2 spaces
    assert len(found) == 1, f"no single {name!r} line in:\n" + "\n".join(lines)
    return found[0]


def test_a_good_deployment_passes_every_check(write_settings, good, s3_bucket):
    client, bucket = s3_bucket
    path, _ = write_settings(good)
    # Through the installed console script: that is how an owner runs it inside the container.
    proc = subprocess.run([str(Path(sys.executable).with_name("homelab-ops")), "--config", str(path), "doctor"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HOMELAB_CONFIG": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    names = ["settings", "state database", "postgres admin", "postgres databases", "pg_dump", "n8n database",
             "backup folder", "s3 " + bucket, "docker", "fstrim", "container logs", "telegram", "master key file"]
    for name in names:
        assert line_for(lines, name).startswith("ok "), proc.stdout
    assert line_for(lines, "pi throttling").startswith("skip"), proc.stdout  # this machine is no Pi
    assert len(lines) == len(names) + 1
    assert "@homelab_test_bot" in line_for(lines, "telegram")
    assert GOOD_TOKEN not in proc.stdout + proc.stderr
    # The probe object is gone: the doctor leaves nothing in the bucket.
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_unreachable_database_fails_with_a_fix(write_settings, good):
    good["n8n"] = {"dsn": f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:{free_port()}/n8n"}
    result, lines = doctor(write_settings, good)
    assert result.exit_code == 1
    line = line_for(lines, "n8n database")
    assert line.startswith("FAIL") and "-> fix: start PostgreSQL or correct host/port in n8n.dsn" in line
    assert line_for(lines, "postgres admin").startswith("ok")  # one failure does not hide the others


def test_wrong_bucket_fails_with_a_fix(write_settings, good, s3_server):
    good["backups"]["s3"] = {"endpoint_url": s3_server, "bucket": "no-such-bucket-here", "prefix": "pi5/"}
    result, lines = doctor(write_settings, good)
    assert result.exit_code == 1
    line = line_for(lines, "s3 no-such-bucket-here")
    assert line.startswith("FAIL") and "NoSuchBucket" in line
    assert "-> fix: create bucket 'no-such-bucket-here' or correct backups.s3 bucket" in line


def test_key_file_readable_by_others_fails_with_a_fix(write_settings, good):
    key = Path(good["credentials"]["key_file"])
    key.chmod(0o644)
    result, lines = doctor(write_settings, good)
    assert result.exit_code == 1
    line = line_for(lines, "master key file")
    assert line.startswith("FAIL") and "mode 0644" in line and f"-> fix: chmod 600 {key}" in line
    assert key.read_bytes().strip().decode() not in result.output


def test_an_env_template_the_rotation_would_refuse_fails_with_the_text_to_write(write_settings, good, tmp_path):
    """After the upgrade to the Jinja2 form, the owner hears it from doctor, not from a failed rotation."""
    template = tmp_path / "env.template"
    template.write_text('# compose reads this\nN8N_DB_PASSWORD={{ cred "n8n_db" }}\nPLAIN=1\n')
    good["credentials"]["env_template"] = str(template)
    result, lines = doctor(write_settings, good)
    assert result.exit_code == 1
    line = line_for(lines, "env template")
    assert line.startswith("FAIL") and f"{template}:" in line
    assert 'line 2: write {{ cred("n8n_db") }} instead of {{ cred "n8n_db" }}' in line
    assert '-> fix: placeholders are {{ cred("name") }}' in line

    template.write_text('N8N_DB_PASSWORD={{ cred("n8n_db") }}\nTRAEFIK_USERS={{ cred("grafana", "htpasswd") }}\n')
    result, lines = doctor(write_settings, good)
    assert line_for(lines, "env template").startswith("ok") and "2 credential(s): grafana, n8n_db" in result.output


def test_bad_telegram_token_fails_without_printing_it(write_settings, good):
    del good["notify"]["telegram"]["bot_token"]  # from the environment, as the .env provides it
    result, lines = doctor(write_settings, good, env={"TELEGRAM_BOT_TOKEN": BAD_TOKEN})
    assert result.exit_code == 1
    line = line_for(lines, "telegram")
    assert line.startswith("FAIL") and "rejected the bot token (HTTP 401)" in line
    assert "-> fix: copy the token from @BotFather" in line
    assert BAD_TOKEN not in result.output and BAD_TOKEN.split(":")[1] not in result.output


def test_invalid_settings_fail_first_and_alone(tmp_path):
    path = tmp_path / "homelab.yaml"
    path.write_text("postgres:\n  databses: [n8n]\n")
    result = CliRunner().invoke(main, ["--config", str(path), "doctor"])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [result.stdout.splitlines()[0]]
    line = result.stdout.splitlines()[0]
    assert line.startswith("FAIL  settings:") and "postgres.databses" in line and "-> fix:" in line


def test_pi_throttling_is_read_from_the_firmware_sysfs_file_or_doctor_fails_with_the_fix(tmp_path):
    """A Pi's /sys as the container sees it (no Pi here: the files the firmware driver makes)."""
    from homelab_ops.doctor import check_throttling
    from homelab_ops.metrics.collect import Snapshot, read_throttled_sysfs
    from homelab_ops.settings import Settings

    sys_root = tmp_path / "sys"
    (sys_root / "firmware/devicetree/base").mkdir(parents=True)
    (sys_root / "firmware/devicetree/base/model").write_text("Raspberry Pi 5 Model B Rev 1.0\x00")
    settings = Settings.model_validate({"metrics": {"sys_root": str(sys_root), "vcgencmd": "no-such-vcgencmd"}})
    missing = check_throttling(settings.metrics)
    assert missing.failed and "/sys:/host/sys:ro" in missing.fix
    fw = sys_root / "devices/platform/soc@107c000000/soc@107c000000:firmware"
    fw.mkdir(parents=True)
    (fw / "get_throttled").write_text("50005\n")  # drivers/firmware/raspberrypi.c prints "%x\n"
    found = check_throttling(settings.metrics)
    assert not found.failed and found.detail.endswith("get_throttled: word 0x50005"), found
    from datetime import datetime, timezone
    snap = Snapshot(taken_at=datetime.now(timezone.utc))
    assert read_throttled_sysfs(snap, str(sys_root))
    got = {(s.labels.get("flag"), s.labels.get("when")): s.value for s in snap.samples
           if s.metric == "homelab_pi_throttled"}
    assert got[("under_voltage", "now")] == 1.0 and got[("throttled", "now")] == 1.0
    assert got[("under_voltage", "since_boot")] == 1.0 and got[("soft_temperature_limit", "now")] == 0.0


def test_without_cap_sys_admin_or_readable_logs_doctor_fails_with_the_fix(write_settings, good):
    """As the compose file runs the code server: not root, no capabilities (setpriv drops them)."""
    import shutil
    if not shutil.which("setpriv"):
        pytest.fail("setpriv (util-linux) is needed to drop capabilities")
    import tempfile
    src, _ = write_settings(good)
    folder = Path(tempfile.mkdtemp(prefix="homelab-doctor-"))  # pytest's tmp folders are root-only
    folder.chmod(0o755)
    path = folder / "homelab.yaml"
    shutil.copy(src, path)
    path.chmod(0o644)
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                           "--bounding-set=-all", str(Path(sys.executable).with_name("homelab-ops")),
                           "--config", str(path), "doctor"],
                          capture_output=True, text=True, timeout=180, env={**os.environ, "HOMELAB_CONFIG": ""})
    shutil.rmtree(folder)
    assert proc.returncode != 0, proc.stdout
    fstrim = line_for(proc.stdout.splitlines(), "fstrim")
    assert fstrim.startswith("FAIL") and "lacks CAP_SYS_ADMIN" in fstrim and "fstrim.timer" in proc.stdout
