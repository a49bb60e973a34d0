-- Alerts and who receives them (homelab_ops.notify). Every alert is recorded here, delivered
-- or not, with its text already redacted: this table never holds a secret.

CREATE TABLE homelab_ops.alerts (
    id          bigserial PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    source      text NOT NULL CHECK (source IN ('check', 'run', 'asset_check', 'notify', 'test')),
    subject     text NOT NULL,               -- the check's name, the job's name, or the asset check's key
    run_id      text,                        -- for run failures: the Dagster run
    kind        text NOT NULL,               -- problem, reminder, flapping, recovered, gone, run_failed, ...
    severity    text NOT NULL CHECK (severity IN ('info', 'warn', 'fail')),
    text        text NOT NULL,
    recipients  jsonb NOT NULL DEFAULT '[]'::jsonb,  -- ["telegram:123", "webhook"]
    delivery    jsonb NOT NULL DEFAULT '[]'::jsonb,  -- [{"to": ..., "ok": bool, "attempts": n, "detail": ...}]
    delivered   boolean NOT NULL                     -- at least one recipient got it
);
CREATE INDEX alerts_created_at_idx ON homelab_ops.alerts (created_at);
CREATE INDEX alerts_subject_idx ON homelab_ops.alerts (subject, created_at);

-- Telegram chats. `/start` to the bot records a chat as pending; only the owner approves it
-- (`homelab-ops notify approve`), and nothing is ever sent to a chat that is not approved.
CREATE TABLE homelab_ops.notify_chats (
    chat_id      bigint PRIMARY KEY,
    title        text NOT NULL DEFAULT '',   -- @username, name or group title, for `notify list`
    status       text NOT NULL CHECK (status IN ('pending', 'approved')),
    min_severity text NOT NULL DEFAULT 'warn' CHECK (min_severity IN ('info', 'warn', 'fail')),
    muted_until  timestamptz,                -- `/mute 8h` from the chat itself
    requested_at timestamptz NOT NULL DEFAULT now(),
    approved_at  timestamptz,
    CHECK ((status = 'approved') = (approved_at IS NOT NULL))
);
