"""What one container should be, as plain data, and the hash that decides whether to replace it.

Limits (memory, cpuset, CPU quota) are deliberately outside the hash: Docker can
change them on a running container (`docker update`), so a tuned or edited limit
never costs a restart. Everything else that shapes the container is inside it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

LABEL_SERVICE = "homelab-ops.service"
LABEL_HASH = "homelab-ops.config-hash"
LABEL_STACK = "homelab-ops.stack"
PREVIOUS_SUFFIX = "-previous"  # the replaced container, stopped, until its successor is healthy
NEXT_SUFFIX = "-next"  # a successor between its creation and the old one's stop


@dataclass(frozen=True)
class Mount:
    target: str
    source: str
    type: str = "bind"  # bind | volume
    read_only: bool = True


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]
    interval_s: float
    timeout_s: float
    retries: int
    start_period_s: float

    def docker(self) -> dict:
        ns = 1_000_000_000
        return {"test": ["CMD", *self.test], "interval": int(self.interval_s * ns),
                "timeout": int(self.timeout_s * ns), "retries": self.retries,
                "start_period": int(self.start_period_s * ns)}


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpuset: str | None = None
    cpus: float | None = None

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * 1024 * 1024

    @property
    def cpu_quota(self) -> int:
        """CFS quota per 100 ms period; 0 means no quota."""
        return int(round(self.cpus * 100_000)) if self.cpus else 0


@dataclass(frozen=True)
class ContainerSpec:
    service: str
    stack: str
    name: str
    image: str
    network: str
    limits: Limits
    healthcheck: Healthcheck
    command: tuple[str, ...] | None = None
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)  # copied in before the first start
    # Secrets as files (mode 0400, owned by secrets_uid), never environment variables: the Docker
    # socket's holders (cAdvisor, Alloy) can read every container's environment.
    secrets: dict[str, bytes] = field(default_factory=dict)
    secrets_uid: int = 0
    ports: dict[int, tuple[str, int]] = field(default_factory=dict)  # container port -> (host ip, port)
    devices: tuple[str, ...] = ()
    extra_hosts: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    # Every capability dropped and no-new-privileges: for our own image's long-lived process, which
    # needs none (third-party images keep what their docs expect).
    least_privilege: bool = False
    log_max_size: str = "10m"
    log_max_files: int = 3
    restart: str = "unless-stopped"
    stop_timeout_s: int = 30

    @property
    def previous_name(self) -> str:
        return self.name + PREVIOUS_SUFFIX

    @property
    def aliases(self) -> list[str]:
        return [self.service]

    def hash_input(self) -> dict:
        """Everything that needs a new container when it changes (not the limits)."""
        d = asdict(self)
        d.pop("limits")
        if not self.least_privilege:
            d.pop("least_privilege")  # added later: containers deployed before keep their hash
        d["files"] = {p: hashlib.sha256(c).hexdigest() for p, c in sorted(self.files.items())}
        d["secrets"] = {p: hashlib.sha256(c).hexdigest() for p, c in sorted(self.secrets.items())}
        d["labels"] = {k: v for k, v in sorted(self.labels.items()) if k != LABEL_HASH}
        d["ports"] = {str(k): list(v) for k, v in sorted(self.ports.items())}
        return d

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.hash_input(), sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def all_labels(self) -> dict[str, str]:
        return {**self.labels, LABEL_SERVICE: self.service, LABEL_STACK: self.stack,
                LABEL_HASH: self.config_hash}
