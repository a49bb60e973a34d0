"""Disk hygiene: real fstrim on this host's filesystems, container logs from the test Docker Engine."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest
from docker.types import LogConfig

from homelab_ops.maintenance import hygiene as h
from homelab_ops.defs.maintenance.assets import disk_hygiene
from homelab_ops.defs.resources import HomelabSettings
from tests import docker_images
from tests.conftest import DOCKER_HOST


def test_fstrim_words_become_states():
    ok = h.classify_fstrim("/", 0, "/: 1.2 GiB (1288490188 bytes) trimmed\n", "")
    assert (ok.state, ok.trimmed_bytes) == ("trimmed", 1288490188)
    cases = {
        "fstrim: /boot: the discard operation is not supported": "not supported",
        "fstrim: /: FITRIM ioctl failed: Operation not permitted": "not permitted",
        "fstrim: stat of /nope failed: No such file or directory": "no such mount",
        "fstrim: /: FITRIM ioctl failed: Input/output error": "failed",
    }
    for stderr, state in cases.items():
        assert h.classify_fstrim("/x", 1, "", stderr).state == state


def test_fstrim_on_this_host(tmp_path):
    results = {r.mount: r for r in h.trim(["/dev/shm", str(tmp_path / "missing")])}
    assert results["/dev/shm"].state == "not supported"  # tmpfs cannot discard
    assert results[str(tmp_path / "missing")].state == "no such mount"


def test_fstrim_without_the_privilege_is_not_permitted():
    """Run as `nobody` (the test runs as root in CI); a user that may not trim gets a state, not a crash."""
    code = "from homelab_ops.maintenance.hygiene import trim; r = trim(['/'])[0]; print(r.state)"
    cmd = [sys.executable, "-c", code]
    if os.getuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[2], check=True)
    assert out.stdout.strip() == "not permitted"


def test_no_docker_daemon_is_a_state(tmp_path):
    logs = h.container_logs(f"unix://{tmp_path}/docker.sock", timeout=2)
    assert logs.state == "no docker daemon" and "docker.host" in logs.detail and logs.containers == []


def test_container_log_states_from_inspect_fields(tmp_path):
    (tmp_path / "x-json.log").write_bytes(b"z" * 10)
    base = {"Name": "/web", "HostConfig": {"LogConfig": {"Type": "json-file", "Config": {"max-size": "10m"}}}}
    assert h.container_log({**base, "LogPath": str(tmp_path / "x-json.log")}) == h.ContainerLog(
        "web", "json-file", "ok", 10, "10m", str(tmp_path / "x-json.log"))
    assert h.container_log({**base, "LogPath": str(tmp_path / "absent.log")}).state == "not readable"
    journald = {"Name": "/db", "LogPath": "", "HostConfig": {"LogConfig": {"Type": "journald", "Config": {}}}}
    assert h.container_log(journald).state == "other driver"


@pytest.fixture
def chatty_containers(docker_client):
    """A container that wrote ~20 KB to a json log rotated at 2 KB, and one that logs nowhere."""
    image = docker_images.busybox_image(docker_client)
    tag = uuid.uuid4().hex[:8]
    script = "i=0; while [ $i -lt 200 ]; do echo 0123456789abcdef0123456789abcdef0123456789; i=$((i+1)); done"
    chatty = docker_client.containers.run(
        image, ["sh", "-c", script], name=f"hygiene-chatty-{tag}", detach=True, network_mode="none",
        log_config=LogConfig(type="json-file", config={"max-size": "2k", "max-file": "3"}))
    quiet = docker_client.containers.create(image, ["true"], name=f"hygiene-quiet-{tag}", network_mode="none",
                                            log_config=LogConfig(type="none"))
    try:
        chatty.wait(timeout=60)
        yield chatty.name, quiet.name
    finally:
        for c in (chatty, quiet):
            c.remove(force=True)


@pytest.mark.docker
def test_container_logs_from_the_docker_engine(chatty_containers):
    chatty, quiet = chatty_containers
    logs = {c.name: c for c in h.container_logs(DOCKER_HOST).containers}
    c = logs[chatty]
    assert c.state == "ok" and c.max_size == "2k" and c.driver == "json-file"
    live = os.stat(c.path).st_size
    assert live <= 2048 < c.log_bytes  # the rotated files count too
    assert logs[quiet].state == "other driver" and logs[quiet].log_bytes is None


@pytest.mark.docker
def test_disk_hygiene_asset_reports_states_not_crashes(write_settings, tmp_path, chatty_containers):
    chatty, _ = chatty_containers
    path, _ = write_settings({"disk_hygiene": {"fstrim_mounts": ["/dev/shm"]}, "docker": {"host": DOCKER_HOST}})
    result = dg.materialize([disk_hygiene], resources={"homelab": HomelabSettings(config_path=str(path))})
    meta = result.asset_materializations_for_node("disk_hygiene")[0].metadata
    assert meta["fstrim"].value.records[0].data["state"] == "not supported"
    rows = {r.data["container"]: r.data for r in meta["container_logs"].value.records}
    assert rows[chatty]["log_bytes"] > 2048 and rows[chatty]["max_size"] == "2k"
    assert meta["container_log_bytes"].value >= rows[chatty]["log_bytes"]
    assert meta["docker"].value.startswith("ok")

    path, _ = write_settings({"disk_hygiene": {"fstrim_mounts": ["/dev/shm"]},
                              "docker": {"host": f"unix://{tmp_path}/absent.sock"}}, name="nodocker.yaml")
    result = dg.materialize([disk_hygiene], resources={"homelab": HomelabSettings(config_path=str(path))})
    meta = result.asset_materializations_for_node("disk_hygiene")[0].metadata
    assert meta["docker"].value.startswith("no docker daemon") and meta["container_log_bytes"].value == 0


@pytest.mark.docker
def test_a_helper_left_behind_by_a_killed_run_is_removed_by_the_next_one(docker_client):
    """A run killed while its helper existed (or a create that timed out after the Engine made the
    container, or a remove that failed) leaves a labelled container; the next helper run removes the
    stale ones, and leaves a fresh one alone: it may be another run's, between create and start."""
    image = docker_images.psql_image(docker_client)  # any small image with a shell
    label = dict([h.HELPER_LABEL.split("=")])
    created = docker_client.containers.create(image, ["true"], labels=label, network_mode="none")
    exited = docker_client.containers.run(image, ["true"], labels=label, network_mode="none", detach=True)
    exited.wait(timeout=60)
    try:
        fresh = h.Helper(DOCKER_HOST, image)  # the deployed default: only containers an hour old go
        assert fresh.run(["sh", "-c", "echo out; echo err >&2; exit 3"], binds={}) == (3, "out\n", "err\n")
        left = {c.id for c in docker_client.containers.list(all=True, filters={"label": h.HELPER_LABEL})}
        assert left == {created.id, exited.id}  # the run's own helper is gone, the young ones stay

        stale = h.Helper(DOCKER_HOST, image, stale_after=0)  # as if an hour had passed
        assert stale.run(["true"], binds={})[0] == 0
        assert not docker_client.containers.list(all=True, filters={"label": h.HELPER_LABEL})
    finally:
        for c in (created, exited):
            try:
                c.remove(force=True)
            except Exception:
                pass
