"""A private redis-server for a test: loopback, a free port, its own folder, a password; killed after."""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port


class RedisServer:
    def __init__(self, port: int, password: str, folder: Path):
        self.port, self.password, self.folder = port, password, folder

    def cli(self, *args: str, stdin: str | None = None) -> str:
        proc = subprocess.run(["redis-cli", "-p", str(self.port), "--no-auth-warning", *args], input=stdin,
                              capture_output=True, text=True, timeout=60, env={**os.environ, "REDISCLI_AUTH": self.password})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def wait_ready(self) -> None:
        """Until the server answers PING (it started a moment ago), for at most five seconds."""
        for _ in range(100):
            try:
                if "PONG" in self.cli("PING"):
                    return
            except AssertionError:
                pass
            time.sleep(0.05)


@contextmanager
def redis_server(folder: Path, password: str):
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                             "--save", "", "--requirepass", password], stdout=subprocess.DEVNULL)
    server = RedisServer(port, password, folder)
    try:
        server.wait_ready()
        yield server
    finally:
        proc.kill()
        proc.wait()
