"""Disk hygiene: trim the SSD and show how big every container's log has grown.

An NVMe drive slows down and wears faster when the filesystem never tells it
which blocks are free (`fstrim`), and a chatty container's json log grows until
the disk is full. Both are reported as states, never as crashes: a filesystem
that cannot discard, a user that may not trim, or a host without Docker is a
fact about the host, not a failure of the run.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from homelab_ops.docker_host import connect
from homelab_ops.errors import first_line

TRIMMED, NOT_SUPPORTED, NOT_PERMITTED, NO_SUCH_MOUNT, NO_FSTRIM, FAILED = (
    "trimmed", "not supported", "not permitted", "no such mount", "fstrim not installed", "failed")
DOCKER_OK, NO_DAEMON = "ok", "no docker daemon"


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


def trim(mounts: list[str], *, timeout: float = 900) -> list[TrimResult]:
    """`fstrim -v` each mount point in turn."""
    out = []
    for mount in mounts:
        try:
            p = subprocess.run(["fstrim", "-v", mount], capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            out.append(TrimResult(mount, NO_FSTRIM, None, "install util-linux (fstrim)"))
            continue
        except subprocess.TimeoutExpired:
            out.append(TrimResult(mount, FAILED, None, f"fstrim still running after {timeout:.0f} s; stopped"))
            continue
        out.append(classify_fstrim(mount, p.returncode, p.stdout, p.stderr))
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


def container_logs(host: str, *, timeout: int = 10) -> DockerLogs:
    """Every container's json log size, largest first; no daemon answering is a state, not an error."""
    from docker.errors import DockerException

    try:
        client = connect(host, timeout)
    except DockerException as e:
        return DockerLogs(NO_DAEMON, f"no Docker daemon answers at {host} (docker.host): {_short(e)}")
    try:
        logs = [container_log(c.attrs) for c in client.containers.list(all=True)]
    except DockerException as e:
        return DockerLogs(NO_DAEMON, f"the Docker daemon at {host} stopped answering: {_short(e)}")
    finally:
        client.close()
    logs.sort(key=lambda c: (-(c.log_bytes or 0), c.name))
    return DockerLogs(DOCKER_OK, f"{len(logs)} containers at {host}", logs)


def _short(e: Exception) -> str:
    return first_line(e, 300)
