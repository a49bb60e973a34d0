"""The master key: Fernet keys from HOMELAB_MASTER_KEY or a key file that only its owner can read.

A key file holds one Fernet key per line; the first encrypts, all decrypt
(MultiFernet). That is what makes `creds rekey` crash-safe: the file holds the
new and the old key while the store is re-encrypted, so whichever state the
database is in, the file opens it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from homelab_ops.credentials.errors import MasterKeyError
from homelab_ops.files import write_atomic

ENV_VAR = "HOMELAB_MASTER_KEY"


class InvalidToken(Exception):
    """No key of the keyring opens the token: wrong master key, or the ciphertext was altered."""


def _fernet():
    """cryptography, imported when a key is first used: it adds ~8 MB to every process that
    loads the code location (web server, daemon, each run), most of which never open the store."""
    from cryptography import fernet

    return fernet


def key_id(key: bytes) -> str:
    """A short fingerprint to tell keys apart in messages; reveals nothing usable about the key."""
    return hashlib.sha256(b"homelab-ops key id\0" + key).hexdigest()[:12]


class Keyring:
    """MultiFernet over one or more keys; never shows the keys themselves."""

    def __init__(self, keys: list[bytes], source: str):
        if not keys:
            raise MasterKeyError(f"{source}: no key found")
        self._keys = list(keys)
        f = _fernet()
        self._fernet = f.MultiFernet([f.Fernet(k) for k in keys])
        self.source = source

    def __repr__(self) -> str:
        return f"Keyring(source={self.source!r}, ids={self.ids})"

    @property
    def ids(self) -> list[str]:
        return [key_id(k) for k in self._keys]

    @property
    def primary_id(self) -> str:
        return self.ids[0]

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        """Raises InvalidToken when no key opens it."""
        try:
            return self._fernet.decrypt(bytes(token))
        except _fernet().InvalidToken:
            raise InvalidToken() from None

    def rotate(self, token: bytes) -> bytes:
        """Decrypt with any key, re-encrypt with the first; InvalidToken when no key opens it."""
        try:
            return self._fernet.rotate(bytes(token))
        except _fernet().InvalidToken:
            raise InvalidToken() from None

    def with_new_primary(self, key: bytes) -> "Keyring":
        return Keyring([key, *self._keys], self.source)

    def only_primary(self) -> "Keyring":
        return Keyring(self._keys[:1], self.source)

    def serialize(self) -> bytes:
        return b"".join(k + b"\n" for k in self._keys)


def new_key() -> bytes:
    return _fernet().Fernet.generate_key()


def parse_keys(text: str, source: str) -> list[bytes]:
    keys = []
    entries = [e.strip() for line in text.splitlines() if not line.strip().startswith("#") for e in line.split(",")]
    for number, line in enumerate((e for e in entries if e), 1):
        try:
            _fernet().Fernet(line.encode())
        except (ValueError, TypeError):
            raise MasterKeyError(f"{source}: entry {number} is not a Fernet key "
                                 "(44 characters of url-safe base64)") from None
        keys.append(line.encode())
    if not keys:
        raise MasterKeyError(f"{source}: holds no key")
    return keys


def check_key_file(path: Path, st: os.stat_result) -> None:
    """Refuse a key file others can read or write, or one another user owns."""
    if not stat.S_ISREG(st.st_mode):
        raise MasterKeyError(f"{path}: the master key file is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o600:
        raise MasterKeyError(f"{path}: the master key file has mode {mode:04o}; it must be 0600 "
                             f"(chmod 600 {path}). Not used.")
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise MasterKeyError(f"{path}: the master key file belongs to uid {st.st_uid}, not to this user "
                             f"(uid {os.geteuid()}). Not used.")


def load_keyring(key_file: str | os.PathLike, env: dict | None = None) -> Keyring:
    """HOMELAB_MASTER_KEY when set (comma-separated keys), else the key file."""
    env = os.environ if env is None else env
    if env.get(ENV_VAR):
        return Keyring(parse_keys(env[ENV_VAR], f"${ENV_VAR}"), f"${ENV_VAR}")
    path = Path(key_file)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise MasterKeyError(f"no master key: {path} does not exist and ${ENV_VAR} is not set "
                             "(run `homelab-ops creds init`)") from None
    except OSError as e:
        raise MasterKeyError(f"{path}: cannot open the master key file: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        check_key_file(path, os.fstat(f.fileno()))  # the file we read, not whatever the path names now
        text = f.read().decode("utf-8", "replace")
    return Keyring(parse_keys(text, str(path)), str(path))


def write_key_file(path: str | os.PathLike, keyring: Keyring, *, replace: bool) -> None:
    """Write atomically with mode 0600 from the first byte; without `replace`, never overwrite."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = b"# homelab-ops master key: the first line encrypts, every line decrypts.\n" + keyring.serialize()
    try:
        write_atomic(path, data, mode=0o600, overwrite=replace)
    except FileExistsError:
        raise MasterKeyError(f"{path} already exists; not overwriting a master key") from None


__all__ = ["ENV_VAR", "InvalidToken", "Keyring", "check_key_file", "key_id", "load_keyring", "new_key",
           "parse_keys", "write_key_file"]
