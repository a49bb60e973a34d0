"""Child processes this one starts and must not outlive it: a scratch redis-server, the temporary
PostgreSQL of a point-in-time recovery, pg_receivewal. One way to give each a loopback port and to tie
its life to ours, so a SIGKILLed run leaves nothing running that holds a port, a slot or restored data."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nobody listens on right now (the child binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent(sig: int) -> None:
    """In a child (preexec_fn): get `sig` when the parent dies, even by SIGKILL (Linux). Kept across
    exec; the kernel clears it when the child itself changes its user."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
