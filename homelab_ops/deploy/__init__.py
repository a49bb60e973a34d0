"""Deploying and tuning the monitoring stack and Traefik through the Docker Engine API.

Pure planning and rendering (`spec`, `render`, `plan`, `tune`) over plain data;
Docker I/O only in `engine` (and `tune.sample_usage`). The Dagster ops in
`homelab_ops/defs/deploy` only wire these together.
"""
