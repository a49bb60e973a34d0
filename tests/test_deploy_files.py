"""deploy/: the compose file as docker-compose reads it, the instance configs as Dagster loads them,
and the image as the local Docker Engine builds it."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from tests.conftest import ADMIN_DSN

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def dotenv(path: Path) -> dict[str, str]:
    """The example .env as compose reads it: inline comments dropped, single quotes literal."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Z_][A-Z0-9_]*)=(?:'([^']*)'|(\S*))", line)
        if m:
            out[m.group(1)] = m.group(2) if m.group(2) is not None else m.group(3)
    return out


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory) -> dict:
    """`docker-compose config` on a copy of deploy/ with the example .env as deploy/.env."""
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(DEPLOY, repo / "deploy")
    shutil.copy(DEPLOY / ".env.example", repo / "deploy" / ".env")
    (repo / "deploy" / "homelab.yaml").write_text("timezone: Europe/Berlin\n")
    proc = subprocess.run(["docker-compose", "-f", str(repo / "deploy" / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, cwd=repo, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_compose_file_is_valid_with_the_sample_env(compose_config):
    services = compose_config["services"]
    # `up -d` starts these; the WAL receiver only with `--profile pitr`
    assert {n for n, svc in services.items() if not svc.get("profiles")} == {"code-server", "webserver", "daemon"}
    assert services["wal_receiver"]["profiles"] == ["pitr"]
    env = dotenv(DEPLOY / ".env.example")
    for name, svc in services.items():
        if name == "wal_receiver":
            continue
        assert svc["image"] == env["HOMELAB_OPS_IMAGE"]
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert svc["build"]["args"]["PG_MAJOR"] == env["PG_MAJOR"]
        assert svc["mem_limit"], f"{name} has no memory limit"
        assert svc["healthcheck"]["test"][0] == "CMD", f"{name} has no healthcheck"
        assert svc["environment"]["DAGSTER_PG_PASSWORD"] == env["DAGSTER_PG_PASSWORD"]
        assert "homelab" in svc["networks"]
    assert services["code-server"]["command"][:3] == ["dagster", "code-server", "start"]
    assert services["webserver"]["command"][-1] == services["daemon"]["command"][-1] \
        == "/opt/dagster/home/workspace.yaml"
    assert compose_config["networks"]["homelab"] == {"external": True, "name": env["HOMELAB_NETWORK"]}


def test_only_the_code_server_gets_the_docker_socket_and_the_secrets(compose_config):
    services = compose_config["services"]

    def has_socket(svc):
        return any("docker.sock" in v for v in svc.get("volumes", []))

    assert has_socket(services["code-server"])
    assert not has_socket(services["webserver"]) and not has_socket(services["daemon"])
    assert services["code-server"]["group_add"] == [dotenv(DEPLOY / ".env.example")["DOCKER_GID"]]
    for name in ("webserver", "daemon"):
        assert set(services[name]["environment"]) == {f"DAGSTER_PG_{k}" for k in
                                                      ("HOST", "PORT", "USER", "PASSWORD", "DB")}
    assert "AWS_SECRET_ACCESS_KEY" in services["code-server"]["environment"]


def test_the_wal_receiver_reads_its_secrets_from_a_mounted_file_not_its_environment(compose_config):
    """Least privilege for a long-lived process: no Docker socket, no secret in `docker inspect`,
    the settings read-only, the data folder writable, bounded memory, a healthcheck that reads a file."""
    rx = compose_config["services"]["wal_receiver"]
    assert rx["command"] == ["homelab-ops", "pitr", "receive"]
    assert rx["image"] == compose_config["services"]["code-server"]["image"]
    assert set(rx["environment"]) == {"HOMELAB_CONFIG", "HOMELAB_ENV_FILE"}
    assert rx["environment"]["HOMELAB_ENV_FILE"] == "/etc/homelab-ops/.env"
    assert not any("docker.sock" in v for v in rx["volumes"])
    assert any(v.endswith(":/etc/homelab-ops:ro") for v in rx["volumes"])
    assert any(v.endswith(":/var/lib/homelab-ops:rw") or v.endswith(":/var/lib/homelab-ops") for v in rx["volumes"])
    assert rx["cap_drop"] == ["ALL"] and rx["security_opt"] == ["no-new-privileges:true"]
    assert rx["mem_limit"] and rx["healthcheck"]["test"] == ["CMD", "homelab-ops", "pitr", "status", "--heartbeat"]


def test_web_ui_goes_through_traefik_with_basic_auth(compose_config):
    web = compose_config["services"]["webserver"]
    env = dotenv(DEPLOY / ".env.example")
    labels = {k: str(v).replace("$$", "$") for k, v in web["labels"].items()}  # config escapes $ as $$
    assert labels["traefik.enable"] == "true"
    assert labels["traefik.http.routers.dagster.rule"] == f"Host(`{env['DAGSTER_HOSTNAME']}`)"
    assert labels["traefik.http.routers.dagster.middlewares"] == "dagster-auth"
    # The htpasswd line arrives whole: its $ are not taken for variables.
    assert labels["traefik.http.middlewares.dagster-auth.basicauth.users"] == env["DAGSTER_BASIC_AUTH"]
    assert env["DAGSTER_BASIC_AUTH"].startswith("owner:$2y$")
    assert labels["traefik.http.services.dagster.loadbalancer.server.port"] == "3000"
    assert all(p.startswith("127.0.0.1:") for p in web["ports"]), "the UI is published on loopback only"


def test_compose_refuses_to_start_without_the_rendered_env(tmp_path):
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    (tmp_path / "deploy" / ".env").write_text("HOMELAB_NETWORK=homelab\n")
    proc = subprocess.run(["docker-compose", "-f", str(tmp_path / "deploy" / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode != 0
    assert "homelab-ops creds render-env" in proc.stderr


def test_workspace_points_at_the_code_server(compose_config):
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    grpc = workspace["load_from"][0]["grpc_server"]
    command = compose_config["services"]["code-server"]["command"]
    assert (grpc["host"], str(grpc["port"])) == ("code-server", command[command.index("-p") + 1])
    assert grpc["location_name"] == command[command.index("--location-name") + 1]


# --- The instance configs, loaded as real instances against a throwaway PostgreSQL database ------

def load_instance(config: Path, home: Path, db: str, monkeypatch, **env) -> dg.DagsterInstance:
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    for key, value in {"DAGSTER_PG_HOST": info.get("host", "127.0.0.1"), "DAGSTER_PG_PORT": str(info.get("port", 5432)),
                       "DAGSTER_PG_USER": info.get("user", "postgres"), "DAGSTER_PG_PASSWORD": info.get("password", ""),
                       "DAGSTER_PG_DB": db, **env}.items():
        monkeypatch.setenv(key, value)
    home.mkdir(exist_ok=True)
    shutil.copy(config, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return dg.DagsterInstance.from_config(str(home))


def test_deploy_instance_uses_postgres_a_small_queue_and_bounded_ticks(tmp_path, new_db, monkeypatch):
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.launcher import DefaultRunLauncher
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._core.scheduler.instigation import TickStatus
    from dagster_postgres import PostgresRunStorage

    db = new_db("dagster_deploy")
    with load_instance(DEPLOY / "dagster.yaml", tmp_path / "home", db, monkeypatch) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert instance.get_runs() == []  # the tables exist in the throwaway database
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config  # what the daemon's queue applies
        assert queue.max_concurrent_runs == 2
        assert [(t["key"], t["limit"]) for t in queue.tag_concurrency_limits] == [("dagster/backfill", 1)]
        assert isinstance(instance.run_launcher, DefaultRunLauncher)
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_runtime_seconds > 0
        assert instance.global_op_concurrency_default_limit == 1
        for kind in (InstigatorType.SCHEDULE, InstigatorType.SENSOR):
            days = instance.get_tick_retention_settings(kind)
            assert set(days) == set(TickStatus) and all(d > 0 for d in days.values()), (kind, days)
        assert {"QUEUED_RUN_COORDINATOR", "MONITORING", "SCHEDULER"} <= set(instance.get_required_daemon_types())
        # As dagster-webserver uses it: a held connection with a statement_timeout set on connect.
        instance.optimize_for_webserver(statement_timeout=15000, pool_recycle=3600, max_overflow=2)
        assert instance.get_runs() == [] and instance.get_daemon_heartbeats() == {}
        assert instance.get_runs() == []


def test_docker_launcher_instance_sends_runs_to_docker(tmp_path, new_db, monkeypatch):
    from dagster_docker import DockerRunLauncher

    db = new_db("dagster_docker")
    with load_instance(DEPLOY / "dagster.docker-launcher.yaml", tmp_path / "home", db, monkeypatch,
                       HOMELAB_OPS_IMAGE="homelab-ops:2026.11", HOMELAB_NETWORK="homelab") as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, DockerRunLauncher)
        assert launcher.image == "homelab-ops:2026.11"
        assert launcher.networks == ["homelab"]
        assert "HOMELAB_CONFIG=/etc/homelab-ops/homelab.yaml" in launcher.env_vars
        assert {"DAGSTER_PG_PASSWORD", "AWS_SECRET_ACCESS_KEY", "TELEGRAM_BOT_TOKEN"} <= set(launcher.env_vars)
        volumes = launcher.container_kwargs["volumes"]
        assert "/var/run/docker.sock:/var/run/docker.sock" in volumes
        assert any(v.endswith(":/var/lib/homelab-ops") for v in volumes)
        assert any(v.endswith(":/etc/homelab-ops/homelab.yaml:ro") for v in volumes)
        assert launcher.container_kwargs["mem_limit"] == "1g"
        assert launcher.supports_check_run_worker_health
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
        assert instance.get_runs() == []


def test_both_instance_configs_differ_only_in_the_run_launcher():
    base = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    docker = yaml.safe_load((DEPLOY / "dagster.docker-launcher.yaml").read_text())
    assert base.pop("run_launcher")["class"] == "DefaultRunLauncher"
    assert docker.pop("run_launcher")["class"] == "DockerRunLauncher"
    assert base == docker


# --- The image --------------------------------------------------------------------------------

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
    from tests.conftest import DOCKER_HOST
    env = {**os.environ, "DOCKER_HOST": DOCKER_HOST}
    proc = subprocess.run(["bash", str(ROOT / "scripts/base-image.sh")], env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return re.search(r"^ARG PYTHON_IMAGE=(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M).group(1)


@pytest.fixture(scope="session")
def slow_docker():
    """A client that waits: on vfs, creating a container of this 690 MB image copies it whole."""
    import docker

    from tests.conftest import DOCKER_HOST
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


@pytest.mark.docker
def test_image_builds_on_the_local_docker_engine(slow_docker, built_image):
    image = built_image
    out = slow_docker.containers.run(
        image.id, ["sh", "-c", "python -c 'import homelab_ops.definitions, dagster_postgres, dagster_docker' "
                   "&& pg_dump --version && id -un && homelab-ops --help >/dev/null && echo ok"],
        remove=True, network_mode="none")
    lines = out.decode().split()
    assert "15." in out.decode() and lines[-2:] == ["homelab", "ok"], out
    assert image.attrs["Config"]["User"] == "homelab"
    assert image.attrs["Config"]["Entrypoint"] == ["/usr/bin/tini", "--"]


@pytest.mark.docker
def test_the_wal_receiver_container_streams_wal_as_compose_runs_it(slow_docker, built_image, tmp_path):
    """The image as the `wal_receiver` service runs it: uid 1000, every capability dropped, settings and
    .env read-only, the password only in the mounted .env. It creates the slot, archives WAL, answers
    its healthcheck, keeps the secret out of `docker inspect`, and stops cleanly on `docker stop`."""
    import psycopg

    from homelab_ops.pitr.receive import slot_state
    from tests.pitr_cluster import logical_cluster

    secret = "wal_receiver-" + os.urandom(8).hex()
    etc, data = tmp_path / "etc", tmp_path / "data"
    etc.mkdir()
    data.mkdir()
    with logical_cluster() as c:
        (etc / "homelab.yaml").write_text(yaml.safe_dump({
            "postgres": {"dsn": f"postgresql://postgres:${{PITR_PASSWORD}}@127.0.0.1:{c.port}/postgres",
                         "databases": ["postgres"]},
            "backups": {"local_dir": "/var/lib/homelab-ops/backups"},
            "metrics": {"textfile_dir": "/var/lib/homelab-ops/textfile"},
            "pitr": {"enabled": True, "status_interval": "2s"},
        }))
        (etc / ".env").write_text(f"PITR_PASSWORD={secret}\n")
        for p in (etc, etc / "homelab.yaml", etc / ".env", data):
            os.chown(p, 1000, 1000)
        (etc / ".env").chmod(0o600)
        data.chmod(0o700)
        container = slow_docker.containers.run(
            built_image.id, ["homelab-ops", "pitr", "receive"], detach=True, network_mode="host",
            cap_drop=["ALL"], security_opt=["no-new-privileges:true"], mem_limit="128m",
            environment={"HOMELAB_CONFIG": "/etc/homelab-ops/homelab.yaml", "HOMELAB_ENV_FILE": "/etc/homelab-ops/.env"},
            volumes={str(etc): {"bind": "/etc/homelab-ops", "mode": "ro"},
                     str(data): {"bind": "/var/lib/homelab-ops", "mode": "rw"}})
        try:
            deadline = time.monotonic() + 300
            while not slot_state(c.dsn(), "homelab_ops_main").get("active"):
                assert container.reload() or container.status == "running", container.logs().decode()[-3000:]
                assert time.monotonic() < deadline, container.logs().decode()[-3000:]
                time.sleep(1)
            with psycopg.connect(c.dsn(), autocommit=True) as conn:
                conn.execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g")
                conn.execute("SELECT pg_switch_wal()")
            archive = data / "backups" / "_wal" / "main"
            while not any(n.endswith(".gz") for n in os.listdir(archive)):
                assert time.monotonic() < deadline, container.logs().decode()[-3000:]
                time.sleep(1)
            rc, out = container.exec_run(["homelab-ops", "pitr", "status", "--heartbeat"])
            assert rc == 0 and b"receiver heartbeat" in out, out
            assert not any(secret in e for e in container.attrs["Config"]["Env"])
            assert all(p.stat().st_uid == 1000 for p in archive.iterdir())
            container.stop(timeout=45)
            assert container.wait(timeout=60)["StatusCode"] == 0, container.logs().decode()[-3000:]
            assert secret.encode() not in container.logs()
        finally:
            container.remove(force=True)
