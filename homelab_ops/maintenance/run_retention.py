"""Which of Dagster's own runs to delete, and why every other run stays.

Dagster keeps every run and its event log until someone deletes it; on a Pi that
snapshots metrics every 15 minutes that is tens of thousands of runs a year. The
policy is restic's way of forgetting snapshots: one pure decision per run, with a
reason an owner can read. A run is deleted only when it is finished, older than
the retention, not the newest finished run of its job, and holds nothing the UI still
shows as an asset's current state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

FINISHED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})

# The rule each decision rests on, first match wins; the asset counts runs per rule.
UNFINISHED = "not finished"
KEEP_ALL = "run_retention is 0"
YOUNG = "younger than the retention"
PROTECTED = "holds an asset's latest materialization"
NEWEST = "newest finished run of its job"
OLD = "older than the retention"


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    job_name: str
    status: str  # a DagsterRunStatus value: QUEUED, STARTED, SUCCESS, FAILURE, CANCELED, ...
    created: datetime  # timezone-aware, as are the two below
    started: datetime | None = None
    ended: datetime | None = None

    @property
    def finished_at(self) -> datetime:
        """When it stopped; a run cancelled before it started only has its creation time."""
        return self.ended or self.started or self.created


@dataclass(frozen=True, slots=True)
class Decision:
    run: Run
    delete: bool
    rule: str  # one of the constants above
    reason: str  # the rule in words for this run, e.g. "newest run of job nightly_backup"


def format_duration(seconds: float) -> str:
    """90d, 36h, 15m or 45s: the largest unit that divides the duration."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def decide(runs: Iterable[Run], *, protected: Mapping[str, str], now: datetime, retention_seconds: float,
           retention_label: str | None = None) -> Iterator[Decision]:
    """One decision per run, in the order given.

    `runs` come newest first, as Dagster lists them: the first finished run of a job
    seen is its last result, kept even while a newer run is queued or running (that
    one may yet fail). `protected` maps run ids that must stay to why, e.g. "holds the
    latest materialization of backups/n8n_backup". A generator, so tens of thousands of
    runs are decided without holding them: the only state is the set of job names.
    """
    if retention_seconds < 0:
        raise ValueError(f"retention must not be negative, got {retention_seconds}")
    label = retention_label or format_duration(retention_seconds)
    cutoff = now - timedelta(seconds=retention_seconds)
    jobs_finished: set[str] = set()
    for run in runs:
        newest = run.status in FINISHED and run.job_name not in jobs_finished
        if run.status in FINISHED:
            jobs_finished.add(run.job_name)
        if run.status not in FINISHED:
            yield Decision(run, False, UNFINISHED, f"not finished ({run.status})")
        elif retention_seconds == 0:
            yield Decision(run, False, KEEP_ALL, "run_retention is 0: every run is kept")
        elif run.finished_at > cutoff:
            yield Decision(run, False, YOUNG, f"younger than {label}")
        elif run.run_id in protected:
            yield Decision(run, False, PROTECTED, protected[run.run_id])
        elif newest:
            yield Decision(run, False, NEWEST, f"newest finished run of job {run.job_name}")
        else:
            yield Decision(run, True, OLD, f"older than {label}")
