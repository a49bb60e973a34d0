"""Crash-safe, private file writes, shared by every module that leaves a file behind.

A reader (pg_restore, node_exporter, docker compose, the next run) sees the old
file or the new one, never half of one: write `<name>.partial` with its final
mode from the first byte, fsync, rename over the target, fsync the folder.

Private by default: the code location and the CLI start with umask 077 (`private_umask`), so
dumps, manifests, the roles dump (SCRAM verifiers) and their folders are 0600/0700 whoever
writes them; `write_atomic` writes 0600 whatever the umask, and a file other users must read
(node_exporter's textfiles) says `mode=0o644`, its new folders then 0755.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

PARTIAL_SUFFIX = ".partial"
PRIVATE_UMASK = 0o077
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700

log = logging.getLogger(__name__)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """A finished file's sha256, read in chunks (dumps and base backups outgrow memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def private_umask() -> None:
    """Every file and folder this process creates from now on is its owner's alone (0600/0700)."""
    os.umask(PRIVATE_UMASK)


def make_dirs(path: str | os.PathLike, mode: int = PRIVATE_DIR) -> Path:
    """`mkdir -p` whose new folders get `mode` exactly (private unless told otherwise); existing
    folders are left as they are."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(d, mode)  # mkdir's mode is cut by the umask
    return path


def tighten_tree(root: str | os.PathLike) -> int:
    """Make an existing tree private (folders 0700, files 0600), e.g. backups written before the
    umask was set; symlinks are not followed. Returns how many modes changed; failures are logged."""
    changed = 0
    root = Path(root)
    if not root.is_dir() or root.is_symlink():
        return 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name, want in [(dirpath, PRIVATE_DIR)] + [(os.path.join(dirpath, f), PRIVATE_FILE) for f in filenames]:
            try:
                st = os.lstat(name)
                if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o077 == 0:
                    continue
                os.chmod(name, stat.S_IMODE(st.st_mode) & ~0o077 | (want & 0o700))
                changed += 1
            except OSError as e:
                log.warning("cannot make %s private: %s", name, e.strerror or e)
    return changed


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable: without it a power cut can undo the rename."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes, *, mode: int = PRIVATE_FILE, overwrite: bool = True) -> Path:
    """Write `data` to `path` atomically; with `overwrite=False` an existing file is never replaced
    (raises FileExistsError, also atomically: two writers cannot both win). Private (0600) unless
    `mode` says otherwise, whatever the umask; new parent folders get 0755 when the file is readable
    by others, else 0700."""
    path = Path(path)
    make_dirs(path.parent, 0o755 if mode & 0o044 else PRIVATE_DIR)
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


def free_space(folder: str | os.PathLike) -> str:
    """The free space of `folder`'s filesystem, for a person ("1.2 MiB"): what every disk-full message says."""
    import shutil

    from homelab_ops import units

    return units.size(shutil.disk_usage(folder).free)


def remove_stale_scratch(folder: str | os.PathLike, pattern: str, older_than_s: float) -> list[Path]:
    """Scratch folders a killed process left (a base backup's, a restore's): the owner would otherwise
    find gigabytes gone after a power cut. Only those untouched for longer than any live one can be."""
    import shutil
    import time

    removed = []
    for p in Path(folder).glob(pattern):
        try:
            if time.time() - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        except FileNotFoundError:
            pass
    return removed
