"""The credential kinds' registry: one module per kind, and everything else derived from it."""

from __future__ import annotations

import types

import pytest
from click.testing import CliRunner

from homelab_ops.cli import main
from homelab_ops.cli.creds import add
from homelab_ops.credentials import kinds, policy
from homelab_ops.credentials.errors import CredentialError
from homelab_ops.credentials.kinds import Kind, KindOptions, check_module
from homelab_ops.settings import SettingsError, parse

KNOWN = {"postgres-role", "s3-access-key", "generated", "manual", "redis-password"}  # settings files name these


def test_every_module_declares_model_behaviour_and_asset_text():
    assert set(kinds.MODULES) == set(kinds.KINDS) == KNOWN
    for kind, module in kinds.MODULES.items():
        assert module.__name__.endswith("." + kind.replace("-", "_"))
        assert issubclass(module.Options, KindOptions) and kinds.kind_for(kind) is module.BEHAVIOUR
        assert isinstance(module.BEHAVIOUR, Kind) and module.DAGSTER_KINDS and module.HOW
        assert module.Options.model_config["extra"] == "forbid" and module.Options.model_config["frozen"]


def test_a_module_that_forgets_something_is_refused_by_name():
    complete = kinds.MODULES["manual"]
    fake = types.ModuleType("homelab_ops.credentials.kinds.manual")
    for attr in kinds.REQUIRED:
        setattr(fake, attr, getattr(complete, attr))
    assert check_module(fake) == "manual"
    del fake.HOW
    with pytest.raises(TypeError, match="manual does not declare HOW"):
        check_module(fake)
    fake.HOW, fake.BEHAVIOUR = complete.HOW, object()
    with pytest.raises(TypeError, match="BEHAVIOUR must be a Kind"):
        check_module(fake)
    fake.BEHAVIOUR, fake.__name__ = complete.BEHAVIOUR, "homelab_ops.credentials.kinds.hand_made"
    with pytest.raises(TypeError, match="declares kind 'manual': name the module manual.py"):
        check_module(fake)


def test_cli_kind_choices_and_options_are_the_registrys():
    kind = next(p for p in add.params if p.name == "kind")
    assert tuple(kind.type.choices) == kinds.KINDS
    fields = {n for m in kinds.MODULES.values() for n in m.Options.model_fields} - {"kind"}
    assert {p.name for p in add.params} - {"name", "kind"} == fields
    r = CliRunner().invoke(main, ["creds", "add", "--help"])
    assert "s3-access-key: the IAM user." in r.output and "Stored encrypted." in r.output
    # An option two kinds share says what it means to each, not what it means to the first.
    host = next(p for p in add.params if p.name == "host").help
    assert host == "postgres-role: host for the TCP login test; redis-password: the Redis server's host."
    length = next(p for p in add.params if p.name == "length").help
    assert length.startswith("generated/postgres-role/redis-password: ") and ";" not in length


def test_a_kind_rejects_another_kinds_option_clearly_in_settings_and_cli_alike():
    with pytest.raises(CredentialError, match=r"^x\.user: option 'user' does not apply to a manual credential "
                                              r"\(it takes: consumers, description, pattern, period\)$"):
        policy.make_definition("x", "manual", {"user": "u"})
    with pytest.raises(SettingsError, match=r"credentials\.managed\.x\.user: option 'user' does not apply to a manual"):
        parse({"credentials": {"managed": {"x": {"kind": "manual", "user": "u"}}}}, "h.yaml")


@pytest.mark.parametrize("entry, fragment", [
    ({"kind": "postgres-role"}, "credentials.managed.x: a postgres-role credential needs `role`"),
    ({"kind": "s3-access-key", "user": ""}, "credentials.managed.x: an s3-access-key credential needs `user` "
                                            "(the IAM user)"),
    ({"kind": "vault"}, "credentials.managed.x.kind: unknown kind 'vault': use one of"),
    ({"period": "30d"}, "credentials.managed.x.kind: required key is missing"),
    ({"kind": "postgres-role", "role": "r" * 64}, "credentials.managed.x.role: role name is longer than"),
    ({"kind": "generated", "length": 8}, "credentials.managed.x.length: Input should be greater than or equal to 12"),
    ({"kind": "generated", "alphabet": "chars:ab"}, "credentials.managed.x.alphabet: a custom alphabet"),
    ({"kind": "generated", "htpasswd_user": "a:b"}, "credentials.managed.x.htpasswd_user: htpasswd_user may not"),
    ({"kind": "generated", "bcrypt_rounds": 3}, "credentials.managed.x.bcrypt_rounds: Input should be greater"),
    ({"kind": "manual", "pattern": "("}, "credentials.managed.x.pattern: pattern is not a regular expression"),
    ({"kind": "s3-access-key", "user": "u", "test_timeout": -1}, "credentials.managed.x.test_timeout: Input should"),
    ({"kind": "manual", "consumers": [""]}, "credentials.managed.x.consumers.0: String should have at least 1"),
])
def test_settings_errors_name_the_key_and_the_problem(entry, fragment):
    with pytest.raises(SettingsError) as e:
        parse({"credentials": {"managed": {"x": entry}}}, "h.yaml")
    assert fragment in str(e.value), str(e.value)


def test_settings_and_cli_make_the_same_definition():
    options = {"role": "app", "dsn": "postgresql://admin:s3cret@db/postgres", "port": 5433, "period": "7d",
               "consumers": ["grafana"], "select_tables": "a,b"}
    entry = parse({"credentials": {"managed": {"pg": {"kind": "postgres-role", **options}}}},
                  "h.yaml").credentials.managed["pg"]
    from_settings = policy.definition_from_settings("pg", entry)
    from_cli = policy.make_definition("pg", "postgres-role", options, source="settings")
    assert from_settings == from_cli
    assert from_cli.secret_params == {"dsn": options["dsn"]} and "dsn" not in from_cli.params
    assert dict(from_cli.params) == {"role": "app", "port": 5433, "select_tables": "a,b"}
