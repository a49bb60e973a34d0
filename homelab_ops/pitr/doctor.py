"""`homelab-ops doctor`'s point-in-time recovery checks: what the server needs for the WAL receiver,
base backups and the exact nightly verification, each failure with the exact setting or line to add."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from homelab_ops.errors import first_line
from homelab_ops.pitr.config import PitrConfig

# receiver + pg_basebackup's two (-X stream) + the nightly dump's temporary logical slot
NEED_SENDERS = 4
NEED_SLOTS = 3
RESTART = "then restart PostgreSQL (docker restart <postgres container>)"


def _setting(conn, name: str) -> str:
    return conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]


def check_server(config: PitrConfig) -> list:
    from homelab_ops.doctor import fail, ok
    from homelab_ops.pitr.receive import pitr_dsn

    dsn = pitr_dsn(config)
    try:
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
            level = _setting(conn, "wal_level")
            senders = int(_setting(conn, "max_wal_senders"))
            slots = int(_setting(conn, "max_replication_slots"))
            keep = _setting(conn, "max_slot_wal_keep_size")
            user, can = conn.execute("SELECT current_user, rolreplication OR rolsuper FROM pg_roles "
                                     "WHERE rolname = current_user").fetchone()
    except psycopg.Error as e:
        return [fail("pitr server", f"cannot connect with pitr.dsn: {first_line(e)}",
                     "correct pitr.dsn (default postgres.dsn)")]
    out = []
    if level == "logical":
        out.append(ok("pitr wal_level", "logical: WAL is archived and the nightly verification is exact"))
    elif level == "replica":
        out.append(ok("pitr wal_level", "replica: WAL is archived, but the nightly verification cannot be exact "
                                        "(set wal_level = logical for that: ALTER SYSTEM SET wal_level = 'logical'; "
                                        f"{RESTART})"))
    else:
        out.append(fail("pitr wal_level", f"{level}: the server writes too little WAL to stream or restore",
                        f"ALTER SYSTEM SET wal_level = 'logical'; {RESTART}"))
    if senders < NEED_SENDERS:
        out.append(fail("pitr max_wal_senders", f"{senders}: the receiver, a base backup and the nightly dump's "
                                                f"slot need {NEED_SENDERS}",
                        f"ALTER SYSTEM SET max_wal_senders = 10; {RESTART}"))
    else:
        out.append(ok("pitr max_wal_senders", f"{senders} (needs {NEED_SENDERS})"))
    if slots < NEED_SLOTS:
        out.append(fail("pitr max_replication_slots", f"{slots}: needs {NEED_SLOTS}",
                        f"ALTER SYSTEM SET max_replication_slots = 10; {RESTART}"))
    else:
        out.append(ok("pitr max_replication_slots", f"{slots} (needs {NEED_SLOTS})"))
    if keep in ("-1", "-1MB"):
        out.append(fail("pitr max_slot_wal_keep_size", "unlimited: a stopped receiver would make the server keep "
                                                        "WAL until its disk is full",
                        "ALTER SYSTEM SET max_slot_wal_keep_size = '4GB'; SELECT pg_reload_conf(); "
                        "(size it to a few days of WAL and what the disk can spare)"))
    else:
        out.append(ok("pitr max_slot_wal_keep_size", f"{keep}: the slot can hold at most this much WAL"))
    if not can:
        out.append(fail("pitr replication role", f"role {user} has no REPLICATION attribute",
                         f"ALTER ROLE {user} WITH REPLICATION; (or give pitr.dsn a postgres-role credential "
                         "created with REPLICATION)"))
    else:
        out.append(ok("pitr replication role", f"role {user} may stream WAL"))
    out.append(check_hba(dsn, user))
    return out


_HBA = re.compile(r'no pg_hba\.conf entry for replication connection from host "([^"]+)", user "([^"]+)"')


def check_hba(dsn: str, user: str):
    """A real replication connection (IDENTIFY_SYSTEM): pg_hba.conf needs a `replication` line of its own."""
    from homelab_ops.doctor import fail, ok

    try:
        with psycopg.connect(make_conninfo(dsn, replication="true"), connect_timeout=5, autocommit=True) as conn:
            res = conn.pgconn.exec_(b"IDENTIFY_SYSTEM")
            if res.status != psycopg.pq.ExecStatus.TUPLES_OK:
                raise psycopg.OperationalError((res.error_message or b"").decode(errors="replace"))
    except psycopg.Error as e:
        msg = first_line(e)
        if m := _HBA.search(str(e)):
            host, role = m.groups()
            net = f"{host}/32" if ":" not in host else f"{host}/128"
            return fail("pitr pg_hba.conf", f"replication connections from {host} as {role} are not allowed",
                        f"add to pg_hba.conf: `host replication {role} {net} scram-sha-256` "
                        "(in the container: /var/lib/postgresql/data/pg_hba.conf), then SELECT pg_reload_conf();")
        host = conninfo_to_dict(dsn).get("host", "")
        return fail("pitr pg_hba.conf", f"a replication connection failed: {msg}",
                    f"add to pg_hba.conf: `host replication {user} <this host's address>/32 scram-sha-256`"
                    f" (server {host}), then SELECT pg_reload_conf();")
    return ok("pitr pg_hba.conf", "replication connections are allowed")


def checks(config: PitrConfig) -> Iterator[tuple[str, Callable]]:
    """(name, check) pairs for homelab_ops.doctor; none while pitr.enabled is false."""
    from homelab_ops.doctor import skip

    if not config.pitr.enabled:
        return
    results: list = []

    def nth(i: int):
        def run():
            if not results:
                results.extend(check_server(config))
            return results[i] if i < len(results) else skip("pitr", "not checked: the server could not be asked")
        return run

    for i, name in enumerate(("pitr wal_level", "pitr max_wal_senders", "pitr max_replication_slots",
                              "pitr max_slot_wal_keep_size", "pitr replication role", "pitr pg_hba.conf")):
        yield name, nth(i)
