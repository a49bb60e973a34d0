"""Docker Engine I/O for deploys: images, the network, one service at a time, and checks.

A changed service's successor is created first (`<name>-next`, config files copied
in); the old container is then stopped and kept as `<name>-previous` until the new
one is healthy; if it never is, the new one is removed and the old one restored.
Leftovers of an interrupted run are resolved first, so a re-run converges.
"""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from homelab_ops import docker_host
from homelab_ops.deploy import render
from homelab_ops.deploy.plan import HostFacts, StackPlan, socket_path
from homelab_ops.deploy.spec import (
    LABEL_HASH,
    LABEL_SERVICE,
    NEXT_SUFFIX,
    PREVIOUS_SUFFIX,
    ContainerSpec,
    Limits,
)
from homelab_ops.files import write_atomic

if TYPE_CHECKING:
    import docker

# docker-py (and requests under it) is imported where it is used: the code location loads on
# every web-server, daemon and run start, and only deploy runs talk to the Engine from here.

Log = Callable[[str], None]


class DeployError(RuntimeError):
    """A deploy step failed; the message says what was left running. `summary` is the message
    without the failed container's log tail, for callers that must not repeat logs (they may print
    secrets)."""

    def __init__(self, summary: str, logs: str | None = None, logs_title: str = "Logs"):
        super().__init__(summary if logs is None else f"{summary}. {logs_title}:\n{logs}")
        self.summary = summary


class LimitsRefused(DeployError):
    """The Engine refused a live limit change (a kernel cannot always shrink memory in place)."""


@dataclass
class Outcome:
    service: str
    action: str  # created | replaced | unchanged | started | limits-updated
    container_id: str
    image: str
    limits: Limits
    config_hash: str
    previous_id: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Health:
    ok: bool
    status: str
    detail: str = ""


def connect(host: str, timeout: int = 120) -> docker.DockerClient:
    return docker_host.connect(host, timeout)


# --- Paths as the host sees them --------------------------------------------------------------

def path_translator(client: docker.DockerClient) -> Callable[[str], str]:
    """Map this process's paths to the host's when it runs in a container itself.

    deploy/docker-compose.yml runs the code server in a container with the socket:
    a bind mount for node_exporter must name the host's path, not ours.
    """
    from docker.errors import APIError, NotFound
    if not os.path.exists("/.dockerenv"):
        return lambda p: p
    try:
        me = client.api.inspect_container(socket.gethostname())
    except (NotFound, APIError):
        return lambda p: p
    mounts = sorted(((m["Destination"].rstrip("/") or "/", m["Source"]) for m in me.get("Mounts", [])),
                    key=lambda m: -len(m[0]))

    def translate(path: str) -> str:
        for dst, src in mounts:
            if path == dst or path.startswith(dst + "/"):
                return src + path[len(dst):]
        return path

    return translate


def host_facts(client: docker.DockerClient, *, docker_host: str, textfile_dir: str | None = None,
               access_log_dir: str | None = None, backups_dir: str | None = None) -> HostFacts:
    """CPU count, Docker's data root, and our paths translated to host paths."""
    info = client.info()
    translate = path_translator(client)
    sock = translate(socket_path(docker_host)) if docker_host.startswith("unix://") else None

    def host_path(p: str | None) -> str | None:
        return translate(os.path.abspath(p)) if p else None

    return HostFacts(ncpu=info.get("NCPU"), docker_socket=sock, docker_root=info.get("DockerRootDir"),
                     textfile_dir=host_path(textfile_dir), access_log_dir=host_path(access_log_dir),
                     backups_dir=host_path(backups_dir))


# --- Images and the network -------------------------------------------------------------------

def has_image(client: docker.DockerClient, ref: str) -> bool:
    from docker.errors import ImageNotFound
    try:
        client.api.inspect_image(ref)
        return True
    except ImageNotFound:
        return False


def ensure_images(client: docker.DockerClient, images: list[str], policy: str, log: Log = print) -> list[str]:
    """Pull what is missing (`if-missing`), or refuse (`never`); before any container stops."""
    from docker.errors import APIError
    from docker.utils import parse_repository_tag
    missing = [i for i in images if not has_image(client, i)]
    if not missing:
        return []
    if policy == "never":
        raise DeployError(f"image(s) not on this host and monitoring.pull is `never`: {', '.join(missing)}. "
                          "Load them (docker load) or set monitoring.pull: if-missing; nothing was changed")
    for ref in missing:
        repo, tag = parse_repository_tag(ref)
        log(f"pulling {ref}")
        try:
            client.api.pull(repo, tag=tag or "latest")
        except APIError as e:
            raise DeployError(f"could not pull {ref}: {e.explanation or e}; nothing was changed") from None
    return missing


def ensure_network(client: docker.DockerClient, name: str) -> str:
    """A user-defined bridge network: containers find each other by service alias."""
    for net in client.api.networks(names=[name]):
        if net["Name"] == name:
            return "exists"
    client.api.create_network(name, driver="bridge", attachable=True, check_duplicate=True,
                              labels={"homelab-ops.managed": "true"})
    return "created"


def ensure_local_dirs(paths: list[str]) -> None:
    """Bind-mount sources must exist (the Mount API does not create them); created at our own
    paths, which are the host's or map to them (path_translator)."""
    for p in paths:
        try:
            os.makedirs(p, exist_ok=True)
        except OSError:
            pass


def write_textfiles(files: dict[str, str]) -> None:
    """Atomically and world-readable: node_exporter (user nobody) must never read half a file."""
    for path, text in files.items():
        write_atomic(path, text.encode(), mode=0o644)


# --- One container ----------------------------------------------------------------------------

def files_tar(files: dict[str, bytes], *, mode: int = 0o644, uid: int = 0) -> bytes:
    """A tar of the config files with their parent directories, for put_archive at '/'."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs: set[str] = set()
        for path in sorted(files):
            for parent in reversed(PurePosixPath(path).parents[:-1]):
                d = str(parent).lstrip("/")
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
                    tar.addfile(info)
        for path, content in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(content), mode, now
            info.uid = info.gid = uid
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def inspect(client: docker.DockerClient, name: str) -> dict | None:
    from docker.errors import NotFound
    try:
        return client.api.inspect_container(name)
    except NotFound:
        return None


def ensure_volumes(client: docker.DockerClient, spec: ContainerSpec) -> None:
    for m in spec.mounts:
        if m.type == "volume":
            client.api.create_volume(m.source, labels={LABEL_SERVICE: spec.service})


def create(client: docker.DockerClient, spec: ContainerSpec, name: str | None = None) -> str:
    """Create (not start) the container and copy its config files in."""
    from docker.types import LogConfig
    from docker.types import Mount as DockerMount
    api = client.api
    ensure_volumes(client, spec)
    lim = spec.limits
    host_config = api.create_host_config(
        network_mode=spec.network,
        mounts=[DockerMount(target=m.target, source=m.source, type=m.type, read_only=m.read_only)
                for m in spec.mounts],
        port_bindings={f"{p}/tcp": hp for p, hp in spec.ports.items()} or None,
        restart_policy={"Name": spec.restart},
        log_config=LogConfig(type="json-file",
                             config={"max-size": spec.log_max_size, "max-file": str(spec.log_max_files)}),
        mem_limit=lim.memory_bytes, memswap_limit=lim.memory_bytes,
        cpuset_cpus=lim.cpuset,
        cpu_period=100_000 if lim.cpu_quota else None, cpu_quota=lim.cpu_quota or None,
        devices=list(spec.devices) or None,
        extra_hosts=dict(spec.extra_hosts) or None,
        cap_drop=["ALL"] if spec.least_privilege else None,
        security_opt=["no-new-privileges:true"] if spec.least_privilege else None,
    )
    networking = api.create_networking_config(
        {spec.network: api.create_endpoint_config(aliases=[render.alias(spec.service)])})
    created = api.create_container(
        spec.image, command=list(spec.command) if spec.command is not None else None, name=name or spec.name,
        environment=dict(spec.env), labels=spec.all_labels, host_config=host_config,
        networking_config=networking, healthcheck=spec.healthcheck.docker(),
        ports=[f"{p}/tcp" for p in spec.ports] or None, user=spec.user, stop_timeout=spec.stop_timeout_s,
    )
    cid = created["Id"]
    if spec.files:
        api.put_archive(cid, "/", files_tar(spec.files))
    if spec.secrets:
        api.put_archive(cid, "/", files_tar(spec.secrets, mode=0o400, uid=spec.secrets_uid))
    return cid


def wait_healthy(client: docker.DockerClient, cid: str, timeout_s: float) -> Health:
    """Until Docker calls it healthy; an exit, a restart or `unhealthy` ends the wait early."""
    from docker.errors import NotFound
    deadline = time.monotonic() + timeout_s
    first_restarts = None
    info: dict = {}
    while True:
        try:
            info = client.api.inspect_container(cid)
        except NotFound:
            return Health(False, "gone", "the container disappeared")
        state = info["State"]
        if first_restarts is None:
            first_restarts = info.get("RestartCount", 0)
        health = (state.get("Health") or {}).get("Status")
        if state["Status"] in ("exited", "dead") or info.get("RestartCount", 0) > first_restarts:
            oom = " (OOM-killed: memory limit too low)" if state.get("OOMKilled") else ""
            return Health(False, state["Status"], f"exited with code {state.get('ExitCode')}{oom}")
        if state["Status"] == "running" and health in ("healthy", None):
            return Health(True, health or "running")
        if health == "unhealthy":
            return Health(False, "unhealthy", _last_probe(state))
        if time.monotonic() >= deadline:
            return Health(False, health or state["Status"],
                          f"not healthy after {timeout_s:.0f}s; {_last_probe(state)}")
        time.sleep(0.25)


def _last_probe(state: dict) -> str:
    log = (state.get("Health") or {}).get("Log") or []
    if not log:
        return "no health probe has finished yet"
    last = log[-1]
    return f"last probe exit {last.get('ExitCode')}: {(last.get('Output') or '').strip()[:200]}"


def _tail(client: docker.DockerClient, cid: str, lines: int = 15) -> str:
    from docker.errors import APIError, NotFound
    try:
        return client.api.logs(cid, tail=lines).decode(errors="replace").strip()
    except (APIError, NotFound):
        return ""


def limits_of(info: dict) -> Limits:
    hc = info["HostConfig"]
    quota, period = hc.get("CpuQuota") or 0, hc.get("CpuPeriod") or 100_000
    return Limits(memory_mb=(hc.get("Memory") or 0) // (1024 * 1024), cpuset=hc.get("CpusetCpus") or None,
                  cpus=round(quota / period, 3) if quota > 0 else None)


def update_limits(client: docker.DockerClient, cid: str, limits: Limits) -> None:
    """`docker update`: memory (no swap beyond it), cpuset and CPU quota, on a running container."""
    from docker.errors import APIError
    kwargs = {"mem_limit": limits.memory_bytes, "memswap_limit": limits.memory_bytes,
              "cpu_period": 100_000, "cpu_quota": limits.cpu_quota or -1}
    if limits.cpuset:
        kwargs["cpuset_cpus"] = limits.cpuset
    try:
        client.api.update_container(cid, **kwargs)
    except APIError as e:
        raise LimitsRefused(f"{cid}: Docker refused the new limits: {e.explanation or e}") from None


def reconcile_limits(client: docker.DockerClient, info: dict, limits: Limits) -> bool:
    have = limits_of(info)
    want = Limits(limits.memory_mb, limits.cpuset or have.cpuset, limits.cpus)
    if have == want:
        return False
    update_limits(client, info["Name"].lstrip("/"), limits)
    return True


def _remove(client: docker.DockerClient, cid: str) -> None:
    from docker.errors import NotFound
    try:
        client.api.remove_container(cid, force=True)  # named volumes stay
    except NotFound:
        pass


def recover(client: docker.DockerClient, name: str, service: str, wait_s: float, log: Log) -> dict | None:
    """Resolve what an interrupted replacement of `name` left: returns the container to treat as current."""
    nxt = inspect(client, name + NEXT_SUFFIX)
    if nxt is not None:  # created but never made current
        _remove(client, nxt["Id"])
    previous_name = name + PREVIOUS_SUFFIX
    cur, prev = inspect(client, name), inspect(client, previous_name)
    if prev is None:
        return cur
    if cur is None:
        log(f"{service}: restoring {previous_name}, left by an interrupted run")
        client.api.rename(prev["Id"], name)
        return inspect(client, name)
    if cur["State"]["Status"] == "running" and wait_healthy(client, cur["Id"], wait_s).ok:
        log(f"{service}: removing {previous_name}; its replacement is healthy")
        _remove(client, prev["Id"])
        return cur
    log(f"{service}: an interrupted run left an unhealthy replacement; restoring the previous container")
    _remove(client, cur["Id"])
    client.api.rename(prev["Id"], name)
    return inspect(client, name)


def converge(client: docker.DockerClient, spec: ContainerSpec, *, wait_s: float, log: Log = print,
             force: bool = False) -> Outcome:
    """Make one service's container match its spec, replacing it only if its config hash changed
    (or `force`: tune_monitoring's fallback when the kernel refuses a live limit change)."""
    from docker.errors import APIError
    api = client.api
    cur = recover(client, spec.name, spec.service, wait_s, log)
    want_hash = spec.config_hash

    if not force and cur is not None and cur["Config"]["Labels"].get(LABEL_HASH) == want_hash:
        action = "unchanged"
        if cur["State"]["Status"] != "running":
            api.start(cur["Id"])
            action = "started"
            h = wait_healthy(client, cur["Id"], wait_s)
            if not h.ok:
                raise DeployError(f"{spec.service}: the existing container {cur['Id'][:12]} does not turn "
                                  f"healthy after a start ({h.detail})", _tail(client, cur['Id']))
        if reconcile_limits(client, cur, spec.limits):
            action = "limits-updated" if action == "unchanged" else action
        return Outcome(spec.service, action, cur["Id"], spec.image, spec.limits, want_hash)

    # Created (config files copied in) before the old one stops: the service is down only
    # between the stop and the new start.
    try:
        new_id = create(client, spec, name=spec.name + NEXT_SUFFIX)
    except APIError as e:
        raise DeployError(f"{spec.service}: Docker refused the new container ({e.explanation or e}); "
                          "the running one was left alone") from None
    if cur is not None:
        log(f"{spec.service}: config changed ({cur['Config']['Labels'].get(LABEL_HASH)} -> {want_hash})")
    old_id = swap(client, spec.service, spec.name, new_id, cur, stop_timeout_s=spec.stop_timeout_s, wait_s=wait_s,
                  log=log)
    return Outcome(spec.service, "replaced" if old_id else "created", new_id, spec.image, spec.limits,
                   want_hash, previous_id=old_id)


def swap(client: docker.DockerClient, service: str, name: str, new_id: str, cur: dict | None, *,
         stop_timeout_s: int, wait_s: float, log: Log = print,
         before_rollback: Callable[[], str] | None = None) -> str | None:
    """Put `new_id` (created as `<name>-next`) in place of `cur`: the old one is stopped and kept as
    `<name>-previous` until the new one is healthy, then removed; if the new one never turns
    healthy it is removed and the old one restored (DeployError, which quotes `before_rollback`'s
    note: what was undone so the old one works). Returns the replaced id."""
    from docker.errors import APIError
    api = client.api
    old_id = None
    if cur is not None:
        old_id = cur["Id"]
        log(f"{service}: stopping {old_id[:12]} and keeping it as {name + PREVIOUS_SUFFIX}")
        api.stop(old_id, timeout=stop_timeout_s)
        api.rename(old_id, name + PREVIOUS_SUFFIX)
    try:
        api.rename(new_id, name)
        api.start(new_id)
        health = wait_healthy(client, new_id, wait_s)
    except APIError as e:
        health = Health(False, "error", f"Docker refused: {e.explanation or e}")

    if health.ok:
        if old_id:
            _remove(client, old_id)
        log(f"{service}: {'replaced' if old_id else 'created'} {new_id[:12]}, healthy")
        return old_id

    logs = _tail(client, new_id)
    _remove(client, new_id)
    undone = f"; {before_rollback()}" if before_rollback else ""
    if not old_id:
        raise DeployError(f"{service}: the new container did not turn healthy ({health.detail}){undone}; "
                          "removed it, there was no previous one", logs)
    api.rename(old_id, name)
    api.start(old_id)
    restored = wait_healthy(client, old_id, wait_s)
    state = "healthy again" if restored.ok else f"NOT healthy either ({restored.detail})"
    raise DeployError(f"{service}: the new container did not turn healthy ({health.detail}){undone}; rolled back "
                      f"to the previous container {old_id[:12]}, {state}", logs, "Logs of the failed one")


def remove_disabled(client: docker.DockerClient, names: list[str], log: Log = print) -> list[str]:
    """Containers of services the settings switched off (and their kept previous ones)."""
    removed = []
    for name in names:
        for n in (name, name + PREVIOUS_SUFFIX, name + NEXT_SUFFIX):
            info = inspect(client, n)
            if info is not None and info["Config"]["Labels"].get(LABEL_SERVICE):
                log(f"removing {n}: its service is disabled in settings")
                _remove(client, info["Id"])
                removed.append(n)
    return removed


# --- Checks -----------------------------------------------------------------------------------

def http_get_inside(client: docker.DockerClient, container: str, url: str) -> str:
    """GET through the container's own wget: works wherever homelab-ops runs, no published port."""
    code, out = client.containers.get(container).exec_run(["wget", "-q", "-O", "-", url])
    if code != 0:
        raise DeployError(f"GET {url} inside {container} failed (exit {code}): {out.decode(errors='replace')[:200]}")
    return out.decode()


def verify_monitoring(client: docker.DockerClient, plan: StackPlan, *, timeout_s: float,
                      log: Log = print) -> dict:
    """End to end: every container healthy, every scrape target of the stack up, rules and
    Alertmanager loaded in Prometheus. Raises DeployError naming what is not."""
    deadline = time.monotonic() + timeout_s
    problems = []
    for spec in plan.services:
        h = wait_healthy(client, spec.name, max(1.0, deadline - time.monotonic()))
        if not h.ok:
            problems.append(f"{spec.service}: {h.status} ({h.detail})")
    if problems:
        raise DeployError("not healthy: " + "; ".join(problems))
    names = {s.service for s in plan.services}
    summary: dict = {"containers_healthy": len(plan.services)}
    if "prometheus" not in names:
        return summary
    prom = plan.service("prometheus").name
    api = "http://127.0.0.1:9090/api/v1"
    jobs = names & set(render.SCRAPE)
    down: list[str] = []
    while True:
        targets = json.loads(http_get_inside(client, prom, f"{api}/targets?state=active"))["data"]["activeTargets"]
        mine = [t for t in targets if t["labels"].get("job") in jobs]
        seen = {t["labels"]["job"] for t in mine}
        down = [f"{t['labels']['job']} ({t['health']}: {t.get('lastError') or 'not scraped yet'})"
                for t in mine if t["health"] != "up"] + [f"{j} (no target)" for j in sorted(jobs - seen)]
        if not down:
            break
        if time.monotonic() >= deadline:
            raise DeployError("Prometheus targets not up: " + "; ".join(down))
        time.sleep(2)
    summary["targets_up"] = sorted(seen)
    summary["other_targets"] = {t["labels"]["job"]: t["health"] for t in targets
                                if t["labels"].get("job") not in jobs}
    groups = json.loads(http_get_inside(client, prom, f"{api}/rules"))["data"]["groups"]
    loaded = sum(len(g["rules"]) for g in groups)
    if loaded != plan.rule_count:
        raise DeployError(f"Prometheus loaded {loaded} alert rules, the plan rendered {plan.rule_count}")
    summary["rules_loaded"] = loaded
    if "alertmanager" in names:
        ams = json.loads(http_get_inside(client, prom, f"{api}/alertmanagers"))["data"]["activeAlertmanagers"]
        if not ams:
            raise DeployError("Prometheus has no active Alertmanager")
        summary["alertmanagers"] = [a["url"] for a in ams]
    return summary


def _https_status(address: str, host: str, timeout_s: float = 10) -> str:
    """The status Traefik's HTTPS entrypoint gives a request for `host` (no certificate check:
    this asks whether a router and its middlewares loaded, not who signed the certificate)."""
    import http.client
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection(address, 443, timeout=timeout_s, context=ctx)
    try:
        conn.request("GET", "/", headers={"Host": host})
        r = conn.getresponse()
        return f"HTTP {r.status} {r.reason}"
    except (OSError, http.client.HTTPException) as e:  # a connection closed mid-answer: try again
        return f"no HTTP answer from {address}:443 ({e})"
    finally:
        conn.close()


def verify_traefik_routes(client: docker.DockerClient, container: str, network: str, hosts: list[str], *,
                          timeout_s: float) -> dict:
    """Each file-provider UI answers 401 without credentials: its router and the basic-auth
    middleware both loaded. A 404 means Traefik rejected the dynamic file or a middleware.
    Asked at Traefik's address on the network: reachable from the Docker host and from the
    code server on that network alike."""
    deadline = time.monotonic() + timeout_s
    while True:
        nets = client.api.inspect_container(container)["NetworkSettings"]["Networks"]
        address = (nets.get(network) or {}).get("IPAddress") or "127.0.0.1"
        got = {h: _https_status(address, h) for h in hosts}
        bad = {h: st for h, st in got.items() if not st.startswith("HTTP 401")}
        if not bad:
            return {"routes_behind_auth": sorted(hosts)}
        if time.monotonic() >= deadline:
            raise DeployError("Traefik does not route these UIs behind basic auth: " + "; ".join(
                f"{h}: {st}" for h, st in sorted(bad.items())) + f". Traefik's log:\n{_tail(client, container)}")
        time.sleep(1)


def verify_containers(client: docker.DockerClient, plan: StackPlan, *, timeout_s: float) -> dict:
    """Every container of the stack healthy, and ports published as planned."""
    problems = []
    deadline = time.monotonic() + timeout_s
    for spec in plan.services:
        h = wait_healthy(client, spec.name, max(1.0, deadline - time.monotonic()))
        if not h.ok:
            problems.append(f"{spec.service}: {h.status} ({h.detail})")
            continue
        bound = client.api.inspect_container(spec.name)["HostConfig"].get("PortBindings") or {}
        for port, (ip, hport) in spec.ports.items():
            got = bound.get(f"{port}/tcp") or []
            if not any(b.get("HostIp") == ip and b.get("HostPort") == str(hport) for b in got):
                problems.append(f"{spec.service}: port {port} is not published on {ip}:{hport}")
    if problems:
        raise DeployError("; ".join(problems))
    return {"containers_healthy": len(plan.services)}
