"""redis-password against a real redis-server: options, the four steps, a crash between any two of
them, a failed test put back, a restarted Redis, and no password on a command line or in an error."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from homelab_ops.credentials.config import CredentialsConfig
from homelab_ops.credentials.errors import CredentialError, RotationError
from homelab_ops.credentials.kinds import Context, kind_for, redis_password
from homelab_ops.credentials.policy import ALPHABETS, Definition, definition_from_settings, make_definition
from homelab_ops.credentials.rotation import STEPS, rotate, run_step
from homelab_ops.credentials.store import open_store
from homelab_ops.settings import SettingsError, parse
from tests.conftest import free_port
from tests.credentials import test_store as store_tests
from tests.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.services  # the store is in PostgreSQL; the steps reach a real redis-server

creds_state_db, cred_settings = store_tests.creds_state_db, store_tests.cred_settings  # the store's fixtures

ADMIN = "Admin-Redis-Password-4711"
FIRST = "Hand-Set-Password-0815"  # the user's password before homelab-ops manages it


def sha(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@pytest.fixture
def server(tmp_path):
    with redis_server(tmp_path / "redis", ADMIN) as s:
        yield s


def new_user(server: RedisServer, password: str = FIRST) -> str:
    user = f"app_{uuid.uuid4().hex[:8]}"
    server.cli("ACL", "SETUSER", user, "on", f"#{sha(password)}", "~*", "+@all")
    return user


def works(server: RedisServer, user: str, password: str) -> bool:
    """A login as `user` with `password` is accepted."""
    proc = subprocess.run(["redis-cli", "-p", str(server.port), "--no-auth-warning", "--user", user, "PING"],
                          capture_output=True, text=True, timeout=30, env={**os.environ, "REDISCLI_AUTH": password})
    return "AUTH failed" not in proc.stderr and proc.stdout.strip() == "PONG"


def hashes(server: RedisServer, user: str) -> list[str] | None:
    info = json.loads(server.cli("--json", "ACL", "GETUSER", user))
    return None if info is None else info["passwords"]


def define(store, server: RedisServer, user: str, name: str = "cache_app", **more) -> None:
    store.define(make_definition(name, "redis-password", {
        "username": user, "port": server.port, "admin_password": server.password, "period": "30d", **more}))


@contextmanager
def rotated_once(cred_settings, server: RedisServer):
    """A Redis user whose credential is defined and rotated once: (settings, user, open store, its password)."""
    _, settings = cred_settings()
    user = new_user(server)
    with open_store(CredentialsConfig.of(settings), "test") as store:
        define(store, server, user)
        rotate(store, "cache_app")
        yield settings, user, store, store.value("cache_app")


# --------------------------------------------------------------------------- options


def test_options_take_defaults_and_keep_the_admin_password_secret():
    entry = parse({"credentials": {"managed": {"cache": {"kind": "redis-password", "username": "app",
                                                         "admin_password": ADMIN}}}}, "h.yaml").credentials.managed
    from_settings = definition_from_settings("cache", entry["cache"])
    from_cli = make_definition("cache", "redis-password", {"username": "app", "admin_password": ADMIN},
                               source="settings")
    assert from_settings == from_cli
    assert dict(from_cli.params) == {"username": "app", "host": "127.0.0.1", "port": 6379}
    assert from_cli.secret_params == {"admin_password": ADMIN} and ADMIN not in repr(from_cli)
    # `default` may rotate when the steps log in as another user
    other = make_definition("c", "redis-password", {"username": "default", "admin_user": "ops", "length": 48,
                                                    "alphabet": "urlsafe", "host": "redis", "port": 6380})
    assert dict(other.params) == {"username": "default", "admin_user": "ops", "length": 48, "alphabet": "urlsafe",
                                  "host": "redis", "port": 6380}


@pytest.mark.parametrize("entry, fragment", [
    ({}, "credentials.managed.x: a redis-password credential needs `username` (the Redis ACL user whose password "
         "rotates (it must exist))"),
    ({"username": ""}, "credentials.managed.x: a redis-password credential needs `username`"),
    ({"username": "a b"}, "credentials.managed.x.username: username may not be empty or contain spaces, quotes"),
    ({"username": 'a"b'}, "credentials.managed.x.username: username may not be empty or contain spaces, quotes"),
    ({"username": "app", "admin_user": "x\\y"}, "credentials.managed.x.admin_user: admin_user may not be empty"),
    ({"username": "app", "port": 0}, "credentials.managed.x.port: Input should be greater than or equal to 1"),
    ({"username": "app", "port": 65536}, "credentials.managed.x.port: Input should be less than or equal to 65535"),
    ({"username": "app", "port": "six"}, "credentials.managed.x.port: Input should be a valid integer"),
    ({"username": "default"}, "credentials.managed.x: username 'default' is the user the rotation logs in as "
                              "(admin_user); rotating it would lock homelab-ops out of Redis"),
    ({"username": "ops", "admin_user": "ops"}, "credentials.managed.x: username 'ops' is the user the rotation"),
    ({"username": "app", "length": 8}, "credentials.managed.x.length: Input should be greater than or equal to 12"),
    ({"username": "app", "alphabet": "chars:ab"}, "credentials.managed.x.alphabet: a custom alphabet"),
    ({"username": "app", "role": "r"}, "credentials.managed.x.role: option 'role' does not apply to a redis-password "
                                       "credential (it takes: admin_password, admin_user, alphabet, consumers, "
                                       "description, host, length, period, port, username)"),
])
def test_refused_options_name_the_key_and_the_problem(entry, fragment):
    with pytest.raises(SettingsError) as e:
        parse({"credentials": {"managed": {"x": {"kind": "redis-password", **entry}}}}, "h.yaml")
    assert fragment in str(e.value), str(e.value)
    with pytest.raises(CredentialError) as e:  # `creds add` says the same
        make_definition("x", "redis-password", entry)
    assert fragment.removeprefix("credentials.managed.") in str(e.value), str(e.value)


def test_an_admin_password_with_an_equals_sign_is_just_a_password():
    d = Definition("c", "redis-password", "30d", params={"username": "app"},
                   secret_params={"admin_password": "c2VjcmV0IHBhc3N3b3Jk=="})
    assert "c2VjcmV0IHBhc3N3b3Jk==" in Context(None, d).secrets


# --------------------------------------------------------------------------- rotation


def test_rotation_adds_the_new_password_beside_the_old_and_removes_the_old_at_finish(cred_settings, server):
    _, settings = cred_settings()
    user = new_user(server)
    with open_store(CredentialsConfig.of(settings), "test") as store:
        define(store, server, user)
        run_step(store, "cache_app", "create")
        new = store.read("cache_app", "pending")[1]
        assert set(new) == {"value"} and len(new["value"]) == 32 and new["value"].isalnum()
        new = new["value"]
        assert works(server, user, FIRST) and not works(server, user, new)  # nothing outside the store yet
        run_step(store, "cache_app", "set")
        assert works(server, user, FIRST) and works(server, user, new)  # both, until finish
        run_step(store, "cache_app", "test")
        run_step(store, "cache_app", "restart")
        assert works(server, user, FIRST) and works(server, user, new)
        notes = run_step(store, "cache_app", "finish")
        assert works(server, user, new) and not works(server, user, FIRST)  # the hand-set one goes too
        assert hashes(server, user) == [sha(new)] and store.value("cache_app") == new
        assert any("no config file or aclfile" in n for n in notes)  # this server keeps it in memory only

        result = rotate(store, "cache_app", force=True)
        assert result.rotated and result.steps == list(STEPS)
        second = store.value("cache_app")
        assert works(server, user, second) and not works(server, user, new)
        assert hashes(server, user) == [sha(second)]
        assert store.value("cache_app", stage="previous") == new
        assert not rotate(store, "cache_app").rotated  # not due again for 30 days


def test_no_password_reaches_a_command_line(cred_settings, server, monkeypatch):
    _, settings = cred_settings()
    user = new_user(server)
    calls = []
    real_run = subprocess.run

    def recording(args, **kw):
        calls.append((list(args), kw.get("input") or "", (kw.get("env") or {}).get("REDISCLI_AUTH")))
        return real_run(args, **kw)

    monkeypatch.setattr(redis_password.subprocess, "run", recording)
    with open_store(CredentialsConfig.of(settings), "test") as store:
        define(store, server, user, length=48, alphabet="symbols")  # `#`, `=`, `:`, `@` in a password too
        rotate(store, "cache_app")
        first = store.value("cache_app")
        rotate(store, "cache_app", force=True)
        second = store.value("cache_app")
    monkeypatch.undo()
    assert len(second) == 48 and set(second) <= set(ALPHABETS["symbols"])
    assert works(server, user, second)
    argv = "\n".join(" ".join(a) for a, _, _ in calls)
    for secret in (FIRST, first, second, ADMIN):
        assert secret not in argv and sha(secret) not in argv
        assert all(secret not in stdin for _, stdin, _ in calls)  # only hashes travel on stdin
    # the passwords went where they belong: REDISCLI_AUTH, and hashes on stdin
    assert {auth for _, _, auth in calls} == {ADMIN, first, second}
    stdin = "".join(s for _, s, _ in calls)
    assert f"ACL SETUSER {user} #{sha(second)}" in stdin and f"ACL SETUSER {user} resetpass #{sha(second)}" in stdin
    acl = server.cli("ACL", "LIST")
    assert f"user {user} on #{sha(second)} " in acl and second not in acl and first not in acl


@pytest.mark.parametrize("crash_after", ["create", "set", "test", "restart", "finish's ACL change"])
def test_a_rotation_killed_between_any_two_steps_is_finished_by_the_next_run(cred_settings, server, crash_after):
    with rotated_once(cred_settings, server) as (settings, user, store, old):
        for step in STEPS[:STEPS.index(crash_after) + 1] if crash_after in STEPS else STEPS[:-1]:
            run_step(store, "cache_app", step)
        pending_version, pending = store.read("cache_app", "pending")
        pending = pending["value"]
        if crash_after not in STEPS:  # killed inside finish: Redis changed, the store not yet promoted

            def killed(*_a, **_kw):
                raise RuntimeError("SIGKILL")

            store.promote = killed
            with pytest.raises(RotationError, match="step 'finish'"):
                run_step(store, "cache_app", "finish")
            assert hashes(server, user) == [sha(pending)] and store.value("cache_app") == old
        else:
            assert works(server, user, old)  # the old one works until finish
            assert works(server, user, pending) == (crash_after != "create")
    with open_store(CredentialsConfig.of(settings), "test") as store:  # the next daily run, not forced
        result = rotate(store, "cache_app")
        assert result.rotated and result.resumed and result.version == pending_version
        assert store.value("cache_app") == pending and store.status("cache_app").pending is None
        assert [v.version for v in store.versions("cache_app")] == [1, 2]
        assert not rotate(store, "cache_app").rotated
    assert hashes(server, user) == [sha(pending)]  # exactly one password, the store's current one
    assert works(server, user, pending) and not works(server, user, old)


def test_a_failed_login_test_takes_the_new_password_off_and_the_next_run_finishes(cred_settings, server):
    with rotated_once(cred_settings, server) as (_, user, store, current):
        server.cli("ACL", "SETUSER", user, "off")  # no login works: the test step must fail
        with pytest.raises(RotationError, match=rf"step 'test': login as Redis user '{user}' with the new password "
                                                rf"failed \(Redis refused the login \(WRONGPASS .*\)\); the new "
                                                rf"password was taken off Redis user '{user}'; its current one "
                                                "still works$") as e:
            rotate(store, "cache_app", force=True)
        pending = store.read("cache_app", "pending")[1]["value"]
        assert pending not in str(e.value) and current not in str(e.value) and "[REDACTED]" not in str(e.value)
        server.cli("ACL", "SETUSER", user, "on")
        assert hashes(server, user) == [sha(current)]  # as before `set`
        assert works(server, user, current) and not works(server, user, pending)
        assert store.value("cache_app") == current
        assert kind_for("redis-password").revert(Context(store, store.get_definition("cache_app"))) == \
            f"the new password was not on Redis user '{user}': nothing to take off"
        result = rotate(store, "cache_app")  # due: the pending version waits for the next run
        assert result.rotated and result.resumed and store.value("cache_app") == pending
    assert works(server, user, pending) and not works(server, user, current)


def test_finish_keeps_the_old_password_when_redis_lost_the_new_one(cred_settings, server):
    """A Redis restarted without saving between `set` and `finish` forgot the new password: finish
    must not make it the only one (nobody could log in); the next run sets it again."""
    _, settings = cred_settings()
    user = new_user(server)
    with open_store(CredentialsConfig.of(settings), "test") as store:
        define(store, server, user)
        for step in ("create", "set", "test"):
            run_step(store, "cache_app", step)
        pending = store.read("cache_app", "pending")[1]["value"]
        server.cli("ACL", "SETUSER", user, f"!{sha(pending)}")  # what a restart without a saved ACL does
        with pytest.raises(RotationError, match=rf"step 'finish': the new password is not on Redis user '{user}' "
                                                r"\(did Redis restart without saving it\?\): the next run sets it"):
            run_step(store, "cache_app", "finish")
        assert hashes(server, user) == [sha(FIRST)] and store.status("cache_app").pending is not None
        assert rotate(store, "cache_app").rotated and store.value("cache_app") == pending
    assert hashes(server, user) == [sha(pending)] and works(server, user, pending)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("admin, fragment", [
    ({"admin_password": "Wrong-Admin-Password-1234"},
     r"step 'set': Redis at 127\.0\.0\.1:\d+ refused the admin login as 'default' \(WRONGPASS invalid "
     r"username-password pair or user is disabled\.\): check admin_user and admin_password$"),
    ({"admin_password": None},
     r"step 'set': Redis at 127\.0\.0\.1:\d+ refused the admin login as 'default' \(it needs a password\)"),
    ({"admin_user": "nobody_here"}, r"refused the admin login as 'nobody_here' \(WRONGPASS"),
])
def test_a_refused_admin_login_is_named_without_any_secret(cred_settings, server, admin, fragment):
    _, settings = cred_settings()
    user = new_user(server)
    with open_store(CredentialsConfig.of(settings), "test") as store:
        define(store, server, user, **admin)
        with pytest.raises(RotationError, match=fragment) as e:
            rotate(store, "cache_app")
        pending = store.read("cache_app", "pending")[1]["value"]
        for secret in (pending, ADMIN, "Wrong-Admin-Password-1234", "[REDACTED]"):
            assert secret not in str(e.value)
    assert hashes(server, user) == [sha(FIRST)] and works(server, user, FIRST)


def test_a_missing_user_is_named_and_not_created(cred_settings, server):
    _, settings = cred_settings()
    with open_store(CredentialsConfig.of(settings), "test") as store:
        define(store, server, "ghost")
        with pytest.raises(RotationError, match=rf"step 'set': Redis ACL user 'ghost' does not exist on "
                                                rf"127\.0\.0\.1:{server.port}: create it first") as e:
            rotate(store, "cache_app")
        assert store.read("cache_app", "pending")[1]["value"] not in str(e.value)
        assert "[REDACTED]" not in str(e.value)
    assert hashes(server, "ghost") is None and "ghost" not in server.cli("ACL", "LIST")


def test_a_server_that_does_not_answer_is_named(cred_settings, server):
    _, settings = cred_settings()
    with open_store(CredentialsConfig.of(settings), "test") as store:
        store.define(make_definition("cache_app", "redis-password", {
            "username": "app", "port": free_port(), "admin_password": ADMIN, "period": "30d"}))
        with pytest.raises(RotationError, match=r"step 'set': Redis at 127\.0\.0\.1:\d+ did not answer: Could not "
                                                r"connect to Redis at 127\.0\.0\.1:\d+: Connection refused"):
            rotate(store, "cache_app")


# --------------------------------------------------------------------------- a restarted Redis


@contextmanager
def redis_from_files(folder: Path, style: str, user: str):
    """A redis-server whose users live in an aclfile or in its config file, restartable."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    users = f"user default on #{sha(ADMIN)} ~* &* +@all\nuser {user} on #{sha(FIRST)} ~* +@all\n"
    base = f'port {port}\nbind 127.0.0.1\ndir "{folder}"\nsave ""\n'
    if style == "aclfile":
        (folder / "users.acl").write_text(users)
        (folder / "redis.conf").write_text(base + f'aclfile "{folder / "users.acl"}"\n')
    else:
        (folder / "redis.conf").write_text(base + users)
    server = RedisServer(port, ADMIN, folder)
    procs = []

    def start():
        procs.append(subprocess.Popen(["redis-server", str(folder / "redis.conf")], stdout=subprocess.DEVNULL))
        server.wait_ready()

    def restart():
        procs[-1].kill()
        procs[-1].wait()
        start()

    start()
    try:
        yield server, restart
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.parametrize("style", ["aclfile", "config file"])
def test_a_restarted_redis_keeps_the_new_password(cred_settings, tmp_path, style):
    _, settings = cred_settings()
    with redis_from_files(tmp_path / "redis", style, "app") as (server, restart):
        with open_store(CredentialsConfig.of(settings), "test") as store:
            define(store, server, "app")
            result = rotate(store, "cache_app")
            new = store.value("cache_app")
        assert not any("no config file" in n for n in result.notes)
        saved = (tmp_path / "redis" / ("users.acl" if style == "aclfile" else "redis.conf")).read_text()
        assert sha(new) in saved and sha(FIRST) not in saved and new not in saved
        restart()
        assert works(server, "app", new) and not works(server, "app", FIRST)
