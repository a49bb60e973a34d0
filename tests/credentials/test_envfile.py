"""The env template as Jinja2 (#15): `{{ cred("name") }}` / `{{ cred("name", "field") }}` and nothing
else, checked line by line before any value is read, quoted for compose as before, and no value in
an error. No store here: `lookup` is a plain function (the store's path is in test_store.py)."""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import pytest

from homelab_ops.credentials.envfile import environment_for, placeholders, render
from homelab_ops.credentials.errors import CredentialError
from homelab_ops.n8n.workflow_templatize import EnvVar, env_template_text

ROOT = Path(__file__).resolve().parents[2]
SECRET = "Planted-S3cret-4f9a2c"


class Recorder:
    """A lookup that answers from a dict and notes every read."""

    def __init__(self, values: dict[tuple[str, str], object]):
        self.values, self.reads = values, []

    def __call__(self, name: str, field: str):
        self.reads.append((name, field))
        return self.values[(name, field)]


def test_cred_calls_render_quoted_for_compose_as_before():
    template = ("# n8n\n"
                "DB_PASSWORD={{ cred(\"n8n_db\") }}   \n"
                "export DSN=postgres://n8n:{{ cred('n8n_db') }}@db/n8n?x={{cred(\"other\", \"username\")}}  \n"
                "# OLD={{ cred \"n8n_db\" }} and {{ anything }}\n"
                "  export  TOKEN={{ cred(\"telegram_bot\") }}\n"
                "USERS={{ cred(\"grafana_admin\", \"htpasswd\") }}\n"
                "PLAIN=x{%y}}\n"
                "\n")
    lookup = Recorder({("n8n_db", "value"): "p$ss w#rd", ("other", "username"): "u",
                       ("telegram_bot", "value"): "1:AA-b_c", ("grafana_admin", "htpasswd"): "admin:$2b$04$x/y"})
    assert placeholders(template) == [("n8n_db", "value"), ("other", "username"), ("telegram_bot", "value"),
                                      ("grafana_admin", "htpasswd")]
    assert render(template, lookup).split("\n") == [
        "# n8n",
        "DB_PASSWORD='p$ss w#rd'",  # the whole value: single-quoted, trailing blanks dropped
        "export DSN=postgres://n8n:p$ss w#rd@db/n8n?x=u  ",  # inside a longer value: as is
        "# OLD={{ cred \"n8n_db\" }} and {{ anything }}",  # comments are copied untouched
        "  export  TOKEN=1:AA-b_c",
        "USERS='admin:$2b$04$x/y'",
        "PLAIN=x{%y}}",  # no {{: copied
        "", ""]
    assert environment_for(template, "n8n_db", lookup) == {
        "DB_PASSWORD": "p$ss w#rd", "DSN": "postgres://n8n:p$ss w#rd@db/n8n?x=u"}


def test_the_old_form_names_the_line_and_the_replacement_before_any_value_is_read():
    template = ('# {{ cred "in_a_comment" }} stays\n'
                'A={{ cred("a") }}\n'
                'TELEGRAM_BOT_TOKEN={{ cred "telegram_bot" }}\n'
                'TRAEFIK_USERS={{cred "grafana_admin" "htpasswd"}}\n')
    lookup = Recorder({("a", "value"): "x"})
    for call in (lambda: placeholders(template), lambda: render(template, lookup),
                 lambda: environment_for(template, "a", lookup)):
        with pytest.raises(CredentialError) as e:
            call()
        message = str(e.value)
        assert 'line 3: write {{ cred("telegram_bot") }} instead of {{ cred "telegram_bot" }}' in message
        assert 'line 4: write {{ cred("grafana_admin", "htpasswd") }} instead of {{cred "grafana_admin" "htpasswd"}}' \
            in message
        assert "line 1" not in message
    assert lookup.reads == []


@pytest.mark.parametrize("line, says", [
    ('X={{ env "HOME" }}', r'line 2: \{\{ env "HOME" \}\} is not a \{\{ cred\("name"\) \}\}'),
    ("X={{ HOME }}", r"line 2: \{\{ HOME \}\} is not a"),
    ("X={{ cred(name) }}", r"line 2: \{\{ cred\(name\) \}\} is not a"),  # not a constant
    ('X={{ cred("a") | upper }}', r"line 2: .*\| upper \}\} is not a"),
    ('X={{ cred("a", field="f") }}', r"line 2: .* is not a"),
    ('X={{ cred("a", "b", "c") }}', r"line 2: .* is not a"),
    ('X={{ cred("") }}', r"line 2: .* is not a"),
    ("X={{ cred.__class__ }}", r"line 2: .* is not a"),
    ('X={{ cred("a") }}{# note #}', r"line 2: \{# #\} is not used"),
    ('X={% if 1 %}{{ cred("a") }}{% endif %}', r"line 2: \{% %\} is not used"),
    ('X={{ cred("a")', r"line 2: \{\{ cred\(\"a\"\) is not closed"),
])
def test_any_other_form_is_an_error_naming_the_line_before_any_value_is_read(line, says):
    lookup = Recorder({("a", "value"): "x"})
    with pytest.raises(CredentialError, match=says):
        render('A={{ cred("a") }}\n' + line + "\n", lookup)
    assert lookup.reads == []


def test_no_value_reaches_an_error_or_its_traceback():
    template = 'FIRST={{ cred("first") }}\nDSN=x:{{ cred("other") }}@h\nSECOND={{ cred("second") }}\n'
    unquotable = {("first", "value"): SECRET, ("other", "value"): SECRET + "-2", ("second", "value"): SECRET + "'\n"}
    not_text = {("first", "value"): SECRET, ("other", "value"): SECRET.encode(), ("second", "value"): SECRET}
    calls = [(lambda: render(template, Recorder(unquotable)), "template line 3: SECOND: the value contains a quote"),
             (lambda: render(template, Recorder(not_text)), "template line 2: other: field 'value' is not text"),
             (lambda: environment_for(template, "other", Recorder(not_text)), "template line 2: other: field")]
    for call, says in calls:
        with pytest.raises(CredentialError, match=re.escape(says)) as e:
            call()
        text = str(e.value) + "".join(traceback.format_exception(e.value))
        assert SECRET not in text and SECRET.encode().hex() not in text


def test_templatize_writes_the_jinja_form():
    text = env_template_text([EnvVar("TELEGRAM_BOT_TOKEN", "telegram-bot-token", ["wf / Telegram / token"])])
    assert 'TELEGRAM_BOT_TOKEN={{ cred("telegram_bot_token") }}' in text.splitlines()
    assert placeholders(text) == [("telegram_bot_token", "value")]
    assert render(text, lambda n, f: "1:AA").splitlines()[-1] == "TELEGRAM_BOT_TOKEN=1:AA"


def test_docs_and_examples_use_the_jinja_form():
    old = re.compile(r'[A-Z_]=\{\{\s*cred\s+"')  # a template line in the form before Jinja2
    for path in ("docs/credentials.md", "deploy/README.md", "homelab.example.yaml"):
        text = (ROOT / path).read_text()
        assert not old.search(text), path
        examples = re.findall(r"[A-Z_]+=\{\{.*?\}\}", text)
        assert examples and placeholders("\n".join(examples)), path
