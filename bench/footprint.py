"""Footprint: what the deployment costs a Pi at rest and during the nightly backup.

Run: `.venv/bin/python bench/footprint.py [--repeat 5] [--idle-seconds 30] [--code-server start|grpc]`.

Measures, on this machine:
  1. importing `homelab_ops.definitions` and building its Definitions, each in a fresh
     interpreter (median of --repeat; `import dagster` shown apart, as it is most of it);
  2. the wall time of `dagster definitions validate -m homelab_ops.definitions`;
  3. the memory of the three long-lived processes as deploy/docker-compose.yml runs them
     (code server, web server, daemon; deploy/dagster.yaml, PostgreSQL storage in a throwaway
     database), idle and during a `nightly_backup` launched through the web server's GraphQL
     API and run by the daemon's queue like the 03:00 schedule. Memory is per process tree
     (psutil): RSS (counts shared pages once per process, so an upper bound) and PSS (shared
     pages split between the processes sharing them: what the tree really costs).

Targets (issue 8): definitions load <= 2 s; idle total <= 600 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import psycopg
import yaml
from psycopg import sql

from homelab_ops.children import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ADMIN = os.environ.get("HOMELAB_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
MB = 1024 * 1024

IMPORT_SNIPPET = """
import json, time
t0 = time.perf_counter()
import dagster
t1 = time.perf_counter()
import homelab_ops.definitions as m
t2 = time.perf_counter()
d = m.defs() if callable(m.defs) else m.defs
t3 = time.perf_counter()
print(json.dumps({"dagster": t1 - t0, "module": t2 - t1, "build": t3 - t2, "total": t3 - t0}))
"""


def image_env() -> dict[str, str]:
    """The process tuning deploy/Dockerfile sets (MALLOC_ARENA_MAX, PYTHONDONTWRITEBYTECODE):
    the processes measured here run as the image runs them."""
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    wanted = ("MALLOC_ARENA_MAX", "PYTHONDONTWRITEBYTECODE")
    found = dict(re.findall(r"\b(" + "|".join(wanted) + r")=(\S+)", text))
    missing = set(wanted) - set(found)
    if missing:
        raise SystemExit(f"deploy/Dockerfile no longer sets {', '.join(sorted(missing))}; update bench/footprint.py")
    return found


def admin_exec(statement: sql.Composable) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(statement)


def create_db(name: str) -> None:
    admin_exec(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_db(name: str) -> None:
    admin_exec(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- 1 and 2: load times ------------------------------------------------------------------------

def load_times(env: dict, repeat: int, cwd: Path) -> dict:
    samples = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", IMPORT_SNIPPET], env=env, cwd=cwd, capture_output=True,
                             text=True, check=True).stdout
        samples.append(json.loads(out.strip().splitlines()[-1]))
    return {k: round(statistics.median(s[k] for s in samples), 3) for k in samples[0]} | {
        "total_min": round(min(s["total"] for s in samples), 3)}


def validate_time(env: dict, repeat: int, cwd: Path) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run([str(BIN / "dagster"), "definitions", "validate", "-m", "homelab_ops.definitions"],
                              env=env, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit("dagster definitions validate failed:\n" + proc.stdout[-2000:] + proc.stderr[-2000:])
    return round(statistics.median(times), 2)


# --- 3: the processes ------------------------------------------------------------------------------

def tree_memory(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, process count) of a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    rss = pss = n = 0
    for p in procs:
        try:
            full = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += full.rss
        pss += getattr(full, "pss", full.rss)
        n += 1
    return rss, pss, n


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"HTTP {e.code}: {e.read()[:1000]!r}") from None
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    return body["data"]


def wait_ready(base: str, procs: dict, timeout: float = 300) -> float:
    """Until the location is loaded and every required daemon reports healthy; returns seconds."""
    t0 = time.monotonic()
    query = """{ workspaceOrError { ... on Workspace { locationEntries { loadStatus
                   locationOrLoadError { __typename ... on PythonError { message } } } } }
                 instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"""
    data: dict = {}
    while time.monotonic() - t0 < timeout:
        for name, p in procs.items():
            if p.poll() is not None:
                raise SystemExit(f"{name} exited with {p.returncode}")
        try:
            data = graphql(base, query)
        except (OSError, RuntimeError) as e:
            data = {"error": str(e)[:500]}
            time.sleep(1)
            continue
        entries = data["workspaceOrError"].get("locationEntries") or []
        daemons = data["instance"]["daemonHealth"]["allDaemonStatuses"]
        if entries and all(e["loadStatus"] == "LOADED" for e in entries) and \
                all(d["healthy"] for d in daemons if d["required"]):
            return time.monotonic() - t0
        time.sleep(1)
    raise SystemExit(f"the deployment did not become ready in {timeout:.0f} s; last status: {data}")


def wait_code_server(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    from dagster._grpc.client import DagsterGrpcClient

    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the code server exited with {proc.returncode}")
        try:
            client.ping("footprint")
            return
        except Exception:  # not listening yet
            time.sleep(0.5)
    raise SystemExit("the code server did not answer in time")


LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } ... on InvalidSubsetError { message } } }"""
STATUS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""


def sample(pids: dict[str, int], seconds: float, every: float) -> list[dict]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append({name: tree_memory(pid) for name, pid in pids.items()})
        time.sleep(every)
    return out


def summarize(samples: list[dict], how) -> dict:
    names = list(samples[0])
    res = {}
    for name in names:
        res[name] = {"rss_mb": round(how(s[name][0] for s in samples) / MB), "pss_mb": round(how(s[name][1] for s in samples) / MB),
                     "processes": max(s[name][2] for s in samples)}
    res["total"] = {"rss_mb": round(how(sum(s[n][0] for n in names) for s in samples) / MB),
                    "pss_mb": round(how(sum(s[n][1] for n in names) for s in samples) / MB),
                    "processes": max(sum(s[n][2] for n in names) for s in samples)}
    return res


def processes(work: Path, env: dict, idle_seconds: float, code_server_mode: str) -> dict:
    code_port, web_port = free_port(), free_port()
    (work / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [{"grpc_server": {
        "host": "127.0.0.1", "port": code_port, "location_name": "homelab_ops"}}]}))
    if code_server_mode == "start":  # what deploy/docker-compose.yml runs: a proxy and its server process
        code_cmd = [str(BIN / "dagster"), "code-server", "start"]
    else:  # one process, no reload from the UI
        code_cmd = [str(BIN / "dagster"), "api", "grpc"]
    commands = {
        "code server": code_cmd + ["-h", "127.0.0.1", "-p", str(code_port), "-m", "homelab_ops.definitions",
                                   "--location-name", "homelab_ops"],
        "web server": [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port),
                       "-w", str(work / "workspace.yaml")],
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", str(work / "workspace.yaml")],
    }
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    try:
        for name, cmd in commands.items():
            logs[name] = open(work / f"{name.replace(' ', '_')}.log", "w")
            procs[name] = subprocess.Popen(cmd, env=env, cwd=work, stdout=logs[name], stderr=subprocess.STDOUT,
                                           start_new_session=True)
            if name == "code server":  # as compose's depends_on: service_healthy
                wait_code_server(code_port, procs[name])
        base = f"http://127.0.0.1:{web_port}"
        ready = wait_ready(base, procs)
        print(f"  ready after {ready:.0f} s; idling {idle_seconds:.0f} s", flush=True)
        time.sleep(idle_seconds)
        pids = {name: p.pid for name, p in procs.items()}
        idle = summarize(sample(pids, 10, 1.0), statistics.median)

        params = {"selector": {"repositoryLocationName": "homelab_ops", "repositoryName": "__repository__",
                               "jobName": "nightly_backup"}, "runConfigData": {}}
        launched = graphql(base, LAUNCH, {"p": params})["launchRun"]
        if launched["__typename"] != "LaunchRunSuccess":
            raise SystemExit(f"launchRun: {launched}")
        run_id = launched["run"]["runId"]
        t0 = time.monotonic()
        during, status = [], "QUEUED"
        while status not in ("SUCCESS", "FAILURE", "CANCELED") and time.monotonic() - t0 < 1800:
            during.append({name: tree_memory(pid) for name, pid in pids.items()})
            status = graphql(base, STATUS, {"id": run_id})["runOrError"].get("status", status)
            time.sleep(0.25)
        run_seconds = time.monotonic() - t0
        peak = summarize(during, max)
        return {"ready_s": round(ready, 1), "idle": idle, "nightly_backup": {
            "status": status, "seconds": round(run_seconds, 1), "peak": peak}}
    except BaseException:
        for name, f in logs.items():
            f.flush()
            print(f"--- {name} log (tail) ---\n" + Path(f.name).read_text()[-1500:], file=sys.stderr)
        raise
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for f in logs.values():
            f.close()


def table(title: str, res: dict) -> None:
    print(f"  {title}")
    print(f"    {'process tree':<14}{'RSS MB':>8}{'PSS MB':>8}{'procs':>7}")
    for name, v in res.items():
        print(f"    {name:<14}{v['rss_mb']:>8}{v['pss_mb']:>8}{v['processes']:>7}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5, help="fresh interpreters for the load time (median)")
    ap.add_argument("--idle-seconds", type=float, default=30, help="settle time before the idle sample")
    ap.add_argument("--code-server", choices=("start", "grpc"), default="start",
                    help="`dagster code-server start` (as deployed) or `dagster api grpc` (one process)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    tag = uuid.uuid4().hex[:8]
    source, state, storage = f"bench_fp_src_{tag}", f"bench_fp_state_{tag}", f"bench_fp_dagster_{tag}"
    work = Path(tempfile.mkdtemp(prefix="bench-footprint-"))
    info = psycopg.conninfo.conninfo_to_dict(ADMIN)
    try:
        from tests.n8n_demo import create_demo_database

        counts = create_demo_database(ADMIN, source, replace=True)
        create_db(storage)
        dsn = lambda db: psycopg.conninfo.make_conninfo(ADMIN, dbname=db)  # noqa: E731
        (work / "homelab.yaml").write_text(yaml.safe_dump({
            "postgres": {"dsn": ADMIN, "databases": [source]},
            "state": {"dsn": dsn(state)},
            "n8n": {"dsn": dsn(source)},
            "backups": {"local_dir": str(work / "backups")},
            "credentials": {"key_file": str(work / "master.key")},
        }))
        home = work / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text((ROOT / "deploy" / "dagster.yaml").read_text())
        env = {**os.environ, "HOMELAB_CONFIG": str(work / "homelab.yaml"), "DAGSTER_HOME": str(home),
               "DAGSTER_PG_HOST": str(info.get("host", "127.0.0.1")), "DAGSTER_PG_PORT": str(info.get("port", 5432)),
               "DAGSTER_PG_USER": str(info.get("user", "postgres")), "DAGSTER_PG_PASSWORD": str(info.get("password", "")),
               "DAGSTER_PG_DB": storage, **image_env()}
        print(f"footprint on {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM; "
              f"source database {source}: {counts}", flush=True)

        subprocess.run([sys.executable, "-c", "import homelab_ops.definitions"], env=env, cwd=work, check=True)  # warm
        loads = load_times(env, a.repeat, work)
        print(f"1. import homelab_ops.definitions + build Definitions: {loads['total']:.2f} s median "
              f"(min {loads['total_min']:.2f}; of it import dagster {loads['dagster']:.2f}, defs() importing the "
              f"domains and building {loads['build']:.2f})  target <= 2 s: "
              f"{'met' if loads['total'] <= 2 else 'MISSED'}", flush=True)
        validate = validate_time(env, max(1, a.repeat // 2), work)
        print(f"2. dagster definitions validate: {validate:.2f} s median", flush=True)
        print(f"3. code server ({a.code_server}), web server, daemon:", flush=True)
        procs = processes(work, env, a.idle_seconds, a.code_server)
        table("idle (median of 10 samples)", procs["idle"])
        print(f"  idle total: RSS {procs['idle']['total']['rss_mb']} MB, PSS {procs['idle']['total']['pss_mb']} MB  "
              f"target <= 600 MB: {'met' if procs['idle']['total']['rss_mb'] <= 600 else 'MISSED (RSS)'}")
        nb = procs["nightly_backup"]
        table(f"during nightly_backup ({nb['status']}, {nb['seconds']} s; peak per tree)", nb["peak"])
        results = {"load": loads, "validate_s": validate, "code_server": a.code_server, **procs}
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=2))
        print(json.dumps(results))
    finally:
        for db in (source, state, storage):
            drop_db(db)
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
