"""`homelab-ops pitr receive`: pg_receivewal through a physical slot, supervised, in the foreground.

pg_receivewal does the streaming (the server sends WAL as it is written, partial
segments included, so an idle server costs nothing); this wrapper makes sure the
slot exists, restarts pg_receivewal when it exits, encrypts each finished segment
with age when `backups.encryption.age_recipients` is set, and writes a heartbeat
(`_wal/<cluster>.receiver.json`) that the health checks read: when the receiver
was last connected and up to when the server's WAL was safely on disk here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pyrage

from homelab_ops.backups import postgresql as pg
from homelab_ops.backups.names import WAL_FOLDER, pitr_folders
from homelab_ops.children import die_with_parent
from homelab_ops.errors import first_line
from homelab_ops.files import fsync_dir, write_atomic
from homelab_ops.pitr import wal
from homelab_ops.pitr.config import PitrConfig

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class ReceiveError(RuntimeError):
    """The receiver cannot run; the message says what to fix."""


def pitr_dsn(config: PitrConfig) -> str:
    return (config.pitr.dsn or config.postgres.dsn).get_secret_value()


def wal_dir(config: PitrConfig, root: Path | None = None) -> Path:
    """`<local_dir>/_wal/<cluster>`; `root` instead of local_dir for a copy fetched from off-site."""
    return Path(root or config.backups.local_dir) / pitr_folders(config.pitr.cluster)[1]


def status_path(config: PitrConfig) -> Path:
    return Path(config.backups.local_dir) / WAL_FOLDER / f"{config.pitr.cluster}.receiver.json"


def read_status(config: PitrConfig) -> dict | None:
    try:
        return json.loads(status_path(config).read_text())
    except (OSError, ValueError):
        return None


def heartbeat_age(config: PitrConfig, now: float | None = None) -> float | None:
    """Seconds since the receiver last wrote its heartbeat; None when it never did."""
    status = read_status(config) or {}
    try:
        updated = datetime.fromisoformat(status["updated_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None
    return max(0.0, (time.time() if now is None else now) - updated)


def receivewal_args(config: PitrConfig, directory: Path, conninfo: str) -> list[str]:
    p = config.pitr
    interval = max(1, int(p.status_interval.seconds))
    return [pg.tool("pg_receivewal", config.postgres.pg_bin_dir), f"--directory={directory}", f"--slot={p.slot_name}",
            "--synchronous", "--compress=gzip", f"--status-interval={interval}", f"--dbname={conninfo}",
            "--no-password", "--verbose"]


def create_slot(config: PitrConfig) -> bool:
    """The physical slot, reserving WAL from now on, unless it exists (returns True when created).

    WAL the receiver has not flushed stays on the server, bounded by its
    max_slot_wal_keep_size. pg_receivewal's own --create-slot does not reserve WAL, so
    the stream would start wherever the server is when it first connects.
    """
    slot = config.pitr.slot_name
    try:
        with psycopg.connect(pitr_dsn(config), autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT slot_type FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
            if row is not None:
                if row[0] != "physical":
                    raise ReceiveError(f"replication slot {slot!r} exists but is a {row[0]} slot: choose another "
                                       "pitr.slot")
                return False
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
            return True
    except psycopg.Error as e:
        raise ReceiveError(f"cannot create the replication slot {slot!r}: {first_line(e)} "
                           "(run `homelab-ops doctor`)") from None


# --------------------------------------------------------------------------- encryption of finished files


def encrypt_finished(directory: Path, recipients: list[str]) -> list[str]:
    """age-encrypt every finished segment and history file that is still plain; returns their names.

    Written as a dot-file, fsynced, renamed to `<name>.age`, then the plain file goes:
    a crash leaves the plain file (encrypted next time) or both (the plain one is removed).
    """
    if not recipients:
        return []
    keys = [pyrage.x25519.Recipient.from_str(k) for k in recipients]
    done = []
    for name in sorted(os.listdir(directory)):
        m = wal.SEGMENT.match(name) or wal.HISTORY.match(name)
        if not m or m["age"]:
            continue
        src, dst = directory / name, directory / f"{name}.age"
        if dst.exists():
            src.unlink(missing_ok=True)
            continue
        tmp = directory / f".{name}.age.tmp"
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            pyrage.encrypt_io(fin, fout, keys)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
        fsync_dir(directory)
        src.unlink()
        done.append(name)
    return done


# --------------------------------------------------------------------------- heartbeat


def slot_state(dsn: str, slot: str) -> dict:
    """The slot as the server sees it, with the server's current WAL position."""
    with psycopg.connect(dsn, connect_timeout=10, autocommit=True, application_name="homelab-ops pitr") as conn:
        row = conn.execute(
            "SELECT s.active, s.restart_lsn::text, pg_current_wal_lsn()::text, s.wal_status, s.safe_wal_size, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, "
            "current_setting('max_slot_wal_keep_size'), pg_is_in_recovery() "
            "FROM pg_replication_slots s WHERE s.slot_name = %s", (slot,)).fetchone()
        if row is None:
            current = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            return {"exists": False, "server_lsn": current}
    active, restart, current, status, safe, retained, keep, _ = row
    return {"exists": True, "active": bool(active), "flushed_lsn": restart, "server_lsn": current,
            "wal_status": status, "safe_wal_size": safe, "retained_bytes": retained,
            "max_slot_wal_keep_size": keep}


class Heartbeat:
    """Remembers recent (time, server LSN) samples to say up to when the receiver had caught up."""

    def __init__(self, keep_seconds: float):
        self.samples: deque[tuple[float, int]] = deque()
        self.keep = keep_seconds
        self.caught_up_at: float | None = None
        self.connected_at: float | None = None

    def observe(self, now: float, state: dict) -> dict:
        server = wal.parse_lsn(state["server_lsn"])
        flushed = wal.parse_lsn(state["flushed_lsn"]) if state.get("flushed_lsn") else None
        active = bool(state.get("active"))
        if flushed is not None and active:
            if flushed >= server:
                self.caught_up_at = now
            else:
                # the newest sample whose server position the receiver has flushed since
                for t, lsn in reversed(self.samples):
                    if lsn <= flushed:
                        self.caught_up_at = max(self.caught_up_at or t, t)
                        break
            self.connected_at = now
        self.samples.append((now, server))
        while self.samples and self.samples[0][0] < now - self.keep:
            self.samples.popleft()
        return {"connected": active, "last_connected_at": _iso(self.connected_at),
                "caught_up_at": _iso(self.caught_up_at), **state}


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat()


# --------------------------------------------------------------------------- the loop


def run_receiver(config: PitrConfig, *, stop: threading.Event | None = None, on_event=None) -> None:
    """Run until `stop` is set or SIGTERM/SIGINT: create the slot, supervise pg_receivewal,
    encrypt finished segments, write the heartbeat."""
    if not config.pitr.enabled:
        raise ReceiveError("pitr.enabled is false: set it to true in the settings to archive WAL")
    stop = stop or threading.Event()
    say = on_event or (lambda msg: log.info("%s", msg))
    directory = wal_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    dsn = pitr_dsn(config)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    wait = 1.0
    while True:  # after a power cut the server may come up after the receiver: keep trying
        try:
            create_slot(config)
            break
        except ReceiveError as e:
            say(f"{e}; retrying in {wait:.0f}s")
            if stop.wait(wait):
                return
            wait = min(wait * 2, 60.0)
    conninfo, env = pg._client_env(dsn)
    args = receivewal_args(config, directory, conninfo)
    recipients = config.backups.encryption.age_recipients
    interval = max(1.0, config.pitr.status_interval.seconds)
    beat = Heartbeat(keep_seconds=max(3600.0, 4 * config.pitr.max_lag.seconds))
    previous = read_status(config) or {}
    # a restart keeps what the last run knew, so a crash loop does not look freshly caught up
    for attr in ("caught_up_at", "connected_at"):
        key = "last_connected_at" if attr == "connected_at" else attr
        if previous.get(key):
            setattr(beat, attr, datetime.fromisoformat(previous[key]).timestamp())
    proc: subprocess.Popen | None = None
    stderr_file = Path(config.backups.local_dir) / WAL_FOLDER / f".{config.pitr.cluster}.receivewal.log"
    backoff = 1.0
    try:
        while not stop.is_set():
            if proc is None or proc.poll() is not None:
                if proc is not None:
                    say(f"pg_receivewal exited ({proc.returncode}); restarting in {backoff:.0f}s: "
                        f"{_tail(stderr_file)}")
                    if stop.wait(backoff):
                        break
                    backoff = min(backoff * 2, 60.0)
                # dies with this process: a leftover would hold the slot and lock out the next
                # receiver (SIGINT is pg_receivewal's clean exit)
                with open(stderr_file, "ab") as err:
                    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                            preexec_fn=lambda: die_with_parent(signal.SIGINT))
                say(f"pg_receivewal started (pid {proc.pid}) into {directory}, slot {config.pitr.slot_name}")
            try:
                encrypt_finished(directory, recipients)
            except OSError as e:
                say(f"encrypting finished segments failed: {e}")
            try:
                status = beat.observe(time.time(), slot_state(dsn, config.pitr.slot_name))
                if status.get("connected"):
                    backoff = 1.0
            except psycopg.Error as e:
                status = {"connected": False, "error": first_line(e), "last_connected_at": _iso(beat.connected_at),
                          "caught_up_at": _iso(beat.caught_up_at)}
            status.update({"cluster": config.pitr.cluster, "slot": config.pitr.slot_name,
                           "receiver_pid": proc.pid if proc else None, "wrapper_pid": os.getpid(),
                           "updated_at": _iso(time.time())})
            write_atomic(status_path(config), json.dumps(status, indent=2).encode())
            stop.wait(interval)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # pg_receivewal flushes and exits cleanly on SIGINT
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(OSError):
            encrypt_finished(directory, recipients)


def _tail(path: Path, n: int = 300) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace").strip().splitlines()[-1]
    except (OSError, IndexError):
        return ""
