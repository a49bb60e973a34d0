"""The rollup's failure_rate asset check and the health sensor's n8n_failure_rate read one judgement
(health.checks.failing_workflows) with one set of numbers (`thresholds:`): they cannot disagree."""

from __future__ import annotations

from datetime import date

from hypothesis import example, given
from hypothesis import strategies as st

from homelab_ops.defs.n8n.assets import failure_check_result
from homelab_ops.health import checks as c
from homelab_ops.n8n.rollup import RollupRow, per_workflow

DAY = date(2026, 12, 1)


def rows_for(counts: list[tuple[int, int]]) -> list[RollupRow]:
    """(successes, errors) per workflow -> the rollup's rows for one day."""
    rows = []
    for i, (ok, bad) in enumerate(counts):
        for status, n in (("success", ok), ("error", bad)):
            if n:
                rows.append(RollupRow(DAY, f"wf{i}", f"Workflow {i}", status, n, None, None, None))
    return rows


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), max_size=6),
       st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9]), st.integers(1, 5))
@example([(0, 1)], 0.0, 2)  # too few finished runs to judge
@example([(1, 1)], 0.5, 1)  # exactly at the threshold: not above it
@example([(3, 1), (0, 4)], 0.2, 5)
def test_the_asset_check_and_the_health_check_agree(counts, warn, min_finished):
    rows = rows_for(counts)
    th = c.Thresholds.defaults(n8n_failure_rate_warn=warn, n8n_failure_rate_fail=1.0, n8n_min_finished=min_finished)
    check = failure_check_result(rows, th)
    wfs = per_workflow(rows)
    health = c.n8n_failure_rate(DAY.isoformat(), [(w.workflow_name, w.finished, w.failed) for w in wfs],
                                th.n8n_failure_rate_warn, th.n8n_failure_rate_fail, th.n8n_min_finished)
    assert check.passed == (health.state == c.OK), (check.description, health.reason)


def test_a_threshold_set_in_thresholds_moves_the_asset_check_too():
    rows = rows_for([(2, 2)])  # half of its runs failed
    assert not failure_check_result(rows, c.Thresholds.defaults(n8n_failure_rate_warn=0.4)).passed
    assert failure_check_result(rows, c.Thresholds.defaults(n8n_failure_rate_warn=0.6)).passed
