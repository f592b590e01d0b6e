"""Optional encryption at rest of the speaker cache's biometric columns (AES-256-GCM).

What it protects: a cache file copied off the robot (a stolen SD card, a backup, a support
bundle) without the key. Each speaker's profile (voice centroid, feature statistics, stage-3
prototype) and cached FiLM/gate parameters are sealed with AES-256-GCM (`cryptography`, the
`[secure]` extra; manylinux aarch64 wheels, so it installs on JetPack 6), a fresh 96-bit nonce per
write, and the column name as associated data (a profile cannot be passed off as parameters).

What it does not protect: names, ids, first/last-seen times and utterance counts stay in clear
(names are looked up and kept unique by SQLite); a running device, whose memory holds the key and
the decrypted profiles; someone who can read the key file or the process environment. Keep the
key off the cache's disk (e.g. a TPM-backed or tmpfs key file) for the protection to mean much.

The key is `MLSAN_CACHE_KEY` (any string: a random one from `python -c "import secrets;
print(secrets.token_hex(32))"` is best), or the contents of the file named by
`MLSAN_CACHE_KEY_FILE` / `--key-file`. It is stretched with scrypt under a random per-cache salt
kept in the cache's meta table, beside a sealed check value that makes a wrong key a clear error.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

ENV_KEY = "MLSAN_CACHE_KEY"
ENV_KEY_FILE = "MLSAN_CACHE_KEY_FILE"
MAGIC = b"MLSE1"  # sealed values start with this, then the 12-byte nonce, then ciphertext + tag
_CHECK = b"mlsan-speaker-cache key check"
# scrypt cost: 2**14 x 8 x 1 takes ~50 ms and 16 MB once per open on an Orin CPU-class core
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}


class CacheKeyError(ValueError):
    """The cache's key is missing, wrong, or cannot be used (what to do is in the message)."""


def key_material(key: str | bytes | None = None, key_file: str | Path | None = None) -> bytes | None:
    """The secret to derive the cache key from: `key`, else `key_file`'s contents, else
    $MLSAN_CACHE_KEY, else the file named by $MLSAN_CACHE_KEY_FILE; None when there is none."""
    if key is None and key_file is None:
        key = os.environ.get(ENV_KEY) or None
        key_file = os.environ.get(ENV_KEY_FILE) or None
    if key is not None:
        material = key.encode() if isinstance(key, str) else bytes(key)
    elif key_file is not None:
        try:
            material = Path(key_file).read_bytes().strip()
        except OSError as e:
            raise CacheKeyError(f"cannot read the speaker-cache key file {key_file}: {e}") from e
    else:
        return None
    if len(material) < 16:
        raise CacheKeyError(f"the speaker-cache key is {len(material)} bytes; use at least 16 (e.g. "
                            "python -c \"import secrets; print(secrets.token_hex(32))\")")
    return material


def _aesgcm():
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    except ImportError as e:
        raise CacheKeyError("a speaker-cache key is set but encryption needs the `cryptography` package: "
                            "pip install 'mlsan-edge[secure]' (or unset MLSAN_CACHE_KEY / --key-file)") from e
    return AESGCM, Scrypt


class Sealer:
    """Seals and opens column values with a key derived from `material` and `salt`."""

    def __init__(self, material: bytes, salt: bytes) -> None:
        AESGCM, Scrypt = _aesgcm()
        key = Scrypt(salt=salt, length=32, **_SCRYPT).derive(material)
        self._aead = AESGCM(key)

    @staticmethod
    def new_salt() -> bytes:
        return secrets.token_bytes(16)

    def seal(self, data: bytes, column: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return MAGIC + nonce + self._aead.encrypt(nonce, data, column.encode())

    def open(self, blob: bytes, column: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        if not is_sealed(blob):
            raise CacheKeyError(f"a {column} value in the cache is not encrypted although the cache is")
        try:
            return self._aead.decrypt(blob[len(MAGIC):len(MAGIC) + 12], blob[len(MAGIC) + 12:], column.encode())
        except InvalidTag as e:
            raise CacheKeyError(f"a {column} value does not decrypt with this key (wrong key, or the file "
                                "was tampered with)") from e

    def check_value(self) -> bytes:
        return self.seal(_CHECK, "check")

    def verify(self, check: bytes, path) -> None:
        try:
            ok = self.open(check, "check") == _CHECK
        except CacheKeyError:
            ok = False
        if not ok:
            raise CacheKeyError(f"wrong key for the encrypted speaker cache {path}: it was created with "
                                f"another ${ENV_KEY} / key file")


def is_sealed(value) -> bool:
    return isinstance(value, (bytes, bytearray, memoryview)) and bytes(value[:len(MAGIC)]) == MAGIC
