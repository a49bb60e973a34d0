"""Recover the cluster to a point in a temporary PostgreSQL, then copy one database out of it.

The base backup chosen by `plan.choose_base` is unpacked into a private folder
beside the archive; the WAL it needs is checked for gaps first (a missing segment
is named before any work), decrypted and checked (gzip's CRC and length: a damaged
segment is named too) into a staging folder that `fetch.py`, the restore_command,
reads. A temporary PostgreSQL of the same major version replays to the target and
promotes; `pg_dump | pg_restore` then copies one database into the running server.
The temporary cluster listens on its own socket folder only (trust, mode 0700,
`listen_addresses=''`), never on a network port, and is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pyrage
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from homelab_ops.backups import postgresql as pg
from homelab_ops.backups.restore import load_identity, stores_named
from homelab_ops.backups.stores import StoreError
from homelab_ops.children import die_with_parent, free_port
from homelab_ops.files import remove_stale_scratch
from homelab_ops.pitr import base as bb
from homelab_ops.pitr import offsite, plan, wal
from homelab_ops.pitr.config import PitrConfig
from homelab_ops.pitr.receive import wal_dir

if TYPE_CHECKING:
    from homelab_ops.settings import PostgresSettings

FETCH = Path(__file__).with_name("fetch.py")


class RecoverError(RuntimeError):
    """Recovery was refused or failed; the message names the segment, backup or setting."""


@dataclass
class Recovered:
    """A temporary cluster recovered to the target, open for reading."""

    base: bb.BaseBackup
    target: plan.Target
    socket_dir: Path
    port: int
    user: str
    replay_lsn: str | None = None
    stop_reason: str | None = None  # the server's "recovery stopping ..." line
    last_commit: str | None = None  # "last completed transaction was at log time ..."
    fetched: list[str] = field(default_factory=list)

    def dsn(self, database: str = "postgres") -> str:
        return make_conninfo(host=str(self.socket_dir), port=self.port, user=self.user, dbname=database,
                             connect_timeout=10)


def _as_postgres() -> tuple[list[str], pwd.struct_passwd | None]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` OS user."""
    if os.geteuid() != 0:
        return [], None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise RecoverError("running as root, but there is no `postgres` OS user to run the temporary "
                           "PostgreSQL as") from None
    return ["runuser", "-u", "postgres", "--"], pw


def _chown_tree(root: Path, pw) -> None:
    if pw is None:
        return
    for dirpath, dirnames, filenames in os.walk(root):
        os.chown(dirpath, pw.pw_uid, pw.pw_gid)
        for n in filenames:
            os.lchown(os.path.join(dirpath, n), pw.pw_uid, pw.pw_gid)


def _read_history(directory: Path, name: str, identities) -> str:
    if not (directory / name).exists() and (directory / f"{name}.age").exists():
        name += ".age"  # encrypted by the receiver since it was listed
    data = (directory / name).read_bytes()
    if name.endswith(".age"):
        data = pyrage.decrypt(data, identities)
    return data.decode()


def _check_gzip(path: Path, seg_size: int, partial: bool) -> None:
    d = zlib.decompressobj(wbits=31)
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += len(d.decompress(chunk))
    n += len(d.flush())
    if not partial and (not d.eof or n != seg_size):
        raise ValueError(f"decompresses to {n} bytes, not a whole {seg_size}-byte segment")


def stage_wal(directory: Path, staging: Path, base: bb.BaseBackup, *, until_lsn: int | None,
              identities) -> tuple[wal.Archive, int]:
    """Check the chain from the base backup on, then decrypt and check each segment into `staging`.

    Returns the archive listing and the recovery timeline. Raises RecoverError naming the
    first missing or damaged segment.
    """
    seg = base.segment_size
    archive = wal.read_archive(os.listdir(directory) if directory.is_dir() else [], seg)
    target_tli = max([base.timeline, *archive.histories]) if archive.histories else base.timeline
    history = (wal.parse_history(_read_history(directory, archive.histories[target_tli], identities))
               if target_tli > 1 and target_tli in archive.histories else [])
    first = wal.segno_of(base.start_lsn, seg)
    have = [s for (t, s) in [*archive.segments, *archive.partials]]
    newest = max(have, default=first)
    end = until_lsn + 1 if until_lsn is not None else (newest + 1) * seg
    if wal.segno_of(end - 1, seg) > newest:
        raise RecoverError(f"the WAL archive in {directory} ends in segment "
                           f"{wal.segment_name(target_tli, newest, seg)}, before "
                           f"{wal.format_lsn(until_lsn)}: the receiver has not archived that far "
                           "(is `homelab-ops pitr receive` running?)")
    gaps = wal.find_gaps(archive, max(base.end_lsn - 1, base.start_lsn), end, target_tli, history, seg_size=seg)
    if gaps:
        names = ", ".join(g.segment for g in gaps[:5]) + (f" and {len(gaps) - 5} more" if len(gaps) > 5 else "")
        raise RecoverError(f"the WAL chain from base backup {base.stem} has a gap: {names} "
                           f"{gaps[0].why} ({directory}); replay cannot pass it")
    staging.mkdir(parents=True, exist_ok=True)
    for tli, name in archive.histories.items():
        (staging / name.removesuffix(".age")).write_text(_read_history(directory, name, identities))
    last = wal.segno_of(end - 1, seg)
    files = [f for (t, s), f in archive.segments.items() if first <= s <= last]
    files += [f for (t, s), f in archive.partials.items() if first <= s <= last
              and (t, s) not in archive.segments]
    for f in files:
        if f.compression != "gz":
            raise RecoverError(f"segment {f.file}: only gzip-compressed segments are read (pg_receivewal "
                               "--compress=gzip, as `pitr receive` runs it)")
        src = directory / f.file
        try:
            partial = _stage_one(directory, staging, f, identities)
            _check_gzip(staging / (f.name + (".gz.partial" if partial else ".gz")), seg, partial)
        except (OSError, ValueError, zlib.error, pyrage.DecryptError) as e:
            raise RecoverError(f"WAL segment {f.name} is damaged ({src}): {e}") from None
    return archive, target_tli


def _stage_one(directory: Path, staging: Path, f: wal.SegmentFile, identities) -> bool:
    """Copy (decrypting) one segment into staging; returns whether it is the partial one.

    The receiver keeps working meanwhile: a partial segment may be finished (renamed to
    `.gz`) and a finished one encrypted (`.gz.age`, the plain file removed) under our feet,
    so the later names are tried when the listed one has gone.
    """
    names = [f.file] + ([f"{f.name}.gz", f"{f.name}.gz.age"] if not f.encrypted else [])
    for i, name in enumerate(names):
        partial = name.endswith(".partial")
        dest = staging / (f.name + (".gz.partial" if partial else ".gz"))
        try:
            if name.endswith(".age"):
                with open(directory / name, "rb") as fin, open(dest, "wb") as fout:
                    pyrage.decrypt_io(fin, fout, identities)
            else:
                shutil.copyfile(directory / name, dest)
            if not partial:
                (staging / (f.name + ".gz.partial")).unlink(missing_ok=True)
            return partial
        except FileNotFoundError:
            dest.unlink(missing_ok=True)
            if i == len(names) - 1:
                raise
    raise FileNotFoundError(f.file)


def _conf_line(key: str, value: str) -> str:
    return f"{key} = '{value.replace(chr(39), chr(39) * 2)}'\n"


_STOP = re.compile(r"recovery stopping (?:before|after) .*")
_LAST = re.compile(r"last completed transaction was at log time (.*)")


@contextlib.contextmanager
def recovered(config: PitrConfig, target: plan.Target, *, timeout: float | None = None,
              base: bb.BaseBackup | None = None, archive_root: Path | None = None) -> Iterator[Recovered]:
    """A temporary cluster replayed to `target` and promoted; removed on exit. `archive_root`: read the
    archive from a copy fetched from off-site (`pitr.offsite.fetch`) instead of local_dir."""
    bases = bb.list_base_backups(config, archive_root)
    base = base or plan.choose_base(bases, target)
    encrypted = bool(base.manifest.get("encryption"))
    archive_dir = wal_dir(config, archive_root)
    archive_names = os.listdir(archive_dir) if archive_dir.is_dir() else []
    needs_key = (encrypted or any(n.endswith(".age") for n in archive_names)
                 or bool(config.backups.encryption.age_recipients))  # the receiver may encrypt meanwhile
    identities = load_identity(config.backups.encryption) if needs_key else None
    bb.check_files(config, base, archive_root)
    prefix, pw = _as_postgres()
    # beside the backups (same disk, room for a data directory); as root the `postgres` user
    # must reach it, and the backups folder is often private, so then TMPDIR is used
    scratch_in = Path(tempfile.gettempdir()) if pw else Path(config.backups.local_dir)
    # a restore killed midway (SIGKILL, power cut) left its data directory: gone once surely dead
    remove_stale_scratch(scratch_in, ".pitr-restore-*", 2 * config.backups.timeout.seconds)
    root = Path(tempfile.mkdtemp(prefix=".pitr-restore-", dir=scratch_in))
    timeout = timeout or config.backups.timeout.seconds
    proc = None
    datadir = root / "data"
    try:
        os.chmod(root, 0o700)
        staging = root / "wal"
        stage_wal(archive_dir, staging, base, until_lsn=target.value if target.kind == "lsn" else None,
                  identities=identities)
        folder = bb.base_dir(config, archive_root)
        base_tar = next(p for p in base.files if ".base.tar." in p)
        wal_tar = next(p for p in base.files if ".pg_wal.tar." in p)
        bb.unpack(folder / base_tar, datadir, identities)
        bb.unpack(folder / wal_tar, datadir / "pg_wal", identities)
        os.chmod(datadir, 0o700)
        (datadir / "postmaster.pid").unlink(missing_ok=True)
        (datadir / "recovery.signal").write_text("")
        (datadir / "standby.signal").unlink(missing_ok=True)
        shutil.copyfile(FETCH, root / "fetch.py")  # the server's OS user may not reach this package
        hba = root / "pg_hba.conf"
        hba.write_text("local all all trust\n")
        port = free_port()
        settings_ = {
            "port": str(port), "listen_addresses": "", "unix_socket_directories": str(root),
            "hba_file": str(hba), "ident_file": str(hba), "ssl": "off", "archive_mode": "off",
            "hot_standby": "off", "shared_preload_libraries": "", "logging_collector": "off",
            "log_destination": "stderr", "shared_buffers": "64MB", "max_connections": "20",
            "restore_command": f"{_python_for(pw)} {root / 'fetch.py'} {staging} %f %p",
            "recovery_target_timeline": "latest", "recovery_target_action": "promote",
            **target.recovery_settings(),
        }
        with open(datadir / "postgresql.auto.conf", "a") as f:
            f.write("\n# homelab-ops point-in-time recovery\n")
            for k, v in settings_.items():
                f.write(_conf_line(k, v))
        _chown_tree(root, pw)
        log_file = root / "server.log"
        # a clean environment: the settings' secrets (PGPASSWORD, AWS keys...) stay out of the server's
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "HOMELAB_WAL_SEGMENT_SIZE": str(base.segment_size)}
        postgres = pg.tool("postgres", config.postgres.pg_bin_dir or _bin_of(pg.tool("pg_dump", None)))
        _same_major(postgres, base)
        with open(log_file, "ab") as logf:
            proc = subprocess.Popen([*prefix, postgres, "-D", str(datadir)], stdout=logf, stderr=logf, env=env,
                                    preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        user = conninfo_to_dict(config.postgres.dsn.get_secret_value()).get("user") or "postgres"
        rec = Recovered(base, target, root, port, user)
        _wait_promoted(rec, proc, log_file, staging, timeout)
        text = log_file.read_text(errors="replace")
        if m := _STOP.search(text):
            rec.stop_reason = m.group(0).strip()
        if m := _LAST.search(text):
            rec.last_commit = m.group(1).strip()
        with contextlib.suppress(OSError):
            rec.fetched = (staging / "fetched.log").read_text().split()
        with psycopg.connect(rec.dsn(), autocommit=True) as conn:
            rec.replay_lsn = conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()[0]
        yield rec
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()  # smart -> the postmaster's SIGTERM is a fast shutdown
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def _python_for(pw) -> str:
    """An interpreter the server's OS user can run (fetch.py needs only the standard library)."""
    if pw is None:
        return sys.executable
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(cand, os.X_OK):
            return cand
    return sys.executable


def _bin_of(path: str) -> str:
    """The folder of a PostgreSQL client tool, resolved through Debian's pg_wrapper to the real one."""
    real = os.path.realpath(path)
    d = os.path.dirname(real)
    if os.path.exists(os.path.join(d, "postgres")):
        return d
    for cand in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (cand / "postgres").exists():
            return str(cand)
    raise RecoverError("the `postgres` server binary was not found: set postgres.pg_bin_dir")


def _same_major(postgres: str, base: bb.BaseBackup) -> None:
    have = pg.tool_version(postgres).split()[-1].split(".")[0]
    want = str(base.manifest.get("server_version", "")).split(".")[0]
    if want and have != want:
        raise RecoverError(f"base backup {base.stem} is from PostgreSQL {want}, but {postgres} is {have}: "
                           "recovery needs the same major version (set postgres.pg_bin_dir)")


def _wait_promoted(rec: Recovered, proc: subprocess.Popen, log_file: Path, staging: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RecoverError(_failure(rec, log_file, staging))
        try:
            with psycopg.connect(rec.dsn(), autocommit=True, connect_timeout=5) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            raise RecoverError(f"recovery to {rec.target.describe()} did not finish within {timeout:.0f} s "
                               "(backups.timeout)")
        time.sleep(0.5)


def _failure(rec: Recovered, log_file: Path, staging: Path) -> str:
    """Why the temporary server stopped, naming the segment when one is to blame."""
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    damaged = (staging / "fetch.log").read_text().strip().splitlines() if (staging / "fetch.log").exists() else []
    fatal = [ln for ln in text.splitlines() if "FATAL" in ln or "PANIC" in ln]
    restored = re.findall(r'restored log file "([0-9A-F]{24})" from archive', text)
    parts = [f"recovery to {rec.target.describe()} from base backup {rec.base.stem} failed"]
    if damaged:
        parts.append("damaged WAL: " + "; ".join(damaged))
    if fatal:
        parts.append(fatal[-1].split("FATAL:")[-1].strip() if "FATAL:" in fatal[-1] else fatal[-1])
    if restored:
        tli, segno = wal.parse_segment_name(restored[-1], rec.base.segment_size)
        parts.append(f"the last segment replayed was {restored[-1]}; the next, "
                     f"{wal.segment_name(tli, segno + 1, rec.base.segment_size)}, is missing or unreadable")
    bad = re.findall(r"(invalid record length|incorrect resource manager data checksum|invalid magic number|"
                     r"contrecord is requested)[^\n]*", text)
    if bad:
        parts.append("WAL read error: " + bad[-1])
    if rec.target.kind == "name" and "recovery ended before configured recovery target" in text:
        parts.append(f"no restore point {rec.target.value!r} was found after base backup {rec.base.stem}")
    if len(parts) == 1:
        parts.append("the server said: " + " | ".join(text.strip().splitlines()[-3:]))
    return ": ".join(parts[:1]) + (": " + "; ".join(parts[1:]) if parts[1:] else "")


# --------------------------------------------------------------------------- one database out


@dataclass
class PitrRestore:
    database: str
    into: str
    target: str
    base: str
    stop_reason: str | None
    last_commit: str | None
    replay_lsn: str | None
    source: str = "local"  # the store the archive was read from


def copy_database(postgres: PostgresSettings, rec: Recovered, database: str, into: str) -> None:
    """pg_dump from the temporary cluster | pg_restore into a new database on the running server."""
    admin = postgres.dsn.get_secret_value()
    bin_dir = postgres.pg_bin_dir
    with psycopg.connect(rec.dsn(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            raise RecoverError(f"database {database!r} did not exist at {rec.target.describe()}")
    pg.create_database(admin, into)
    try:
        dump = pg.start_dump(rec.dsn(database), None, bin_dir)
        restore = pg.start_restore(pg.database_dsn(admin, into), keep_owners=True, bin_dir=bin_dir)
        restore_stopped = False
        try:
            while chunk := dump.stdout.read(1 << 20):
                restore.stdin.write(chunk)
            restore.stdin.close()
        except BrokenPipeError:  # pg_restore stopped early: its error is the one to report
            restore_stopped = True
            dump.kill()  # else pg_dump waits forever on a pipe nobody reads
        drc, rrc = dump.wait(), restore.wait()
        if drc != 0 and not restore_stopped:
            raise RecoverError(f"pg_dump of {database} from the recovered cluster failed (exit {drc}): "
                               f"{pg.read_stderr(dump.stderr)}")
        if rrc != 0:
            raise RecoverError(f"pg_restore into {into} failed (exit {rrc}): {pg.read_stderr(restore.stderr)}")
    except BaseException:
        pg.drop_database(admin, into)
        raise


@contextlib.contextmanager
def archive_for(config: PitrConfig, target: plan.Target, source: str) -> Iterator[tuple[str, Path | None]]:
    """Where a recovery reads the archive: (store label, root), root None for the local archive.

    `local` is the local archive; `s3` or a target's name, a copy of what the recovery needs
    fetched from that target into a scratch folder; `auto`, the local archive when it holds a
    base backup early enough, else the first target that does (a new SD card after a dead one).
    """
    stores = stores_named(config.backups, source)
    local = any(s.label == "local" for s in stores)
    if local and (len(stores) == 1 or offsite.has_base_for(config, target)):
        yield "local", None
        return
    reasons = [f"local: no base backup finished before {target.describe()}"] if local else []
    top = Path(config.backups.local_dir)
    top.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(top, ".pitr-fetch-*", 2 * config.backups.timeout.seconds)
    for store in (s for s in stores if s.label != "local"):
        root = Path(tempfile.mkdtemp(prefix=".pitr-fetch-", dir=top))
        try:
            try:
                offsite.fetch(config, store, target, root)
            except (plan.PlanError, StoreError) as e:
                reasons.append(str(e))
                continue
            except offsite.LocalDiskError as e:  # every target's copy would need the same room
                raise RecoverError(str(e)) from None
            yield store.label, root
            return
        finally:
            shutil.rmtree(root, ignore_errors=True)
    raise RecoverError("no store holds what a recovery to " + target.describe() + " needs: " + "; ".join(reasons))


def restore_at(config: PitrConfig, database: str, into: str, at: str, *, source: str = "auto") -> PitrRestore:
    """`backups restore DATABASE --into INTO --at TIME|NAME|LSN|latest [--from ...]`: one database at a
    point in time, from the local archive or an off-site copy."""
    target = plan.parse_target(at, config.tz)
    admin = config.postgres.dsn.get_secret_value()
    if pg.database_exists(admin, into):
        raise RecoverError(f"database {into!r} already exists: refusing to overwrite it; choose another --into")
    with archive_for(config, target, source) as (label, root), recovered(config, target, archive_root=root) as rec:
        copy_database(config.postgres, rec, database, into)
        return PitrRestore(database, into, target.describe(), rec.base.stem, rec.stop_reason, rec.last_commit,
                           rec.replay_lsn, label)
