"""The workflow secrets scan and templatize, on the demo n8n database and its real-format exports."""

from __future__ import annotations

import json
import uuid
from importlib.metadata import entry_points
from pathlib import Path

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner

from homelab_ops.cli import main
from homelab_ops.credentials.envfile import placeholders, render
from homelab_ops.defs.credentials.assets import workflow_secrets_scan_asset
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.n8n.workflow_scan import scan_database, scan_document, scan_paths, scan_workflow
from homelab_ops.n8n.workflow_templatize import Namer, templatize_document
from homelab_ops.n8n.workflows import export_workflows, to_file_bytes
from tests.conftest import ADMIN_DSN, drop_database, dsn_for
from tests.n8n_demo import SECRET_BOT_TOKEN, SECRET_CHAT_ID, SECRET_WORKFLOW_NAME, create_demo_database

REPO = Path(__file__).resolve().parents[2]
DEMO_SECRETS = (SECRET_BOT_TOKEN, SECRET_CHAT_ID)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A seeded n8n database and its workflows exported one file each, as the backups write them."""
    name = f"n8n_scan_{uuid.uuid4().hex[:8]}"
    create_demo_database(ADMIN_DSN, name, executions=0)
    folder = tmp_path_factory.mktemp("exports")
    try:
        import psycopg

        with psycopg.connect(dsn_for(name)) as conn:
            for wf in export_workflows(conn):
                (folder / f"{wf['id']}.json").write_bytes(to_file_bytes(wf))
        (folder / "package.json").write_text('{"name": "not-a-workflow"}')
        yield dsn_for(name), folder
    finally:
        drop_database(name)


def gmail_file(folder: Path) -> Path:
    return next(p for p in folder.glob("*.json") if json.loads(p.read_text()).get("name") == SECRET_WORKFLOW_NAME)


@pytest.mark.services
def test_database_scan_finds_every_secret_of_the_gmail_to_telegram_workflow(demo):
    dsn, _ = demo
    findings, count = scan_database(dsn)
    assert count == 12
    got = sorted((f.workflow, f.node, f.path, f.rule) for f in findings)
    assert got == [
        (SECRET_WORKFLOW_NAME, "Send via Bot API", "parameters.bodyParameters.parameters[0].value", "telegram-chat-id"),
        (SECRET_WORKFLOW_NAME, "Send via Bot API", "parameters.url", "telegram-bot-token"),
        (SECRET_WORKFLOW_NAME, "Telegram", "parameters.chatId", "telegram-chat-id"),
    ]  # and nothing in the eleven workflows that use $vars and credentials properly
    url = next(f for f in findings if f.rule == "telegram-bot-token")
    assert url.excerpt == "…s://api.telegram.org/bot[REDACTED]/sendMessage"
    shown = "\n".join(f"{f}{f!r}{json.dumps(f.as_dict())}" for f in findings)
    for secret in DEMO_SECRETS:
        assert secret not in shown


@pytest.mark.services
def test_export_scan_also_flags_credential_and_webhook_ids(demo):
    _, folder = demo
    findings = scan_paths([gmail_file(folder)])
    rules = sorted(f.rule for f in findings)
    assert rules == ["n8n-credential-id", "n8n-credential-id", "n8n-webhook-id",
                     "telegram-bot-token", "telegram-chat-id", "telegram-chat-id"]
    everything = scan_paths([folder])  # package.json is skipped, not an error
    assert {f.workflow for f in everything if f.rule.startswith("telegram")} == {SECRET_WORKFLOW_NAME}


@pytest.mark.services
def test_templatize_removes_every_secret_and_the_rescan_finds_nothing(demo, tmp_path):
    _, folder = demo
    out = tmp_path / "clean"
    files = sorted(str(p) for p in folder.glob("*.json"))
    r = CliRunner().invoke(main, ["workflows", "templatize", *files, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "skipped" in r.output and "package.json" in r.output
    assert scan_paths([out]) == []
    for p in out.glob("*.json"):
        text = p.read_text()
        for secret in DEMO_SECRETS:
            assert secret not in text
    wf = json.loads((out / gmail_file(folder).name).read_text())
    nodes = {n["name"]: n for n in wf["nodes"]}
    assert nodes["Telegram"]["parameters"]["chatId"] == "={{ $env.TELEGRAM_CHAT_ID }}"
    http = nodes["Send via Bot API"]["parameters"]
    assert http["url"] == "=https://api.telegram.org/bot{{ $env.TELEGRAM_BOT_TOKEN }}/sendMessage"
    assert http["bodyParameters"]["parameters"][0] == {"name": "chat_id", "value": "={{ $env.TELEGRAM_CHAT_ID }}"}
    assert nodes["Telegram"]["credentials"]["telegramApi"] == {"id": None, "name": "Homelab alerts bot"}
    assert "webhookId" not in nodes["Telegram"]
    original = json.loads(gmail_file(folder).read_text())
    assert [n["name"] for n in wf["nodes"]] == [n["name"] for n in original["nodes"]]
    assert wf["connections"] == original["connections"]
    template = (out / ".env.template").read_text()
    for secret in DEMO_SECRETS:
        assert secret not in template
    assert placeholders(template) == [("telegram_chat_id", "value"), ("telegram_bot_token", "value")]
    rendered = render(template, lambda name, field: {"telegram_chat_id": SECRET_CHAT_ID,
                                                      "telegram_bot_token": SECRET_BOT_TOKEN}[name])
    assert f"TELEGRAM_BOT_TOKEN={SECRET_BOT_TOKEN}" in rendered.splitlines()
    assert f"TELEGRAM_CHAT_ID={SECRET_CHAT_ID}" in rendered.splitlines()


TOKEN = "5123456789:AAGk-Zz9yYxXwWvVuUtTsSrRqQpPoOnNmM_1"
KEY = "sk_live_9fQ2xLp7RtVb3NcWz8YhKd5M"


def wf(*nodes, **top) -> dict:
    return {"id": "w1", "name": "Tricky", "nodes": [
        {"name": name, "type": typ, "parameters": params, "id": f"n{i}"} for i, (name, typ, params) in enumerate(nodes)],
        "connections": {}, **top}


def test_rules_on_tricky_workflows_and_no_false_alarms():
    doc = wf(
        ("Code", "n8n-nodes-base.code", {"jsCode": f"const url = 'https://api.telegram.org/bot{TOKEN}/sendMessage';\n"
                                                  f"const body = {{chat_id: -1009988776655, text: 'hi'}};\nreturn [{{json: {{url, body}}}}];"}),
        ("Expr", "n8n-nodes-base.httpRequest", {
            "url": "={{ 'https://api.telegram.org/bot" + TOKEN + "/getMe' }}",
            "sendQuery": True,
            "queryParameters": {"parameters": [{"name": "chat_id", "value": "@homelab_alerts"}]}}),
        ("Stripe", "n8n-nodes-base.httpRequest", {
            "url": "https://api.stripe.com/v1/charges",
            "authentication": "genericCredentialType", "genericAuthType": "httpHeaderAuth",
            "headerParameters": {"parameters": [{"name": "Authorization", "value": f"Bearer {KEY}"}]}}),
        ("DB", "n8n-nodes-base.httpRequest", {"url": "https://backup:S3cr3t-Pw%21@nas.lan/upload",
                                                "options": {"password": "hunter2!"}}),
        ("Telegram", "n8n-nodes-base.telegram", {"chatId": -1001234512345, "text": "={{ $json.text }}"}),
        ("Fine", "n8n-nodes-base.telegram", {"chatId": "={{ $vars.TELEGRAM_CHAT_ID }}", "text": "ok 1234567",
                                              "apiKey": "={{ $env.API_KEY }}", "password": "changeme",
                                              "token": "notreallyasecretjustwords"}),
        pinData={"Code": [{"json": {"token": TOKEN}}]},
    )
    findings = scan_workflow(doc, "t.json", identifiers=False)
    got = sorted((f.node or "-", f.path, f.rule) for f in findings)
    assert got == sorted([
        ("Code", "parameters.jsCode", "telegram-bot-token"),
        ("Code", "parameters.jsCode", "telegram-chat-id"),
        ("Expr", "parameters.url", "telegram-bot-token"),
        ("Expr", "parameters.queryParameters.parameters[0].value", "telegram-chat-id"),
        ("Stripe", "parameters.headerParameters.parameters[0].value", "hardcoded-secret"),
        ("DB", "parameters.url", "url-credentials"),
        ("DB", "parameters.options.password", "hardcoded-secret"),
        ("Telegram", "parameters.chatId", "telegram-chat-id"),
        ("-", "pinData.Code[0].json.token", "telegram-bot-token"),
    ])
    secrets = (TOKEN, KEY, "S3cr3t-Pw%21", "hunter2!", "-1009988776655", "-1001234512345", "@homelab_alerts")
    for f in findings:
        assert not any(s in f.excerpt for s in secrets), f.excerpt
    clean = templatize_document(doc, findings, Namer())
    assert scan_workflow(clean, "t.json", identifiers=False) == []
    text = json.dumps(clean)
    assert not any(s in text for s in secrets)
    n = {x["name"]: x["parameters"] for x in clean["nodes"]}
    assert n["Code"]["jsCode"].startswith(
        "const url = 'https://api.telegram.org/bot' + $env.TELEGRAM_BOT_TOKEN + '/sendMessage';\n"
        "const body = {chat_id: $env.TELEGRAM_CHAT_ID, text: 'hi'};")
    assert n["Expr"]["url"] == "={{ 'https://api.telegram.org/bot' + $env.TELEGRAM_BOT_TOKEN + '/getMe' }}"
    assert n["Stripe"]["headerParameters"]["parameters"][0]["value"] == "=Bearer {{ $env.STRIPE_AUTHORIZATION }}"
    assert n["DB"]["url"] == "=https://backup:{{ $env.DB_URL }}@nas.lan/upload"
    assert n["Telegram"]["chatId"] == "={{ $env.TELEGRAM_CHAT_ID_3 }}"  # a third distinct chat id
    assert n["Fine"] == doc["nodes"][5]["parameters"]


@pytest.mark.services
def test_scan_command_works_as_a_pre_commit_hook(demo, tmp_path):
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "n8n-workflow-secrets")
    assert hook["language"] == "python" and "json" in hook["types"]
    _, folder = demo
    dirty, other = str(gmail_file(folder)), str(folder / "package.json")
    clean_dir = tmp_path / "clean"
    CliRunner().invoke(main, ["workflows", "templatize", dirty, "--out", str(clean_dir)])
    clean = str(clean_dir / Path(dirty).name)
    # the entry is the installed console script (pre-commit runs it with the staged file names)
    command, *args = hook["entry"].split()
    [script] = [e for e in entry_points(group="console_scripts") if e.name == command]
    assert script.load() is main
    runner = CliRunner()
    env = {"HOMELAB_CONFIG": str(tmp_path / "no-settings.yaml")}  # never read: file names need no settings
    bad = runner.invoke(main, [*args, dirty, other], env=env)
    assert bad.exit_code == 1 and "telegram-bot-token" in bad.stdout and "6 hard-coded secrets" in bad.stderr
    good = runner.invoke(main, [*args, clean, other], env=env)
    assert good.exit_code == 0 and good.stdout == ""
    for secret in DEMO_SECRETS:
        assert secret not in bad.stdout + bad.stderr


@pytest.mark.services
def test_scan_asset_warns_and_its_run_shows_no_secret(demo, tmp_path, capfd, dagster_instance):
    dsn, folder = demo
    settings = tmp_path / "homelab.yaml"
    settings.write_text(yaml.safe_dump({"postgres": {"dsn": ADMIN_DSN}, "n8n": {"dsn": dsn, "workflows_dir": str(folder)}}))
    result = dg.materialize([workflow_secrets_scan_asset()], instance=dagster_instance,
                            resources={"homelab": HomelabSettings(config_path=str(settings))})
    events = "\n".join(dg.serialize_value(r) for r in dagster_instance.all_logs(result.run_id))
    out, err = capfd.readouterr()
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "no_hardcoded_secrets" and not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    meta = result.asset_materializations_for_node("workflow_secrets_scan")[0].metadata
    assert meta["workflows_scanned"].value == 24 and meta["by_rule"].value["telegram-bot-token"] == 2
    assert meta["finding_count"].value == check.metadata["finding_count"].value > 6
    for secret in DEMO_SECRETS:
        assert secret not in events and secret not in out + err
        assert secret not in json.dumps([r.data for r in meta["findings"].value.records])


def test_scan_of_a_list_export_and_broken_json(tmp_path):
    doc = [wf(("Telegram", "n8n-nodes-base.telegram", {"chatId": "-1001234567890"})), {"not": "a workflow"}]
    (tmp_path / "all.json").write_text(json.dumps(doc))
    [f] = scan_document(doc, "all.json")
    assert f.loc == (0, "nodes", 0, "parameters", "chatId")
    (tmp_path / "broken.json").write_text("{ nope")
    r = CliRunner().invoke(main, ["workflows", "scan", str(tmp_path / "broken.json")])
    assert r.exit_code == 1 and "not readable as JSON" in r.output
