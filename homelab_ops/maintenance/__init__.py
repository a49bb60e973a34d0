"""Keeping the Pi's disk healthy: SSD trim and container log sizes (hygiene), and deleting
Dagster's old finished runs (run_retention)."""
