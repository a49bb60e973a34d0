"""Redis as a backup source: the RDB a replica would receive (`redis-cli --rdb -`), checked by
`redis-check-rdb` as it lands, and proved by loading it into a scratch redis-server.

The RDB carries its own CRC64; `redis-check-rdb` reads every key of the exact bytes backed up, so
the manifest records how many keys the file holds and how many of them have a TTL. A restore is
proved when a private redis-server (loopback, a free port, a one-time password, a scratch folder)
loads the file and holds exactly the keys without a TTL (keys with one may have expired since;
they are reported).
The password goes to redis-cli as REDISCLI_AUTH, never on its command line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from homelab_ops.backups.sources._base import SourceConfig, SourceError
from homelab_ops.children import die_with_parent, free_port
from homelab_ops.files import PARTIAL_SUFFIX
from homelab_ops.backups.config import BackupsConfig

LISTED = True
KINDS = {"redis"}
VERIFIES = ("read whole by redis-check-rdb, loaded by a scratch redis-server, and its keys without a TTL "
            "counted against the manifest")
RDB_NAME = "dump.rdb"
LOAD_TIMEOUT_S = 600  # a scratch server still loading after this is a failed verification


class Config(SourceConfig):
    type: Literal["redis"]
    host: str = "127.0.0.1"
    port: int = Field(6379, ge=1, le=65535)
    username: str | None = None  # an ACL user; it needs the `sync` (or `psync`) command
    password: SecretStr | None = None
    tls: bool = False


def describe(source: Config, config: BackupsConfig) -> str:
    return (f"A backup of the Redis at {source.host}:{source.port}: the RDB snapshot a replica would receive, "
            f"zstd{', age-encrypted' if config.backups.encryption.age_recipients else ''}, with a manifest of "
            "the keys `redis-check-rdb` read from it")


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise SourceError(f"{name} not found on PATH: install Redis's tools (Debian: redis-server)")
    return path


def _client(source: Config) -> tuple[list[str], dict[str, str]]:
    args = [tool("redis-cli"), "-h", source.host, "-p", str(source.port), "--no-auth-warning"]
    if source.username:
        args += ["--user", source.username]
    if source.tls:
        args.append("--tls")
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    if source.password is not None:
        env["REDISCLI_AUTH"] = source.password.get_secret_value()
    return args, env


# ---------------------------------------------------------------- pure: what redis-check-rdb said

_KEYS = re.compile(r"^\[info\] (\d+) keys read$", re.M)
_EXPIRES = re.compile(r"^\[info\] (\d+) expires$", re.M)
_VERSION = re.compile(r"AUX FIELD redis-ver = '([^']*)'")


def read_check(output: str) -> dict:
    """redis-check-rdb's report -> {keys, expires, redis_version}; ValueError when the file is not a
    whole, valid RDB (its CRC64 or its structure)."""
    keys, expires = _KEYS.search(output), _EXPIRES.search(output)
    if "RDB looks OK" not in output or "RDB ERROR DETECTED" in output or not keys or not expires:
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        error = lines.index("--- RDB ERROR DETECTED ---") + 1 if "--- RDB ERROR DETECTED ---" in lines else None
        said = [ln for ln in lines[error:] if not ln.startswith("[info]")][:3] if error else lines[-3:]
        raise ValueError("redis-check-rdb does not accept the RDB: " + (" / ".join(said) or "no output"))
    version = _VERSION.search(output)
    return {"keys": int(keys.group(1)), "expires": int(expires.group(1)),
            "redis_version": version.group(1) if version else None}


def compare_keys(manifest: dict, keyspace: dict[int, tuple[int, int]]) -> tuple[bool, str, int, int]:
    """The manifest's counts against a loaded server's `{db: (keys, expires)}`: (ok, why, expected,
    restored) for the keys without a TTL, which must all be there; keys with one may have expired."""
    persistent = int(manifest["keys"]) - int(manifest["expires"])
    restored = sum(k - e for k, e in keyspace.values())
    with_ttl = sum(e for _, e in keyspace.values())
    if restored != persistent:
        return False, (f"the restore holds {restored} keys without a TTL, the manifest {persistent}"), persistent, restored
    return True, (f"restored and matched the manifest: {restored} keys without a TTL, "
                  f"{with_ttl} of {manifest['expires']} with a TTL still live"), persistent, restored


def parse_keyspace(info: str) -> dict[int, tuple[int, int]]:
    """`INFO keyspace` -> {db: (keys, expires)}."""
    out = {}
    for m in re.finditer(r"^db(\d+):keys=(\d+),expires=(\d+)", info, re.M):
        out[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
    return out


def probe(source: Config) -> str:
    """What `homelab-ops doctor` reports: the server answers with these credentials (its version)."""
    args, env = _client(source)
    try:
        proc = subprocess.run([*args, "INFO", "server"], capture_output=True, text=True, timeout=10, env=env)
    except subprocess.TimeoutExpired:
        raise SourceError(f"no answer from {source.host}:{source.port} within 10 s") from None
    out = (proc.stdout + proc.stderr).strip()
    version = re.search(r"^redis_version:(\S+)", out, re.M)
    if proc.returncode != 0 or not version:
        raise SourceError(f"{source.host}:{source.port}: {out.splitlines()[-1] if out else f'exit {proc.returncode}'}")
    return f"Redis {version.group(1)} at {source.host}:{source.port} answers"


# ---------------------------------------------------------------- backup

def check_rdb(path: Path) -> dict:
    proc = subprocess.run([tool("redis-check-rdb"), str(path)], capture_output=True, text=True, timeout=LOAD_TIMEOUT_S)
    try:
        if proc.returncode != 0 and "RDB ERROR DETECTED" not in proc.stdout + proc.stderr:
            raise ValueError(f"redis-check-rdb failed (exit {proc.returncode}): {(proc.stdout + proc.stderr)[-500:]}")
        return read_check(proc.stdout + proc.stderr)
    except ValueError as e:
        raise SourceError(str(e)) from None


def backup(source: Config, config: BackupsConfig, log):
    """Stream the RDB through zstd (and age) into the backup, keeping the raw bytes beside it just long
    enough for redis-check-rdb; the manifest records what it read."""
    from homelab_ops.backups.backup import BackupError, prepare

    args, env = _client(source)
    pending = prepare(config, source.name)
    raw = pending.final.with_name(pending.stem + ".rdb" + PARTIAL_SUFFIX)  # the recovery sweep's, if killed
    try:
        proc = subprocess.Popen([*args, "--rdb", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        sha, size = pending.stream(proc, f"redis-cli --rdb of {source.name}", tap=raw)
        try:
            checked = check_rdb(raw)
        except SourceError as e:
            raise BackupError(f"the RDB of {source.name} is not whole: {e}") from None
        rdb_size = raw.stat().st_size
        raw.unlink()
        result = pending.commit(sha, size, {"kind": "redis", "source": "redis", "rdb_size": rdb_size, **checked})
    except BaseException:
        raw.unlink(missing_ok=True)
        pending.abandon()
        raise
    log.info(f"backed up {source.name}: {size} bytes, {checked['keys']} keys ({checked['expires']} with a TTL)")
    return result


# ---------------------------------------------------------------- restore and verification

def load_and_count(folder: Path) -> dict[int, tuple[int, int]]:
    """Start a private redis-server on `folder/dump.rdb` (loopback, a one-time password, no persistence
    of its own), wait until it has loaded, read its keyspace, stop it."""
    import secrets

    port, log = free_port(), folder / "redis.log"
    env = {**os.environ, "REDISCLI_AUTH": secrets.token_hex(16)}
    # SIGKILLed when this process dies, so a killed verification leaves no server running; the
    # password keeps other local users out of the restored data meanwhile.
    server = subprocess.Popen([tool("redis-server"), "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, preexec_fn=lambda: die_with_parent(signal.SIGKILL))
    server.stdin.write("\n".join([
        f"port {port}", "bind 127.0.0.1", f'dir "{folder}"', f"dbfilename {RDB_NAME}", 'save ""',
        "appendonly no", f'logfile "{log}"', f"requirepass {env['REDISCLI_AUTH']}"]).encode() + b"\n")
    server.stdin.close()  # the password travels on stdin, not the command line
    cli = [tool("redis-cli"), "-h", "127.0.0.1", "-p", str(port), "--no-auth-warning"]

    def ask(section: str) -> str:
        return subprocess.run([*cli, "INFO", section], capture_output=True, text=True, env=env, timeout=60).stdout

    try:
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while "loading:0" not in ask("persistence"):
            if server.poll() is not None:
                said = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
                raise SourceError("redis-server would not load the RDB: " + (" / ".join(said) or "no log"))
            if time.monotonic() > deadline:
                raise SourceError(f"redis-server was still loading the RDB after {LOAD_TIMEOUT_S} s")
            time.sleep(0.1)
        return parse_keyspace(ask("keyspace"))
    finally:
        server.kill()
        server.wait()


def verify_restore(config: BackupsConfig, path, manifest: dict, result) -> None:
    from homelab_ops.backups import verify as v
    from homelab_ops.backups.restore import RestoreError, decode_file

    with tempfile.TemporaryDirectory(prefix=f"{v.SCRATCH_DIR_PREFIX}redis-", dir=config.backups.local_dir) as tmp:
        rdb = Path(tmp) / RDB_NAME
        try:
            decode_file(config.backups.encryption, path, rdb, encrypted=result.encrypted)
            # The server checks the CRC64 too, but says only "Short read or OOM" among its warnings;
            # redis-check-rdb names the damage, for one more read of the file.
            check_rdb(rdb)
            keyspace = load_and_count(Path(tmp))
        except (RestoreError, SourceError) as e:
            result.message = config.redact(f"the backup does not restore: {e}")
            return
    result.restored = True
    ok, why, expected, restored = compare_keys(manifest, keyspace)
    result.tables = [v.TableCheck("keys without a TTL", expected, restored, ok)]
    result.message = why
    if ok:
        result.outcome = v.RESTORED


def refuse_existing(config: BackupsConfig, into: str) -> None:
    from homelab_ops.backups.restore import RestoreError

    target = Path(into) / RDB_NAME
    if target.exists():
        raise RestoreError(f"{target} already exists: refusing to overwrite it; choose another --into folder")


def restore(config: BackupsConfig, loc, into: str, *, progress=None, keep_owners: bool = True) -> str:
    """Write the checked RDB as `<into>/dump.rdb` (the folder is created; an existing dump.rdb is never
    overwritten), after redis-check-rdb accepted it. Then: stop Redis, put the file in its data folder
    (`dir` in its config), start Redis."""
    from homelab_ops.backups.restore import RestoreError, decode_file, load_identity, local_copy

    refuse_existing(config, into)
    if loc.backup.encrypted:
        load_identity(config.backups.encryption)  # fail before any work when the key is missing
    folder = Path(into)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / RDB_NAME
    partial = folder / (RDB_NAME + ".partial")
    try:
        with local_copy(config.backups, loc, progress) as path:
            decode_file(config.backups.encryption, path, partial, encrypted=loc.backup.encrypted, progress=progress)
        try:
            check_rdb(partial)
        except SourceError as e:
            raise RestoreError(str(e)) from None
        try:
            os.link(partial, target)  # never over a dump.rdb that appeared meanwhile
        except FileExistsError:
            raise RestoreError(f"{target} appeared during the restore: refusing to overwrite it") from None
    finally:
        partial.unlink(missing_ok=True)
    return f"as {target} (stop Redis, put it in Redis's data folder, start Redis)"
