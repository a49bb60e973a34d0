"""The pure parts of point-in-time recovery: WAL names, gaps, targets, retention, the stream's checks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homelab_ops.backups.retention import RetentionPolicy
from homelab_ops.health.checks import FAIL, OK, WARN
from homelab_ops.pitr import health, plan, wal

SEG = wal.DEFAULT_SEGMENT_SIZE
UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


@given(st.integers(1, 0xFFFF), st.integers(0, (1 << 40) - 1))  # 2^64 bytes of WAL / 16 MiB segments
def test_segment_names_round_trip(tli, segno):
    name = wal.segment_name(tli, segno)
    assert len(name) == 24 and wal.parse_segment_name(name) == (tli, segno)


def test_lsn_and_segment_of_a_position():
    assert wal.parse_lsn("0/3000148") == 0x3000148
    assert wal.format_lsn(wal.parse_lsn("1A/FF0000D8")) == "1A/FF0000D8"
    assert wal.segment_name(1, wal.segno_of(wal.parse_lsn("1/2000000"))) == "000000010000000100000002"
    with pytest.raises(wal.WalError):
        wal.parse_lsn("0/xyz")


def test_archive_reading_prefers_the_encrypted_copy_and_keeps_partials_apart():
    a = wal.read_archive(["000000010000000000000003.gz", "000000010000000000000003.gz.age",
                          "000000010000000000000004.gz.partial", "00000002.history.age", "notes.txt"])
    assert a.segments[(1, 3)].encrypted
    assert a.partials[(1, 4)].partial and (1, 4) not in a.segments
    assert a.histories == {2: "00000002.history.age"} and a.other == ["notes.txt"]


def names(tli, segnos, partial=None):
    out = [wal.segment_name(tli, s) + ".gz" for s in segnos]
    if partial is not None:
        out.append(wal.segment_name(tli, partial) + ".gz.partial")
    return out


def test_a_missing_segment_is_named_and_only_the_last_may_be_partial():
    a = wal.read_archive(names(1, [2, 3, 5], partial=6))
    gaps = wal.find_gaps(a, 2 * SEG, 7 * SEG, 1)
    assert [g.segment for g in gaps] == ["000000010000000000000004"]
    a = wal.read_archive(names(1, [2, 3, 4, 5], partial=6))
    assert wal.find_gaps(a, 2 * SEG + 100, 6 * SEG + 5, 1) == []
    assert [g.segment for g in wal.find_gaps(a, 2 * SEG, 6 * SEG + 5, 1, partial_ok_at_end=False)] == [
        "000000010000000000000006"]


def test_gaps_follow_timelines():
    # timeline 2 forked from 1 in segment 4: 1..4 on timeline 1 (4 may be either), 4.. on 2
    history = [(1, 4 * SEG + 0x100)]
    a = wal.read_archive(names(1, [2, 3, 4]) + names(2, [4, 5, 6]) + ["00000002.history"])
    assert wal.find_gaps(a, 2 * SEG, 7 * SEG, 2, history) == []
    a = wal.read_archive(names(1, [2, 3, 4]) + names(2, [4, 6]) + ["00000002.history"])
    assert [g.segment for g in wal.find_gaps(a, 2 * SEG, 7 * SEG, 2, history)] == ["000000020000000000000005"]
    a = wal.read_archive(names(1, [2, 3]) + names(2, [5]) + ["00000002.history"])  # neither copy of 4
    assert [g.segment for g in wal.find_gaps(a, 2 * SEG, 6 * SEG, 2, history)] == ["000000020000000000000004"]
    a = wal.read_archive(names(2, [4, 5]))
    assert [g.segment for g in wal.find_gaps(a, 4 * SEG, 6 * SEG, 2)] == ["00000002.history"]


def test_targets():
    assert plan.parse_target("latest", BERLIN).kind == "latest"
    t = plan.parse_target("2026-12-03 14:05:00", BERLIN)
    assert t.kind == "time" and t.value == datetime(2026, 12, 3, 13, 5, tzinfo=UTC)
    assert plan.parse_target("2026-12-03T14:05:00+00:00", BERLIN).value == datetime(2026, 12, 3, 14, 5, tzinfo=UTC)
    assert plan.parse_target("0/3000148", BERLIN) == plan.Target("lsn", 0x3000148)
    assert plan.parse_target("before-upgrade", BERLIN) == plan.Target("name", "before-upgrade")
    for bad in ("", "2026-13-45 25:00", "drop table; --"):
        with pytest.raises(plan.PlanError):
            plan.parse_target(bad, BERLIN)
    assert not plan.is_pitr_target("20261203T030000Z") and plan.is_pitr_target("latest")
    assert plan.Target("lsn", 0x10, inclusive=False).recovery_settings() == {
        "recovery_target_lsn": "0/10", "recovery_target_inclusive": "off"}


def bb(stem, finished, end):
    return SimpleNamespace(stem=stem, finished=finished, end_lsn=end)


def test_the_base_backup_is_the_newest_finished_before_the_target():
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    bases = [bb("a", t0, 100), bb("b", t0 + timedelta(days=1), 200), bb("c", t0 + timedelta(days=2), 300)]
    assert plan.choose_base(bases, plan.Target("time", t0 + timedelta(days=1, hours=3))).stem == "b"
    assert plan.choose_base(bases, plan.Target("lsn", 299)).stem == "b"
    assert plan.choose_base(bases, plan.Target("latest")).stem == "c"
    assert plan.choose_base(bases, plan.Target("name", "x")).stem == "a"
    with pytest.raises(plan.PlanError, match="no base backup finished before"):
        plan.choose_base(bases, plan.Target("time", t0 - timedelta(hours=1)))
    with pytest.raises(plan.PlanError, match="no complete base backup"):
        plan.choose_base([], plan.Target("latest"))


def test_retention_keeps_gfs_base_backups_and_every_segment_they_need():
    t0 = datetime(2026, 10, 4, 4, tzinfo=UTC)  # Sundays, weekly base backups
    bases = [(f"2026{10 + i // 5:02d}0{i}T040000Z", t0 + timedelta(weeks=i), (10 * i + 2) * SEG + 40)
             for i in range(8)]
    archive = wal.read_archive(names(1, range(0, 80), partial=80))
    p = plan.plan_retention(bases, archive, RetentionPolicy(keep_weekly=3), ZoneInfo("Europe/Berlin"))
    assert [s for s, _ in p.keep] == [b[0] for b in bases[5:]][::-1]
    assert p.remove == [b[0] for b in bases[:5]][::-1]
    first_kept = wal.segno_of(bases[5][2])
    assert p.wal_remove == [wal.segment_name(1, s) + ".gz" for s in range(first_kept)]
    assert all(not n.endswith(".partial") for n in p.wal_remove)
    # no base backup: WAL is all there is, nothing goes
    assert plan.plan_retention([], archive, RetentionPolicy(keep_last=1), BERLIN).wal_remove == []


def test_the_lag_check():
    now = datetime(2026, 12, 3, 12, tzinfo=UTC)
    caught_up = {"exists": True, "active": True, "flushed_lsn": "0/5000000", "server_lsn": "0/5000000"}
    assert health.rpo("main", caught_up, None, now, 900).state == OK
    beat = {"caught_up_at": (now - timedelta(minutes=5)).isoformat()}
    down = {"exists": True, "active": False, "flushed_lsn": "0/5000000", "server_lsn": "0/6000000"}
    r = health.rpo("main", down, beat, now, 900)
    assert r.state == WARN and "not connected for 5m" in r.reason and "16.0 MiB behind" in r.reason
    beat = {"caught_up_at": (now - timedelta(minutes=16)).isoformat()}
    assert health.rpo("main", down, beat, now, 900).state == FAIL
    behind = {**down, "active": True}
    assert "connected but behind" in health.rpo("main", behind, beat, now, 900).reason
    assert health.rpo("main", down, None, now, 900).state == FAIL  # never reported at all
    assert health.rpo_seconds(down, beat, now) == 16 * 60


def test_slot_and_receiver_checks():
    slot = {"exists": True, "active": True, "wal_status": "reserved", "retained_bytes": 10, "safe_wal_size": 1 << 30,
            "max_slot_wal_keep_size": "1GB", "slot": "s"}
    assert health.slot_retention("main", slot).state == OK
    assert health.slot_retention("main", {**slot, "wal_status": "lost"}).state == FAIL
    assert health.slot_retention("main", {**slot, "max_slot_wal_keep_size": "-1"}).state == WARN
    assert health.receiver("main", slot, {"state": "streaming"}).state == OK
    assert health.receiver("main", {**slot, "active": False}, None).state == FAIL
    assert health.receiver("main", {"exists": False}, None).state == FAIL


def test_pitr_settings_are_checked_when_loaded():
    from homelab_ops.settings import SettingsError, parse

    s = parse({"pitr": {"enabled": True, "dsn": "postgresql://rep:s3cret-pw@db:5432/postgres"}}, "t")
    assert s.pitr.slot_name == "homelab_ops_main" and s.pitr.max_lag.seconds == 900
    assert "s3cret-pw" in s.secrets()  # so the one redactor hides it
    for bad, key in (({"cluster": "Main"}, "pitr.cluster"), ({"slot": "a-b"}, "pitr.slot"),
                     ({"base_backup_cron": "weekly"}, "pitr.base_backup_cron"), ({"max_lag": "soon"}, "pitr.max_lag"),
                     ({"enable": True}, "pitr.enable")):
        with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
            parse({"pitr": bad}, "t")


def test_off_site_owes_finished_wal_oldest_first_and_never_a_plain_copy_when_encrypting():
    from homelab_ops.pitr.offsite import wal_owed

    s = {n: 100 for n in ["000000010000000100000000.gz.age", "0000000100000000000000FF.gz.age",
                          "000000020000000000000010.gz.age", "000000010000000100000001.gz",
                          "000000010000000100000002.gz.partial", "00000002.history.age", "notes.txt"]}
    # histories first (recovery follows timelines with them), then segments by position, not by name
    assert wal_owed(s, {}, encrypted=True) == ["00000002.history.age", "000000020000000000000010.gz.age",
                                               "0000000100000000000000FF.gz.age", "000000010000000100000000.gz.age"]
    # not yet encrypted by the receiver: owed only when the owner does not encrypt
    assert "000000010000000100000001.gz" in wal_owed(s, {}, encrypted=False)
    # a copy there of the same size is not owed again; one of another size (hand-copied, cut) is
    remote = {"00000002.history.age": 100, "000000020000000000000010.gz.age": 100,
              "0000000100000000000000FF.gz.age": 7}
    assert wal_owed(s, remote, encrypted=True) == ["0000000100000000000000FF.gz.age",
                                                   "000000010000000100000000.gz.age"]


def test_off_site_owes_whole_base_backup_sets_with_the_manifest_last():
    from homelab_ops.pitr.base import read_base_backups
    from homelab_ops.pitr.offsite import base_owed

    manifests = {f"{stem}.manifest.json": {"kind": "base_backup", "files": {
        f"{stem}.base.tar.zst": {}, f"{stem}.pg_wal.tar.zst": {}, f"{stem}.backup_manifest.zst": {}}}
        for stem in ("20261201T040000Z", "20261202T040000Z")}
    local = {n: 10 for m in manifests.values() for n in m["files"]} | {n: 1 for n in manifests}
    del local["20261202T040000Z.pg_wal.tar.zst"]  # not complete: never listed, never owed
    bases = read_base_backups(local, manifests.__getitem__)
    assert [b.stem for b in bases] == ["20261201T040000Z"]
    assert base_owed(bases, local, {}) == [("20261201T040000Z", [*manifests["20261201T040000Z.manifest.json"]["files"],
                                                                 "20261201T040000Z.manifest.json"])]
    held = {n: 10 for n in manifests["20261201T040000Z.manifest.json"]["files"]}
    # every file there but the manifest (an upload cut before it): only the manifest is owed
    assert base_owed(bases, local, held) == [("20261201T040000Z", ["20261201T040000Z.manifest.json"])]
    assert base_owed(bases, local, held | {"20261201T040000Z.manifest.json": 1}) == []


def test_the_receiver_healthcheck_fails_without_a_fresh_heartbeat(tmp_path):
    """`pitr status --heartbeat`, the wal_receiver container's healthcheck: a file read, no server query."""
    import json
    import time

    import yaml
    from click.testing import CliRunner

    from homelab_ops.cli import main

    config = tmp_path / "homelab.yaml"
    config.write_text(yaml.safe_dump({"backups": {"local_dir": str(tmp_path / "b")},
                                      "pitr": {"enabled": True, "status_interval": "10s"}}))
    run = lambda: CliRunner().invoke(main, ["--config", str(config), "pitr", "status", "--heartbeat"])  # noqa: E731
    never = run()
    assert never.exit_code == 1 and "no receiver heartbeat for ever" in never.output
    status = tmp_path / "b" / "_wal" / "main.receiver.json"
    status.parent.mkdir(parents=True)
    status.write_text(json.dumps({"updated_at": datetime.fromtimestamp(time.time() - 5, UTC).isoformat()}))
    fresh = run()
    assert fresh.exit_code == 0 and "receiver heartbeat 5s ago" in fresh.output
    status.write_text(json.dumps({"updated_at": datetime.fromtimestamp(time.time() - 120, UTC).isoformat()}))
    stale = run()  # limit: 3 x 10 s + 30 s
    assert stale.exit_code == 1 and "for 120s (limit 60s)" in stale.output
