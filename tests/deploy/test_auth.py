"""Traefik's basic-auth users come from the credential store: rotated there, read audited."""

from __future__ import annotations

import psycopg
import pytest

from homelab_ops.credentials.config import CredentialsConfig
from homelab_ops.credentials.policy import htpasswd_matches
from homelab_ops.credentials.rotation import rotate
from homelab_ops.credentials.store import open_store
from homelab_ops.deploy.auth import basic_auth_users, stored_users
from homelab_ops.deploy.config import DeployConfig
from homelab_ops.deploy.plan import PlanError, build_traefik_plan
from tests.credentials.test_store import cred_settings, creds_state_db  # noqa: F401  (fixtures)

pytestmark = pytest.mark.services  # every test here reaches PostgreSQL


def test_stored_htpasswd_line_reaches_traefik_and_follows_rotation(cred_settings):  # noqa: F811
    _, settings = cred_settings(
        {"managed": {"ui_admin": {"kind": "generated", "length": 24, "htpasswd_user": "owner",
                                  "bcrypt_rounds": 4, "period": "90d"}}},
        traefik={"basic_auth_credentials": ["ui_admin"]})
    with open_store(CredentialsConfig.of(settings), "test") as store:
        rotate(store, "ui_admin", config=CredentialsConfig.of(settings), force=True)
        password = store.value("ui_admin")
    [line] = stored_users(DeployConfig.of(settings), "dagster-run:abc")
    assert line.startswith("owner:$2") and htpasswd_matches(line, password)
    assert basic_auth_users(settings.traefik, {}, [line]) == [line]

    with open_store(CredentialsConfig.of(settings), "test") as store:
        rotate(store, "ui_admin", config=CredentialsConfig.of(settings), force=True)
    [after] = stored_users(DeployConfig.of(settings), "dagster-run:abc")
    assert after != line and not htpasswd_matches(after, password)
    with psycopg.connect(settings.state.dsn.get_secret_value()) as conn:
        actors = [r[0] for r in conn.execute(
            "SELECT actor FROM homelab_ops.credential_audit WHERE credential = 'ui_admin'")]
    assert "dagster-run:abc" in actors


def test_no_users_anywhere_refuses_the_plan(cred_settings):  # noqa: F811
    _, settings = cred_settings()
    with pytest.raises(PlanError, match="basic_auth_credentials"):
        build_traefik_plan(DeployConfig.of(settings), host=None, env={})
