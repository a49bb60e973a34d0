"""Point-in-time recovery against a real PostgreSQL 15 cluster (wal_level=logical) started here.

The receiver runs as the real command (`homelab-ops pitr receive`, a subprocess), the
archive is age-encrypted, and every restore goes through a temporary PostgreSQL. The
restore test writes for several minutes (a writer committing every two seconds throughout)
across several WAL segments; the others spread writes over distinct seconds.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pyrage
import pytest
import yaml

from homelab_ops.backups.backup import run_backup
from homelab_ops.children import free_port
from homelab_ops.health.checks import FAIL, OK
from homelab_ops.pitr import base, wal
from homelab_ops.pitr.health import pitr_results
from homelab_ops.pitr.receive import read_status, slot_state, wal_dir
from homelab_ops.pitr.recover import restore_at
from homelab_ops.pitr.verify import EXACT, verify_database
from homelab_ops.pitr.config import PitrConfig
from homelab_ops.settings import load
from tests.pitr_cluster import logical_cluster
from homelab_ops.backups.config import BackupsConfig

pytestmark = pytest.mark.services  # every test here runs PostgreSQL clusters of its own

CLI = str(Path(sys.executable).with_name("homelab-ops"))
BERLIN = ZoneInfo("Europe/Berlin")


class Env:
    def __init__(self, cluster, tmp: Path):
        self.c, self.tmp = cluster, tmp
        ident = pyrage.x25519.Identity.generate()
        key = tmp / "age.key"
        key.write_text(str(ident) + "\n")
        key.chmod(0o600)
        self.config = {
            "timezone": "Europe/Berlin",
            "postgres": {"dsn": cluster.dsn(), "databases": ["shop"], "pg_bin_dir": "/usr/lib/postgresql/15/bin"},
            "state": {"dsn": cluster.dsn("homelab")},
            "backups": {"local_dir": str(tmp / "backups"), "timeout": "10m",
                        "encryption": {"age_recipients": [str(ident.to_public())], "identity_file": str(key)}},
            "metrics": {"textfile_dir": str(tmp / "textfile")},
            "pitr": {"enabled": True, "status_interval": "1s", "max_lag": "20s"},
        }
        self.path = self.write(self.config)
        self.settings = load(self.path)
        self.pitr = PitrConfig.of(self.settings)  # what the pitr package takes
        self.rx: subprocess.Popen | None = None

    def write(self, config, name="homelab.yaml") -> Path:
        p = self.tmp / name
        p.write_text(yaml.safe_dump(config))
        return p

    def start_receiver(self):
        self.rx = subprocess.Popen([CLI, "--config", str(self.path), "pitr", "receive"],
                                   stdout=open(self.tmp / "rx.out", "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: slot_state(self.c.dsn(), self.settings.pitr.slot_name).get("active"), "receiver connects")

    def sql(self, db: str, query: str, params=None):
        with psycopg.connect(self.c.dsn(db), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else None

    def caught_up(self):
        """Wait until the receiver has flushed everything the server has written so far."""
        target = wal.parse_lsn(self.sql("postgres", "SELECT pg_current_wal_lsn()::text")[0][0])
        wait_for(lambda: wal.parse_lsn(slot_state(self.c.dsn(), self.settings.pitr.slot_name)["flushed_lsn"] or "0/0")
                 >= target, "receiver catches up")


def wait_for(cond, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except psycopg.Error:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting until {what}")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with logical_cluster() as c:
        e = Env(c, tmp_path_factory.mktemp("pitr"))
        e.start_receiver()
        try:
            yield e
        finally:
            if e.rx and e.rx.poll() is None:
                e.rx.send_signal(signal.SIGTERM)
                e.rx.wait(timeout=60)


def rows(e: Env, db: str, table: str) -> list[tuple]:
    return e.sql(db, f"SELECT * FROM {table} ORDER BY 1")


def quiet_second(e: Env) -> datetime:
    """A whole second at which no commit happens: after the last commit, before the next."""
    now = e.sql("postgres", "SELECT clock_timestamp()")[0][0]
    t = datetime.fromtimestamp(math.ceil(now.timestamp()), timezone.utc)
    time.sleep(max(0.0, (t - now).total_seconds()) + 0.4)
    return t


class Writer(threading.Thread):
    """Commits a row to shop.ticks every two seconds until stopped; `paused()` holds it so that
    what the test reads is exactly the database's state at the quiet second that follows."""

    def __init__(self, e: Env):
        super().__init__(daemon=True)
        self.e, self.lock, self.done, self.count, self.error = e, threading.Lock(), threading.Event(), 0, None

    def run(self):
        try:
            with psycopg.connect(self.e.c.dsn("shop"), autocommit=True) as conn:
                while not self.done.wait(2.0):
                    with self.lock:
                        conn.execute("INSERT INTO ticks (at) VALUES (clock_timestamp())")
                        self.count += 1
        except Exception as exc:  # noqa: BLE001 (reported by the test)
            self.error = exc

    def paused(self):
        return self.lock


def state(e: Env) -> tuple[list, list]:
    return rows(e, "shop", "orders"), rows(e, "shop", "ticks")


def test_restore_one_database_before_and_after_a_delete_and_latest(env):
    """Several minutes of writes (a commit every 2 s throughout, segment switches between),
    restored to three points minutes apart, each equal to what the database held then."""
    e = env
    minute = float(os.environ.get("HOMELAB_TEST_PITR_MINUTE", "60"))  # wall time between the points
    e.sql("postgres", "CREATE DATABASE shop")
    e.sql("shop", "CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL)")
    e.sql("shop", "CREATE TABLE ticks (id serial PRIMARY KEY, at timestamptz NOT NULL)")
    e.sql("shop", "INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 60) g")
    writer = Writer(e)
    writer.start()
    started = time.monotonic()
    bb = base.run_base_backup(e.pitr)
    assert bb.manifest["verified_with"] == "pg_verifybackup"
    assert all(n.endswith(".zst.age") for n in bb.files)

    e.sql("shop", "INSERT INTO orders SELECT g, 'late ' || g FROM generate_series(61, 90) g")
    time.sleep(minute / 2)
    e.sql("postgres", "SELECT pg_switch_wal()")
    e.sql("shop", "UPDATE orders SET item = item || ' (paid)' WHERE id % 5 = 0")
    time.sleep(minute / 2)
    with writer.paused():
        before_delete = state(e)
        t_before = quiet_second(e)
    e.sql("shop", "DELETE FROM orders WHERE id % 3 = 0")
    time.sleep(minute / 2)
    e.sql("postgres", "SELECT pg_switch_wal()")
    e.sql("shop", "INSERT INTO orders VALUES (1000, 'after the delete')")
    time.sleep(minute / 2)
    with writer.paused():
        after_delete = state(e)
        t_after = quiet_second(e)
    e.sql("shop", "INSERT INTO orders SELECT g, 'newest ' || g FROM generate_series(2000, 2010) g")
    time.sleep(minute)
    e.sql("shop", "DELETE FROM orders WHERE id = 1")
    writer.done.set()
    writer.join(timeout=30)
    assert writer.error is None, writer.error
    latest = state(e)
    e.caught_up()
    assert before_delete != after_delete != latest
    assert time.monotonic() - started >= 3 * minute and writer.count >= 3 * minute / 2 - 5
    assert len(before_delete[1]) < len(after_delete[1]) < len(latest[1])

    # the operator's command, with a wall-clock time in the settings' zone (Europe/Berlin)
    local = t_before.astimezone(BERLIN).strftime("%Y-%m-%d %H:%M:%S")
    out = subprocess.run([CLI, "--config", str(e.path), "backups", "restore", "shop", "--into", "shop_before",
                          "--at", local], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr + out.stdout
    assert (rows(e, "shop_before", "orders"), rows(e, "shop_before", "ticks")) == before_delete

    restore_at(e.pitr, "shop", "shop_after", t_after.isoformat())
    assert (rows(e, "shop_after", "orders"), rows(e, "shop_after", "ticks")) == after_delete

    restore_at(e.pitr, "shop", "shop_latest", "latest")
    assert (rows(e, "shop_latest", "orders"), rows(e, "shop_latest", "ticks")) == latest

    # never over an existing database
    again = subprocess.run([CLI, "--config", str(e.path), "backups", "restore", "shop", "--into", "shop_latest",
                            "--at", "latest"], capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "already exists" in again.stderr


def test_the_archive_goes_off_site_and_a_new_sd_card_restores_from_it(env, s3_server, s3_bucket):
    """`offsite/_pitr_offsite` with the target down: owed and named. Back up: the unfinished segment is finished
    (pg_switch_wal), WAL (encrypted copies only) and base backups go up. A new SD card (an empty local
    folder) restores `--at latest` from the off-site copy, up to the last copy; retention then prunes
    that copy by its own rules."""
    import dagster as dg

    from homelab_ops.defs.pitr.defs import offsite_asset
    from homelab_ops.defs.resources import HomelabSettings
    from tests.faulty_proxy import FaultyProxy
    from tests.backups.test_backups_s3 import objects

    e = env
    client, bucket = s3_bucket
    e.sql("postgres", "CREATE DATABASE depot")
    e.sql("depot", "CREATE TABLE parcels (id int PRIMARY KEY, label text NOT NULL)")
    e.sql("depot", "INSERT INTO parcels SELECT g, 'parcel ' || g FROM generate_series(1, 50) g")
    base.run_base_backup(e.pitr)  # a second base backup, for the off-site retention below
    e.sql("depot", "UPDATE parcels SET label = label || ' (sent)' WHERE id <= 10")
    last = wal.segno_of(wal.parse_lsn(e.sql("postgres", "SELECT pg_current_wal_lsn()::text")[0][0]))
    e.sql("postgres", "SELECT pg_switch_wal()")  # finish the segment holding those writes
    e.caught_up()
    finished = wal.segment_name(1, last)
    wait_for(lambda: f"{finished}.gz.age" in os.listdir(wal_dir(e.pitr)), "the finished segment is encrypted")
    # written after the last finished segment: the off-site step finishes that segment (pg_switch_wal)
    e.sql("depot", "INSERT INTO parcels VALUES (999, 'in the unfinished segment')")
    shipped = rows(e, "depot", "parcels")

    down = threading.Event()
    down.set()
    with FaultyProxy(s3_server, lambda method, path: down.is_set()) as proxy:
        target = {"endpoint_url": proxy.url, "bucket": bucket, "name": "nas", "prefix": "pi/"}
        cfg = {**e.config, "backups": {**e.config["backups"], "s3": [target]}}
        path = e.write(cfg, "offsite.yaml")
        with dg.instance_for_test() as instance:
            def sync():
                result = dg.materialize([offsite_asset("main", "nas")], instance=instance, raise_on_error=False,
                                        resources={"homelab": HomelabSettings(config_path=str(path))})
                [check] = result.get_asset_check_evaluations()
                [mat] = result.asset_materializations_for_node("offsite___pitr_offsite")
                return check, mat.metadata["unfinished_segment"].value

            check, switched = sync()
            assert not check.passed and "nas: not reached" in check.description, check.description
            assert "(pg_switch_wal)" in switched, switched  # finished even while the target is down
            down.clear()  # back: the owner catches up by hand (or the next hourly run does)
            out = subprocess.run([CLI, "--config", str(path), "pitr", "offsite"], capture_output=True, text=True,
                                 timeout=300)
            assert out.returncode == 0 and "nas: copied" in out.stdout, out.stderr + out.stdout
            check, _ = sync()
            assert check.passed, check.description
    keys = objects(client, bucket)
    wal_keys = [k for k in keys if k.startswith("pi/_wal/main/")]
    assert f"pi/_wal/main/{finished}.gz.age" in wal_keys
    assert all(k.endswith(".age") for k in wal_keys), "a plain WAL segment went off-site"
    assert not any(".partial" in k for k in keys)
    bases = base.list_base_backups(e.pitr)
    assert {f"pi/_base/main/{b.stem}.manifest.json" for b in bases} <= set(keys)
    body = client.get_object(Bucket=bucket, Key=f"pi/_wal/main/{finished}.gz.age")["Body"].read()
    assert body == (wal_dir(e.pitr) / f"{finished}.gz.age").read_bytes()
    e.sql("depot", "INSERT INTO parcels VALUES (1000, 'after the last copy')")  # on the Pi's disk only

    # a new SD card: nothing local but the settings and the age key; `--from auto` finds the copy
    card = e.tmp / "new-card"
    target = {"endpoint_url": s3_server, "bucket": bucket, "name": "nas", "prefix": "pi/"}
    card_cfg = {**e.config, "postgres": {**e.config["postgres"], "databases": ["shop", "depot"]},
                "backups": {**e.config["backups"], "local_dir": str(card), "s3": [target],
                            "retention": {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}}}
    card_path = e.write(card_cfg, "new-card.yaml")
    # a card too small for the copy: refused before a byte is fetched, naming the room it needs
    small = e.tmp / "small-card"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(small)], check=True)
    try:
        small_path = e.write({**card_cfg, "backups": {**card_cfg["backups"], "local_dir": str(small)}}, "small.yaml")
        out = subprocess.run([CLI, "--config", str(small_path), "backups", "restore", "depot", "--into", "depot_small",
                              "--at", "latest"], capture_output=True, text=True, timeout=600)
        assert out.returncode != 0, out.stdout
        assert re.search(r"from nas needs [\d.]+ [KMG]iB in \S+, which has [\d.]+ KiB free", out.stderr), out.stderr
        assert "Traceback" not in out.stderr and os.listdir(small) == [], os.listdir(small)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    out = subprocess.run([CLI, "--config", str(card_path), "backups", "restore", "depot", "--into", "depot_from_s3",
                          "--at", "latest"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "from nas" in out.stdout, out.stdout
    assert rows(e, "depot_from_s3", "parcels") == shipped  # up to the last copy; 1000 was never off-site
    assert not list(card.glob(".pitr-fetch-*")), "the fetched copy was left behind"

    # off-site retention, by the same rules: keep the newest base backup and the WAL from its start
    out = subprocess.run([CLI, "--config", str(card_path), "pitr", "prune"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert f"nas: removed {len(bases) - 1} base backup(s)" in out.stdout, out.stdout
    keys = objects(client, bucket)
    newest = bases[-1]
    assert {k for k in keys if k.endswith(".manifest.json")} == {f"pi/_base/main/{newest.stem}.manifest.json"}
    left = wal.read_archive([k.rsplit("/", 1)[1] for k in keys if k.startswith("pi/_wal/main/")])
    assert left.segments and min(s for _, s in left.segments) == wal.segno_of(newest.start_lsn)


def test_offsite_pitr_killed_mid_upload_resumes_and_loses_nothing(env, s3_server, s3_bucket):
    """SIGKILL of `pitr offsite` while a base backup's file is on its way (the request held at the
    proxy, dropped when its sender dies): the next run, with nobody touching anything, completes the
    copy: every local base backup and finished segment off-site byte for byte, no multipart upload
    left open, and no manifest of a set whose files are missing was ever visible. (This cluster's
    files are under the 8 MiB part size, so the held request is a single PUT; a multipart upload
    killed halfway and resumed is test_crash's off-site kill points, for the same uploader.)"""
    import hashlib

    from tests.faulty_proxy import FaultyProxy
    from tests.backups.test_backups_s3 import objects

    e = env
    client, bucket = s3_bucket
    held = threading.Event()

    def hold(method: str, path: str) -> float:
        if method in ("PUT", "POST") and "/_base/" in path and not held.is_set():
            held.set()
            return 120.0
        return 0.0

    with FaultyProxy(s3_server, hold=hold) as proxy:
        target = {"endpoint_url": proxy.url, "bucket": bucket, "name": "nas", "prefix": "pi/"}
        path = e.write({**e.config, "backups": {**e.config["backups"], "s3": [target]}}, "killed-offsite.yaml")
        proc = subprocess.Popen([CLI, "--config", str(path), "pitr", "offsite"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            assert held.wait(120), proc.communicate(timeout=60)[0]
            manifests_then = {k for k in objects(client, bucket) if k.endswith(".manifest.json")}
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        wait_for(lambda: proxy.dropped, "the held request is dropped with its sender", timeout=30)
        out = subprocess.run([CLI, "--config", str(path), "pitr", "offsite"], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0 and "nas: copied" in out.stdout, out.stderr + out.stdout

    keys = objects(client, bucket)
    bases = base.list_base_backups(e.pitr)
    assert bases and manifests_then == set()  # the set being copied was never listed as complete
    for b in bases:
        for name in (*b.files, b.stem + ".manifest.json"):
            key = f"pi/_base/main/{name}"
            assert key in keys, key
            local = (base.base_dir(e.pitr) / name).read_bytes()
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert hashlib.sha256(body).digest() == hashlib.sha256(local).digest(), key
    finished = wal.read_archive(os.listdir(wal_dir(e.pitr))).segments.values()
    assert {f"pi/_wal/main/{f.file}" for f in finished if f.encrypted} <= set(keys)
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads"), "a multipart upload was left open"


def _busy_dump(e: Env, db: str):
    e.sql("postgres", f"CREATE DATABASE {db}")
    e.sql(db, "CREATE TABLE events (id bigserial PRIMARY KEY, payload text, at timestamptz DEFAULT clock_timestamp())")
    e.sql(db, "CREATE TABLE config (k text PRIMARY KEY, v jsonb)")
    e.sql(db, "INSERT INTO events (payload) SELECT md5(g::text) FROM generate_series(1, 20000) g")
    e.sql(db, "INSERT INTO config VALUES ('a', '{\"x\": 1}'), ('b', '[1, 2]')")
    stop = threading.Event()
    inserted = []

    def writer():
        with psycopg.connect(e.c.dsn(db), autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO events (payload) VALUES ('during the dump')")
                inserted.append(1)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        while len(inserted) < 50:
            time.sleep(0.05)
        settings = load(e.write({**e.config, "postgres": {**e.config["postgres"], "databases": [db]}}, f"{db}.yaml"))
        result = run_backup(BackupsConfig.of(settings), db)
        after = len(inserted) + 50
        while len(inserted) < after:  # and keeps writing after the dump
            time.sleep(0.05)
    finally:
        stop.set()
        t.join()
    return result, len(inserted)


def test_exact_nightly_verification_passes_on_a_busy_database(env):
    e = env
    base.run_base_backup(e.pitr)
    result, inserted = _busy_dump(e, "busy")
    m = result.manifest
    assert m["snapshot_source"] == "logical_slot" and m["consistent_point_lsn"]
    counted = next(t["rows"] for t in m["tables"] if t["table"] == "events")
    final = e.sql("busy", "SELECT count(*) FROM events")[0][0]
    assert 20000 < counted < final  # the writer inserted before, during and after the dump

    v = verify_database(e.pitr, "busy")
    assert v.passed, v.message
    assert v.mode == EXACT and v.target_lsn == m["consistent_point_lsn"]
    assert {t["table"] for t in v.tables} == {"public.events", "public.config"}
    assert all(t["checksum_match"] and t["expected_rows"] == t["restored_rows"] for t in v.tables)
    assert any(r.name == "pitr_verified:main" and r.state == OK for r in pitr_results(e.pitr))


def _copy_settings(e: Env, name: str):
    """The whole backups folder copied, so a test can damage the archive without hurting the others."""
    dest = e.tmp / name
    shutil.copytree(e.tmp / "backups", dest, ignore=shutil.ignore_patterns(".pitr-restore-*"))
    cfg = {**e.config, "backups": {**e.config["backups"], "local_dir": str(dest)}}
    return PitrConfig.of(load(e.write(cfg, f"{name}.yaml"))), dest / "_wal" / "main"


def test_verification_fails_naming_a_removed_or_corrupted_segment(env):
    e = env
    bb = base.run_base_backup(e.pitr)
    for i in range(3):
        e.sql("postgres", f"CREATE TABLE IF NOT EXISTS filler{i} AS SELECT g FROM generate_series(1, 1000) g")
        e.sql("postgres", "SELECT pg_switch_wal()")
    result, _ = _busy_dump(e, "busy2")
    e.caught_up()
    cp = wal.parse_lsn(result.manifest["consistent_point_lsn"])
    victim_no = wal.segno_of(bb.end_lsn) + 1
    assert victim_no < wal.segno_of(cp)
    victim = wal.segment_name(bb.timeline, victim_no)
    # flushed is not yet encrypted: the receiver age-encrypts finished segments each status interval
    wait_for(lambda: all(f"{wal.segment_name(bb.timeline, n)}.gz.age" in os.listdir(wal_dir(e.pitr))
                         for n in range(victim_no, wal.segno_of(cp))),
             "the segments to the consistent point are encrypted")

    removed, wdir = _copy_settings(e, "removed")
    (wdir / f"{victim}.gz.age").unlink()
    v = verify_database(removed, "busy2")
    assert not v.passed and victim in v.message and "gap" in v.message, v.message

    corrupt, wdir = _copy_settings(e, "corrupt")
    f = wdir / f"{victim}.gz.age"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    v = verify_database(corrupt, "busy2")
    assert not v.passed and victim in v.message and "damaged" in v.message, v.message
    assert any(r.name == "pitr_verified:main" and r.state == FAIL for r in pitr_results(corrupt))

    # the real archive still verifies
    assert verify_database(e.pitr, "busy2").passed


def rpo_observation(e: Env) -> dict:
    """One tick of the pitr_rpo sensor: its observation of base_backups/main_base_backup, as plain values."""
    import dagster as dg

    from homelab_ops.defs.pitr.defs import rpo_sensor
    from homelab_ops.defs.resources import HomelabSettings

    with dg.build_sensor_context(resources={"homelab": HomelabSettings(config_path=str(e.path))}) as context:
        result = rpo_sensor("main")(context)
    [obs] = result.asset_events
    assert obs.asset_key == dg.AssetKey(["base_backups", "main_base_backup"])
    return {k: v.value for k, v in obs.metadata.items()}


def test_killing_the_receiver_fails_the_check_and_a_restart_resumes_without_gap(env):
    e = env
    e.caught_up()
    wait_for(lambda: {r.name: r.state for r in pitr_results(e.pitr)}["pitr_lag:main"] == OK, "lag is ok")
    first = min(s for (_, s) in wal.read_archive(os.listdir(wal_dir(e.pitr))).segments)

    e.rx.kill()  # SIGKILL: no clean shutdown; pg_receivewal follows through PR_SET_PDEATHSIG
    e.rx.wait()
    killed = time.monotonic()
    wait_for(lambda: not slot_state(e.c.dsn(), e.settings.pitr.slot_name)["active"], "the slot is released")
    e.sql("shop", "INSERT INTO orders VALUES (5000, 'while the receiver was down')")
    e.sql("postgres", "SELECT pg_switch_wal()")
    e.sql("shop", "INSERT INTO orders VALUES (5001, 'still down')")
    checks = {r.name: r for r in pitr_results(e.pitr)}
    assert checks["pitr_receiver:main"].state == FAIL
    wait_for(lambda: {r.name: r.state for r in pitr_results(e.pitr)}["pitr_lag:main"] == FAIL,
             "the lag check fails")
    failed_after = time.monotonic() - killed
    lag = {r.name: r for r in pitr_results(e.pitr)}["pitr_lag:main"]
    assert "not connected" in lag.reason and "pitr.max_lag" in lag.reason
    assert failed_after >= e.settings.pitr.max_lag.seconds - 2  # not before max_lag: a short blip is no alert
    prom = (e.tmp / "textfile" / "homelab_pitr.prom").read_text()
    assert 'homelab_pitr_rpo_seconds{cluster="main"}' in prom
    rpo = rpo_observation(e)  # what the pitr_rpo sensor shows in the UI every minute
    assert rpo["pitr_lag"].startswith("fail") and rpo["rpo_seconds"] >= e.settings.pitr.max_lag.seconds - 2

    e.start_receiver()
    e.caught_up()
    wait_for(lambda: {r.name: r.state for r in pitr_results(e.pitr)}["pitr_lag:main"] == OK, "lag recovers")
    rpo = rpo_observation(e)
    assert rpo["pitr_lag"].startswith("ok") and 0 <= rpo["rpo_seconds"] < e.settings.pitr.max_lag.seconds
    archive = wal.read_archive(os.listdir(wal_dir(e.pitr)))
    current = wal.parse_lsn(e.sql("postgres", "SELECT pg_current_wal_lsn()::text")[0][0])
    assert wal.find_gaps(archive, first * wal.DEFAULT_SEGMENT_SIZE, current, 1) == []
    restore_at(e.pitr, "shop", "shop_resumed", "latest")
    ids = {r[0] for r in rows(e, "shop_resumed", "orders")}
    assert {5000, 5001} <= ids


def test_dagster_assets_verify_the_chain_with_a_blocking_check_and_a_table(env):
    import dagster as dg

    from homelab_ops.defs.pitr.defs import CHAIN, base_backup_asset, verification_asset
    from homelab_ops.defs.resources import HomelabSettings

    cfg = {**env.config, "postgres": {**env.config["postgres"], "databases": ["busy"]}}
    path = env.write(cfg, "dagster.yaml")
    assets = [base_backup_asset("main"), verification_asset("main", ["busy"])]
    with dg.instance_for_test() as instance:
        result = dg.materialize(assets, resources={"homelab": HomelabSettings(config_path=str(path))},
                                instance=instance, raise_on_error=False)
        assert result.success
        checks = result.get_asset_check_evaluations()
        assert [(c.check_name, c.passed) for c in checks] == [(CHAIN, True)]
        mats = {tuple(m.asset_key.path): m for m in result.get_asset_materialization_events()}
        meta = mats[("pitr_verification", "main_pitr_verification")].materialization.metadata
        assert {r.data["table"] for r in meta["tables"].records} == {"public.events", "public.config"}
        assert "busy: exact" in meta["mode"].value
        assert ("base_backups", "main_base_backup") in mats


def test_doctor_prints_what_to_add(env):
    from homelab_ops import doctor

    lines = [c.line() for c in doctor.run(str(env.path)) if c.name.startswith("pitr")]
    assert lines and all(line.startswith("ok") for line in lines), lines

    with logical_cluster(wal_level="replica", extra="-c max_wal_senders=2 -c max_slot_wal_keep_size=-1") as c:
        (c.datadir / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        with psycopg.connect(c.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("CREATE ROLE plain LOGIN")
        cfg = {**env.config, "pitr": {"enabled": True,
                                      "dsn": c.dsn().replace("user=postgres", "user=plain")}}
        path = env.write(cfg, "doctor.yaml")
        out = {c.name: c for c in doctor.run(str(path)) if c.name.startswith("pitr")}
    assert not out["pitr wal_level"].failed  # replica streams; only the exact verification needs logical
    assert "ALTER SYSTEM SET wal_level = 'logical'" in out["pitr wal_level"].detail
    assert out["pitr max_wal_senders"].failed and "max_wal_senders = 10" in out["pitr max_wal_senders"].fix
    assert "max_slot_wal_keep_size" in out["pitr max_slot_wal_keep_size"].fix
    assert "ALTER ROLE plain WITH REPLICATION" in out["pitr replication role"].fix
    assert "host replication plain 127.0.0.1/32 scram-sha-256" in out["pitr pg_hba.conf"].fix


def test_without_logical_wal_the_chain_is_replayed_to_its_end_and_said_not_exact(tmp_path):
    with logical_cluster(wal_level="replica") as c:
        e = Env(c, tmp_path)
        e.start_receiver()
        try:
            e.sql("postgres", "CREATE DATABASE shop")
            e.sql("shop", "CREATE TABLE orders (id int PRIMARY KEY, item text)")
            bb = base.run_base_backup(e.pitr)
            e.sql("shop", "INSERT INTO orders SELECT g, 'x' FROM generate_series(1, 500) g")
            e.sql("postgres", "SELECT pg_switch_wal()")
            result = run_backup(BackupsConfig.of(e.settings), "shop")
            assert result.manifest["snapshot_source"] == "pg_export_snapshot"
            assert "consistent_point_lsn" not in result.manifest
            e.sql("shop", "INSERT INTO orders VALUES (501, 'after')")
            e.caught_up()
            v = verify_database(e.pitr, "shop")
            assert v.passed and v.mode == "replay-to-end", v.message
            assert "not an exact comparison" in v.message and "wal_level = 'logical'" in v.message
            assert "pg_amcheck found nothing wrong" in v.message
            # a gap after the base backup is still found, and named
            name = wal.segment_name(1, wal.segno_of(bb.end_lsn) + 1)
            victim = next(p for p in wal_dir(e.pitr).iterdir() if p.name.startswith(name + "."))
            victim.rename(tmp_path / "moved-away")
            v = verify_database(e.pitr, "shop")
            assert not v.passed and name in v.message
        finally:
            e.rx.send_signal(signal.SIGTERM)
            e.rx.wait(timeout=60)


def test_the_receiver_waits_for_a_server_that_is_not_up_yet(tmp_path):
    """After a power cut PostgreSQL may start after the receiver: it retries instead of exiting."""
    port = free_port()
    cfg = {"postgres": {"dsn": f"postgresql://postgres:pw-not-logged@127.0.0.1:{port}/postgres",
                        "pg_bin_dir": "/usr/lib/postgresql/15/bin"},
           "backups": {"local_dir": str(tmp_path / "b")}, "pitr": {"enabled": True}}
    path = tmp_path / "h.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "rx.out"
    rx = subprocess.Popen([CLI, "--config", str(path), "pitr", "receive"], stdout=open(log, "wb"),
                          stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: log.read_text().count("retrying in") >= 2, "two retries", timeout=60)
        assert rx.poll() is None
    finally:
        rx.send_signal(signal.SIGTERM)
        assert rx.wait(timeout=60) == 0
    assert "pw-not-logged" not in log.read_text()


def test_a_backup_role_without_replication_falls_back_to_pg_export_snapshot(env):
    """wal_level=logical but no REPLICATION for the backup's role: the nightly dump still happens."""
    from psycopg.conninfo import make_conninfo

    e = env
    e.sql("postgres", "CREATE DATABASE plainrole")
    e.sql("plainrole", "CREATE TABLE t (id int PRIMARY KEY)")
    e.sql("plainrole", "INSERT INTO t SELECT generate_series(1, 10)")
    e.sql("postgres", "CREATE ROLE dumper LOGIN IN ROLE pg_read_all_data")
    cfg = {**e.config, "postgres": {**e.config["postgres"], "databases": ["plainrole"],
                                    "dsn": make_conninfo(e.c.dsn(), user="dumper")}}
    result = run_backup(BackupsConfig.of(load(e.write(cfg, "dumper.yaml"))), "plainrole")
    m = result.manifest
    assert m["snapshot_source"] == "pg_export_snapshot" and "consistent_point_lsn" not in m
    assert "replication" in m["slot_error"] and m["row_count"] == 10


def test_a_pg_restore_that_stops_early_is_reported_not_waited_on(env):
    """pg_restore dying at its first byte (a full disk, a role it cannot create) must end the restore with
    its own error, not leave pg_dump blocked on a full pipe for ever; the half-made database is dropped."""
    e = env
    base.run_base_backup(e.pitr)
    e.sql("postgres", "CREATE DATABASE bulky")
    e.sql("bulky", "CREATE TABLE blobs AS SELECT g AS id, md5(g::text) || repeat('x', 500) AS body "
                   "FROM generate_series(1, 20000) g")  # ~10 MB: far more than a pipe holds
    e.caught_up()
    bins = Path(tempfile.mkdtemp(prefix="bin-failing-restore-"))  # the server's OS user runs `postgres` from it
    bins.chmod(0o755)
    for tool in Path("/usr/lib/postgresql/15/bin").iterdir():
        (bins / tool.name).symlink_to(tool)
    (bins / "pg_restore").unlink()
    (bins / "pg_restore").write_text("#!/bin/sh\necho 'pg_restore: error: could not write to the database' >&2\n"
                                     "exit 1\n")
    (bins / "pg_restore").chmod(0o755)
    cfg = {**e.config, "postgres": {**e.config["postgres"], "pg_bin_dir": str(bins), "databases": ["bulky"]}}
    path = e.write(cfg, "failing-restore.yaml")
    out = subprocess.run([CLI, "--config", str(path), "backups", "restore", "bulky", "--into", "bulky_copy",
                          "--at", "latest", "--from", "local"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr + out.stdout
    assert "pg_restore into bulky_copy failed" in out.stderr and "could not write to the database" in out.stderr
    assert e.sql("postgres", "SELECT 1 FROM pg_database WHERE datname = 'bulky_copy'") == []
    shutil.rmtree(bins)


def test_the_pitr_demo_runs_as_the_readme_says(tmp_path):
    """`make demo-pitr`: receiver, base backup, a bad edit undone by a restore to the second before it,
    and the nightly exact check, on a cluster of its own."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "scripts" / "pitr_demo.py"), str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # the script itself fails when the restored counts differ from those before the edit
    assert "with 0 nodes, 0 executions" in out.stdout and "n8n_before_edit: 12 workflows" in out.stdout
    assert "replayed exactly" in out.stdout and "Point-in-time recovery demo done" in out.stdout
