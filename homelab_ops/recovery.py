"""After a crash, nobody touches anything: dead runs are failed, their slots freed, their leftovers removed.

A SIGKILL, the OOM killer or a power cut leaves a run STARTED for ever, its Dagster pool slots
claimed (every later backup of that database waits for ever), a scratch database of a few
hundred MB, `.partial` files, `.restore-*.tmp` downloads and incomplete multipart uploads.

How a dead run is recognised, chosen on purpose:

- **A PostgreSQL advisory lock per run (the run guard).** When a run's resources start (before
  its first step claims a pool slot) it takes a session advisory lock keyed by its run id in the
  state database and holds it to the end; the run is tagged `homelab-ops/guard=held`. PostgreSQL
  drops the lock the moment that connection dies, whatever killed the process, and a power cut
  restarts the server without any lock. So "I can take the lock" means "the run's process is
  gone", with no clock and no guess. This is the mechanism the backups already rely on (one
  advisory lock per database serialises them and dies with its connection).
- Not a pid and host in the run's tags: the sweep runs in the code server, the daemon or the next
  run, which on the Pi are other containers (another pid namespace, another hostname), and after
  a power cut the pid may belong to something else.
- Not Dagster's run monitoring alone: in Dagster 1.13 the DefaultRunLauncher has no run worker
  health check (`supports_check_run_worker_health` is False; only the DockerRunLauncher has one),
  so monitoring fails a dead run only when `dagster/max_runtime` passes, hours later, and marking a
  run failed does not free its slots. `run_monitoring.free_slots_after_run_end_seconds` (set in
  both dagster.yaml files) frees the slots of runs that monitoring or a person fails; for the runs
  found dead here the sweep frees them itself, at once.

When: at the start of every run (inside its resource setup, before any step, so the next nightly
run recovers even with no daemon, as `make demo`'s `dagster job execute` runs it) and from the
`interrupted_runs` sensor every two minutes (so a deployment hears of it when nothing else starts).
Sweeps of one Dagster instance are serialised by another advisory lock, and a run starts its first
step only after its own sweep: while a sweep removes leftovers, no run it did not see has a step.

What is removed, and only when nothing alive can own it: after a run was found dead, and only
while no other live run has a step that writes backups, the sweep removes in `backups.local_dir`
the `.partial` files and folders, dumps without manifest and other orphans of every folder whose
backup advisory lock it can take, `.restore-*.tmp` files no process holds open, the scratch
databases (`homelab_verify_<database>_<id>`) of the configured databases, and in every S3 target
the orphans under `prefix` and the incomplete multipart uploads, except those of a finished local
file: the next off-site step resumes them (parts already there are not sent again over a slow
uplink), and retention aborts any left for longer than a day. Until then the runs keep the tag
`homelab-ops/leftovers=pending`, so a sweep that could not clean retries.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from homelab_ops.backups.config import BackupsConfig
from homelab_ops.notify.config import NotifyConfig

if TYPE_CHECKING:
    from homelab_ops.settings import PostgresSettings, Settings

GUARD_TAG = "homelab-ops/guard"  # "held": the run holds its advisory lock; "unavailable": it could not
INTERRUPTED_TAG = "homelab-ops/interrupted"  # when a sweep found the run's process gone
LEFTOVERS_TAG = "homelab-ops/leftovers"  # "pending" until a sweep removed what the run left
PENDING = "pending"
# Steps that write under backups.local_dir, into S3 or create scratch databases (op names of the
# backups domain's assets). A live run with one of them makes a sweep leave every leftover alone.
BACKUP_STEPS = ("backups__", "backup_globals", "offsite__", "restore_verification__", "backup_retention__",
                "n8n_workflows")
RESTORE_TMP = ".restore-*.tmp"
FOLDER_NAME = "n8n_workflows"  # n8n.workflow_export.FOLDER


@dataclass(frozen=True)
class RecoveryConfig:
    """What the crash sweep reads of the settings: the backups (leftovers to remove), the alert
    path (the one "interrupted" alert; its state database holds the guards) and the UI's address."""

    backups: BackupsConfig
    notify: NotifyConfig
    ui_base_url: str

    @classmethod
    def of(cls, settings: Settings) -> RecoveryConfig:
        return cls(backups=BackupsConfig.of(settings), notify=NotifyConfig.of(settings),
                   ui_base_url=settings.ui.base_url)


def _key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def guard_key(run_id: str) -> int:
    return _key(f"homelab_ops.run.{run_id}")


def sweep_key(instance) -> int:
    """One sweep at a time per Dagster instance (its home folder names it)."""
    return _key(f"homelab_ops.sweep.{instance.root_directory}")


# --------------------------------------------------------------------------
# pure logic


def touches_backups(step_keys: list[str]) -> bool:
    return any(k.startswith(BACKUP_STEPS) for k in step_keys)


def scratch_pattern(databases: list[str]) -> re.Pattern:
    """The scratch database names verification gives these databases (`sources.postgresql.scratch_name`)."""
    from homelab_ops.backups.sources.postgresql import scratch_name

    heads = sorted({scratch_name(d, "0" * 8)[:-8] for d in databases})
    if not heads:
        return re.compile(r"(?!)")
    return re.compile("(?:" + "|".join(re.escape(h) for h in heads) + r")[0-9a-f]{8}")


def interrupted_message(steps: list[str]) -> str:
    where = f"during {', '.join(steps)}" if steps else "before or between its steps"
    return (f"interrupted {where}: the run's process is gone (killed, out of memory, or the machine lost "
            "power). homelab-ops marked it failed, freed its pool slots and removes what it left; the "
            "next run starts as usual.")


# --------------------------------------------------------------------------
# the run guard


@dataclass
class Sweep:
    """What one sweep did."""

    interrupted: list[str] = field(default_factory=list)  # run ids failed as interrupted
    freed_slots_for: list[str] = field(default_factory=list)  # run ids whose slots were freed
    removed: list[str] = field(default_factory=list)  # leftovers removed
    skipped: str | None = None  # why leftovers were left for a later sweep


@contextmanager
def sweeping(conn: psycopg.Connection, instance, timeout_s: int = 300) -> Iterator[None]:
    """Hold the instance's sweep lock (waits for a sweep in progress; they take seconds)."""
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{timeout_s}s")))
    conn.execute("SELECT pg_advisory_lock(%s)", (sweep_key(instance),))
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (sweep_key(instance),))
        conn.execute("RESET lock_timeout")


_guards: dict[str, psycopg.Connection] = {}  # run id -> the connection holding its guard, in this process


def _release_finished(instance) -> None:
    """Close the guards of runs of this process that have ended (a run worker runs one run and exits;
    tests and `dagster dev`'s in-process runs run many, and would otherwise keep a connection each)."""
    for run_id, conn in list(_guards.items()):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            conn.close()
            del _guards[run_id]


def start_run(config: RecoveryConfig, instance, run_id: str, log) -> psycopg.Connection | None:
    """Take this run's guard and sweep, before any step. The connection holding the guard stays
    open until the process ends or the next run in it starts after this one ended. Never fails the
    run: without the state database the run goes on unguarded (tagged so, and never judged dead)."""
    from homelab_ops.notify.chats import state_connection

    _release_finished(instance)
    try:
        conn = state_connection(config.notify.state, config.notify.postgres)
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (guard_key(run_id),))
        except BaseException:
            conn.close()
            raise
    except Exception as e:  # the state database is down or refuses: run on, unguarded
        instance.add_run_tags(run_id, {GUARD_TAG: "unavailable"})
        log.warning(f"state database not reachable ({type(e).__name__}): this run is not guarded, so a "
                    "crash of it will not be recovered automatically")
        return None
    instance.add_run_tags(run_id, {GUARD_TAG: "held"})
    _guards[run_id] = conn
    try:
        # Until this sweep is done the run has no step, so a sweep in progress elsewhere that has not
        # seen it yet cannot take anything from under it.
        with sweeping(conn, instance):
            done = sweep(config, instance, conn, me=run_id, log=log)
        report(done, log)
    except Exception as e:  # a sweep that fails must not stop tonight's backup
        log.warning(config.notify.redactor(with_credentials=False)(
            f"crash recovery sweep failed: {type(e).__name__}: {e}"))
    return conn


def report(done: Sweep, log) -> None:
    if done.interrupted:
        log.warning(f"runs interrupted by a crash, now marked failed: {', '.join(done.interrupted)}")
    if done.freed_slots_for:
        log.info(f"pool slots freed for runs: {', '.join(done.freed_slots_for)}")
    if done.removed:
        log.info(f"removed {len(done.removed)} leftovers of interrupted runs: {', '.join(done.removed[:20])}")
    if done.skipped:
        log.info(done.skipped)


# --------------------------------------------------------------------------
# the sweep


def _unfinished(instance) -> list:
    from dagster import DagsterRunStatus, RunsFilter

    return list(instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
                                                        DagsterRunStatus.CANCELING])))


def _lock_free(conn: psycopg.Connection, key: int) -> bool:
    """True when nobody holds `key` (taken and given back at once)."""
    if conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return True
    return False


def _step_keys(instance, run) -> list[str]:
    if run.step_keys_to_execute:
        return list(run.step_keys_to_execute)
    try:
        return [s.key for s in instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id).steps]
    except Exception:  # no snapshot: assume the worst
        return list(BACKUP_STEPS)


def _steps_in_flight(instance, run_id: str) -> list[str]:
    from dagster import DagsterEventType

    started, ended = [], set()
    for e in instance.all_logs(run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS,
                                                DagsterEventType.STEP_FAILURE}):
        ev = e.dagster_event
        if ev.event_type == DagsterEventType.STEP_START:
            started.append(ev.step_key)
        else:
            ended.add(ev.step_key)
    return [s for s in started if s not in ended]


def sweep(config: RecoveryConfig, instance, conn: psycopg.Connection, *, me: str | None = None, log) -> Sweep:
    """Call with the sweep lock held (`sweeping`)."""
    from dagster import RunsFilter

    done = Sweep()
    live = []
    for run in _unfinished(instance):
        if run.run_id == me:
            continue
        guard = run.tags.get(GUARD_TAG)
        if guard == "held" and _lock_free(conn, guard_key(run.run_id)):
            _fail_interrupted(config, instance, run, log)
            done.interrupted.append(run.run_id)
        elif guard:  # alive, or unguarded and so never judged
            live.append(run)
        # no guard tag: not past its resource setup, so it has no step, slot or leftover yet
    # Slots of every finished run: the ones failed just now, and any run someone else failed.
    finished = set()
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        holders = storage.get_concurrency_run_ids()
        if holders:
            finished = {r.run_id for r in instance.get_runs(RunsFilter(run_ids=list(holders))) if r.is_finished}
        for run_id in sorted(finished):
            storage.free_concurrency_slots_for_run(run_id)
    done.freed_slots_for = sorted(finished)

    pending = list(instance.get_runs(RunsFilter(tags={LEFTOVERS_TAG: PENDING})))
    if pending:
        busy = [r.run_id for r in live if touches_backups(_step_keys(instance, r))]
        if busy:
            done.skipped = (f"leftovers of interrupted runs are removed later: run {', '.join(busy)} "
                            "writes backups now")
        else:
            done.removed, complete = remove_leftovers(config.backups, log)
            if complete:
                for r in pending:
                    instance.add_run_tags(r.run_id, {LEFTOVERS_TAG: f"removed {len(done.removed)}"})
            else:
                done.skipped = "some leftovers could not be removed (see above); the next sweep tries again"
    return done


def _fail_interrupted(config: RecoveryConfig, instance, run, log) -> None:
    from homelab_ops.health.messages import first_lines, run_link
    from homelab_ops.notify.alert import Alert
    from homelab_ops.notify.dispatch import dispatcher_for

    steps = _steps_in_flight(instance, run.run_id)
    message = interrupted_message(steps)
    instance.add_run_tags(run.run_id, {INTERRUPTED_TAG: datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                       LEFTOVERS_TAG: PENDING})
    instance.report_run_failed(instance.get_run_by_id(run.run_id), message=message)
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    # One alert, here: run_failure_alert skips runs with INTERRUPTED_TAG, so it is not said twice.
    alert = Alert("run", run.job_name, "interrupted", "fail", f"⚡ Run interrupted: {run.job_name}",
                  f"Interrupted {'during ' + ', '.join(steps) if steps else 'between steps'}: its process is "
                  "gone. Marked failed and cleaned up; nothing to do by hand.",
                  link=run_link(config.ui_base_url, run.run_id), link_text="Open the run",
                  run_id=run.run_id, preformatted=first_lines(message))
    try:
        dispatcher_for(config.notify, logger=log).deliver([alert])
    except Exception as e:  # the channels log their own failures; never stop the sweep
        log.warning(f"interrupted-run alert not delivered: {type(e).__name__}")


# --------------------------------------------------------------------------
# leftovers


def _open_anywhere(path: Path) -> bool:
    """Does any process we can see hold `path` open? (A restore by hand downloads into one.)"""
    target = str(path.resolve())
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                try:
                    if os.readlink(fd) == target:
                        return True
                except OSError:
                    continue
        except OSError:
            continue
    return False


def _known_databases(postgres: PostgresSettings, local) -> list[str]:
    from homelab_ops.backups import postgresql as pg

    names = set(local.databases())
    try:
        names |= set(pg.configured_databases(postgres))
    except psycopg.Error:
        pass
    return sorted(names)


def remove_leftovers(config: BackupsConfig, log) -> tuple[list[str], bool]:
    """Remove what interrupted writes left; call only when no live run writes backups.
    Returns what was removed and whether everything could be looked at (an S3 target may be down)."""
    from homelab_ops.backups import postgresql as pg
    from homelab_ops.backups.backup import _lock_key as backup_lock_key
    from homelab_ops.backups.catalog import GLOBALS, read_listing
    from homelab_ops.n8n.workflow_export import FOLDER
    from homelab_ops.backups.names import PITR_FOLDERS
    from homelab_ops.backups.stores import StoreError, s3_errors, stores_for
    from homelab_ops.backups.verify import SCRATCH_DIR_PREFIX
    from homelab_ops.files import PARTIAL_SUFFIX
    from homelab_ops.state import connect

    local, remotes = stores_for(config.backups)
    admin = config.postgres.dsn.get_secret_value()
    removed: list[str] = []
    complete = True
    databases = _known_databases(config.postgres, local)
    with connect(admin, autocommit=True) as conn:
        free = {d: _lock_free(conn, backup_lock_key(d)) for d in set(databases) | {GLOBALS}}
        # Local folders: partial writes and orphans (a dump whose manifest never came).
        for d in local.databases():
            folder = local.folder(d)
            if d in PITR_FOLDERS:
                continue  # the WAL receiver's active `.partial` segment lives there: never a leftover
            if d == FOLDER:
                for p in folder.iterdir():
                    if p.name.endswith(PARTIAL_SUFFIX):
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
                        removed.append(str(p))
                continue
            if not free.get(d, True):
                continue  # a backup of it is running outside this instance
            present = local.list(d)
            listing = read_listing(present)
            # every `.partial`, also of files the catalog does not name (a backup set's sidecars)
            names = sorted(set(listing.partials + listing.orphans) | {n for n in present if n.endswith(PARTIAL_SUFFIX)})
            local.delete(d, names)
            removed += [str(local.path(d, n)) for n in names]
        for p in Path(local.root).glob(RESTORE_TMP):
            if not _open_anywhere(p):
                p.unlink(missing_ok=True)
                removed.append(str(p))
        for p in Path(local.root).glob(SCRATCH_DIR_PREFIX + "*"):  # a killed verification's scratch folder
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(str(p))
        # Scratch databases of interrupted verifications (only of this homelab's databases).
        pattern = scratch_pattern([d for d in databases if d not in (GLOBALS, FOLDER)])
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'homelab\\_verify\\_%'"):
            if pattern.fullmatch(name):
                pg.drop_database(admin, name)
                removed.append(f"database {name}")
    # Off-site: incomplete multipart uploads under the prefix, and orphans.
    for store in remotes:
        try:
            prefix = store.target.prefix
            for up in list(store.incomplete_uploads(prefix)):
                d, _, name = up["Key"][len(prefix):].partition("/")
                if name and local.path(d, name).is_file():
                    continue  # its finished local file is still owed: the next off-site step resumes it
                if free.get(d):  # a database of ours, not being backed up (not another tool's upload)
                    store.client.abort_multipart_upload(Bucket=store.target.bucket, Key=up["Key"],
                                                        UploadId=up["UploadId"])
                    removed.append(f"upload s3://{store.target.bucket}/{up['Key']}")
            for d in databases:
                if d == FOLDER or not free.get(d, True):
                    continue
                listing = read_listing(store.list(d))
                if listing.orphans:
                    store.delete(d, listing.orphans)
                    removed += [store.uri(d, n) for n in listing.orphans]
            removed += _incomplete_exports(local, store)
        except (StoreError, *s3_errors()) as e:
            log.warning(config.redact(f"S3 target {store.label}: leftovers not removed this time: {e}"))
            complete = False
    return removed, complete


def _incomplete_exports(local, store) -> list[str]:
    """n8n export folders whose upload was cut off: fewer files off-site than in the local export.
    The folder is the export's only completeness marker, so such a copy would look complete."""
    from homelab_ops.n8n.workflow_retention import _exports

    here, there = _exports(local), _exports(store)
    out = []
    for stem in there.folders():
        mine = {f"{stem}/{n}" for n in here.files(stem)} if stem in here.folders() else set()
        theirs = there.files(stem)
        if mine and set(theirs) < mine:
            there.remove({stem: theirs})
            out.append(f"incomplete export {store.uri(FOLDER_NAME, stem)}/")
    return out
