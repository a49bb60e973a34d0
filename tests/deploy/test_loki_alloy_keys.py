"""Loki's and Alloy's rendered configs use only keys their documentation defines for the pinned versions.

Checks for meaning only: no Loki or Alloy binary is available here, so nothing loads these configs.
Every key is looked up in tests/documented_keys.py (transcribed from the upstream reference at the
pinned tags); values, types and cross-field rules are not checked. Both services refuse an unknown
key at start (Loki reads its file with yaml.UnmarshalStrict; Alloy reports "unrecognized attribute
name" or "unrecognized block name"), so a misspelling found here is a service that would not start.
"""

from __future__ import annotations

import re

import yaml

from homelab_ops.deploy.render import alloy_config, loki_config
from homelab_ops.settings import AlloyService, LokiService
from tests.documented_keys import ALLOY_COMPONENTS, ALLOY_IMAGE, LOKI_IMAGE, LOKI_KEYS

# --- Loki: walk the YAML against the documented tree ----------------------------------------------


def loki_unknown_keys(data, doc=LOKI_KEYS, path: str = "") -> list[str]:
    """Each rendered key not in the documented tree, by its dotted path (list items as [i])."""
    if doc is None:  # a value: lists and maps below it are data, not keys
        return []
    if isinstance(doc, str):
        return [f"{path}: block {doc} is documented but not transcribed in tests/documented_keys.py"]
    if isinstance(doc, list):
        items = data if isinstance(data, list) else [data]
        return [e for i, item in enumerate(items) for e in loki_unknown_keys(item, doc[0], f"{path}[{i}]")]
    if not isinstance(data, dict):
        return [f"{path}: documented as a block, rendered as {type(data).__name__}"]
    errors = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key in doc:
            errors += loki_unknown_keys(value, doc[key], where)
        else:
            errors.append(f"{where}: not a documented key")
    return errors


# --- Alloy: a small tokenizer and block parser ----------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<skip>[ \t\r]+|//[^\n]*|/\*.*?\*/)
  | (?P<nl>\n)
  | (?P<string>"(?:\\.|[^"\\\n])*"|`[^`]*`)
  | (?P<ident>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)
  | (?P<punct>[{}\[\]()=,])
  | (?P<other>[^\s{}\[\]()=,"`]+)
""", re.VERBOSE | re.DOTALL)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise SyntaxError(f"cannot read Alloy text at {text[pos:pos + 20]!r}")
        if m.lastgroup != "skip":
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out + [("eof", "")]


def parse_alloy(text: str) -> list[tuple]:
    """Blocks as ("block", name, label, children) and attributes as ("attr", name)."""
    nodes, _ = _body(_tokens(text), 0, nested=False)
    return nodes


def _body(toks, i, nested):
    nodes = []
    while True:
        kind, val = toks[i]
        if kind == "nl":
            i += 1
        elif val == "}" and nested:
            return nodes, i + 1
        elif kind == "eof" and not nested:
            return nodes, i
        elif kind != "ident":
            raise SyntaxError(f"expected a name, got {val!r}")
        elif toks[i + 1][1] == "=":
            nodes.append(("attr", val))
            i = _skip_value(toks, i + 2)
        else:
            label = None
            if toks[i + 1][0] == "string":
                label, i = toks[i + 1][1].strip('"`'), i + 1
            if toks[i + 1][1] != "{":
                raise SyntaxError(f"expected '{{' after {val}, got {toks[i + 1][1]!r}")
            children, after = _body(toks, i + 2, nested=True)
            nodes.append(("block", val, label, children))
            i = after


def _skip_value(toks, i):
    """An attribute's value ends at a newline or a closing brace outside brackets (objects, lists, calls)."""
    depth = 0
    while toks[i][0] != "eof":
        val = toks[i][1]
        if depth == 0 and (toks[i][0] == "nl" or val == "}"):
            break
        if toks[i][0] == "punct":
            depth += (val in "{[(") - (val in "}])")
        i += 1
    return i


def alloy_unknown(text: str) -> list[str]:
    """Each component, block or argument the documentation does not define for where it is used."""
    errors = []
    for node in parse_alloy(text):
        if node[0] == "attr":
            errors.append(f"{node[1]}: an argument outside any component")
        elif node[1] not in ALLOY_COMPONENTS:
            errors.append(f'{node[1]} "{node[2]}": not a documented component')
        else:
            _check_block(ALLOY_COMPONENTS[node[1]], node[3], f'{node[1]} "{node[2]}"', errors)
    return errors


def _check_block(spec, children, path, errors):
    for node in children:
        where = f"{path} > {node[1]}"
        if node[0] == "attr":
            if node[1] not in spec["arguments"]:
                errors.append(f"{where}: not a documented argument")
        elif node[1] in spec["blocks"]:
            _check_block(spec["blocks"][node[1]], node[3], where, errors)
        else:
            errors.append(f"{where}: not a documented block")


# --- The checks -------------------------------------------------------------------------------------


def test_keys_were_read_for_the_pinned_images():
    """The documented keys hold for one version each: bumping an image means re-reading its reference."""
    assert LokiService.model_fields["image"].default == LOKI_IMAGE
    assert AlloyService.model_fields["image"].default == ALLOY_IMAGE


def test_loki_config_uses_only_documented_keys():
    assert loki_unknown_keys(yaml.safe_load(loki_config(retention_days=7))) == []


def test_alloy_config_uses_only_documented_components_blocks_and_arguments():
    text = alloy_config(host_label="pi", extra_drops=["kube-probe"])
    assert alloy_unknown(text) == []
    # The parser saw the whole pipeline, so the empty list above is not for want of reading.
    nodes = parse_alloy(text)
    assert [(n[1], n[2]) for n in nodes] == [
        ("discovery.docker", "containers"), ("discovery.relabel", "containers"),
        ("loki.source.docker", "containers"), ("loki.process", "drop_noise"), ("loki.write", "local")]
    process = next(n for n in nodes if n[1] == "loki.process")
    assert [c[1] for c in process[3]].count("stage.drop") == 5  # four shipped, one from settings


def test_loki_check_reports_a_misspelt_key():
    """A typo anywhere in the tree, inside lists too, is named by its path; so is an untranscribed block."""
    data = yaml.safe_load(loki_config(retention_days=7))
    data["limits_config"]["retention_perod"] = "168h"
    data["schema_config"]["configs"][0]["index"]["perod"] = "24h"
    data["common"]["storage"]["s3"] = {"bucketnames": "logs"}
    assert loki_unknown_keys(data) == [
        "common.storage.s3: block <s3_storage_config> is documented but not transcribed in tests/documented_keys.py",
        "schema_config.configs[0].index.perod: not a documented key",
        "limits_config.retention_perod: not a documented key",
    ]


def test_alloy_check_reports_misspelt_components_blocks_and_arguments():
    assert alloy_unknown('loki.write "x" { endpont { url = "http://loki:3100" } }') == [
        'loki.write "x" > endpont: not a documented block']
    text = alloy_config(host_label="pi", extra_drops=[]).replace("refresh_interval", "refresh_intervl")
    assert alloy_unknown(text + '\nloki.writer "y" {}\n') == [
        'discovery.docker "containers" > refresh_intervl: not a documented argument',
        'loki.writer "y": not a documented component']


def test_alloy_parser_reads_past_braces_in_strings_comments_and_values():
    """Braces inside strings, comments and object values must not open or close blocks."""
    text = r'''
    // a comment with { and "quotes"
    loki.process "p" {
      /* a block comment } */
      stage.drop { expression = "{[}\"}" }
      stage.labels {
        values = {
          app = "x}",
        }
      }
      forward_to = []
    }
    '''
    assert parse_alloy(text) == [("block", "loki.process", "p", [
        ("block", "stage.drop", None, [("attr", "expression")]),
        ("block", "stage.labels", None, [("attr", "values")]),
        ("attr", "forward_to")])]
    assert alloy_unknown(text) == []
