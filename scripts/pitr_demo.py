"""`make demo-pitr`: point-in-time recovery end to end, on a PostgreSQL cluster of its own.

The machine's PostgreSQL (127.0.0.1:5432) is not touched: it has no replication line in
pg_hba.conf, and changing an owner's server is not a demo's business. So this starts a
private PostgreSQL 15 (wal_level=logical, tests/pitr_cluster.py), loads the n8n demo
database into it and runs what an owner runs, as commands:

    homelab-ops pitr receive          (in the background)
    homelab-ops pitr basebackup
    ... a bad workflow edit ...
    homelab-ops backups restore homelab_demo_n8n --into n8n_before_edit --at "<time before it>"
    the nightly dump, then homelab-ops pitr verify   (the nightly exact check)

Everything it made (settings, age key, WAL archive, base backup, dump) stays in
var/pitr-demo/ for a look; the cluster itself is removed.
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pyrage
import yaml

from homelab_ops.backups.config import BackupsConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from homelab_ops.backups.backup import run_backup  # noqa: E402
from homelab_ops.pitr import wal  # noqa: E402
from homelab_ops.pitr.receive import slot_state  # noqa: E402
from homelab_ops.settings import load  # noqa: E402
from tests.pitr_cluster import logical_cluster  # noqa: E402

CLI = str(Path(sys.executable).with_name("homelab-ops"))
DB = "homelab_demo_n8n"


def sql(dsn: str, q: str):
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(q)
        return cur.fetchall() if cur.description else None


def run(config: Path, *args: str) -> str:
    print(f"$ homelab-ops {' '.join(args)}", flush=True)
    out = subprocess.run([CLI, "--config", str(config), *args], capture_output=True, text=True, timeout=900)
    print(out.stdout + out.stderr, end="", flush=True)
    if out.returncode != 0:
        raise SystemExit(f"`homelab-ops {' '.join(args)}` failed (exit {out.returncode})")
    return out.stdout


def wait_for(cond, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting until {what}")


def counts(dsn: str) -> str:
    (wf, nodes, ex), = sql(dsn, "SELECT count(*), coalesce(sum(json_array_length(nodes::json)), 0), "
                                "(SELECT count(*) FROM execution_entity) FROM workflow_entity")
    return f"{wf} workflows with {nodes} nodes, {ex} executions"


def main(out_dir: Path) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    ident = pyrage.x25519.Identity.generate()
    key = out_dir / "age.key"
    key.write_text(str(ident) + "\n")
    key.chmod(0o600)
    with logical_cluster() as c:
        config = out_dir / "homelab.yaml"
        config.write_text(yaml.safe_dump({
            "timezone": "UTC",
            "postgres": {"dsn": c.dsn(), "databases": [DB], "pg_bin_dir": "/usr/lib/postgresql/15/bin"},
            "state": {"dsn": c.dsn("homelab")},
            "backups": {"local_dir": str(out_dir / "backups"),
                        "encryption": {"age_recipients": [str(ident.to_public())], "identity_file": str(key)}},
            "metrics": {"textfile_dir": str(out_dir / "textfile")},
            "pitr": {"enabled": True, "status_interval": "1s"},
        }))
        sql(c.dsn(), "CREATE DATABASE homelab")
        print("$ python scripts/n8n_demo.py --executions 300", flush=True)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "n8n_demo.py"), "--config", str(config),
                        "--executions", "300"], check=True, timeout=900)
        receiver = subprocess.Popen([CLI, "--config", str(config), "pitr", "receive"],
                                    stdout=open(out_dir / "receiver.log", "ab"), stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: slot_state(c.dsn(), "homelab_ops_main").get("active"), "the receiver streams")
            run(config, "pitr", "basebackup")
            before = counts(c.dsn(DB))
            now = sql(c.dsn(), "SELECT clock_timestamp()")[0][0]
            at = datetime.fromtimestamp(math.ceil(now.timestamp()), timezone.utc)
            time.sleep(max(0.0, (at - now).total_seconds()) + 0.5)
            print(f"\n-- {at:%H:%M:%S} UTC: {before}. Now a bad edit empties every workflow "
                  "and deletes the executions --", flush=True)
            sql(c.dsn(DB), "UPDATE workflow_entity SET nodes = '[]'::json")
            sql(c.dsn(DB), "DELETE FROM execution_entity")
            print(f"after the edit: {counts(c.dsn(DB))}\n", flush=True)
            flushed = wal.parse_lsn(sql(c.dsn(), "SELECT pg_current_wal_lsn()::text")[0][0])
            wait_for(lambda: wal.parse_lsn(slot_state(c.dsn(), "homelab_ops_main")["flushed_lsn"] or "0/0")
                     >= flushed, "the receiver has the edit")
            run(config, "backups", "restore", DB, "--into", "n8n_before_edit", "--at", f"{at:%Y-%m-%d %H:%M:%S}")
            restored = counts(c.dsn("n8n_before_edit"))
            print(f"n8n_before_edit: {restored}\n", flush=True)
            if restored != before:
                raise SystemExit(f"the restore does not match the state at {at}: {restored} vs {before}")
            print("-- the nightly dump (what backups/homelab_demo_n8n_backup does), then the nightly exact check --",
                  flush=True)
            dump = run_backup(BackupsConfig.of(load(config)), DB)
            print(f"dump {dump.stem}: snapshot at WAL {dump.manifest.get('consistent_point_lsn')}", flush=True)
            run(config, "pitr", "verify", DB)
            run(config, "pitr", "status")
        finally:
            receiver.send_signal(signal.SIGTERM)
            receiver.wait(timeout=60)
    print(f"\nPoint-in-time recovery demo done: settings, archive and dump in {out_dir} "
          "(the demo's PostgreSQL cluster is gone).")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "var" / "pitr-demo")
