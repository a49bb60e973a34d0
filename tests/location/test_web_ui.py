"""The web UI as the owner sees it: dagster-webserver on loopback, opened in headless Chromium.

The asset graph shows the code location's groups, and a backup's page shows the metadata that
proves the backup (its sha256 and row count) after a real materialization in the same instance.
Screenshots are kept in tests/artifacts/ (gitignored) for a human to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from tests.conftest import ADMIN_DSN, dsn_for, free_port

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
BIN = Path(sys.executable).parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROWS = 42
STATE_PW = "ui-state-pw-Planted-5b1e"
N8N_PW = "ui-n8n-pw-Planted-c04d"


def graphql(base: str, query: str) -> dict:
    req = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["data"]


LOCATION_STATUS = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


RESOURCES = """{ allTopLevelResourceDetailsOrError(repositorySelector: {repositoryName: "__repository__",
  repositoryLocationName: "homelab_ops"}) { __typename ... on ResourceDetailsList { results { name
  configuredValues { key value type } } } } }"""


def wait_for_location(base: str, proc: subprocess.Popen, log: Path, deadline: float) -> None:
    """Until the code location has loaded; its load error, if any, is the failure message."""
    while time.monotonic() < deadline:
        assert proc.poll() is None, "dagster-webserver exited:\n" + log.read_text()[-3000:]
        try:
            entries = graphql(base, LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
        except OSError:
            entries = []
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            errors = [e["locationOrLoadError"].get("message") for e in entries
                      if e["locationOrLoadError"]["__typename"] == "PythonError"]
            assert not errors, f"the code location failed to load: {errors}"
            return
        time.sleep(0.5)
    pytest.fail("the code location did not load in time:\n" + log.read_text()[-3000:])


@pytest.mark.browser
def test_asset_graph_a_backup_page_and_the_databases_in_chromium(tmp_path, new_db, write_settings, monkeypatch):
    from playwright.sync_api import sync_playwright

    db = new_db("webui")
    with psycopg.connect(dsn_for(db), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE notes (id int PRIMARY KEY, body text);"
                     f"INSERT INTO notes SELECT i, md5(i::text) FROM generate_series(1, {ROWS}) i;")
    # n8n points at the same small database: the backups domain selects n8n_workflows into
    # nightly_backup, and the location does not load without an n8n section (reported).
    # Passwords planted where the resources page could show them: trust auth lets the DSNs connect.
    # The state database's comes from the environment, n8n's is written in the file.
    monkeypatch.setenv("HOMELAB_TEST_UI_STATE_PW", STATE_PW)
    settings_path, settings = write_settings({
        "postgres": {"dsn": ADMIN_DSN, "databases": [db]},
        "state": {"dsn": "postgresql://postgres:${HOMELAB_TEST_UI_STATE_PW}@127.0.0.1:5432/homelab_test"},
        "n8n": {"dsn": psycopg.conninfo.make_conninfo(dsn_for(db), password=N8N_PW)}})
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    # Create the instance's SQLite storage once, before two processes open it at the same time:
    # both would otherwise stamp Dagster's alembic version table and leave it with two heads.
    dg.DagsterInstance.from_config(str(home)).dispose()
    env = {**os.environ, "DAGSTER_HOME": str(home), "HOMELAB_CONFIG": str(settings_path)}

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "webserver.log"
    web = subprocess.Popen([str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1",
                            "-p", str(port)], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        # The materialization runs while the web server starts; both use the same instance.
        materialize = subprocess.run(
            [str(BIN / "dagster"), "asset", "materialize", "-m", "homelab_ops.definitions", "--select",
             f"backups/{db}_backup"],  # the code location's default executor is in-process
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert materialize.returncode == 0, materialize.stdout[-3000:] + materialize.stderr[-3000:]
        manifest = json.loads(next((Path(settings.backups.local_dir) / db).glob("*.manifest.json")).read_text())
        assert manifest["row_count"] == ROWS

        wait_for_location(base, web, log, deadline=time.monotonic() + 60)
        groups = {n["groupName"] for n in graphql(base, "{ assetNodes { groupName } }")["assetNodes"]}
        assert "backups" in groups
        answer = graphql(base, RESOURCES)  # what the resources page is built from
        assert STATE_PW not in json.dumps(answer) and N8N_PW not in json.dumps(answer)
        shown = {r["name"]: {v["key"]: json.loads(v["value"]) for v in r["configuredValues"]}
                 for r in answer["allTopLevelResourceDetailsOrError"]["results"]}
        assert shown["state_database"]["password"] == "environment variable HOMELAB_TEST_UI_STATE_PW"
        assert (shown["n8n_database"]["dbname"], shown["n8n_database"]["password"]) == (
            db, "written in the settings file")

        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.goto(f"{base}/asset-groups")
                # Each group is a node of the graph (not just an entry in the sidebar).
                for group in sorted(groups):
                    page.locator(f'foreignObject [data-tooltip="{group}"]').wait_for(timeout=20000)
                skip = page.get_by_role("button", name="Skip")  # the first-visit community dialog
                if skip.is_visible():
                    skip.click()
                page.screenshot(path=str(ARTIFACTS / "web_ui_asset_graph.png"))

                # The backups group's lineage: each box titled by what it is, not four boxes reading `db`.
                page.goto(f"{base}/locations/homelab_ops/asset-groups/backups")
                for step in ("backup", "verification", "retention"):
                    page.locator("foreignObject").get_by_text(f"{db}_{step}", exact=True).first.wait_for(
                        timeout=20000)
                assert page.locator("foreignObject").get_by_text(db, exact=True).count() == 0
                page.screenshot(path=str(ARTIFACTS / "web_ui_backups_lineage.png"))

                page.goto(f"{base}/assets/backups/{db}_backup")
                sha_row = page.locator("tr", has_text="sha256")
                sha_row.first.wait_for(timeout=20000)
                assert manifest["sha256"] in sha_row.first.inner_text()
                rows_row = page.locator("tr", has_text="row_count").first
                assert rows_row.inner_text().split()[-1] == str(ROWS)
                assert page.get_by_text("public.notes").first.is_visible()  # the per-table row counts
                page.screenshot(path=str(ARTIFACTS / "web_ui_backup_asset.png"), full_page=True)

                # The resources page: where each database is and where its password comes from.
                page.goto(f"{base}/locations/homelab_ops/resources/state_database")
                page.get_by_text("environment variable HOMELAB_TEST_UI_STATE_PW").first.wait_for(timeout=20000)
                def row(key: str) -> str:
                    return page.locator("tr", has_text=key).first.inner_text()

                assert '"homelab_test"' in row("dbname") and '"state.dsn"' in row("setting")
                page.screenshot(path=str(ARTIFACTS / "web_ui_state_database.png"), full_page=True)
                page.goto(f"{base}/locations/homelab_ops/resources/n8n_database")
                page.get_by_text("written in the settings file").first.wait_for(timeout=20000)
                assert f'"{db}"' in row("dbname")
                for path in ("state_database", "n8n_database", "homelab"):
                    page.goto(f"{base}/locations/homelab_ops/resources/{path}")
                    page.wait_for_load_state("networkidle")
                    html = page.content()
                    assert STATE_PW not in html and N8N_PW not in html, path
            finally:
                browser.close()
    finally:
        os.killpg(web.pid, signal.SIGTERM)  # its own session: the web server and its code server
        try:
            web.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(web.pid, signal.SIGKILL)
            web.wait()
