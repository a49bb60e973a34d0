"""What a rotation hands its consumers, as plain data: the variables that name the credential, merged
into a container's environment, and the create body that copies the container (no Docker here: the
Engine path is tested in test_rotation.py)."""

from __future__ import annotations

import pytest

from homelab_ops.credentials.consumers import merged_env, recreate_config
from homelab_ops.credentials.envfile import environment_for
from homelab_ops.credentials.errors import CredentialError

TEMPLATE = """# n8n's database
DB_POSTGRESDB_PASSWORD={{ cred("n8n_db") }}
export DSN=postgres://n8n:{{ cred("n8n_db") }}@db/n8n?x={{ cred("other", "username") }}
# OLD={{ cred("n8n_db") }}
TOKEN={{ cred("telegram_bot") }}
"""


def test_only_the_variables_naming_the_credential_with_raw_values():
    values = {("n8n_db", "value"): "p$ss 'w#rd", ("other", "username"): "u", ("telegram_bot", "value"): "t"}
    env = environment_for(TEMPLATE, "n8n_db", lambda n, f: values[(n, f)])
    assert env == {"DB_POSTGRESDB_PASSWORD": "p$ss 'w#rd", "DSN": "postgres://n8n:p$ss 'w#rd@db/n8n?x=u"}
    assert environment_for(TEMPLATE, "nobody", lambda n, f: "x") == {}


def test_a_lookup_error_names_the_field():
    def lookup(n, f):
        raise CredentialError(f"{n} has no field {f!r}")

    with pytest.raises(CredentialError, match="template line 2: n8n_db has no field 'value'"):
        environment_for(TEMPLATE, "n8n_db", lookup)


def test_merged_env_changes_only_variables_the_container_has():
    current = ["PATH=/bin", "DB_POSTGRESDB_PASSWORD=old", "X=a=b"]
    assert merged_env(current, {"DB_POSTGRESDB_PASSWORD": "new", "DSN": "never added"}) == [
        "PATH=/bin", "DB_POSTGRESDB_PASSWORD=new", "X=a=b"]
    assert merged_env(current, {}) == current


def test_recreate_config_keeps_labels_host_config_and_aliases_but_not_dockers_defaults():
    cid = "abcdef1234567890" * 4
    info = {"Id": cid,
            "Config": {"Hostname": cid[:12], "Image": "n8nio/n8n:1.123.0", "Env": ["A=1"],
                       "Labels": {"com.docker.compose.service": "n8n"}},
            "HostConfig": {"Memory": 512, "Binds": ["/srv:/srv:ro"]},
            "NetworkSettings": {"Networks": {"lab_default": {"Aliases": ["n8n", cid[:12]], "IPAMConfig": None,
                                                             "Links": None}}}}
    body = recreate_config(info, ["A=2"])
    assert "Hostname" not in body and body["Env"] == ["A=2"] and body["HostConfig"] == info["HostConfig"]
    assert body["Labels"] == {"com.docker.compose.service": "n8n"}
    assert body["NetworkingConfig"]["EndpointsConfig"]["lab_default"]["Aliases"] == ["n8n"]
    info["Config"]["Hostname"] = "n8n-box"
    assert recreate_config(info, [])["Hostname"] == "n8n-box"
