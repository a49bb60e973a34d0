"""Shared fixtures: real PostgreSQL on 127.0.0.1:5432, a moto S3 server on loopback, settings files."""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
import uuid
from pathlib import Path

import boto3
import hypothesis
import psycopg
import pytest
import yaml
from psycopg import sql

from homelab_ops.children import free_port  # noqa: F401 (the tests import it from here)
from homelab_ops.settings import load

# CI explores the same examples every run, so a red CI is reproducible; locally hypothesis roams.
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("HOMELAB_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


# Fixtures that reach PostgreSQL (5432 or a cluster of the test's own), Docker or S3: a test
# using one (directly or through another fixture) is marked `services`, so
# `pytest -m "not services"` runs the pure tests alone, without `make services`. A module that
# reaches a service without these fixtures says so with `pytestmark = pytest.mark.services`.
SERVICE_FIXTURES = frozenset({"state_db", "fresh_state_db", "new_db", "s3_server", "s3_bucket", "docker_client",
                              "scram_pg", "two_authenticated_targets", "redis"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("docker"):
            item.add_marker(pytest.mark.services)


def dsn_for(database: str) -> str:
    return psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=database)


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_exists(name: str) -> bool:
    with psycopg.connect(ADMIN_DSN) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _throwaway_name(request) -> str:
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    return f"{module[:40]}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def state_db(request):
    """A state database name for the test module (homelab-ops creates and migrates it on first use;
    one per test would cost seconds each); dropped after the module."""
    name = _throwaway_name(request)
    yield name
    drop_database(name)


@pytest.fixture
def fresh_state_db(request):
    """The same for one test: for tests that count rows from an empty state."""
    name = _throwaway_name(request)
    yield name
    drop_database(name)


@pytest.fixture(autouse=True)
def _umask_kept():
    """homelab_ops.definitions and the CLI set umask 077 (homelab_ops.files.private_umask) in the
    process that imports or runs them, here this one: every test starts from a shell's 022, so none
    depends on which ran or imported before it (the code's own files carry explicit modes)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def new_db():
    """Factory for uniquely named databases, dropped after the test (with any scratch copies)."""
    made: list[str] = []

    def make(prefix: str = "t", *, create: bool = True) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        made.append(name)
        if create:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    yield make
    for name in made:
        drop_database(name)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 and IAM server on a loopback port, with throwaway credentials."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    name = f"b-{uuid.uuid4().hex[:10]}"
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return client, name


@pytest.fixture
def write_settings(tmp_path):
    """Write a settings file (a dict) and return (path, Settings)."""

    def write(data: dict, name: str = "homelab.yaml"):
        data = {"postgres": {"dsn": ADMIN_DSN, "databases": ["n8n"]},
                "state": {"dsn": dsn_for("homelab_test")},
                **data}
        data.setdefault("backups", {}).setdefault("local_dir", str(tmp_path / "backups"))
        data.setdefault("metrics", {}).setdefault("textfile_dir", str(tmp_path / "textfile"))
        path = Path(tmp_path) / name
        path.write_text(yaml.safe_dump(data))
        return path, load(path)

    return write


@pytest.fixture(scope="session")
def dagster_instance():
    """One `dg.instance_for_test()` for the session: creating its storage costs seconds each time.
    Runs are told apart by run id (`instance.all_logs(result.run_id)`)."""
    import dagster as dg

    with dg.instance_for_test() as instance:
        yield instance


DOCKER_HOST = os.environ.get("HOMELAB_TEST_DOCKER_HOST", "unix:///run/homelab-ops-test/docker.sock")


@pytest.fixture(scope="module")
def instance():
    """One Dagster instance per module: a sensor's cursor starts after what earlier tests there left."""
    import warnings

    import dagster as dg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with dg.instance_for_test() as inst:
            yield inst


@pytest.fixture
def telegram():
    """A fake Telegram Bot API on loopback, for one test."""
    from tests.fake_telegram import FakeTelegram

    fake = FakeTelegram().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def docker_client():
    """The Docker Engine `make test` starts (scripts/dockerd-up.sh); the test fails if none answers."""
    import docker

    client = docker.DockerClient(base_url=DOCKER_HOST, timeout=120)
    client.ping()
    yield client
    client.close()


# --- deploy/Dockerfile's image on the test Engine -----------------------------------------------

def build_context() -> io.BytesIO:
    """Only what the Dockerfile copies: sending the repository would send .venv and var/."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("pyproject.toml", "uv.lock", "README.md", "homelab_ops", "deploy"):
            tar.add(ROOT / name, arcname=name,
                    filter=lambda t: None if "__pycache__" in t.name or t.name.endswith(".pyc") else t)
    buf.seek(0)
    return buf


IMAGE_TAG = "homelab-ops:test"
# The test Engine's base image is a debootstrap of bookworm (scripts/base-image.sh): its
# PostgreSQL client is Debian's 15, and apt.postgresql.org is not reachable from here.
BUILD_ARGS = {"PG_MAJOR": "15", "PG_APT": "debian"}


@pytest.fixture(scope="session")
def base_image(docker_client):
    """deploy/Dockerfile's base tag on the test Engine, made by scripts/base-image.sh (cached)."""
    env = {**os.environ, "DOCKER_HOST": DOCKER_HOST}
    proc = subprocess.run(["bash", str(ROOT / "scripts/base-image.sh")], env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return re.search(r"^ARG PYTHON_IMAGE=(\S+)", (ROOT / "deploy" / "Dockerfile").read_text(), re.M).group(1)


@pytest.fixture(scope="session")
def slow_docker():
    """A client that waits: on vfs, creating a container of this 690 MB image copies it whole."""
    import docker

    client = docker.DockerClient(base_url=DOCKER_HOST, timeout=1800)
    yield client
    client.close()


@pytest.fixture(scope="session")
def built_image(slow_docker, base_image):
    """deploy/Dockerfile built from the repository (layers cached by the Engine between sessions).
    The build's RUN steps use the host's network: the test Engine has no default bridge."""
    image, _ = slow_docker.images.build(fileobj=build_context(), custom_context=True,
                                          dockerfile="deploy/Dockerfile", tag=IMAGE_TAG, rm=True,
                                          buildargs=BUILD_ARGS, network_mode="host", timeout=3600)
    return image
