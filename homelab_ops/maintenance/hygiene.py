"""Disk hygiene: trim the SSD and show how big every container's log has grown.

An NVMe drive slows down and wears faster when the filesystem never tells it
which blocks are free (`fstrim`), and a chatty container's json log grows until
the disk is full. Both are reported as states, never as crashes: a filesystem
that cannot discard, a user that may not trim, or a host without Docker is a
fact about the host, not a failure of the run.

A code server running as uid 1000 with no capabilities (the compose deployment) can do
neither itself: FITRIM needs CAP_SYS_ADMIN and the json logs are root's. With
`disk_hygiene.helper_image` both run in a one-shot container started through the Engine
API (which that code server already holds): root with CAP_SYS_ADMIN alone, no network,
only the paths it reads bind-mounted, removed when done.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import tenacity

from homelab_ops.docker_host import connect
from homelab_ops.errors import first_line

TRIMMED, NOT_SUPPORTED, NOT_PERMITTED, NO_SUCH_MOUNT, NO_FSTRIM, FAILED = (
    "trimmed", "not supported", "not permitted", "no such mount", "fstrim not installed", "failed")
DOCKER_OK, NO_DAEMON = "ok", "no docker daemon"
HELPER_LABEL = "homelab-ops/role=hygiene-helper"
# A helper container older than this and not running was left by a killed run, a create that timed out
# after the Engine made it, or a remove that failed: the next run removes it. Younger ones may belong to
# a run starting now (created, not yet started) or reading its helper's output (exited, not yet removed).
STALE_AFTER = 3600.0


@dataclass(frozen=True)
class TrimResult:
    mount: str
    state: str
    trimmed_bytes: int | None
    detail: str


def classify_fstrim(mount: str, rc: int, stdout: str, stderr: str) -> TrimResult:
    """Turn fstrim's exit code and words into one of a few states an owner can act on."""
    text = (stderr or stdout).strip()
    if rc == 0:
        m = re.search(r"\((\d+) bytes\)", stdout)
        return TrimResult(mount, TRIMMED, int(m.group(1)) if m else None, stdout.strip())
    low = text.lower()
    if "not supported" in low:
        state = NOT_SUPPORTED
    elif "not permitted" in low or "permission denied" in low:
        state = NOT_PERMITTED
    elif "no such file" in low or "not a mount" in low:
        state = NO_SUCH_MOUNT
    else:
        state = FAILED
    return TrimResult(mount, state, None, text[-500:])


@dataclass(frozen=True)
class Helper:
    """Where the one-shot helper container runs: the Engine at `host`, from `image`."""

    host: str
    image: str
    stale_after: float = STALE_AFTER

    @classmethod
    def of(cls, docker_host: str, image: str | None) -> Helper | None:
        """disk_hygiene.helper_image on docker.host; None when no image is set (work in this process)."""
        return cls(docker_host, image) if image else None

    def run(self, command: list[str], *, binds: dict[str, str], cap_add: tuple[str, ...] = (),
            timeout: float = 900) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of `command` as root in a fresh container; binds: host path ->
        container path, read-only. Raises HelperError when the Engine or the image is not there."""
        from docker.errors import DockerException

        try:
            client = connect(self.host, int(timeout) + 30)
        except DockerException as e:
            raise HelperError(f"no Docker daemon answers at {self.host} (docker.host): {_short(e)}") from None
        container = None
        try:
            self._sweep(client)
            container = client.containers.create(
                self.image, command, user="0", network_mode="none", cap_drop=["ALL"], cap_add=list(cap_add),
                security_opt=["no-new-privileges:true"], mem_limit="64m",
                volumes={src: {"bind": dst, "mode": "ro"} for src, dst in binds.items()},
                labels=dict([HELPER_LABEL.split("=")]))
            container.start()
            rc = container.wait(timeout=timeout)["StatusCode"]
            return (rc, container.logs(stdout=True, stderr=False).decode(errors="replace"),
                    container.logs(stdout=False, stderr=True).decode(errors="replace"))
        except DockerException as e:
            raise HelperError(f"the disk_hygiene helper ({self.image} at {self.host}) failed: {_short(e)}") from None
        except Exception as e:  # requests' ReadTimeout from wait(): the helper is still running
            raise HelperError(f"the disk_hygiene helper ({self.image}) did not finish within {timeout:.0f} s: "
                              f"{_short(e)}") from None
        finally:
            if container is not None:
                _remove(client, container.id)
            client.close()

    def _sweep(self, client) -> None:
        """Remove the helper containers an earlier run left behind (see STALE_AFTER)."""
        from docker.errors import DockerException

        cutoff = time.time() - self.stale_after
        try:
            left = client.api.containers(all=True, filters={"label": HELPER_LABEL,
                                                            "status": ["created", "exited", "dead"]})
        except (DockerException, OSError):  # the create that follows names what is wrong with the Engine
            return
        for c in left:
            if c["Created"] <= cutoff:
                _remove(client, c["Id"])


def _remove(client, container_id: str) -> None:
    """Force-remove, three tries a second apart (vfs and a busy bind mount can refuse once); one that
    still fails is left to the next run's sweep, not raised over the helper's own result."""
    from docker.errors import DockerException, NotFound

    try:
        for attempt in tenacity.Retrying(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(1),
                                         retry=tenacity.retry_if_not_exception_type(NotFound), reraise=True):
            with attempt:
                client.api.remove_container(container_id, force=True)
    except (DockerException, OSError):  # NotFound included: gone already
        pass


class HelperError(RuntimeError):
    """The helper container could not run; the message names the Engine or the image."""


def trim(mounts: list[str], *, helper: Helper | None = None, timeout: float = 900) -> list[TrimResult]:
    """`fstrim -v` each mount point in turn: here, or with `helper` in a container that has CAP_SYS_ADMIN
    and the host's mount point bind-mounted (FITRIM acts on the filesystem behind it)."""
    out = []
    for mount in mounts:
        try:
            if helper is None:
                p = subprocess.run(["fstrim", "-v", mount], capture_output=True, text=True, timeout=timeout)
                rc, stdout, stderr = p.returncode, p.stdout, p.stderr
            else:
                rc, stdout, stderr = helper.run(["fstrim", "-v", "/trim"], binds={mount: "/trim"},
                                                cap_add=("SYS_ADMIN",), timeout=timeout)
                stdout, stderr = stdout.replace("/trim", mount), stderr.replace("/trim", mount)
        except FileNotFoundError:
            out.append(TrimResult(mount, NO_FSTRIM, None, "install util-linux (fstrim)"))
            continue
        except subprocess.TimeoutExpired:
            out.append(TrimResult(mount, FAILED, None, f"fstrim still running after {timeout:.0f} s; stopped"))
            continue
        except HelperError as e:
            out.append(TrimResult(mount, FAILED, None, str(e)))
            continue
        out.append(classify_fstrim(mount, rc, stdout, stderr))
    return out


@dataclass(frozen=True)
class ContainerLog:
    name: str
    driver: str
    state: str  # "ok", "not readable", "other driver"
    log_bytes: int | None  # the live file plus rotated ones
    max_size: str | None  # json-file's max-size option; None = never rotated
    path: str | None


@dataclass
class DockerLogs:
    state: str  # DOCKER_OK or NO_DAEMON
    detail: str
    containers: list[ContainerLog] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(c.log_bytes or 0 for c in self.containers)


def log_files_size(log_path: str) -> int | None:
    """Bytes of a json-file log and its rotated siblings (`.1`, `.2.gz`, ...); None when unreadable."""
    p = Path(log_path)
    try:
        total = p.stat().st_size
        total += sum(q.stat().st_size for q in p.parent.glob(p.name + ".*"))
    except OSError:
        return None
    return total


def container_log(attrs: dict) -> ContainerLog:
    """One container's log, from `docker inspect`'s fields."""
    name = attrs.get("Name", "").lstrip("/") or attrs.get("Id", "")[:12]
    cfg = (attrs.get("HostConfig") or {}).get("LogConfig") or {}
    driver = cfg.get("Type") or "json-file"
    max_size = (cfg.get("Config") or {}).get("max-size")
    path = attrs.get("LogPath") or None
    if driver != "json-file" or not path:
        return ContainerLog(name, driver, "other driver", None, max_size, path)
    size = log_files_size(path)
    return ContainerLog(name, driver, "ok" if size is not None else "not readable", size, max_size, path)


def helper_log_sizes(helper: Helper, containers_dir: str, paths: list[str]) -> dict[str, int]:
    """Bytes of each json log (rotated siblings included) read as root by the helper, with Docker's
    `containers` folder bind-mounted read-only at its own path; a log it cannot see is left out."""
    script = 'for p in "$@"; do for f in "$p" "$p".*; do [ -f "$f" ] && stat -c "%s %n" "$f"; done; done; true'
    rc, stdout, stderr = helper.run(["sh", "-c", script, "sh", *paths], binds={containers_dir: containers_dir},
                                    timeout=120)
    if rc != 0:
        raise HelperError(f"the disk_hygiene helper could not read the logs: {first_line(stderr or stdout)}")
    sizes: dict[str, int] = {}
    wanted = set(paths)
    for line in stdout.splitlines():
        size, _, name = line.partition(" ")
        base = name if name in wanted else name.rsplit(".", 2 if name.endswith(".gz") else 1)[0]
        if base in wanted and size.isdigit():
            sizes[base] = sizes.get(base, 0) + int(size)
    return sizes


def container_logs(host: str, *, helper: Helper | None = None, timeout: int = 10) -> DockerLogs:
    """Every container's json log size, largest first; no daemon answering is a state, not an error.
    Logs this process may not read (root's, 0640) are read by `helper` when there is one."""
    from docker.errors import DockerException

    try:
        client = connect(host, timeout)
    except DockerException as e:
        return DockerLogs(NO_DAEMON, f"no Docker daemon answers at {host} (docker.host): {_short(e)}")
    try:
        logs = [container_log(c.attrs) for c in client.containers.list(all=True)]
        # where the helper finds the logs: asked only when there is a helper to read them
        root = (client.info().get("DockerRootDir") or "/var/lib/docker") if helper is not None else None
    except DockerException as e:
        return DockerLogs(NO_DAEMON, f"the Docker daemon at {host} stopped answering: {_short(e)}")
    finally:
        client.close()
    detail = f"{len(logs)} containers at {host}"
    unreadable = [c.path for c in logs if c.state == "not readable" and c.path]
    if helper is not None and unreadable:
        try:
            sizes = helper_log_sizes(helper, f"{root}/containers", unreadable)
            logs = [replace(c, state="ok", log_bytes=sizes[c.path]) if c.path in sizes else c for c in logs]
            detail += f"; {len(sizes)} log(s) read by the helper ({helper.image})"
        except HelperError as e:
            detail += f"; {e}"
    logs.sort(key=lambda c: (-(c.log_bytes or 0), c.name))
    return DockerLogs(DOCKER_OK, detail, logs)


def _short(e: Exception) -> str:
    return first_line(e, 300)
