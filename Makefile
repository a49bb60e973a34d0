# homelab-ops: `make demo` and `make test` are the whole setup on a fresh machine.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
VENV := .venv
PY := $(VENV)/bin/python
export DAGSTER_HOME := $(CURDIR)/var/dagster

.PHONY: env services demo demo-pitr test ui bench clean

# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as on this machine) nothing else writes .pyc,
# and every `dagster` or `homelab-ops` process, test subprocesses included, compiled Dagster from source
# (importing dagster: 1.7 s without, 0.8 s with). The image does the same (deploy/Dockerfile).
$(VENV)/.synced: pyproject.toml uv.lock Makefile
	@command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
	$(UV) sync --frozen --all-groups --compile-bytecode
	@touch $@

env: $(VENV)/.synced

# Debian packages the tests and the demo call as programs (pg tools come with PostgreSQL).
services: env
	@bash scripts/system-packages.sh
	@bash scripts/postgres-up.sh
	@bash scripts/dockerd-up.sh

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

# The demo database is homelab_demo_n8n, marked as demo data: --replace drops only a database
# carrying that mark, never one the demo did not create (an owner's n8n on the same server).
demo: services $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/python scripts/n8n_demo.py --replace
	$(VENV)/bin/dagster job execute -m homelab_ops.definitions -j nightly_backup
	@echo
	@echo "== What the nightly job made =="
	$(VENV)/bin/homelab-ops backups list
	@echo
	@echo "Backups:        $(CURDIR)/var/backups (one folder per database, dump + manifest per backup)"
	@echo "n8n workflows:  $(CURDIR)/var/backups/n8n_workflows (one JSON file per workflow, per run)"
	@echo "Dagster runs:   $(DAGSTER_HOME) (open them with: make ui)"
	@echo "Point-in-time recovery, on a PostgreSQL cluster of its own: make demo-pitr"

# The machine's PostgreSQL allows no replication (pg_hba.conf), and a demo does not change an owner's
# server: this one starts a private PostgreSQL 15 with wal_level=logical and removes it afterwards.
demo-pitr: services
	$(PY) scripts/pitr_demo.py

test: services
	$(PY) -m pytest -q

ui: env $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml

bench: services
	$(PY) bench/backup.py

clean:
	rm -rf var
