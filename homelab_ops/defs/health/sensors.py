"""The alerting sensors. Thin: the decisions are in homelab_ops.health and homelab_ops.notify.

- health_sensor: runs the checks, alerts on changes (state machine in its cursor), requests remedies;
- run_failure_alert: every failed run, with its failed step, error and a link;
- asset_check_alert: ERROR-severity asset check failures, through the same state machine;
- telegram_inbox: /start, /mute and /unmute sent to the bot.

Builders take what tests replace (the check function, the clock); the defaults are the real ones.
"""

import json
import time
from dataclasses import asdict
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Optional

import dagster as dg
import psycopg

from homelab_ops.defs.health.resources import AlertChannels
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.errors import first_line
from homelab_ops.health import machine, messages, overview, remedies
from homelab_ops.health.checks import FAIL, OK, CheckResult
from homelab_ops.health.evaluate import run_checks
from homelab_ops.metrics import textfile
from homelab_ops.metrics.thresholds import ALERTED_BY
from homelab_ops.notify import chats as chats_mod
from homelab_ops.notify import heartbeat
from homelab_ops.notify.alert import Alert
from homelab_ops.notify.chats import Chat
from homelab_ops.notify.telegram import escape
from homelab_ops.recovery import INTERRUPTED_TAG

_RUNNING = dg.DefaultSensorStatus.RUNNING


def _load_cursor(text: Optional[str]) -> dict:
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}


def _memories(data: dict) -> dict:
    return {k: machine.Memory.from_json(v) for k, v in (data.get("checks") or {}).items()}


def _dump(memories: dict, chats: list[Chat], shown: Optional[dict] = None) -> str:
    data = {"v": 1, "checks": {k: m.to_json() for k, m in memories.items()}, "chats": [c.to_json() for c in chats]}
    if shown:
        data["shown"] = shown
    return json.dumps(data, separators=(",", ":"))


HEALTH_ASSET = dg.AssetKey("homelab_health")
_COLUMNS = dg.TableSchema(columns=[dg.TableColumn(c) for c in ("check", "state", "since", "reason", "remedy")])


def health_observation(table: list[overview.Row], results: list[CheckResult]) -> dg.AssetObservation:
    """The `homelab_health` asset's new state: every check as a table, and counts to plot."""
    return dg.AssetObservation(HEALTH_ASSET, metadata={
        "state": overview.overall(results),
        "checks": dg.MetadataValue.table([dg.TableRecord(asdict(row)) for row in table], schema=_COLUMNS),
        "not_ok": sum(1 for r in results if r.state != OK),
        "failing": sum(1 for r in results if r.state == FAIL),
    })


def _approved(chats: Optional[list[Chat]], fallback: list[Chat]) -> list[Chat]:
    return fallback if chats is None else [c for c in chats if c.status == "approved"]


# Dagster ends a sensor evaluation after 60 s and keeps nothing of it, cursor included: the next
# tick would alert again. Checks (20 s) and alerts (30 s) can take most of that; the heartbeat
# gets what is left of this budget, and a ping that has no time left is skipped, not waited for.
TICK_BUDGET_S = 50.0


def build_health_sensor(jobs: list, *, name: str = "health_sensor", interval: int = 60,
                        evaluate: Optional[Callable[..., list[CheckResult]]] = None,
                        clock: Callable[[], float] = time.time) -> dg.SensorDefinition:
    """`jobs` are the remedy jobs this code location has; a remedy naming any other is skipped."""
    job_names = {j.name for j in jobs}

    @dg.sensor(name=name, jobs=list(jobs) or None, minimum_interval_seconds=interval, default_status=_RUNNING,
               description="Evaluates the health checks every health.interval; alerts when a check changes "
                           "state (re-alerts every health.realert_after, reports flapping once, announces "
                           "recovery) and starts the remedy job of a failing check once per failure.")
    def _health(context: dg.SensorEvaluationContext, homelab: HomelabSettings, alert_channels: AlertChannels):
        health = homelab.health
        notify = homelab.notify
        now = clock()
        tick_deadline = time.monotonic() + TICK_BUDGET_S
        data = _load_cursor(context.cursor)
        known_chats = [Chat.from_json(c) for c in data.get("chats") or []]
        redact = alert_channels.redactor(notify)
        results = [CheckResult(r.name, r.state, redact(r.reason), r.remedy)
                   for r in (evaluate or run_checks)(health)]
        policy = machine.Policy.of(health.health)
        memories, notices = machine.advance(_memories(data), results, now, policy)

        available = set(job_names)
        if context.repository_def is not None:
            available = {j for j in available if context.repository_def.has_job(j)}
        planned, skipped = remedies.plan(memories, results, now, policy, health.health.remedies, available)
        for s in skipped:
            context.log.info(s.why)
        started: dict[str, list[str]] = {}
        for p in planned:
            started.setdefault(p.check, []).append(p.job)
            context.log.info(f"{p.check}: requesting remedy {p.job} (run key {p.run_key})")

        alerts = [messages.notice_alert(n, now, health.tz, started.pop(n.check, [])) for n in notices]
        chats = None
        if alerts:
            _, chats = alert_channels.dispatcher(notify, logger=context.log).deliver(alerts, known_chats=known_chats)
        line = overview.summary(results)
        context.log.info(f"{line}; {len(alerts)} alerts, {len(planned)} remedy runs")
        try:  # Prometheus' rules for these conditions hold back while this file is fresh
            textfile.write_atomically(health.metrics.textfile_dir, textfile.render(
                overview.samples(results), now, stamp=overview.TICK_METRIC), overview.TEXTFILE)
        except OSError as e:
            context.log.warning(f"{overview.TEXTFILE} not written in {health.metrics.textfile_dir} "
                                f"(Prometheus will alert in the sensor's place): {redact(first_line(e))}")
        beat = notify.notify.heartbeat_url
        if beat is not None:
            event = heartbeat.FAIL if overview.overall(results) == FAIL else heartbeat.SUCCESS
            resp = heartbeat.ping(beat.get_secret_value(), event, line, deadline=tick_deadline)
            if not resp.ok:
                context.log.warning(f"heartbeat ({event}) not delivered: {redact(resp.error)}")
        table = overview.rows(memories, results, health.tz)
        shown = data.get("shown") or {}
        events = []
        if overview.due(shown.get("sig"), shown.get("at"), table, now):
            events.append(health_observation(table, results))
            shown = {"sig": overview.signature(table), "at": now}
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=p.run_key, job_name=p.job, tags={"homelab-ops/remedy-for": p.check})
                          for p in planned],
            asset_events=events,
            cursor=_dump(memories, _approved(chats, known_chats), shown),
        )

    return _health


def error_text(error) -> str:
    """A SerializableErrorInfo's messages, outermost first, each cause after it (no stack frames)."""
    lines, seen = [], 0
    while error is not None and seen < 5:
        msg = (error.message or "").strip()
        if msg:
            lines.append(msg if not lines else f"Caused by: {msg}")
        error = error.cause or error.context
        seen += 1
    return "\n".join(lines)


def build_run_failure_sensor(name: str = "run_failure_alert") -> dg.SensorDefinition:
    @dg.run_failure_sensor(name=name, default_status=_RUNNING, minimum_interval_seconds=30,
                           description="Alerts on every failed run of this code location (also runs stopped "
                                       "for exceeding dagster/max_runtime): job, failed step, the error's first "
                                       "lines and a link to the run.")
    def _run_failure(context: dg.RunFailureSensorContext, homelab: HomelabSettings, alert_channels: AlertChannels):
        notify = homelab.notify
        run = context.dagster_run
        if INTERRUPTED_TAG in run.tags:  # a crashed run: homelab_ops.recovery has alerted once already
            return
        steps = []
        for event in context.get_step_failure_events():
            data = event.event_specific_data
            err = getattr(data, "error", None)
            steps.append((event.step_key or "?", error_text(err) if err else (event.message or "")))
        failure = context.failure_event
        run_error = getattr(failure.event_specific_data, "error", None)
        run_message = error_text(run_error) if run_error else (failure.message or "")
        # Run monitoring cancels a run past its dagster/max_runtime before failing it: say why.
        canceling = [e.dagster_event.message for e in context.instance.all_logs(
            run.run_id, of_type=dg.DagsterEventType.RUN_CANCELING) if e.dagster_event and e.dagster_event.message]
        if canceling:
            run_message = "\n".join([*canceling, run_message])
        alert = messages.run_failure_alert(run.job_name, run.run_id, steps, run_message, notify.base_url)
        alert_channels.dispatcher(notify, logger=context.log).deliver([alert])

    return _run_failure


def build_asset_check_sensor(name: str = "asset_check_alert", *, interval: int = 60,
                             clock: Callable[[], float] = time.time) -> dg.SensorDefinition:
    @dg.sensor(name=name, minimum_interval_seconds=interval, default_status=_RUNNING,
               description="Alerts when an ERROR-severity asset check fails (and when it passes again), "
                           "with the same dedup and re-alert rules as the health checks; checks of conditions "
                           "health_sensor alerts on (metadata alerted_by) are left to it.")
    def _asset_checks(context: dg.SensorEvaluationContext, homelab: HomelabSettings, alert_channels: AlertChannels):
        repo = context.repository_def
        # A condition the health sensor judges and alerts on (host and container signals) is shown by its
        # asset check but not alerted here too: one condition, one message.
        keys = [k for k in (repo.asset_graph.asset_check_keys if repo is not None else [])
                if (repo.asset_graph.get_check_spec(k).metadata or {}).get("alerted_by") != ALERTED_BY]
        if not keys:
            return dg.SkipReason("no asset checks in this code location")
        notify = homelab.notify
        now = clock()
        latest = context.instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
        results, info = [], {}
        for key, rec in latest.items():
            status = getattr(rec.status, "value", str(rec.status))
            entry = rec.event.dagster_event if rec.event is not None else None
            evaluation = entry.event_specific_data if entry is not None else None
            name_ = f"{key.asset_key.to_user_string()}:{key.name}"
            if status == "SUCCEEDED":
                results.append(CheckResult(name_, OK, "passed"))
            elif (status == "FAILED" and evaluation is not None
                  and getattr(evaluation, "severity", None) == dg.AssetCheckSeverity.ERROR):
                results.append(CheckResult(name_, FAIL, evaluation.description or "failed"))
            else:
                continue  # planned/running, or a WARN-severity failure: not alerted here
            info[name_] = (key.asset_key.to_user_string(), key.name, rec.run_id)
        data = _load_cursor(context.cursor)
        redact = alert_channels.redactor(notify)
        results = [CheckResult(r.name, r.state, redact(r.reason)) for r in results]
        memories, notices = machine.advance(_memories(data), results, now, machine.Policy.of(homelab.health.health))
        alerts = []
        for n in notices:
            asset, check, run_id = info[n.check]
            alerts.append(messages.asset_check_alert(n, asset, check, n.reason, run_id, notify.base_url))
        known_chats = [Chat.from_json(c) for c in data.get("chats") or []]
        chats = None
        if alerts:
            _, chats = alert_channels.dispatcher(notify, logger=context.log).deliver(alerts, known_chats=known_chats)
        context.update_cursor(_dump(memories, _approved(chats, known_chats)))
        return dg.SkipReason(f"{len(results)} asset checks judged, {len(alerts)} alerts")

    return _asset_checks


def build_telegram_inbox_sensor(name: str = "telegram_inbox", *, interval: int = 30) -> dg.SensorDefinition:
    @dg.sensor(name=name, minimum_interval_seconds=interval, default_status=_RUNNING,
               description="Reads the bot's messages (getUpdates with an offset): /start records a chat as "
                           "pending for `homelab-ops notify approve`, /mute and /unmute act for approved chats.")
    def _inbox(context: dg.SensorEvaluationContext, homelab: HomelabSettings, alert_channels: AlertChannels):
        notify = homelab.notify
        bot = alert_channels.bot(notify)
        if bot is None:
            return dg.SkipReason("no Telegram bot token (notify.telegram.bot_token, bot_token_credential "
                                 "or TELEGRAM_BOT_TOKEN)")
        offset = int(context.cursor) if (context.cursor or "").lstrip("-").isdigit() else None
        updates, why = bot.get_updates(offset)
        if updates is None:
            return dg.SkipReason(f"getUpdates failed: {alert_channels.redactor(notify)(why)}")
        cmds, next_offset = chats_mod.commands(updates)
        replies: list = []
        if cmds:
            try:
                with chats_mod.state_connection(notify.state, notify.postgres) as conn:
                    before = {c.chat_id: c.status for c in chats_mod.list_chats(conn)}
                    replies = chats_mod.apply_commands(conn, cmds, notify.tz)
            except psycopg.Error as e:  # the offset stays: Telegram keeps the updates for the next tick
                return dg.SkipReason(f"state database not reachable ({type(e).__name__}); "
                                     f"{len(cmds)} commands wait for the next tick")
            new = {c.chat_id: c for c in cmds if c.kind == "start" and c.chat_id not in before}
            if new:
                names = ", ".join(f"{c.chat_id} ({c.title})" if c.title else str(c.chat_id) for c in new.values())
                context.log.info(f"chats asking for alerts: {names}")
                alert = Alert("notify", "notify_chats", "pending_chat", "warn", "🔔 A chat asked for alerts",
                              f"{names}\nApprove with: homelab-ops notify approve CHAT_ID")
                alert_channels.dispatcher(notify, logger=context.log).deliver([alert])
        for chat_id, text in replies:
            bot.send_html(chat_id, escape(text))
        if next_offset is not None:
            context.update_cursor(str(next_offset))
        return dg.SkipReason(f"{len(updates)} updates, {len(cmds)} commands")

    return _inbox


_JOB_EVENTS = {
    dg.DagsterRunStatus.STARTED: heartbeat.START,
    dg.DagsterRunStatus.SUCCESS: heartbeat.SUCCESS,
    dg.DagsterRunStatus.FAILURE: heartbeat.FAIL,
}


def build_job_heartbeat_sensors() -> list[dg.SensorDefinition]:
    """start / success / fail pings for the jobs named in notify.heartbeat (a monitor per job, as
    borgmatic's monitoring hooks do): a nightly_backup that never starts is noticed from outside too."""
    sensors = []
    for status, event in _JOB_EVENTS.items():
        @dg.run_status_sensor(run_status=status, name=f"job_heartbeat_{event}", default_status=_RUNNING,
                              minimum_interval_seconds=30,
                              description=f"Pings notify.heartbeat[<job>] with `{event}` when a run of that job "
                                          f"{'starts' if event == heartbeat.START else 'ends: ' + event}.")
        def _beat(context: dg.RunStatusSensorContext, homelab: HomelabSettings, alert_channels: AlertChannels,
                  _event: str = event):
            notify = homelab.notify
            url = notify.notify.heartbeat.get(context.dagster_run.job_name)
            if url is None:
                return dg.SkipReason(f"no notify.heartbeat for {context.dagster_run.job_name}")
            resp = heartbeat.ping(url.get_secret_value(), _event,
                                  f"{context.dagster_run.job_name} run {context.dagster_run.run_id[:8]}: {_event}")
            if not resp.ok:
                context.log.warning(f"heartbeat {_event} for {context.dagster_run.job_name} not delivered: "
                                    f"{alert_channels.redactor(notify)(resp.error)}")
        sensors.append(_beat)
    return sensors


@dg.op(description="Gathers the daily digest (backups restored, disk runway, credential ages, n8n failures "
                   "yesterday) and sends it; fails when no chat received it.")
def send_daily_digest(context: dg.OpExecutionContext, homelab: HomelabSettings, alert_channels: AlertChannels):
    from homelab_ops.notify import digest

    notify = homelab.notify
    facts = digest.gather(homelab.health)
    (delivered,), _ = alert_channels.dispatcher(notify, logger=context.log).deliver(
        [digest.compose(facts, datetime.now(timezone.utc))])
    context.add_output_metadata({"delivered_to": ", ".join(o.to for o in delivered.outcomes if o.ok) or "nobody",
                                 "unread": ", ".join(facts.unread) or "none"})
    if not delivered.ok:
        raise dg.Failure(f"the digest reached nobody: {'; '.join(o.detail for o in delivered.outcomes) or 'no chats'}")


def build_digest(at: str | None, zone: str) -> tuple[list[dg.JobDefinition], list[dg.ScheduleDefinition]]:
    """The `daily_digest` job and its schedule at `at` (notify.digest_at) in `zone`; nothing when unset."""
    if not at:
        return [], []
    job = dg.GraphDefinition(name="daily_digest", node_defs=[send_daily_digest]).to_job(
        executor_def=dg.in_process_executor, tags={"dagster/max_runtime": "600"},
        description="One Telegram message a day: backups restored, disk runway, credential ages, n8n failures.")
    hour, minute = (int(x) for x in at.split(":"))
    schedule = dg.ScheduleDefinition(name="daily_digest_schedule", job=job, cron_schedule=f"{minute} {hour} * * *",
                                     execution_timezone=zone, default_status=dg.DefaultScheduleStatus.RUNNING,
                                     description=f"The daily digest at {at} ({zone}), notify.digest_at.")
    return [job], [schedule]
