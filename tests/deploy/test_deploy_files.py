"""deploy/: the compose file as docker-compose reads it, the instance configs as Dagster loads them,
and the image as the local Docker Engine builds it."""

from __future__ import annotations

import contextlib
import io
import json
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

from tests.conftest import ADMIN_DSN, IMAGE_TAG

ROOT = Path(__file__).resolve().parents[2]
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
    # `up -d` starts these (the WAL receiver is deployed by deploy_monitoring, not by compose)
    assert set(services) == {"code-server", "webserver", "daemon"}
    env = dotenv(DEPLOY / ".env.example")
    for name, svc in services.items():
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


def test_docker_launcher_override_gives_the_daemon_every_variable_the_launcher_copies(tmp_path):
    """With deploy/docker-compose.docker-launcher.yml every service loads the launcher instance, and
    the daemon has each variable its env_vars name: dagster-docker fails every launch on one it lacks."""
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    env = (DEPLOY / ".env.example").read_text() + "\nRUN_DOCKER_HOST=tcp://runhost:2376\n"
    (tmp_path / "deploy" / ".env").write_text(env)
    proc = subprocess.run(["docker-compose", "-f", str(tmp_path / "deploy" / "docker-compose.yml"),
                           "-f", str(tmp_path / "deploy" / "docker-compose.docker-launcher.yml"), "config"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    launcher = yaml.safe_load((DEPLOY / "dagster.docker-launcher.yaml").read_text())["run_launcher"]["config"]
    for name, svc in services.items():
        assert any(v.endswith(":/opt/dagster/home/dagster.yaml:ro") and "dagster.docker-launcher.yaml" in v
                   for v in svc["volumes"]), name
        # the instance's {env: ...} values, for each process that loads it
        assert {"HOMELAB_OPS_IMAGE", "HOMELAB_NETWORK"} <= set(svc["environment"]), name
    daemon = services["daemon"]["environment"]
    named = [v for v in launcher["env_vars"] if "=" not in v]
    assert not [v for v in named if v not in daemon], "the daemon lacks variables the launcher copies"
    for name in ("daemon", "webserver"):
        assert services[name]["environment"]["DOCKER_HOST"] == "tcp://runhost:2376"
        assert services[name]["environment"]["DOCKER_TLS_VERIFY"] == "1"
    assert not any("docker.sock" in v for v in services["daemon"]["volumes"] + services["webserver"]["volumes"])


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

@pytest.mark.docker
def test_image_builds_on_the_local_docker_engine(slow_docker, built_image):
    image = built_image
    out = slow_docker.containers.run(
        image.id, ["sh", "-c", "python -c 'import homelab_ops.definitions, dagster_postgres, dagster_docker' "
                   "&& pg_dump --version && id -un && homelab-ops --help >/dev/null "
                   # the location itself, as the code server loads it from site-packages
                   "&& printf 'backups: {local_dir: /tmp/b}\\n' > /tmp/h.yaml && HOMELAB_CONFIG=/tmp/h.yaml "
                   "python -c 'import homelab_ops.definitions as m; m.defs().resolve_all_job_defs()' && echo ok"],
        remove=True, network_mode="none")
    lines = out.decode().split()
    assert "15." in out.decode() and lines[-2:] == ["homelab", "ok"], out
    # A Redis source backed up and verified as the compose user, with the image's own redis tools.
    redis = slow_docker.containers.run(
        image.id, ["sh", "-c", "redis-server --port 6399 --save '' --dir /tmp --requirepass pw --daemonize yes "
                   "&& sleep 1 && REDISCLI_AUTH=pw redis-cli -p 6399 --no-auth-warning SET k v "
                   "&& printf 'backups: {local_dir: /tmp/b, sources: [{type: redis, name: cache, port: 6399, "
                   "password: pw}]}\nmetrics: {textfile_dir: /tmp/t}\n' > /tmp/r.yaml && mkdir /tmp/dh "
                   "&& printf 'telemetry: {enabled: false}\n' > /tmp/dh/dagster.yaml "
                   "&& HOMELAB_CONFIG=/tmp/r.yaml DAGSTER_HOME=/tmp/dh "
                   "dagster asset materialize -m homelab_ops.definitions --select backups/cache_backup,restore_verification/cache_verification "
                   "2>&1 | grep -o 'restored and matched the manifest: 1 keys without a TTL' | head -1"],
        remove=True, network_mode="none", user="homelab")
    assert b"restored and matched the manifest: 1 keys without a TTL" in redis, redis
    assert image.attrs["Config"]["User"] == "homelab"
    assert image.attrs["Config"]["Entrypoint"] == ["/usr/bin/tini", "--"]


@pytest.mark.docker
def test_deploy_monitoring_starts_the_wal_receiver_that_streams_wal_and_stops_it_with_pitr_off(
        slow_docker, built_image, tmp_path):
    """The deploy graph runs `homelab-ops pitr receive` from this image on the stack's network, the
    way it runs on the Pi: the DSN's loopback host pointed at the PostgreSQL server on the network,
    scram-sha-256 with a hostile password handed over only as a 0400 passfile, the backups folder
    bind-mounted as uid 1000 owns it. It creates the slot, archives WAL, turns healthy, keeps the
    password out of `docker inspect`, its settings file and its log, stops cleanly on `docker stop`,
    and the next deploy with pitr.enabled false removes it."""
    import secrets as _secrets
    import uuid

    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from homelab_ops.defs.deploy.ops import RESOURCES, build_jobs
    from homelab_ops.defs.deploy.resources import DockerResource
    from homelab_ops.defs.resources import HomelabSettings
    from homelab_ops.deploy.engine import ensure_network
    from homelab_ops.pitr.receive import slot_state
    from tests.conftest import DOCKER_HOST
    from tests.pitr_cluster import logical_cluster

    prefix = f"walrx-{uuid.uuid4().hex[:6]}-"
    net = f"{prefix}net"
    ensure_network(slow_docker, net)
    ipam = slow_docker.api.inspect_network(net)["IPAM"]["Config"][0]
    gateway, subnet = ipam["Gateway"], ipam["Subnet"]  # the host, as the stack's containers reach it
    password = "rx:" + _secrets.token_urlsafe(12) + "\\#'x"  # libpq passfile's and conninfo's specials
    data = tmp_path / "backups"
    data.mkdir(mode=0o700)
    os.chown(data, 1000, 1000)  # the code server (uid 1000) made it
    job = {j.name: j for j in build_jobs()}["deploy_monitoring"]

    def deploy(pitr_enabled: bool, port: int):
        off = {n: {"enabled": False} for n in ("prometheus", "node_exporter", "cadvisor", "loki", "alloy",
                                                "grafana", "alertmanager")}
        settings = {
            "docker": {"host": DOCKER_HOST, "name_prefix": prefix},
            "postgres": {"dsn": make_conninfo(host="127.0.0.1", port=port, user="postgres", password=password,
                                              dbname="postgres"), "databases": ["postgres"]},
            "backups": {"local_dir": str(data)},
            "metrics": {"textfile_dir": str(tmp_path / "textfile")},
            "pitr": {"enabled": pitr_enabled, "status_interval": "2s"},
            "monitoring": {"network": net, "pull": "never", "state_dir": str(tmp_path / "state"),
                           "health": {"interval": "3s", "timeout": "20s", "retries": 3, "start_period": "5s",
                                      "wait": "240s", "verify": "240s"},
                           "services": {**off, "wal_receiver": {"image": IMAGE_TAG, "postgres_host": gateway,
                                                                "cpuset": None}}},
        }
        path = tmp_path / f"homelab-{'on' if pitr_enabled else 'off'}.yaml"  # settings are cached per path
        path.write_text(yaml.safe_dump(settings))
        return job.execute_in_process(raise_on_error=False, resources={
            "homelab": HomelabSettings(config_path=str(path)),
            "docker": DockerResource(host=DOCKER_HOST, timeout_s=1800), **RESOURCES})

    name = f"{prefix}wal-receiver"
    try:
        with logical_cluster(extra=f"-c listen_addresses=127.0.0.1,{gateway}") as c:
            with psycopg.connect(c.dsn(), autocommit=True) as conn:
                conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(password)))
            with open(c.datadir / "pg_hba.conf", "a") as hba:  # the network's clients must know the password
                hba.write(f"host all postgres {subnet} scram-sha-256\nhost replication postgres {subnet} "
                          "scram-sha-256\n")
            with psycopg.connect(c.dsn(), autocommit=True) as conn:
                conn.execute("SELECT pg_reload_conf()")

            result = deploy(True, c.port)
            container = slow_docker.containers.get(name)
            logs = container.logs().decode(errors="replace")
            assert result.success, [e.message for e in result.all_events if e.is_failure] + [logs[-3000:], c.log()[-2000:]]
            assert slot_state(c.dsn(), "homelab_ops_main").get("active"), logs[-3000:]
            with psycopg.connect(c.dsn(), autocommit=True) as conn:
                conn.execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g")
                conn.execute("SELECT pg_switch_wal()")
            archive = data / "_wal" / "main"
            deadline = time.monotonic() + 120
            while not any(n.endswith(".gz") for n in os.listdir(archive)):
                assert time.monotonic() < deadline, container.logs().decode()[-3000:]
                time.sleep(1)
            assert all(p.stat().st_uid == 1000 for p in archive.iterdir())

            info = slow_docker.api.inspect_container(name)
            assert info["State"]["Health"]["Status"] == "healthy"
            assert info["HostConfig"]["Memory"] == 128 * 1024 * 1024 and info["HostConfig"]["NanoCpus"] in (0, None)
            assert info["HostConfig"]["CpuQuota"] == 25_000
            assert info["HostConfig"]["CapDrop"] == ["ALL"]
            assert info["HostConfig"]["SecurityOpt"] == ["no-new-privileges:true"]
            rc, rendered = container.exec_run(["cat", "/etc/homelab-ops/homelab.yaml"])
            assert rc == 0 and b"passfile" in rendered
            rc, mode = container.exec_run(["stat", "-c", "%a %u", "/run/secrets/wal-receiver-pgpass"])
            assert mode.decode().split() == ["400", "1000"], mode
            shown = json.dumps(info) + rendered.decode(errors="replace") + container.logs().decode(errors="replace")
            assert password not in shown

            container.stop(timeout=45)
            assert container.wait(timeout=60)["StatusCode"] == 0, container.logs().decode()[-3000:]
            assert password.encode() not in container.logs()

            removed = deploy(False, c.port)
            assert removed.success, [e.message for e in removed.all_events if e.is_failure]
            assert not slow_docker.api.containers(all=True, filters={"name": name})
    finally:
        for c in slow_docker.api.containers(all=True, filters={"name": prefix}):
            slow_docker.api.remove_container(c["Id"], force=True)
        for n in slow_docker.api.networks(names=[net]):
            slow_docker.api.remove_network(n["Id"])


@contextlib.contextmanager
def hygiene_scene(client, folder: Path):
    """What disk_hygiene works on: a loop-mounted 64 MB ext4 under `folder` whose 16 MB of freed blocks
    a trim gives back, and a stopped container with 500 log lines; both removed afterwards."""
    from tests import docker_images

    image, mnt = folder / "disk.img", folder / "mnt"
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    logger = None
    try:
        (mnt / "freed").write_bytes(os.urandom(16 << 20))
        os.sync()
        (mnt / "freed").unlink()
        os.sync()
        logger = client.containers.run(docker_images.busybox_image(client),
                                       ["sh", "-c", "for i in $(seq 1 500); do echo line $i; done"],
                                       detach=True, network_mode="none", name=f"noisy-{os.getpid()}")
        logger.wait(timeout=60)
        yield mnt, logger
    finally:
        if logger is not None:
            logger.remove(force=True)
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.docker
def test_disk_hygiene_trims_and_reads_root_only_logs_through_the_helper_container(slow_docker, built_image, tmp_path):
    """The compose code server (uid 1000, no capabilities) can neither trim nor read Docker's json logs.
    With disk_hygiene.helper_image the asset does both in one-shot containers of this image (root,
    CAP_SYS_ADMIN only, no network): a loop-mounted ext4 gets its freed blocks trimmed, the helper reads
    each container's log size exactly, doctor says so, and no helper container is left behind."""
    from homelab_ops.maintenance import hygiene as h
    from homelab_ops.defs.maintenance.assets import disk_hygiene
    from homelab_ops.defs.resources import HomelabSettings
    from homelab_ops.doctor import check_fstrim
    from homelab_ops.settings import load
    from tests.conftest import DOCKER_HOST

    with hygiene_scene(slow_docker, tmp_path) as (mnt, logger):
        path = tmp_path / "homelab.yaml"
        path.write_text(yaml.safe_dump({
            "docker": {"host": DOCKER_HOST},
            "metrics": {"textfile_dir": str(tmp_path / "textfile")},
            "disk_hygiene": {"fstrim_mounts": [str(mnt)], "helper_image": IMAGE_TAG}}))
        settings = load(path)
        since = int(time.time()) - 1
        result = dg.materialize([disk_hygiene], resources={"homelab": HomelabSettings(config_path=str(path))})
        md = result.asset_materializations_for_node("disk_hygiene")[0].metadata
        assert md["trimmed_bytes"].value > 8 << 20, md["fstrim"]
        started = list(slow_docker.events(since=since, until=int(time.time()) + 1, decode=True,
                                          filters={"label": "homelab-ops/role=hygiene-helper", "event": "start"}))
        assert started, "the trim did not run in the helper container"
        assert not slow_docker.containers.list(all=True, filters={"label": "homelab-ops/role=hygiene-helper"})

        logger.reload()
        log_path = logger.attrs["LogPath"]
        helper = h.Helper.of(settings.docker.host, settings.disk_hygiene.helper_image)
        root = slow_docker.info()["DockerRootDir"]
        sizes = h.helper_log_sizes(helper, f"{root}/containers", [log_path, "/nonexistent/x-json.log"])
        assert sizes == {log_path: h.log_files_size(log_path)} and sizes[log_path] > 0

        check = check_fstrim(settings.disk_hygiene, settings.docker.host)
        assert check.status == "ok" and "one-shot container of homelab-ops:test" in check.detail, check
        missing = load_with(tmp_path, {**yaml.safe_load(path.read_text()),
                                       "disk_hygiene": {"fstrim_mounts": ["/"], "helper_image": "homelab-ops:missing"}})
        broken = check_fstrim(missing.disk_hygiene, missing.docker.host)
        assert broken.failed and "homelab-ops:missing" in broken.detail, broken


@pytest.mark.docker
def test_disk_hygiene_works_in_the_code_server_as_compose_runs_it(slow_docker, built_image, compose_config, tmp_path):
    """The owner's path: disk_hygiene materialized inside this image with the code server's user,
    capabilities, security options and group from the compose file (uid 1000, cap_drop ALL,
    no-new-privileges, the socket's group), the Docker socket mounted as compose mounts it. It has
    no capability to trim and cannot read Docker's logs itself, so both go through the helper:
    the loop-mounted ext4 gets its freed blocks trimmed and a container's log size is read."""
    from tests.conftest import DOCKER_HOST

    svc = compose_config["services"]["code-server"]
    assert svc["cap_drop"] == ["ALL"] and "no-new-privileges:true" in svc["security_opt"]
    sock = DOCKER_HOST.removeprefix("unix://")
    work = Path(f"/tmp/hygiene-{os.getpid()}")  # bind-mounted: the Engine sees host paths
    etc = work / "etc"
    etc.mkdir(parents=True)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        mnt, logger = cleanup.enter_context(hygiene_scene(slow_docker, work))
        (etc / "homelab.yaml").write_text(yaml.safe_dump({
            "docker": {"host": "unix:///var/run/docker.sock"},
            "metrics": {"textfile_dir": "/tmp/textfile"},
            "backups": {"local_dir": "/tmp/backups"},
            "disk_hygiene": {"fstrim_mounts": [str(mnt)], "helper_image": IMAGE_TAG}}))
        script = ("import dagster as dg, json, os\n"
                  "from homelab_ops.defs.maintenance.assets import disk_hygiene\n"
                  "from homelab_ops.defs.resources import HomelabSettings\n"
                  "caps = next(l for l in open('/proc/self/status') if l.startswith('CapEff')).split()[1]\n"
                  "print('UID', os.getuid(), 'CAPS', caps)\n"
                  "r = dg.materialize([disk_hygiene], resources={'homelab': "
                  "HomelabSettings(config_path='/etc/homelab-ops/homelab.yaml')})\n"
                  "md = r.asset_materializations_for_node('disk_hygiene')[0].metadata\n"
                  "print('TRIMMED', md['trimmed_bytes'].value)\n"
                  "print('LOGS', json.dumps({rec.data['container']: (rec.data['state'], rec.data['log_bytes']) "
                  "for rec in md['container_logs'].value.records}))\n")
        out = slow_docker.containers.run(
            IMAGE_TAG, ["python", "-c", script], remove=True, network_mode="none",
            cap_drop=svc["cap_drop"], security_opt=svc["security_opt"],
            group_add=[str(os.stat(sock).st_gid)],  # compose: group_add: ["${DOCKER_GID}"]
            volumes={sock: {"bind": "/var/run/docker.sock", "mode": "rw"},
                     str(etc): {"bind": "/etc/homelab-ops", "mode": "ro"}}).decode()
        assert "UID 1000 CAPS 0000000000000000" in out, out
        trimmed = int(re.search(r"^TRIMMED (\d+)$", out, re.M).group(1))
        assert trimmed > 8 << 20, out
        logs = json.loads(re.search(r"^LOGS (.*)$", out, re.M).group(1))
        state, size = logs[logger.name]
        assert state == "ok" and size > 0, out


def load_with(tmp_path: Path, data: dict):
    from homelab_ops.settings import load

    p = tmp_path / "other.yaml"
    p.write_text(yaml.safe_dump(data))
    return load(p)
