"""The one way to reach the Docker Engine at `docker.host`.

docker-py is imported when first needed: the code location loads faster without it, and
most runs never talk to Docker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import docker


def connect(host: str, timeout: int = 60, **kwargs) -> docker.DockerClient:
    """A client for `host` (unix:///..., tcp://..., ssh://...); without an explicit API version
    it asks the daemon for one, so an Engine that does not answer raises DockerException here."""
    import docker

    return docker.DockerClient(base_url=host, timeout=timeout, **kwargs)
