"""Run retention: the pure policy over plain runs, then the asset against a real Dagster instance."""

import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
from hypothesis import given
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from hypothesis import strategies as st

from homelab_ops.maintenance import run_retention as rr
from homelab_ops.defs.maintenance import assets as hygiene_defs
from homelab_ops.defs.maintenance.assets import dagster_run_retention
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.settings import DiskHygieneSettings, SettingsError, parse

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = 86400


def run(run_id: str, job: str, status: str, days_ago: float, **kw) -> rr.Run:
    ended = NOW - timedelta(days=days_ago)
    return rr.Run(run_id, job, status, created=ended - timedelta(minutes=5), ended=ended, **kw)


def by_id(decisions) -> dict[str, rr.Decision]:
    return {d.run.run_id: d for d in decisions}


def test_every_rule_with_its_reason():
    runs = [  # newest first, as Dagster lists them
        run("running", "nightly", "STARTED", 100),
        run("queued", "weekly", "QUEUED", 200),
        run("young", "nightly", "SUCCESS", 10),
        run("holder", "nightly", "SUCCESS", 120),
        run("newest-yearly", "yearly", "FAILURE", 300),
        run("old-ok", "nightly", "SUCCESS", 130),
        run("old-failed", "nightly", "FAILURE", 140),
        run("old-canceled", "weekly", "CANCELED", 250),
        run("old-yearly", "yearly", "SUCCESS", 665),
    ]
    d = by_id(rr.decide(runs, protected={"holder": "holds the latest materialization of backups/n8n_backup"},
                        now=NOW, retention_seconds=90 * DAY, retention_label="90d"))
    assert [k for k, v in d.items() if v.delete] == ["old-ok", "old-failed", "old-yearly"]
    assert d["running"].reason == "not finished (STARTED)" and d["queued"].reason == "not finished (QUEUED)"
    assert d["young"].reason == "younger than 90d" and d["young"].rule == rr.YOUNG
    assert d["holder"].reason == "holds the latest materialization of backups/n8n_backup"
    assert d["newest-yearly"].reason == "newest finished run of job yearly"  # a yearly job keeps its last result
    assert d["old-ok"].reason == "older than 90d" and d["old-ok"].rule == rr.OLD
    # "weekly"'s newest run is still queued: its last finished one is its last result until that one ends.
    assert d["old-canceled"].reason == "newest finished run of job weekly"


def test_zero_keeps_every_run_and_age_is_the_end_of_the_run():
    runs = [run("a", "j", "SUCCESS", 400), run("b", "j", "FAILURE", 500)]
    assert {d.reason for d in rr.decide(runs, protected={}, now=NOW, retention_seconds=0)} == {
        "run_retention is 0: every run is kept"}
    # Created long ago but finished an hour ago: young.
    long = rr.Run("long", "j", "SUCCESS", created=NOW - timedelta(days=100), ended=NOW - timedelta(hours=1))
    cancelled = rr.Run("c", "j", "CANCELED", created=NOW - timedelta(days=100))  # never started
    d = by_id(rr.decide([long, cancelled], protected={}, now=NOW, retention_seconds=90 * DAY))
    assert d["long"].reason == "younger than 90d" and d["c"].delete
    with pytest.raises(ValueError):
        list(rr.decide([], protected={}, now=NOW, retention_seconds=-1))


def test_labels():
    assert [rr.format_duration(s) for s in (90 * DAY, 36 * 3600, 900, 45, 1.5, 0)] == [
        "90d", "36h", "15m", "45s", "1.5s", "0s"]


STATUSES = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING", "SUCCESS", "FAILURE", "CANCELED"]
run_st = st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(STATUSES),
                   st.integers(0, 400 * 24), st.one_of(st.none(), st.integers(0, 48)), st.booleans())


@given(st.lists(run_st, max_size=40), st.sampled_from([0, 1, 3600, 30 * DAY, 90 * DAY]))
def test_properties(specs, retention):
    runs = []
    for i, (job, status, hours_ago, ran_hours, _) in enumerate(specs):
        created = NOW - timedelta(hours=hours_ago)
        ended = created + timedelta(hours=ran_hours) if ran_hours is not None else None
        runs.append(rr.Run(f"r{i}", job, status, created=created, ended=ended))
    runs.sort(key=lambda r: r.created, reverse=True)
    protected = {f"r{i}": "holds something" for i, s in enumerate(specs) if s[4]}
    decisions = list(rr.decide(runs, protected=protected, now=NOW, retention_seconds=retention))
    assert [d.run for d in decisions] == runs
    cutoff = NOW - timedelta(seconds=retention)
    newest = {}  # each job's newest finished run
    for r in runs:
        if r.status in rr.FINISHED:
            newest.setdefault(r.job_name, r.run_id)
    for d in decisions:
        r = d.run
        if d.delete:
            assert r.status in rr.FINISHED  # nothing unfinished is ever deleted
            assert r.run_id != newest[r.job_name]  # nor the newest finished run of a job
            assert r.run_id not in protected
            assert retention > 0 and r.finished_at <= cutoff  # every deleted run is older than the cutoff
        else:  # and nothing is kept without a reason
            assert (r.status not in rr.FINISHED or retention == 0 or r.finished_at > cutoff
                    or r.run_id in protected or r.run_id == newest.get(r.job_name)), d


def test_setting_default_zero_and_units():
    assert DiskHygieneSettings().run_retention.seconds == 90 * DAY
    assert DiskHygieneSettings(run_retention=0).run_retention.seconds == 0
    assert DiskHygieneSettings(run_retention="12w").run_retention.seconds == 84 * DAY
    with pytest.raises(SettingsError, match=r"disk_hygiene.run_retention: .*90 would be seconds"):
        parse({"disk_hygiene": {"run_retention": 90}}, "homelab.yaml")


# --- the asset, against a real instance ---------------------------------------------------------


@dg.asset
def scratch_a() -> dg.MaterializeResult:
    return dg.MaterializeResult()


class Fail(dg.Config):
    fail: bool = False


@dg.asset
def scratch_c(config: Fail) -> dg.MaterializeResult:
    if config.fail:
        raise dg.Failure("asked to fail")
    return dg.MaterializeResult()


DAYS = dg.StaticPartitionsDefinition(["d1", "d2"])


@dg.asset(partitions_def=DAYS)
def scratch_p() -> dg.MaterializeResult:
    return dg.MaterializeResult()


@dg.op
def noop() -> None:
    pass


@dg.job
def op_job():
    noop()


SCRATCH = dg.Definitions(
    assets=[scratch_a, scratch_c, scratch_p],
    jobs=[dg.define_asset_job("job_a", [scratch_a]), dg.define_asset_job("job_c", [scratch_c]),
          dg.define_asset_job("job_p", [scratch_p]), op_job])


@pytest.fixture(scope="module")
def own_instance():
    """Not the session's `dagster_instance`: retention deletes every old run in the instance it runs in."""
    with dg.instance_for_test() as instance:
        yield instance


def test_asset_deletes_old_finished_runs_and_keeps_what_the_ui_needs(own_instance, write_settings, monkeypatch):
    inst = own_instance

    def execute(job: str, **kw) -> str:
        return SCRATCH.resolve_job_def(job).execute_in_process(instance=inst, raise_on_error=False, **kw).run_id

    def added(status: dg.DagsterRunStatus) -> str:
        """A run as the queued run coordinator stores it (a queued run needs the origin to launch from)."""
        origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("scratch"), "__repository__"),
                                 "stuck_job")
        r = dg.DagsterRun(job_name="stuck_job", run_id=str(uuid.uuid4()), status=status, remote_job_origin=origin)
        inst.add_run(r)
        return r.run_id

    a1, a2, a3 = execute("job_a"), execute("job_a"), execute("job_a")
    c1 = execute("job_c")
    c2 = execute("job_c", run_config={"ops": {"scratch_c": {"config": {"fail": True}}}})
    p1, p2, p3 = (execute("job_p", partition_key=k) for k in ("d1", "d2", "d1"))
    o1, o2 = execute("op_job"), execute("op_job")
    # A failed attempt outside job_c, in the ad-hoc job that later runs (retention's own) make old:
    # it is scratch_c's current state.
    f = dg.materialize([scratch_c], instance=inst, raise_on_error=False,
                       run_config={"ops": {"scratch_c": {"config": {"fail": True}}}}).run_id
    cancelled, last_cancelled = added(dg.DagsterRunStatus.CANCELED), added(dg.DagsterRunStatus.CANCELED)
    started, queued = added(dg.DagsterRunStatus.STARTED), added(dg.DagsterRunStatus.QUEUED)
    assert inst.get_run_by_id(c2).status == dg.DagsterRunStatus.FAILURE

    def retain(value: str):
        path, _ = write_settings({"disk_hygiene": {"run_retention": value}}, name=f"retention-{value}.yaml")
        result = dg.materialize([dagster_run_retention], instance=inst,
                                resources={"homelab": HomelabSettings(config_path=str(path))})
        return result.run_id, result.asset_materializations_for_node("dagster_run_retention")[0].metadata

    r0, meta = retain("0")
    assert meta["deleted"].value == 0 and "run_retention is 0" in meta["kept_because"].value
    r90, meta = retain("90d")
    assert meta["deleted"].value == 0 and "younger than 90d" in meta["kept_because"].value
    assert meta["kept"].value == 17  # 15 scratch runs, the "0" run and this one

    time.sleep(1.2)  # everything above is now older than 1s
    monkeypatch.setattr(hygiene_defs, "PAGE", 2)  # many pages: deleting while listing must not end the listing
    r1, meta = retain("1s")

    gone = {a1, a2, p1, o1, cancelled, r0}
    kept = {a3: "holds the latest materialization of scratch_a",
            c1: "holds the latest materialization of scratch_c",
            f: "is the latest run of scratch_c",
            c2: "newest finished run of job job_c",
            p2: "holds the latest materialization of scratch_p [d2]",
            p3: "holds the latest materialization of scratch_p",
            o2: "newest finished run of job op_job",
            last_cancelled: "newest finished run of job stuck_job",  # its queued and started runs may yet fail
            started: "not finished (STARTED)", queued: "not finished (QUEUED)",
            r90: "holds the latest materialization of dagster_run_retention",
            r1: "not finished (STARTED)"}  # the run doing the deleting
    captured = Path(inst.storage_directory())  # compute logs: <storage>/<run id>/compute_logs/
    for run_id in gone:
        assert inst.get_run_by_id(run_id) is None and inst.all_logs(run_id) == [], run_id
        assert not (captured / run_id).exists(), run_id
    for run_id in kept:
        assert inst.get_run_by_id(run_id) is not None, kept[run_id]
    assert (captured / a3 / "compute_logs").is_dir()  # a kept run keeps its stdout/stderr
    assert (meta["deleted"].value, meta["kept"].value) == (len(gone), len(kept))
    assert {r.data["run_id"] for r in meta["deleted_runs"].value.records} == gone
    assert all(r.data["status"] in rr.FINISHED for r in meta["deleted_runs"].value.records)
    summary = meta["kept_because"].value
    for reason in ("not finished (STARTED)", "newest finished run of job job_c", "newest finished run of job op_job",
                   "holds the latest materialization of scratch_p [d2]", "is the latest run of scratch_c"):
        assert reason in summary
    # The asset's state survives: every asset still has its latest materialization, d1 and d2 theirs.
    records = {r.asset_entry.asset_key.to_user_string(): r.asset_entry for r in inst.get_asset_records()}
    assert records["scratch_a"].last_materialization_record.run_id == a3
    assert {e.partition_key for e in inst.fetch_materializations(dg.AssetKey("scratch_p"), limit=10).records} == {
        "d1", "d2"}
