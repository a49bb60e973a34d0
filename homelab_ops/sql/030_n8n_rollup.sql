-- n8n executions per day (in the settings' timezone), workflow and status. Written only by
-- n8n_execution_rollup, one day at a time, replaced atomically.

CREATE TABLE homelab_ops.n8n_execution_daily (
    day           date NOT NULL,
    workflow_id   text NOT NULL,
    workflow_name text,
    status        text NOT NULL,
    executions    bigint NOT NULL,
    p50_ms        double precision,  -- of the executions that stopped; NULL when none did
    p95_ms        double precision,
    max_ms        double precision,
    PRIMARY KEY (day, workflow_id, status)
);
