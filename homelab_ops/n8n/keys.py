"""n8n's encryption key: where it is read from, its fingerprint, and what it decrypts.

n8n encrypts every credential with one key that lives outside the database
(`N8N_ENCRYPTION_KEY`, or `encryptionKey` in `~/.n8n/config`). A database backup
without it restores credentials nobody can read. The key is never logged nor
written in plain text by homelab-ops; what is recorded is a fingerprint (scrypt,
so even a weak hand-chosen key cannot be guessed back from it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from homelab_ops.backups.config import BackupsConfig
from homelab_ops.docker_host import connect

N8N_CONFIG_IN_CONTAINER = "/home/node/.n8n/config"
_FP_SALT = b"homelab-ops n8n encryption key fingerprint v1"


class KeyError_(RuntimeError):
    """The key could not be read from its configured source; the message names the source, never the key."""


@dataclass(frozen=True)
class EncryptionKey:
    value: str
    source: str  # "n8n.encryption_key", "n8n.config_file /path", "n8n.container name"

    def __repr__(self) -> str:  # never the value, also not in a traceback's locals
        return f"EncryptionKey(source={self.source!r}, fingerprint={self.fingerprint!r})"

    __str__ = __repr__

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.value)


def fingerprint(key: str) -> str:
    """`scrypt:` + 16 hex digits: tells two keys apart, says nothing about either."""
    digest = hashlib.scrypt(key.encode(), salt=_FP_SALT, n=1 << 14, r=8, p=1, dklen=8)
    return "scrypt:" + digest.hex()


def key_from_config(text: str, where: str) -> str:
    """`encryptionKey` from the JSON n8n writes to `~/.n8n/config`."""
    try:
        data = json.loads(text)
    except ValueError:
        raise KeyError_(f"{where} is not n8n's config (not JSON)") from None
    key = data.get("encryptionKey") if isinstance(data, dict) else None
    if not isinstance(key, str) or not key:
        raise KeyError_(f"{where} has no encryptionKey")
    return key


def config_bytes(key: str) -> bytes:
    """A `config` file n8n reads on start, holding only the key."""
    return json.dumps({"encryptionKey": key}, indent="\t").encode()


def configured(n8n_settings) -> bool:
    s = n8n_settings
    return s is not None and any(v is not None for v in (s.encryption_key, s.config_file, s.container))


def read_key(config: BackupsConfig) -> EncryptionKey | None:
    """The key from the one configured source; None when no source is configured."""
    s = config.n8n
    if s is None:
        return None
    if s.encryption_key is not None:
        value = s.encryption_key.get_secret_value()
        if not value:
            raise KeyError_("n8n.encryption_key is empty (is the variable it names set?)")
        return EncryptionKey(value, "n8n.encryption_key")
    if s.config_file is not None:
        where = f"n8n.config_file {s.config_file}"
        try:
            text = Path(s.config_file).read_text()
        except OSError as e:
            raise KeyError_(f"cannot read {where}: {e.strerror}") from None
        return EncryptionKey(key_from_config(text, where), where)
    if s.container is not None:
        return EncryptionKey(_key_from_container(config.docker_host, s.container), f"n8n.container {s.container}")
    return None


def _key_from_container(docker_host: str, name: str) -> str:
    import docker

    where = f"{N8N_CONFIG_IN_CONTAINER} in container {name} (n8n.container)"
    try:
        client = connect(docker_host, 60)
    except docker.errors.DockerException as e:
        raise KeyError_(f"cannot reach the Docker Engine at {docker_host}: {type(e).__name__}") from None
    try:
        stream, _ = client.api.get_archive(name, N8N_CONFIG_IN_CONTAINER)
        tar = tarfile.open(fileobj=io.BytesIO(b"".join(stream)))
        member = tar.extractfile(tar.getmembers()[0])
        text = member.read().decode() if member else ""
    except docker.errors.NotFound:
        raise KeyError_(f"no {where}: is the container named right, and is n8n's data on /home/node/.n8n?") from None
    except docker.errors.DockerException as e:
        raise KeyError_(f"cannot read {where}: {type(e).__name__}") from None
    finally:
        client.close()
    return key_from_config(text, where)


# n8n's Cipher (n8n-core): CryptoJS/OpenSSL `Salted__` format, AES-256-CBC, key and IV from
# EVP_BytesToKey with MD5 over key + salt.


def decrypt_credential(key: str, data: str) -> dict:
    """The plain object of one `credentials_entity.data`; raises ValueError when `key` does not open it."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    try:
        raw = base64.b64decode(data, validate=False)
    except ValueError:
        raise ValueError("not base64") from None
    if len(raw) < 32 or raw[:8] != b"Salted__" or (len(raw) - 16) % 16:
        raise ValueError("not n8n ciphertext")
    salt, body = raw[8:16], raw[16:]
    password = key.encode("latin-1", errors="ignore") + salt
    h1 = hashlib.md5(password).digest()
    h2 = hashlib.md5(h1 + password).digest()
    iv = hashlib.md5(h2 + password).digest()
    dec = Cipher(algorithms.AES(h1 + h2), modes.CBC(iv)).decryptor()
    padded = dec.update(body) + dec.finalize()
    unpad = padding.PKCS7(128).unpadder()
    try:
        plain = unpad.update(padded) + unpad.finalize()
        value = json.loads(plain.decode())
    except ValueError:
        raise ValueError("does not decrypt with this key") from None
    if not isinstance(value, dict):
        raise ValueError("does not decrypt to an object")
    return value


def value_hash(key: str, value: dict) -> str:
    """A keyed hash of a decrypted credential: compares two decryptions without revealing either."""
    canon = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hmac.new(key.encode(), canon, hashlib.sha256).hexdigest()[:32]
