"""Run n8n's own CLI against a scratch database, never activating anything.

Only commands that do not start a server or activate a workflow are run
(`export:workflow`, `export:credentials --decrypted`, `import:*`). Each call gets
a private user folder (mode 0700) whose `.n8n/config` holds the key, so the key
reaches n8n through a 0600 file, not an environment variable or a command line;
the database password goes the same way (`DB_POSTGRESDB_PASSWORD_FILE`). The
folder is deleted afterwards. Output shown to anyone is cut and redacted.

`command` runs the executable named by `n8n.command` (an npm install);
`docker` runs `n8nio/n8n:<n8n.version>` through the Docker Engine API with the
same folder copied in, on the host network (the scratch database is on the host).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

import psycopg

from homelab_ops.backups.config import BackupsConfig
from homelab_ops.docker_host import connect
from homelab_ops.n8n import keys


class N8nRunError(RuntimeError):
    """An n8n CLI call failed; the message is redacted and names the command."""


IMAGE = "n8nio/n8n"


def db_env(dsn: str, database: str, *, schema: str = "public", prefix: str = "") -> tuple[dict[str, str], str]:
    """n8n's DB_* variables for `database` on the server of `dsn`, and the password (kept apart)."""
    p = psycopg.conninfo.conninfo_to_dict(dsn)
    env = {
        "DB_TYPE": "postgresdb",
        "DB_POSTGRESDB_HOST": str(p.get("host") or "127.0.0.1"),
        "DB_POSTGRESDB_PORT": str(p.get("port") or 5432),
        "DB_POSTGRESDB_DATABASE": database,
        "DB_POSTGRESDB_USER": str(p.get("user") or "postgres"),
        "DB_POSTGRESDB_SCHEMA": schema,
    }
    if prefix:
        env["DB_TABLE_PREFIX"] = prefix
    return env, str(p.get("password") or "")


# Quiet, offline, nothing scheduled: what every verification call runs with.
_BASE_ENV = {
    "N8N_DIAGNOSTICS_ENABLED": "false",
    "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
    "N8N_TEMPLATES_ENABLED": "false",
    "N8N_PERSONALIZATION_ENABLED": "false",
    "N8N_LOG_LEVEL": "warn",
    "N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS": "true",
    "N8N_RUNNERS_ENABLED": "false",
    "EXECUTIONS_MODE": "regular",
    "N8N_DISABLE_PRODUCTION_MAIN_PROCESS": "true",
    "NODE_OPTIONS": "--max-old-space-size=1024",
}


PURPOSE = {"homelab-ops.purpose": "n8n-verification"}


def _remove_leftovers(client, timeout_s: float) -> None:
    """Containers a killed run left behind (the key file is inside them): any older than a call can
    last (a call removes its own within n8n.verify_timeout), so a parallel call's is never taken."""
    import time

    import docker
    (label, value), = PURPOSE.items()
    for c in client.api.containers(all=True, filters={"label": f"{label}={value}"}):
        if time.time() - c["Created"] > timeout_s + 300:
            try:
                client.api.remove_container(c["Id"], force=True)
            except docker.errors.DockerException:
                pass


class N8nCli:
    """One n8n (a version, a key, a database) whose CLI commands can be run one after another."""

    def __init__(self, config: BackupsConfig, *, database: str, key: str, version: str | None = None,
                 executable: str | None = None, mode: str | None = None):
        s = config.n8n
        self.docker_host = config.docker_host
        self.mode = mode or s.verify_with or "command"
        self.version = version or s.version
        # n8n.command may name the version: /var/cache/homelab-ops/n8n/{version}/node_modules/.bin/n8n
        self.executable = (executable or s.command or "").replace("{version}", self.version) or None
        if self.mode == "command" and not self.executable:
            raise N8nRunError("n8n.verify_with is command but n8n.command names no executable")
        self.database = database
        self.env, self._password = db_env(config.postgres.dsn.get_secret_value(), database,
                                          schema=s.db_schema, prefix=s.table_prefix)
        self._key = key
        self.timeout = s.verify_timeout.seconds
        self._redact = config.redactor(key, self._password)

    def __repr__(self) -> str:
        return f"N8nCli({self.mode}, {self.version}, database={self.database!r})"

    @contextmanager
    def _home(self):
        """A private user folder with `.n8n/config` (the key) and the password file; removed after."""
        home = Path(tempfile.mkdtemp(prefix="homelab-n8n-"))
        try:
            os.chmod(home, 0o700)
            dot = home / ".n8n"
            dot.mkdir(mode=0o700)
            fd = os.open(dot / "config", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(keys.config_bytes(self._key))
            if self._password:
                fd = os.open(home / "db_password", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(self._password)
            (home / "out").mkdir(mode=0o700)
            yield home
        finally:
            shutil.rmtree(home, ignore_errors=True)

    def run(self, *args: str, files_in: dict[str, bytes] | None = None,
            files_out: tuple[str, ...] = ()) -> tuple[str, dict[str, bytes]]:
        """Run `n8n ARGS...`; `files_in` are placed under `out/`, `files_out` (paths under `out/`)
        are read back and returned, then deleted with the folder. Returns (redacted output, files)."""
        with self._home() as home:
            for name, data in (files_in or {}).items():
                p = home / "out" / name
                p.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            if self.mode == "docker":
                out = self._run_docker(home, args)
            else:
                out = self._run_command(home, args)
            got = {}
            for name in files_out:
                p = home / "out" / name
                if p.is_dir():
                    for f in sorted(p.iterdir()):
                        got[f"{name}/{f.name}"] = f.read_bytes()
                elif p.exists():
                    got[name] = p.read_bytes()
            return out, got

    def _env(self, home: str) -> dict[str, str]:
        env = {**_BASE_ENV, **self.env, "N8N_USER_FOLDER": home, "HOME": home}
        if self._password:
            env["DB_POSTGRESDB_PASSWORD_FILE"] = f"{home}/db_password"
        return env

    def _fail(self, args, rc, output: str) -> N8nRunError:
        tail = "\n".join(self._redact(output).strip().splitlines()[-15:])
        return N8nRunError(f"n8n {args[0]} (n8n {self.version}, {self.mode}) exited {rc}: {tail or 'no output'}")

    def _run_command(self, home: Path, args) -> str:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self._env(str(home))}
        argv = [self.executable, *(a.replace("{out}", str(home / "out")) for a in args)]
        try:
            proc = subprocess.run(argv, env=env, cwd=home, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise N8nRunError(f"n8n {args[0]} still running after {self.timeout:.0f} s (n8n.verify_timeout)") from None
        except OSError as e:
            raise N8nRunError(f"cannot run n8n.command {self.executable}: {e.strerror}") from None
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        if proc.returncode != 0:
            raise self._fail(args, proc.returncode, output)
        return self._redact(output)

    def _run_docker(self, home: Path, args) -> str:
        import docker

        mount = "/home/node"
        client = connect(self.docker_host, int(self.timeout) + 60)
        container = None
        try:
            _remove_leftovers(client, self.timeout)
            env = self._env(mount)
            container = client.containers.create(
                f"{IMAGE}:{self.version}", command=[a.replace("{out}", f"{mount}/out") for a in args],
                entrypoint=["n8n"], environment=env, network_mode="host", user="1000:1000",
                working_dir=mount, labels=PURPOSE)
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for p in sorted(home.rglob("*")):
                    info = tar.gettarinfo(str(p), arcname=str(p.relative_to(home)))
                    info.uid, info.gid = 1000, 1000
                    if p.is_file():
                        with open(p, "rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
            container.put_archive(mount, buf.getvalue())
            container.start()
            rc = container.wait(timeout=self.timeout).get("StatusCode", 1)
            output = container.logs().decode(errors="replace")
            if rc != 0:
                raise self._fail(args, rc, output)
            stream, _ = container.get_archive(f"{mount}/out")
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                for m in tar.getmembers():
                    if m.isfile():
                        rel = Path(m.name).relative_to("out")
                        target = home / "out" / rel
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(tar.extractfile(m).read())
            return self._redact(output)
        except docker.errors.ImageNotFound:
            raise N8nRunError(f"image {IMAGE}:{self.version} is not on the Docker Engine "
                              f"({self.docker_host}): docker pull {IMAGE}:{self.version}") from None
        except docker.errors.DockerException as e:
            raise N8nRunError(self._redact(f"n8n {args[0]} in Docker failed: {type(e).__name__}: {e}")) from None
        finally:
            if container is not None:
                try:
                    container.remove(force=True)
                except docker.errors.DockerException:
                    pass
            client.close()

    # ------------------------------------------------------------------ the commands used

    def _export(self, name: str, *args: str) -> list[dict]:
        """An export command's JSON; n8n exits 1 when there is nothing to export, which is no error here."""
        try:
            _, files = self.run(*args, files_out=(name,))
        except N8nRunError as e:
            if "No workflows found" in str(e) or "No credentials found" in str(e):
                return []
            raise
        return json.loads(files.get(name) or b"[]")

    def export_workflows(self) -> list[dict]:
        return self._export("workflows.json", "export:workflow", "--all", "--output={out}/workflows.json")

    def export_workflow(self, workflow_id: str) -> list[dict]:
        return self._export("workflow.json", "export:workflow", f"--id={workflow_id}", "--output={out}/workflow.json")

    def export_credentials_decrypted(self) -> list[dict]:
        """Decrypted credentials, in memory only: the file lives in the private folder until read."""
        return self._export("credentials.json", "export:credentials", "--all", "--decrypted",
                            "--output={out}/credentials.json")

    def export_credential_decrypted(self, credential_id: str) -> list[dict]:
        return self._export("credential.json", "export:credentials", f"--id={credential_id}", "--decrypted",
                            "--output={out}/credential.json")

    def import_credentials(self, credentials: list[dict]) -> None:
        self.run("import:credentials", "--input={out}/credentials.json",
                 files_in={"credentials.json": json.dumps(credentials).encode()})

    def import_workflows_dir(self, files: dict[str, bytes]) -> str:
        out, _ = self.run("import:workflow", "--separate", "--input={out}/workflows",
                          files_in={f"workflows/{n}": d for n, d in files.items()})
        return out
