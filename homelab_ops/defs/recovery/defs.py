"""`interrupted_runs`: the crash sweep (homelab_ops.recovery) on a timer, for when no run starts."""

import dagster as dg

from homelab_ops import recovery
from homelab_ops.defs.resources import HomelabSettings


@dg.sensor(name="interrupted_runs", minimum_interval_seconds=120, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Every two minutes: runs whose process is gone (SIGKILL, out of memory, power cut) are "
                       "marked failed and alerted once as interrupted, their pool slots are freed, and their "
                       "scratch databases, .partial and temporary files and incomplete uploads are removed. "
                       "Every run does the same when it starts.")
def interrupted_runs(context: dg.SensorEvaluationContext, homelab: HomelabSettings):
    from homelab_ops.notify.chats import state_connection

    config = homelab.recovery
    try:
        conn = state_connection(config.notify.state, config.notify.postgres)
    except Exception as e:  # the health sensor reports a state database that is down
        return dg.SkipReason(f"state database not reachable ({type(e).__name__})")
    with conn:
        with recovery.sweeping(conn, context.instance):
            done = recovery.sweep(config, context.instance, conn, log=context.log)
    recovery.report(done, context.log)
    return dg.SkipReason(f"{len(done.interrupted)} runs interrupted, slots freed for {len(done.freed_slots_for)}, "
                         f"{len(done.removed)} leftovers removed" + (f"; {done.skipped}" if done.skipped else ""))


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[interrupted_runs])
