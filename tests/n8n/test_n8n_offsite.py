"""n8n's extras off-site: copied by the off-site step with the dump, restored from S3 alone (the disaster-recovery path)."""

from __future__ import annotations

import json
import stat

import dagster as dg
import psycopg
import pyrage
from click.testing import CliRunner

from homelab_ops.backups.config import BackupsConfig
from homelab_ops.cli import main
from homelab_ops.defs.backups.assets import backup_asset, offsite_asset
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.n8n import keys
from tests.conftest import ADMIN_DSN, database_exists, dsn_for

KEY = "offsite-test-key-0123456789"


def test_restore_from_s3_alone_brings_back_the_key_and_binary_data(new_db, write_settings, s3_server, s3_bucket,
                                                                   tmp_path, monkeypatch, dagster_instance):
    _, bucket = s3_bucket
    ident = pyrage.x25519.Identity.generate()
    (tmp_path / "id.key").write_text(str(ident) + "\n")
    src = new_db("n8ns3")
    with psycopg.connect(dsn_for(src), autocommit=True) as conn:
        conn.execute("CREATE TABLE credentials_entity (id varchar(36), name text, type text, data text)")
    binary = tmp_path / "binaryData"
    binary.mkdir()
    (binary / "file.bin").write_bytes(b"\x00\x01binary")
    monkeypatch.setenv("TEST_N8N_KEY", KEY)
    path, settings = write_settings({
        "postgres": {"dsn": ADMIN_DSN, "databases": [src]},
        "backups": {"s3": {"bucket": bucket, "endpoint_url": s3_server, "prefix": "pi/"},
                    "encryption": {"age_recipients": [str(ident.to_public())],
                                   "identity_file": str(tmp_path / "id.key")}},
        "n8n": {"dsn": dsn_for(src), "encryption_key": "${TEST_N8N_KEY}", "binary_data_dir": str(binary)}})
    backup = backup_asset(src, BackupsConfig.of(settings))
    dg.materialize([backup, offsite_asset(src, backup.key, BackupsConfig.of(settings))],
                   resources={"homelab": HomelabSettings(config_path=str(path))}, instance=dagster_instance)
    # the local copy is gone (the Pi died): only S3 is left
    local = tmp_path / "backups" / src
    for p in local.iterdir():
        p.unlink()
    # a folder that already holds binary data is refused before any work: no database is made
    taken = tmp_path / "taken" / ".n8n"
    (taken / "binaryData").mkdir(parents=True)
    into = new_db("n8ns3r", create=False)
    refused = CliRunner().invoke(main, ["--config", str(path), "n8n", "restore", "--from", "s3",
                                        "--into", into, "--config-out", str(taken)])
    assert refused.exit_code == 1 and f"{taken / 'binaryData'} already exists" in refused.output, refused.output
    assert not (taken / "config").exists() and not database_exists(into)
    out = tmp_path / "new" / ".n8n"
    run = CliRunner().invoke(main, ["--config", str(path), "n8n", "restore", "--from", "s3",
                                    "--into", into, "--config-out", str(out)])
    assert run.exit_code == 0, run.output
    assert json.loads((out / "config").read_text()) == {"encryptionKey": KEY}
    assert stat.S_IMODE((out / "config").stat().st_mode) == 0o600
    assert (out / "binaryData" / "file.bin").read_bytes() == b"\x00\x01binary"
    assert keys.fingerprint(KEY) in run.output and KEY not in run.output


def test_key_read_from_the_n8n_container_through_the_engine_api(docker_client, write_settings):
    """n8n.container: /home/node/.n8n/config read with the Engine API (no exec, no shell in the image)."""
    import io
    import tarfile
    import uuid

    from tests.conftest import DOCKER_HOST
    from tests.docker_images import busybox_image

    name = f"homelab-test-n8n-{uuid.uuid4().hex[:8]}"
    container = docker_client.containers.create(busybox_image(docker_client), command=["true"], name=name)
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for d in ("home", "home/node", "home/node/.n8n"):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            data = json.dumps({"encryptionKey": KEY}).encode()
            info = tarfile.TarInfo("home/node/.n8n/config")
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
        container.put_archive("/", buf.getvalue())
        _, settings = write_settings({"docker": {"host": DOCKER_HOST}, "n8n": {"dsn": "postgresql:///x",
                                                                             "container": name}})
        key = keys.read_key(BackupsConfig.of(settings))
        assert key.value == KEY and key.source == f"n8n.container {name}"
        _, missing = write_settings({"docker": {"host": DOCKER_HOST},
                                     "n8n": {"dsn": "postgresql:///x", "container": name + "-gone"}})
        try:
            keys.read_key(BackupsConfig.of(missing))
            raise AssertionError("a missing container must be named")
        except keys.KeyError_ as e:
            assert name + "-gone" in str(e) and "n8n.container" in str(e)
    finally:
        container.remove(force=True)


def test_the_manifest_records_the_keys_fingerprint_and_a_set_that_disagrees_is_refused(
        new_db, write_settings, tmp_path, monkeypatch, dagster_instance):
    """The completeness marker itself says which key the set needs; a sidecar from another set is caught
    before anything is restored."""
    ident = pyrage.x25519.Identity.generate()
    (tmp_path / "id.key").write_text(str(ident) + "\n")
    src = new_db("n8nfp")
    with psycopg.connect(dsn_for(src), autocommit=True) as conn:
        conn.execute("CREATE TABLE credentials_entity (id varchar(36), name text, type text, data text)")
    monkeypatch.setenv("TEST_N8N_KEY", KEY)
    path, settings = write_settings({
        "postgres": {"dsn": ADMIN_DSN, "databases": [src]},
        "backups": {"encryption": {"age_recipients": [str(ident.to_public())],
                                   "identity_file": str(tmp_path / "id.key")}},
        "n8n": {"dsn": dsn_for(src), "encryption_key": "${TEST_N8N_KEY}"}})
    config = BackupsConfig.of(settings)
    dg.materialize([backup_asset(src, config)], resources={"homelab": HomelabSettings(config_path=str(path))},
                   instance=dagster_instance)
    local = tmp_path / "backups" / src
    (manifest,) = local.glob("*.manifest.json")
    text = manifest.read_text()
    assert json.loads(text)["n8n_key_fingerprint"] == keys.fingerprint(KEY) and KEY not in text
    (sidecar,) = local.glob("*.n8n.json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "key_fingerprint": "0000000000000000"}))
    into = new_db("n8nfpr", create=False)
    run = CliRunner().invoke(main, ["--config", str(path), "n8n", "restore", "--into", into,
                                    "--config-out", str(tmp_path / "out")])
    assert run.exit_code == 1, run.output
    assert f"records {keys.fingerprint(KEY)}" in run.output and "not one backup set" in run.output
    with psycopg.connect(ADMIN_DSN) as conn:  # refused before any work
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (into,)).fetchone() is None
