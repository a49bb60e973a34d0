"""SIGKILL in the middle of the real jobs, then the nightly job again: it recovers with no manual step.

Every run is a real `dagster` process on a real DAGSTER_HOME (the repository's dagster.yaml: the
SQLite instance of `make demo`, pools with a limit of 1) against the real PostgreSQL and a moto S3
server. The test waits for each point (the backup's advisory lock, pg_dump's `.partial`, the final
dump without its manifest, the off-site step's multipart upload and its uploaded dump without the
manifest object, the verification's download and scratch database,
retention half done, the n8n export's `.partial` folder and its upload), freezes the whole process
group (SIGSTOP), checks that it really is at that point, and SIGKILLs the group. Then the same work
runs again (`dagster asset materialize` of the killed asset, `dagster job execute -j nightly_backup`
for the killed nightly run and once more at the end) with nobody touching anything and must succeed;
the killed run must be failed and alerted once as interrupted; nothing may be left (files, scratch
databases, multipart uploads, claimed pool slots), and every complete-looking backup must match its
manifest.

The figures (kill points tried, runs recovered, artefacts left) are printed at the end; the README's
Reliability section quotes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import psycopg
import pytest
import yaml

from homelab_ops.backups.backup import _lock_key
from homelab_ops.backups.catalog import read_listing, stem_for
from homelab_ops.recovery import GUARD_TAG, INTERRUPTED_TAG
from tests.conftest import ADMIN_DSN, dsn_for
from tests.faulty_proxy import FaultyProxy

REPO = Path(__file__).resolve().parents[2]
DAGSTER = str(REPO / ".venv" / "bin" / "dagster")
PREFIX = "pi/"
WORKFLOWS = 120
RUN_TIMEOUT = 900


# --------------------------------------------------------------------------
# the parts that need no crash


def test_scratch_pattern_is_exact_per_database():
    from homelab_ops.backups.sources.postgresql import scratch_name
    from homelab_ops.recovery import scratch_pattern

    p = scratch_pattern(["n8n", "x" * 60])
    assert p.fullmatch(scratch_name("n8n", "0a1b2c3d"))
    assert p.fullmatch(scratch_name("x" * 60, "0a1b2c3d"))  # shortened to 63 bytes, still found
    assert not p.fullmatch(scratch_name("n8n_x", "0a1b2c3d"))  # another database's verification
    assert not p.fullmatch("homelab_verify_n8n_0a1b2c3d_extra")
    assert not scratch_pattern([]).fullmatch("homelab_verify__0a1b2c3d")


def test_all_never_lists_a_scratch_database(new_db):
    from homelab_ops.backups import postgresql as pg

    name = new_db("homelab_verify_crashtest")
    other = new_db("crash_listed")
    listed = pg.list_databases(ADMIN_DSN)
    assert other in listed and name not in listed


# --------------------------------------------------------------------------
# the lab: a database big enough for a multipart upload, an n8n database, settings, an instance


@dataclass
class Lab:
    root: Path
    db: str
    n8n: str
    state: str
    bucket: str
    s3: object
    env: dict
    local: Path
    instance: object = None
    figures: dict = field(default_factory=lambda: {"kills": 0, "confirmed": [], "missed": [], "recovered": 0,
                                                   "leftovers": 0})
    cleanups: list = field(default_factory=list)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, s3_server):
    """make demo's instance: the repository's dagster.yaml, SQLite under DAGSTER_HOME."""
    yield from _lab(tmp_path_factory, s3_server, REPO / "dagster.yaml", {})


@pytest.fixture
def pg_lab(tmp_path_factory, s3_server):
    """The Pi's instance: deploy/dagster.yaml as it is, its storage in a PostgreSQL database."""
    name = f"crash_dagster_{os.urandom(4).hex()}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    env = {"DAGSTER_PG_HOST": info.get("host", "127.0.0.1"), "DAGSTER_PG_PORT": str(info.get("port", 5432)),
           "DAGSTER_PG_USER": info.get("user", "postgres"), "DAGSTER_PG_PASSWORD": info.get("password", ""),
           "DAGSTER_PG_DB": name}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the instance in this process reads the same file
    try:
        yield from _lab(tmp_path_factory, s3_server, REPO / "deploy" / "dagster.yaml", env)
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _lab(tmp_path_factory, s3_server, instance_yaml: Path, extra_env: dict):
    from dagster import DagsterInstance

    root = tmp_path_factory.mktemp("crash")
    tag = os.urandom(4).hex()
    db, n8n, state, bucket = f"crash_{tag}", f"crash_n8n_{tag}", f"crash_state_{tag}", f"crash-{tag}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        for name in (db, n8n):
            conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(dsn_for(db), autocommit=True) as conn:
        # ~20 MB of hex text: about 10 MB compressed, so the off-site copy is a multipart upload.
        conn.execute("CREATE TABLE noise (id int PRIMARY KEY, pad text);"
                     "INSERT INTO noise SELECT i, md5(random()::text) || md5(random()::text) "
                     "FROM generate_series(1, 350000) i;"
                     "CREATE TABLE small (k text PRIMARY KEY, v jsonb);"
                     "INSERT INTO small VALUES ('a', '{\"x\": 1}'), ('b', NULL);")
    with psycopg.connect(dsn_for(n8n), autocommit=True) as conn:
        conn.execute('CREATE TABLE workflow_entity (id varchar(36) PRIMARY KEY, name varchar(128), '
                     'active boolean, nodes json, connections json, "createdAt" timestamptz, '
                     '"updatedAt" timestamptz)')
        conn.execute("INSERT INTO workflow_entity SELECT 'wf' || i, 'workflow ' || i, false, "
                     "json_build_array(json_build_object('name', 'n', 'pad', repeat(md5(i::text), 40))), "
                     "'{}'::json, now(), now() FROM generate_series(1, %s) i", (WORKFLOWS,))
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    local = root / "backups"
    settings = {
        "postgres": {"dsn": ADMIN_DSN, "databases": [db]},
        "state": {"dsn": dsn_for(state)},
        "n8n": {"dsn": dsn_for(n8n)},
        "backups": {"local_dir": str(local), "s3": {"endpoint_url": s3_server, "bucket": bucket, "prefix": PREFIX},
                    "retention": {"keep_last": 3, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}},
        "metrics": {"textfile_dir": str(root / "textfile")},
    }
    (root / "homelab.yaml").write_text(yaml.safe_dump(settings))
    home = root / "dagster"
    home.mkdir()
    shutil.copy(instance_yaml, home / "dagster.yaml")  # as it is
    env = {**os.environ, "DAGSTER_HOME": str(home), "HOMELAB_CONFIG": str(root / "homelab.yaml"),
           "PYTHONUNBUFFERED": "1", **extra_env}
    lab = Lab(root, db, n8n, state, bucket, s3, env, local)
    lab.instance = DagsterInstance.from_config(str(home))
    yield lab
    for cleanup in lab.cleanups:
        cleanup()
    lab.instance.dispose()
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        for name in (db, n8n, state):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                    (f"homelab\\_verify\\_{db}\\_%",)).fetchall():
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------
# processes


def _group(pgid: int) -> dict[int, str]:
    """pid -> command name of every process in the group."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:
            out[int(stat.parent.name)] = comm
    return out


def _log(lab: Lab, name: str):
    return open(lab.root / f"{name}.log", "ab")


def start(lab: Lab, args: list[str], name: str) -> subprocess.Popen:
    return subprocess.Popen([DAGSTER, *args, "-m", "homelab_ops.definitions"], cwd=REPO, env=lab.env,
                            start_new_session=True, stdout=_log(lab, name), stderr=subprocess.STDOUT)


NIGHTLY = ["job", "execute", "-j", "nightly_backup"]


def run_to_end(lab: Lab, args: list[str] = NIGHTLY) -> None:
    """The next run of the work, started as the schedule would: nobody cleans anything first."""
    proc = start(lab, args, "next")
    rc = proc.wait(timeout=RUN_TIMEOUT)
    run = lab.instance.get_runs(limit=1)[0]
    assert rc == 0 and run.status.value == "SUCCESS", (
        f"{' '.join(args)} after a crash: exit {rc}, {run.status}; see {lab.root / 'next.log'}:\n"
        + (lab.root / "next.log").read_text()[-4000:])


def _reached(at, pgid: int) -> bool:
    """`at(pgid)`, where a read of the lab's SQLite run storage that meets a writer's lock (frozen
    mid-write: `locking protocol`, `database is locked`) counts as not reached, not as a test error."""
    import sqlalchemy.exc

    try:
        return bool(at(pgid))
    except sqlalchemy.exc.OperationalError:
        return False


def kill_at(lab: Lab, args: list[str], point: str, at, poll: float = 0.003) -> str | None:
    """Start the work, wait until `at(pgid)` says the point is reached, freeze the group, check again,
    SIGKILL the group. Returns the killed run's id, or None when the work finished first. A point
    only milliseconds wide (a rename, then the next file) is polled with `poll=0` and a cheap `at`."""
    before = {r.run_id for r in lab.instance.get_runs()}
    proc = start(lab, args, "killed")
    deadline = time.monotonic() + RUN_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        if _reached(at, proc.pid):
            os.killpg(proc.pid, signal.SIGSTOP)
            try:
                confirmed = _reached(at, proc.pid)  # the group is frozen: this is where it dies
            finally:  # never leave a frozen group behind: it would hold the lab's SQLite locks for ever
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            lab.figures["kills"] += 1
            lab.figures["confirmed" if confirmed else "missed"].append(point)
            new = [r for r in lab.instance.get_runs() if r.run_id not in before]
            assert len(new) == 1
            return new[0].run_id
        if poll:
            time.sleep(poll)
    proc.kill()
    proc.wait()
    lab.figures["missed"].append(point)
    return None


# --------------------------------------------------------------------------
# what the points look like from outside


def advisory_held(key: int, conn: psycopg.Connection | None = None) -> bool:
    """Whether the backup's lock is held; `conn` an open autocommit connection, for a point a few
    milliseconds wide (a new connection costs as much as the window)."""
    u = key & 0xFFFFFFFFFFFFFFFF
    with contextlib.ExitStack() as stack:
        conn = conn or stack.enter_context(psycopg.connect(ADMIN_DSN))
        return conn.execute(
            "SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' "
            "AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 1 AND d.datname = 'postgres'",
            (u >> 32, u & 0xFFFFFFFF)).fetchone() is not None


def files(lab: Lab, folder: str, pattern: str) -> list[Path]:
    return sorted((lab.local / folder).glob(pattern))


def uploads(lab: Lab) -> list[dict]:
    return lab.s3.list_multipart_uploads(Bucket=lab.bucket).get("Uploads", [])


def objects(lab: Lab, prefix: str = "") -> dict[str, int]:
    out = {}
    for page in lab.s3.get_paginator("list_objects_v2").paginate(Bucket=lab.bucket, Prefix=PREFIX + prefix):
        out.update({o["Key"][len(PREFIX):]: o["Size"] for o in page.get("Contents", [])})
    return out


def scratch_databases(lab: Lab) -> list[str]:
    with psycopg.connect(ADMIN_DSN) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                           (f"homelab\\_verify\\_{lab.db}\\_%",))]


def complete_local(lab: Lab, folder: str) -> set[str]:
    return {b.stem for b in read_listing([p.name for p in (lab.local / folder).glob("*")]).backups}


# --------------------------------------------------------------------------
# after recovery: nothing left, nothing wrong


def leftovers(lab: Lab) -> list[str]:
    found = [str(p) for p in lab.local.rglob("*") if p.name.endswith(".partial")]
    found += [str(p) for p in lab.local.glob(".restore-*.tmp")]
    for folder in ("_globals", lab.db):
        listing = read_listing([p.name for p in (lab.local / folder).glob("*")])
        found += [f"{folder}/{n}" for n in listing.orphans + listing.partials]
        remote = read_listing([k.split("/", 1)[1] for k in objects(lab, folder + "/")])
        found += [f"s3:{folder}/{n}" for n in remote.orphans]
    found += [f"upload {u['Key']}" for u in uploads(lab)]
    found += [f"database {d}" for d in scratch_databases(lab)]
    exports = lab.local / "n8n_workflows"
    for stem, size in _s3_exports(lab).items():
        if (exports / stem).is_dir() and size != len(list((exports / stem).iterdir())):
            found.append(f"s3 export {stem}: {size} of {len(list((exports / stem).iterdir()))} files")
    storage = lab.instance.event_log_storage
    found += [f"pending slot of run {r}" for r in storage.get_concurrency_run_ids()]
    for pool in storage.get_concurrency_keys():
        found += [f"slot {pool} claimed by run {s.run_id}" for s in storage.get_concurrency_info(pool).claimed_slots]
    from dagster import DagsterRunStatus, RunsFilter

    found += [f"run {r.run_id} still {r.status.value}" for r in lab.instance.get_runs(
        RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.CANCELING]))]
    return found


def _s3_exports(lab: Lab) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in objects(lab, "n8n_workflows/"):
        stem = key.split("/")[1]
        out[stem] = out.get(stem, 0) + 1
    return out


def wrong_backups(lab: Lab) -> list[str]:
    """Every complete-looking backup, local and off-site, must have the sha256 and size of its manifest."""
    bad = []
    for folder in ("_globals", lab.db):
        for b in read_listing([p.name for p in (lab.local / folder).glob("*")]).backups:
            m = json.loads((lab.local / folder / b.manifest).read_text())
            data = (lab.local / folder / b.dump).read_bytes()
            if hashlib.sha256(data).hexdigest() != m["sha256"] or len(data) != m["size"]:
                bad.append(f"{folder}/{b.dump}")
        remote = objects(lab, folder + "/")
        for b in read_listing([k.split("/", 1)[1] for k in remote]).backups:
            get = lambda n: lab.s3.get_object(Bucket=lab.bucket, Key=f"{PREFIX}{folder}/{n}")["Body"].read()  # noqa: E731
            m = json.loads(get(b.manifest))
            if hashlib.sha256(get(b.dump)).hexdigest() != m["sha256"]:
                bad.append(f"s3:{folder}/{b.dump}")
    return bad


def alerts_for(lab: Lab, run_id: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn_for(lab.state)) as conn:
        return conn.execute("SELECT kind, text FROM homelab_ops.alerts WHERE run_id = %s", (run_id,)).fetchall()


def sweep_by_sensor(lab: Lab):
    """One tick of the interrupted_runs sensor, as the daemon runs it when no run starts."""
    import dagster as dg

    from homelab_ops.defs.recovery.defs import interrupted_runs
    from homelab_ops.defs.resources import HomelabSettings

    homelab = HomelabSettings(config_path=str(lab.root / "homelab.yaml"))
    with dg.build_sensor_context(instance=lab.instance, resources={"homelab": homelab}) as context:
        return interrupted_runs(context)


def recover_and_check(lab: Lab, run_id: str | None, point: str, args: list[str]) -> None:
    run_to_end(lab, args)
    if run_id is not None:
        run = lab.instance.get_run_by_id(run_id)
        assert run.status.value == "FAILURE" and INTERRUPTED_TAG in run.tags, (point, run.status, run.tags)
        assert run.tags.get(GUARD_TAG) == "held"
        alerts = alerts_for(lab, run_id)
        assert [k for k, _ in alerts] == ["interrupted"], (point, alerts)
        assert "interrupted" in alerts[0][1]
        lab.figures["recovered"] += 1
    left = leftovers(lab)
    lab.figures["leftovers"] += len(left)
    assert left == [], (point, left)
    assert wrong_backups(lab) == [], point


# --------------------------------------------------------------------------
# the points


def test_a_first_night_makes_the_backups_the_kills_start_from(lab):
    run_to_end(lab)
    assert complete_local(lab, lab.db) and leftovers(lab) == []


BACKUP = ["asset", "materialize", "--select"]


def _backup_points(lab: Lab):
    key = _lock_key(lab.db)

    watcher = psycopg.connect(ADMIN_DSN, autocommit=True)
    lab.cleanups.append(watcher.close)

    def before_dump(pgid):
        # the lock is taken, pg_dump not started: two connections and an exported snapshot wide,
        # so it is polled without a pause over a connection kept open
        return advisory_held(key, watcher) and "pg_dump" not in _group(pgid).values()

    def mid_dump(pgid):
        return "pg_dump" in _group(pgid).values() and any(
            p.stat().st_size > 0 for p in files(lab, lab.db, "*.dump.zst.partial"))

    known = complete_local(lab, lab.db)
    folder = lab.local / lab.db

    def between_dump_and_manifest(pgid):
        # the dump has its final name, its manifest is not written yet: a window of a directory fsync
        # and one small file, so this looks at one folder only and is polled without a pause
        names = set(os.listdir(folder))
        return any(n.endswith(".dump.zst") and n[:16] not in known and n[:16] + ".manifest.json" not in names
                   for n in names)

    return [("backup: before pg_dump", before_dump, 0), ("backup: mid-dump", mid_dump, 0.003),
            ("backup: between dump and manifest", between_dump_and_manifest, 0)]


@pytest.mark.parametrize("index", range(3))
def test_backup_killed(lab, index):
    point, at, poll = _backup_points(lab)[index]
    work = [*BACKUP, f"backups/{lab.db}_backup"]
    recover_and_check(lab, kill_at(lab, work, point, at, poll), point, work)


def _offsite_points(lab: Lab):
    """The off-site step, which uploads the finished local file: the dump first, the manifest last."""
    def mid_upload(pgid):
        return bool(uploads(lab))

    known = {b.stem for b in read_listing([k.split("/", 1)[1] for k in objects(lab, lab.db + "/")]).backups}

    def dump_uploaded_manifest_not(pgid):
        names = {k.split("/", 1)[1] for k in objects(lab, lab.db + "/")}
        return any(n.endswith(".dump.zst") and n[:16] not in known and n[:16] + ".manifest.json" not in names
                   for n in names)

    # The manifest's PUT is one small request: through a proxy that holds it for a few seconds, as a
    # slow uplink would, the state is there long enough to be seen (and the held request dies with
    # its sender, as on the Pi).
    return [("off-site: mid-upload", mid_upload, 0.0),
            ("off-site: dump uploaded, manifest not", dump_uploaded_manifest_not, 5.0)]


@pytest.mark.parametrize("index", range(2))
def test_offsite_killed(lab, index):
    point, at, manifest_hold = _offsite_points(lab)[index]
    work = [*BACKUP, f"backups/{lab.db}_backup,offsite/{lab.db}_offsite"]
    data = yaml.safe_load((lab.root / "homelab.yaml").read_text())
    s3 = data["backups"]["s3"]
    with FaultyProxy(s3["endpoint_url"], hold=lambda method, path: manifest_hold * (
            method == "PUT" and path.split("?")[0].endswith(".manifest.json"))) as proxy:
        data["backups"]["s3"] = {**s3, "endpoint_url": proxy.url}
        (lab.root / "proxied.yaml").write_text(yaml.safe_dump(data))
        direct = lab.env
        lab.env = {**direct, "HOMELAB_CONFIG": str(lab.root / "proxied.yaml")}
        try:
            run_id = kill_at(lab, work, point, at)
        finally:
            lab.env = direct
    if point == "off-site: mid-upload" and run_id is not None:
        # the sweep (here the interrupted_runs sensor's) leaves the upload of a finished local file:
        # the next run resumes it rather than sending every part again over the uplink
        cut = {u["UploadId"] for u in uploads(lab)}
        sweep_by_sensor(lab)
        assert cut and {u["UploadId"] for u in uploads(lab)} == cut
    recover_and_check(lab, run_id, point, work)


def _verification_points(lab: Lab):
    def mid_download(pgid):
        return any(p.stat().st_size > 0 for p in lab.local.glob(".restore-*.tmp"))

    def mid_restore(pgid):
        return "pg_restore" in _group(pgid).values() and bool(scratch_databases(lab))

    return [("verification: mid-download", mid_download), ("verification: mid-restore", mid_restore)]


@pytest.mark.parametrize("index", range(2))
def test_verification_killed(lab, index):
    point, at = _verification_points(lab)[index]
    work = [*BACKUP, f"restore_verification/{lab.db}_verification"]
    recover_and_check(lab, kill_at(lab, work, point, at), point, work)


def _plant_old_backups(lab: Lab, n: int = 30) -> int:
    """Copies of the newest complete backup under old stems, locally and off-site: work for retention."""
    stem = max(complete_local(lab, lab.db))
    names = [p.name for p in (lab.local / lab.db).glob(stem + ".*")]
    t0 = datetime(2020, 1, 1, tzinfo=timezone.utc)
    for i in range(n):
        old = stem_for(t0 + timedelta(hours=i))
        for name in names:
            new = name.replace(stem, old)
            data = (lab.local / lab.db / name).read_bytes()
            if name.endswith(".manifest.json"):
                m = json.loads(data)
                m["dump"] = m["dump"].replace(stem, old)
                data = json.dumps(m).encode()
            (lab.local / lab.db / new).write_bytes(data)
            lab.s3.put_object(Bucket=lab.bucket, Key=f"{PREFIX}{lab.db}/{new}", Body=data)
    return len(list((lab.local / lab.db).iterdir()))


def test_retention_killed_before_deleting(lab):
    _plant_old_backups(lab)
    from dagster import DagsterRunStatus, RunsFilter

    count = len(list((lab.local / lab.db).iterdir()))

    def guarded(pgid):  # the run holds its guard and has deleted nothing yet
        return bool(lab.instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED], tags={GUARD_TAG: "held"}))
                    ) and len(list((lab.local / lab.db).iterdir())) == count

    point = "retention: before deleting"
    work = [*BACKUP, f"backup_retention/{lab.db}_retention"]
    recover_and_check(lab, kill_at(lab, work, point, guarded), point, work)


def test_retention_killed_mid_delete(lab):
    count = _plant_old_backups(lab)

    def local_pruned(pgid):
        return len(list((lab.local / lab.db).iterdir())) < count

    point = "retention: local pruned, off-site not yet"
    work = [*BACKUP, f"backup_retention/{lab.db}_retention"]
    recover_and_check(lab, kill_at(lab, work, point, local_pruned), point, work)


def _export_points(lab: Lab):
    def mid_export(pgid):
        return any(any(p.iterdir()) for p in files(lab, "n8n_workflows", "*.partial"))

    known = set(_s3_exports(lab))

    def mid_upload(pgid):
        return any(0 < n < WORKFLOWS for stem, n in _s3_exports(lab).items() if stem not in known)

    return [("n8n export: mid-export", mid_export), ("n8n export: mid-upload", mid_upload)]


@pytest.mark.parametrize("index", range(2))
def test_n8n_export_killed(lab, index):
    point, at = _export_points(lab)[index]
    work = [*BACKUP, "n8n_workflows"]
    recover_and_check(lab, kill_at(lab, work, point, at), point, work)


def test_nightly_killed_mid_dump_recovers(lab):
    """The nightly job itself, killed in its backup step."""
    def mid_dump(pgid):
        return "pg_dump" in _group(pgid).values() and any(
            p.stat().st_size > 0 for p in files(lab, lab.db, "*.dump.zst.partial"))

    point = "nightly: mid-dump"
    recover_and_check(lab, kill_at(lab, NIGHTLY, point, mid_dump), point, NIGHTLY)


def test_sensor_recovers_when_no_run_starts(lab):
    """The deployment's path when nothing else starts: the interrupted_runs sensor does it all."""
    point = "backup: mid-dump, then only the sensor"
    _, at, _ = _backup_points(lab)[1]
    work = [*BACKUP, f"backups/{lab.db}_backup"]
    run_id = kill_at(lab, work, point, at)
    assert run_id is not None
    result = sweep_by_sensor(lab)
    assert "1 runs interrupted" in str(result.skip_message if hasattr(result, "skip_message") else result)
    run = lab.instance.get_run_by_id(run_id)
    assert run.status.value == "FAILURE" and INTERRUPTED_TAG in run.tags
    assert [k for k, _ in alerts_for(lab, run_id)] == ["interrupted"]
    left = leftovers(lab)  # before any other run: the sensor alone cleaned up
    lab.figures["leftovers"] += len(left)
    assert left == []
    lab.figures["recovered"] += 1
    run_to_end(lab, work)  # and the next run neither alerts again nor finds anything
    assert [k for k, _ in alerts_for(lab, run_id)] == ["interrupted"]


def test_postgres_instance_recovers(pg_lab):
    """The same with the deployment's instance (runs, events and pool slots in PostgreSQL)."""
    lab = pg_lab
    point = "backup: mid-dump, PostgreSQL instance"
    _, at, _ = _backup_points(lab)[1]
    work = [*BACKUP, f"backups/{lab.db}_backup"]
    recover_and_check(lab, kill_at(lab, work, point, at), point, work)
    assert lab.figures["recovered"] == 1
    print(f"\nPostgreSQL instance: {lab.figures}")


def test_z_nightly_after_all_the_kills(lab):
    run_to_end(lab)
    assert leftovers(lab) == [] and wrong_backups(lab) == []


def test_z_figures(lab):
    f = lab.figures
    print(f"\nReliability: {f['kills']} SIGKILLs, {len(f['confirmed'])} at their point "
          f"({', '.join(f['confirmed'])}); missed: {f['missed'] or 'none'}; "
          f"{f['recovered']} killed runs recovered by the next run of the same work; {f['leftovers']} artefacts left")
    assert f["kills"] == f["recovered"] and f["leftovers"] == 0
