"""`homelab-ops doctor`: check a deployment from the inside, one line per check.

Every check runs with short timeouts and never raises: the point is a complete
list of what is wrong, each with its fix, in under a minute, and never a secret
in the output (it gets pasted into chats and issues).
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from homelab_ops import units
from homelab_ops.docker_host import connect
from homelab_ops.errors import first_line
from homelab_ops.notify.config import NotifyConfig
from homelab_ops.settings import (BackupSettings, CredentialsSettings, DiskHygieneSettings, MetricsSettings,
                                  NotifySettings, PostgresSettings, Settings, SettingsError, load)

TIMEOUT = 5  # seconds per network call: a check that hangs is a failed check
SECRET_ENV = ("TELEGRAM_BOT_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HOMELAB_MASTER_KEY",
              "PGPASSWORD", "DAGSTER_PG_PASSWORD")


@dataclass
class Check:
    name: str
    status: str  # "ok", "FAIL" or "skip"
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"

    def line(self) -> str:
        text = f"{self.name}: {self.detail}"
        if self.failed and self.fix:
            text += f"  -> fix: {self.fix}"
        return f"{self.status:<4}  " + " ".join(text.split())  # one line, whatever the error message held


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "FAIL", detail, fix)


def skip(name: str, detail: str) -> Check:
    return Check(name, "skip", detail)


def redact(text: str, secrets: list[str]) -> str:
    """Longest first, so a secret containing another is replaced whole."""
    for s in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(s, "[REDACTED]")
    return text


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."


# --- PostgreSQL -------------------------------------------------------------------------------

def _pg_fix(err: BaseException, key: str) -> str:
    text = str(err).lower()
    if "does not exist" in text and "database" in text:
        return f"create the database or correct the database name in {key}"
    if "password authentication failed" in text or "no password supplied" in text:
        return f"correct the user/password in {key} (or its variable in .env)"
    if "role" in text and "does not exist" in text:
        return f"create the role or correct the user in {key}"
    return f"start PostgreSQL or correct host/port in {key}; from a container use the service name, not 127.0.0.1"


def check_database(name: str, dsn: str, key: str, *, missing_is_ok: bool = False) -> Check:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=TIMEOUT, application_name="homelab-ops doctor") as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            db = conn.info.dbname
    except psycopg.Error as e:
        if missing_is_ok and re.search(r'database ".*" does not exist', str(e)):
            return ok(name, "server reachable; the database does not exist yet (created on first use)")
        return fail(name, f"cannot connect: {_short(e)}", _pg_fix(e, key))
    return ok(name, f"connected to {db} (PostgreSQL {version.split()[0]})")


def check_backed_up_databases(postgres: PostgresSettings) -> Check:
    """Each listed database exists: a typo in postgres.databases otherwise fails at 03:00."""
    import psycopg

    name = "postgres databases"
    wanted = postgres.databases
    if wanted == "all":
        return skip(name, "postgres.databases is `all`: every database is backed up")
    try:
        with psycopg.connect(postgres.dsn.get_secret_value(), connect_timeout=TIMEOUT) as conn:
            present = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    except psycopg.Error as e:
        return fail(name, f"cannot list databases: {_short(e)}", _pg_fix(e, "postgres.dsn"))
    missing = [d for d in wanted if d not in present]
    if missing:
        return fail(name, f"not on the server: {', '.join(missing)}",
                    "create them, or remove them from postgres.databases")
    return ok(name, f"{', '.join(wanted)} present")


def check_pg_dump(postgres: PostgresSettings) -> Check:
    """pg_dump must be at least the server's major version, or every backup fails."""
    import subprocess

    import psycopg

    from homelab_ops.backups import postgresql as pg

    name = "pg_dump"
    try:
        path = pg.tool("pg_dump", postgres.pg_bin_dir)
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=TIMEOUT).stdout
    except (pg.SourceError, OSError, subprocess.SubprocessError) as e:
        return fail(name, _short(e), "install the PostgreSQL client tools or set postgres.pg_bin_dir")
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    client = int(m.group(1)) if m else 0
    try:
        with psycopg.connect(postgres.dsn.get_secret_value(), connect_timeout=TIMEOUT) as conn:
            server = conn.info.server_version // 10000
    except psycopg.Error:
        return ok(name, f"{path} ({out.strip()}); server version unknown (see postgres admin)")
    if client < server:
        return fail(name, f"{path} is version {client}, the server is {server}: pg_dump refuses newer servers",
                    f"install postgresql-client-{server} (or newer) or point postgres.pg_bin_dir at it")
    return ok(name, f"{path} version {client}, server {server}")


def check_source(config) -> Check:
    """A `backups.sources` entry: its server answers with its credentials, so tonight's backup can run."""
    from homelab_ops.backups import sources

    name = f"source {config.name}"
    try:
        return ok(name, sources.MODULES[config.type].probe(config))
    except sources.SourceError as e:
        return fail(name, _short(e), f"check backups.sources entry {config.name!r} (host, port, password)")


# --- Files, S3, Docker, Telegram --------------------------------------------------------------

def check_backup_dir(backups: BackupSettings) -> Check:
    name = "backup folder"
    folder = Path(backups.local_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
        free = os.statvfs(folder)
    except OSError as e:
        return fail(name, f"{folder} is not writable: {e.strerror or _short(e)}",
                    f"create it and give it to uid {os.getuid()} (chown), or correct backups.local_dir")
    return ok(name, f"{folder} writable, {units.size(free.f_bavail * free.f_frsize)} free")


def check_s3(target) -> Check:
    """Put and delete a small object under the prefix: what a backup needs, and nothing more."""
    import boto3
    import botocore.config
    import botocore.exceptions

    name = f"s3 {target.label}"
    key = f"{target.prefix}.homelab-ops-doctor/{uuid.uuid4().hex}"
    client = boto3.client(
        "s3", endpoint_url=target.endpoint_url, region_name=target.region,
        config=botocore.config.Config(connect_timeout=TIMEOUT, read_timeout=TIMEOUT,
                                      retries={"max_attempts": 1, "mode": "standard"}),
    )
    try:
        client.put_object(Bucket=target.bucket, Key=key, Body=b"homelab-ops doctor\n")
        client.delete_object(Bucket=target.bucket, Key=key)
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        fixes = {
            "NoSuchBucket": f"create bucket {target.bucket!r} or correct backups.s3 bucket",
            "AccessDenied": "give the access key put/delete rights on the bucket and prefix",
            "InvalidAccessKeyId": "correct AWS_ACCESS_KEY_ID in .env (homelab-ops creds render-env)",
            "SignatureDoesNotMatch": "correct AWS_SECRET_ACCESS_KEY in .env (homelab-ops creds render-env)",
        }
        return fail(name, f"{target.uri_base}: {code or 'error'}: {_short(e)}",
                    fixes.get(code, "check the bucket, the prefix and the access key's rights"))
    except botocore.exceptions.NoCredentialsError:
        return fail(name, "no S3 credentials found",
                    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the .env from homelab-ops creds render-env)")
    except botocore.exceptions.BotoCoreError as e:
        return fail(name, f"{target.endpoint_url or 'AWS'} unreachable: {_short(e)}",
                    "check backups.s3 endpoint_url and that the S3 server is up")
    return ok(name, f"{target.uri_base}: put and delete work")


def check_docker(host: str) -> Check:
    """The Engine at `docker.host` answers."""
    import docker
    import docker.errors

    name = "docker"
    try:
        client = connect(host, TIMEOUT)
        try:
            client.ping()
            version = client.version().get("Version", "?")
        finally:
            client.close()
    except (docker.errors.DockerException, OSError) as e:
        return fail(name, f"{host}: {_short(e, 200)}",
                    "mount /var/run/docker.sock into this container (code server only) and add its group "
                    "(DOCKER_GID), or correct docker.host")
    return ok(name, f"{host}: Docker Engine {version}")


def _is_pi(sys_root: str) -> bool:
    for rel in ("firmware/devicetree/base/model",):
        try:
            return "Raspberry Pi" in (Path(sys_root) / rel).read_text(errors="replace")
        except OSError:
            continue
    return False


def check_throttling(metrics: MetricsSettings) -> Check:
    """On a Pi, the firmware's throttling word must be readable: sysfs, or vcgencmd with /dev/vcio.
    The same reading as host_metrics' (metrics.collect.read_throttling), judged for the owner."""
    from datetime import datetime, timezone

    from homelab_ops.metrics.collect import Snapshot, read_throttling
    name = "pi throttling"
    if not _is_pi(metrics.sys_root):
        return skip(name, f"not a Raspberry Pi ({metrics.sys_root}/firmware/devicetree/base/model)")
    snap = Snapshot(taken_at=datetime.now(timezone.utc))
    source = read_throttling(snap, metrics.sys_root, metrics.vcgencmd)
    if source is not None:
        return ok(name, f"{source}: word {int(snap.value('homelab_pi_throttled_word') or 0):#x}")
    sysfs = snap.absent.get("get_throttled") or f"no get_throttled under {metrics.sys_root}/devices/platform"
    return fail(name, f"{sysfs}; {snap.absent.get('vcgencmd', 'vcgencmd failed')}",
                "mount the host's /sys read-only and set metrics.sys_root to it (deploy/docker-compose.yml: "
                "/sys:/host/sys:ro, metrics.sys_root: /host/sys), or give the container the host's vcgencmd "
                "and /dev/vcio")


def _has_capability(bit: int, status: str = "/proc/self/status") -> bool:
    try:
        for line in Path(status).read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return False


CAP_SYS_ADMIN = 21


def check_fstrim(hygiene: DiskHygieneSettings, docker_host: str) -> Check:
    """disk_hygiene's fstrim needs CAP_SYS_ADMIN (the FITRIM ioctl): here, or in the helper container."""
    import shutil

    from homelab_ops.maintenance.hygiene import Helper, HelperError
    name = "fstrim"
    mounts = hygiene.fstrim_mounts
    if not mounts:
        return skip(name, "disk_hygiene.fstrim_mounts is empty (the host trims, e.g. fstrim.timer)")
    helper = Helper.of(docker_host, hygiene.helper_image)
    if helper is not None:
        try:
            rc, out, err = helper.run(["fstrim", "--version"], binds={}, timeout=120)
        except HelperError as e:
            return fail(name, str(e), "build or load that image on the Engine (`docker compose build`), or unset "
                                      "disk_hygiene.helper_image")
        if rc != 0:
            return fail(name, f"{helper.image} cannot run fstrim: {first_line(err or out)}",
                        "set disk_hygiene.helper_image to homelab-ops' own image")
        return ok(name, f"fstrim of {', '.join(mounts)} runs in a one-shot container of {helper.image} "
                        "(root, CAP_SYS_ADMIN only, no network)")
    if not shutil.which("fstrim"):
        return fail(name, "fstrim is not installed", "install util-linux, or set disk_hygiene.fstrim_mounts: []")
    if not _has_capability(CAP_SYS_ADMIN):
        return fail(name, f"this process lacks CAP_SYS_ADMIN, so fstrim of {', '.join(mounts)} is always "
                          "'not permitted'",
                    "set disk_hygiene.helper_image to this image (homelab-ops:latest), so a one-shot container "
                    "trims; or let the host trim (`sudo systemctl enable --now fstrim.timer`) and set "
                    "disk_hygiene.fstrim_mounts: [] (deploy/README.md)")
    return ok(name, f"CAP_SYS_ADMIN present for {', '.join(mounts)}")


def check_container_logs(hygiene: DiskHygieneSettings, docker_host: str) -> Check:
    """disk_hygiene's log sizes read each container's json log file: it must be readable here.
    The same reading as disk_hygiene's (backups.hygiene.container_logs), judged for the owner."""
    from homelab_ops.maintenance.hygiene import DOCKER_OK, Helper, container_logs

    name = "container logs"
    logs = container_logs(docker_host, helper=Helper.of(docker_host, hygiene.helper_image), timeout=TIMEOUT)
    if logs.state != DOCKER_OK:
        return skip(name, logs.detail)
    # LogPath is the host's path: readable only where that path is (the host)
    unreadable = [c.name for c in logs.containers if c.state == "not readable"]
    if unreadable:
        return fail(name, f"{len(unreadable)} container log file(s) not readable here "
                          f"({', '.join(unreadable[:5])}{'...' if len(unreadable) > 5 else ''}): log sizes are "
                          "always 'not readable'",
                    "set disk_hygiene.helper_image to this image (homelab-ops:latest), so a one-shot root "
                    "container reads them; Docker's json-file logs are root-only (0640), so a read-only "
                    "mount alone is not enough for uid 1000 (deploy/README.md)")
    return ok(name, "every container's json log is readable")


def telegram_token(notify: NotifyConfig, env: dict[str, str]) -> str | None:
    """The token alerts are sent with, found as the alert path finds it."""
    from homelab_ops.notify.dispatch import TOKEN_ENV, bot_token

    return bot_token(notify, env.get(TOKEN_ENV))


def check_telegram(notify: NotifySettings, env: dict[str, str], token: str | None) -> Check:
    """getMe through the same client the alerts use: what fails here fails for them."""
    from homelab_ops.notify.http import Retry
    from homelab_ops.notify.telegram import TelegramBot

    name = "telegram"
    if not token:
        return skip(name, "no bot token configured (notify.telegram.bot_token, bot_token_credential "
                          "or TELEGRAM_BOT_TOKEN): alerts go nowhere")
    base = notify.telegram.api_base.rstrip("/")
    cred = notify.telegram.bot_token_credential
    fix = "copy the token from @BotFather (/mybots -> API Token) " + (
        f"into the credential: homelab-ops creds set {cred}" if cred
        else "into TELEGRAM_BOT_TOKEN (or notify.telegram.bot_token), then restart")
    resp, _ = TelegramBot(token, base, timeout=TIMEOUT).call("getMe", {}, retry=Retry(attempts=1))
    if resp.status in (401, 404):  # Telegram answers 404 for a malformed token, 401 for a revoked one
        return fail(name, f"Telegram rejected the bot token (HTTP {resp.status})", fix)
    if resp.status is not None and not resp.ok:
        return fail(name, f"getMe answered HTTP {resp.status}", f"retry later; check notify.telegram.api_base ({base})")
    if resp.status is None and resp.body is not None:
        return fail(name, f"getMe said: {resp.body.get('description', 'not ok')}", fix)
    if resp.status is None:
        return fail(name, f"cannot reach {base}: {resp.error}",
                    "check DNS/outbound HTTPS from this host, or notify.telegram.api_base")
    return ok(name, f"bot @{(resp.body or {}).get('result', {}).get('username', '?')} accepted the token")


def check_key_file(credentials: CredentialsSettings, env: dict[str, str]) -> Check:
    name = "master key file"
    path = Path(credentials.key_file)
    try:
        st = path.stat()
    except FileNotFoundError:
        if env.get("HOMELAB_MASTER_KEY"):
            return skip(name, f"{path} absent; HOMELAB_MASTER_KEY is set and used instead")
        return skip(name, f"{path} absent (homelab-ops creds init creates it)")
    except OSError as e:
        return fail(name, f"{path}: {e.strerror}", "check the path in credentials.key_file and its folder's rights")
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        return fail(name, f"{path} is not a regular file", "point credentials.key_file at the key file itself")
    if mode != 0o600:
        return fail(name, f"{path} has mode {mode:04o}; it must be 0600 (homelab-ops refuses it)",
                    f"chmod 600 {path}")
    if st.st_uid != os.geteuid():
        return fail(name, f"{path} belongs to uid {st.st_uid}, this process runs as uid {os.geteuid()}",
                    f"chown {os.geteuid()} {path}")
    return ok(name, f"{path} mode 0600, owned by uid {st.st_uid}")


def check_env_template(credentials: CredentialsSettings) -> Check:
    """The template the nightly rotation renders: after an upgrade to the Jinja2 form, here first."""
    from homelab_ops.credentials.envfile import FORM, checked_template
    from homelab_ops.credentials.errors import CredentialError

    name, path = "env template", credentials.env_template
    try:
        named = sorted({credential for credential, _ in checked_template(path)[1]})
    except CredentialError as e:
        return fail(name, str(e), f"placeholders are {FORM} (docs/credentials.md); a rotation refuses to start "
                                "until the template renders")
    return ok(name, f"{path} names {len(named)} credential(s): {', '.join(named) or 'none'}")


# --- All of it --------------------------------------------------------------------------------

def _checks(settings: Settings, env: dict[str, str], token: str | None) -> Iterator[tuple[str, Callable[[], Check]]]:
    """(name, check) in the order they print; the name labels a check that crashed."""
    yield "state database", lambda: check_database("state database", settings.state.dsn.get_secret_value(),
                                                   "state.dsn", missing_is_ok=True)
    yield "postgres admin", lambda: check_database("postgres admin", settings.postgres.dsn.get_secret_value(),
                                                   "postgres.dsn")
    yield "postgres databases", lambda: check_backed_up_databases(settings.postgres)
    yield "pg_dump", lambda: check_pg_dump(settings.postgres)
    if settings.n8n is not None:
        yield "n8n database", lambda: check_database("n8n database", settings.n8n.dsn.get_secret_value(), "n8n.dsn")
    for source in settings.backups.sources:
        yield f"source {source.name}", lambda source=source: check_source(source)
    yield "backup folder", lambda: check_backup_dir(settings.backups)
    if not settings.backups.s3:
        yield "s3", lambda: skip("s3", "no off-site target (backups.s3): backups stay on this host only")
    for target in settings.backups.s3:
        yield f"s3 {target.label}", lambda target=target: check_s3(target)
    yield "docker", lambda: check_docker(settings.docker.host)
    yield "pi throttling", lambda: check_throttling(settings.metrics)
    yield "fstrim", lambda: check_fstrim(settings.disk_hygiene, settings.docker.host)
    yield "container logs", lambda: check_container_logs(settings.disk_hygiene, settings.docker.host)
    yield "telegram", lambda: check_telegram(settings.notify, env, token)
    yield "master key file", lambda: check_key_file(settings.credentials, env)
    if settings.credentials.env_template:
        yield "env template", lambda: check_env_template(settings.credentials)
    from homelab_ops.pitr.config import PitrConfig
    from homelab_ops.pitr.doctor import checks as pitr_checks

    yield from pitr_checks(PitrConfig.of(settings))


def run(config: str | None = None, env: dict[str, str] | None = None) -> Iterator[Check]:
    """Yield each check as it finishes, already redacted; settings first, as the rest need them."""
    env = dict(os.environ) if env is None else env
    env_secrets = [env.get(k, "") for k in SECRET_ENV]
    try:
        settings = load(config)
    except SettingsError as e:
        yield fail("settings", redact(_short(e, 1000), env_secrets),
                   "edit the key named above; compare with homelab.example.yaml")
        return
    yield ok("settings", f"{settings.source} is valid")
    try:
        token = telegram_token(NotifyConfig.of(settings), env)
    except Exception:  # the credential store is another check's problem; Telegram then reports no token
        token = None
    secrets = [*env_secrets, *settings.secrets(), token or ""]
    for name, check in _checks(settings, env, token):
        try:
            result = check()
        except Exception as e:  # a doctor that crashes hides the checks after it
            result = fail(name, f"unexpected {type(e).__name__}: {_short(e)}", "report this with the line above")
        result.detail = redact(result.detail, secrets)
        result.fix = redact(result.fix, secrets)
        yield result
