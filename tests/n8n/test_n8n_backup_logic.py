"""Pure parts of n8n's recovery: key handling, comparisons, the tripwire, the extras' retention."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from homelab_ops.backups.config import BackupsConfig
from homelab_ops.n8n import backup_set, compare, keys, tripwire
from homelab_ops.settings import SettingsError, parse


def n8n_encrypt(key: str, value: dict) -> str:
    """What n8n's Cipher writes (CryptoJS `Salted__`, EVP_BytesToKey MD5, AES-256-CBC)."""
    salt = os.urandom(8)
    password = key.encode() + salt
    h1 = hashlib.md5(password).digest()
    h2 = hashlib.md5(h1 + password).digest()
    iv = hashlib.md5(h2 + password).digest()
    p = padding.PKCS7(128).padder()
    body = p.update(json.dumps(value).encode()) + p.finalize()
    enc = Cipher(algorithms.AES(h1 + h2), modes.CBC(iv)).encryptor()
    return base64.b64encode(b"Salted__" + salt + enc.update(body) + enc.finalize()).decode()


def test_decrypt_credential_opens_with_the_key_only():
    blob = n8n_encrypt("right", {"value": "s3cret"})
    assert keys.decrypt_credential("right", blob) == {"value": "s3cret"}
    for bad in ("wrong", ""):
        with pytest.raises(ValueError):
            keys.decrypt_credential(bad, blob)
    with pytest.raises(ValueError, match="not n8n ciphertext"):
        keys.decrypt_credential("right", base64.b64encode(b"plain text").decode())


def test_fingerprint_tells_keys_apart_and_never_shows_them():
    a, b = keys.fingerprint("key-one"), keys.fingerprint("key-two")
    assert a != b and a == keys.fingerprint("key-one") and a.startswith("scrypt:")
    k = keys.EncryptionKey("super-secret-value", "n8n.encryption_key")
    assert "super-secret-value" not in repr(k) and "super-secret-value" not in str(k)


def test_key_from_config_names_the_problem():
    assert keys.key_from_config('{"encryptionKey": "abc"}', "cfg") == "abc"
    with pytest.raises(keys.KeyError_, match="not JSON"):
        keys.key_from_config("nope", "cfg")
    with pytest.raises(keys.KeyError_, match="no encryptionKey"):
        keys.key_from_config("{}", "cfg")


def test_settings_take_one_key_source_and_command_needs_an_executable():
    with pytest.raises(SettingsError, match="one source"):
        parse({"n8n": {"dsn": "x", "encryption_key": "k", "config_file": "/c"}}, "t", env={})
    with pytest.raises(SettingsError, match="needs `command`"):
        parse({"n8n": {"dsn": "x", "verify_with": "command"}}, "t", env={})
    with pytest.raises(SettingsError, match="N8N_KEY"):
        parse({"n8n": {"dsn": "x", "encryption_key": "${N8N_KEY}"}}, "t", env={})


def _wf(wid, name, nodes, conns=None):
    return {"id": wid, "name": name, "nodes": nodes, "connections": conns or {}}


def test_compare_workflows_names_missing_changed_and_broken():
    n1 = {"id": "a", "name": "A", "type": "t", "parameters": {"x": 1}}
    n2 = {"id": "b", "name": "B", "type": "t", "parameters": {"y": 2}}
    expected = compare.digests([_wf("1", "One", [n1, n2]), _wf("2", "Two", [n1]), _wf("3", "Three", [n1]),
                                _wf("4", "Four", [n1])])
    loaded = compare.digests([_wf("1", "One", [n1, n2]), _wf("2", "Two", [{**n1, "parameters": {"x": 9}}]),
                              _wf("4", "Four", {"broken": True})])
    rows = {r.workflow: r for r in compare.compare_workflows(expected, loaded, by_parameters=True)}
    assert rows["One"].ok
    assert not rows["Two"].ok and "parameters changed in node(s) a" in rows["Two"].problem
    assert not rows["Three"].ok and rows["Three"].problem == "n8n did not load it"
    assert not rows["Four"].ok and "not valid workflow JSON" in rows["Four"].problem
    # `active` and timestamps do not count: verification deactivates the scratch copy
    assert compare.workflow_digest({**_wf("1", "One", [n1]), "active": True}) == \
        compare.workflow_digest({**_wf("1", "One", [n1]), "active": False, "updatedAt": "x"})


def test_compare_credentials_and_verdict_summary_name_only():
    stored = [{"id": "1", "name": "Gmail", "type": "gmailOAuth2"}, {"id": "2", "name": "Bot", "type": "telegramApi"},
              {"id": "3", "name": "Key", "type": "httpHeaderAuth"}]
    rows = compare.compare_credentials(stored, {"1": "h1", "2": "h2", "3": None}, {"1": "h1", "2": "other", "3": None})
    v = compare.Verdict(credentials=rows)
    assert [c.credential for c in v.failed_credentials] == ["Bot", "Key"]
    assert "Bot (decrypted to a different value)" in v.summary() and "Key (n8n could not decrypt it)" in v.summary()
    assert "h1" not in v.summary()


def _export(root, stem, workflows):
    d = root / stem
    d.mkdir(parents=True)
    for wid, name in workflows.items():
        (d / f"{wid}.json").write_text(json.dumps({"id": wid, "name": name}))


def test_tripwire_names_the_newest_export_that_still_has_it(tmp_path):
    assert not tripwire.compare_exports(tmp_path, share=0.2).tripped
    _export(tmp_path, "20260101T030000Z", {"a": "Alpha", "b": "Beta", "c": "Gamma", "d": "Delta", "e": "Eps"})
    assert "nothing to compare" in tripwire.compare_exports(tmp_path, share=0.2).message()
    _export(tmp_path, "20260102T030000Z", {"a": "Alpha", "c": "Gamma", "d": "Delta", "e": "Eps"})
    (tmp_path / "20260103T030000Z.partial").mkdir()  # an interrupted export does not count
    t = tripwire.compare_exports(tmp_path, share=0.5)
    assert t.tripped and [w.name for w in t.lost] == ["Beta"] and t.lost[0].export == "20260101T030000Z"
    assert t.lost[0].file.endswith("20260101T030000Z/b.json") and not t.drops
    # the next export compares with this one: the loss was reported once
    _export(tmp_path, "20260104T030000Z", {"a": "Alpha", "c": "Gamma", "d": "Delta", "e": "Eps"})
    assert not tripwire.compare_exports(tmp_path, share=0.5).tripped
    t = tripwire.compare_exports(tmp_path, share=0.2, credentials_before=10, credentials_now=7)
    assert t.tripped and "credentials dropped from 10 to 7" in t.message()


def test_extras_follow_their_backup_when_retention_prunes_it():
    names = ["20260101T030000Z.n8n.json", "20260101T030000Z.n8n-key.age", "20260101T030000Z.n8n-binary.tar.zst.age",
             "20260102T030000Z.dump.zst.age", "20260102T030000Z.manifest.json", "20260102T030000Z.n8n.json",
             "20260102T030000Z.n8n-key.age", "20260103T030000Z.n8n-key.age.partial", "notes.txt",
             "20260101T030000Z.n8n-verified.json"]
    assert backup_set.orphaned_extras(names) == ["20260101T030000Z.n8n-binary.tar.zst.age",
                                                 "20260101T030000Z.n8n-key.age", "20260101T030000Z.n8n-verified.json",
                                                 "20260101T030000Z.n8n.json"]


def test_key_from_config_file_and_a_missing_one_is_named(tmp_path):
    cfg = tmp_path / "config"
    cfg.write_text(json.dumps({"encryptionKey": "from-file"}))
    s = parse({"n8n": {"dsn": "x", "config_file": str(cfg)}}, "t", env={})
    assert keys.read_key(BackupsConfig.of(s)).value == "from-file"
    s = parse({"n8n": {"dsn": "x", "config_file": str(tmp_path / "nope")}}, "t", env={})
    with pytest.raises(keys.KeyError_, match="cannot read n8n.config_file"):
        keys.read_key(BackupsConfig.of(s))
    assert keys.read_key(BackupsConfig.of(parse({"n8n": {"dsn": "x"}}, "t", env={}))) is None


def test_verification_by_n8n_judges_the_very_backup_from_the_store_it_was_restored_from(tmp_path):
    """The nightly check asks about tonight's backup: a target still holding only last night's copy
    (an upload owed) must not be verified in its place, and a named target is that target."""
    from homelab_ops.backups.stores import LocalStore
    from homelab_ops.n8n import verification as nv

    settings = parse({"backups": {"local_dir": str(tmp_path), "s3": [
        {"bucket": "first", "name": "nas", "endpoint_url": "http://127.0.0.1:9"},
        {"bucket": "second", "name": "b2", "endpoint_url": "http://127.0.0.1:9"}]}}, "t", env={})
    assert [nv._store(BackupsConfig.of(settings), s).label for s in ("auto", "local", "s3", "nas", "b2")] == \
        ["nas", "local", "nas", "nas", "b2"]
    with pytest.raises(nv.N8nVerifyError, match="unknown backup source 'nope'"):
        nv._store(BackupsConfig.of(settings), "nope")

    store = LocalStore(tmp_path)
    (tmp_path / "n8n").mkdir()
    for name in ("20261202T030000Z.dump.zst", "20261202T030000Z.manifest.json"):
        (tmp_path / "n8n" / name).write_text("{}")
    assert nv.locate_set(BackupsConfig.of(settings), "n8n", store, "20261203T030000Z").backup.stem == "20261202T030000Z"
    with pytest.raises(nv.N8nVerifyError, match="with id 20261203T030000Z"):
        nv.locate_set(BackupsConfig.of(settings), "n8n", store, "20261203T030000Z", exact=True)


def test_the_printed_start_line_finds_n8n_tables_in_their_schema_and_prefix(tmp_path):
    """An instance kept in another schema or with a table prefix must start on its restored tables,
    not create an empty instance beside them."""
    from homelab_ops.n8n.instance_restore import start_lines

    def line(n8n: dict) -> str:
        settings = parse({"n8n": {"dsn": "postgresql://n8n@127.0.0.1/n8n", **n8n}}, "t", env={})
        return start_lines(BackupsConfig.of(settings), "n8n_restored", tmp_path, binary=False)[1]

    plain = line({})
    assert "DB_POSTGRESDB_DATABASE=n8n_restored" in plain and "SCHEMA" not in plain and "PREFIX" not in plain
    kept = line({"db_schema": "automation", "table_prefix": "lab_"})
    assert "-e DB_POSTGRESDB_SCHEMA=automation" in kept and "-e DB_TABLE_PREFIX=lab_" in kept
