"""The Docker Engine the deploy jobs drive (settings `docker.host`)."""

import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

import dagster as dg

from homelab_ops.deploy import engine
from homelab_ops.settings import current

if TYPE_CHECKING:
    import docker


class DockerResource(dg.ConfigurableResource):
    """A docker-py client per use: the socket is local, connecting costs nothing."""

    host: str = "unix:///var/run/docker.sock"
    timeout_s: int = 120

    @contextlib.contextmanager
    def client(self) -> Iterator["docker.DockerClient"]:
        """For one step, closed after it (`with docker.client() as client:`)."""
        client = engine.connect(self.host, self.timeout_s)
        try:
            yield client
        finally:
            client.close()


@functools.cache
def docker_resource() -> DockerResource:
    """One instance for the code location: Definitions.merge refuses two objects under one key,
    so a domain that also needs `docker` registers this same object."""
    return DockerResource(host=current().docker.host)
