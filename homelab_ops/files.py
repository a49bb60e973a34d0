"""Crash-safe file writes, shared by every module that leaves a file behind.

A reader (pg_restore, node_exporter, docker compose, the next run) sees the old
file or the new one, never half of one: write `<name>.partial` with its final
mode from the first byte, fsync, rename over the target, fsync the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable: without it a power cut can undo the rename."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes, *, mode: int = 0o644, overwrite: bool = True) -> Path:
    """Write `data` to `path` atomically; with `overwrite=False` an existing file is never replaced
    (raises FileExistsError, also atomically: two writers cannot both win)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is cut by the umask, and ignored for an old file
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
