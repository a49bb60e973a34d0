-- Host metrics: raw snapshots in long format, their daily rollup, and the container table
-- that container_metrics (added later, with its Docker Engine fixture) appends to.

CREATE TABLE homelab_ops.host_metrics (
    taken_at timestamptz NOT NULL,
    metric   text NOT NULL,
    labels   jsonb NOT NULL DEFAULT '{}'::jsonb,
    value    double precision  -- NULL: the sensor exists in the series but gave no reading
);
-- Grafana and the daily rollup read one metric (or one day) over a time range.
CREATE INDEX host_metrics_taken_at_idx ON homelab_ops.host_metrics (taken_at);
CREATE INDEX host_metrics_metric_taken_at_idx ON homelab_ops.host_metrics (metric, taken_at);

CREATE TABLE homelab_ops.host_metrics_daily (
    day     date NOT NULL,
    metric  text NOT NULL,
    labels  jsonb NOT NULL DEFAULT '{}'::jsonb,
    samples integer NOT NULL,
    min     double precision,
    mean    double precision,
    max     double precision,
    PRIMARY KEY (day, metric, labels)
);

CREATE TABLE homelab_ops.container_metrics (
    taken_at  timestamptz NOT NULL,
    container text NOT NULL,
    metric    text NOT NULL,
    value     double precision
);
CREATE INDEX container_metrics_taken_at_idx ON homelab_ops.container_metrics (taken_at);
CREATE INDEX container_metrics_container_metric_idx ON homelab_ops.container_metrics (container, metric, taken_at);
