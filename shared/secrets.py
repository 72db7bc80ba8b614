"""Secrets at rest: the webhook signing secrets stored in the database are encrypted (Fernet: AES-128-CBC and
HMAC-SHA256) with keys held outside it, `VOICEFARM_SECRET_KEY` (or the data dir's `secret_key` file that the
embedded farm makes).

The setting may hold several comma-separated keys: the first encrypts, every one decrypts (MultiFernet), so a key
is rotated by putting a new one first, running `voicefarm keys reencrypt` (every stored secret rewritten under the
first key), then dropping the old one. A stored value that is not a Fernet token is a plaintext secret written
before encryption: it is read as it is, and `keys reencrypt` encrypts it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from shared.config import SECRET_KEY_FILE, Settings

# Every Fernet token starts with its version byte 0x80 and a timestamp, "gAAAAA" in url-safe base64; a plaintext
# webhook secret starts with "whsec_".
_TOKEN_PREFIX = "gAAAAA"
HOW_TO_MAKE_A_KEY = (
    "make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


class SecretKeyError(RuntimeError):
    """No key, a malformed key, or a stored secret that none of the keys opens."""


class SecretBox:
    """Seals (encrypts) and opens (decrypts) the secrets the farm stores, under the configured keys."""

    def __init__(self, keys: list[str]) -> None:
        fernets = []
        for n, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key.encode()))
            except ValueError:
                raise SecretKeyError(
                    f"VOICEFARM_SECRET_KEY: key {n} is not a Fernet key (32 url-safe base64-encoded bytes); "
                    + HOW_TO_MAKE_A_KEY
                ) from None
        self._fernet = MultiFernet(fernets) if fernets else None

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        return _box(tuple(settings.secret_keys()))

    @property
    def has_key(self) -> bool:
        return self._fernet is not None

    def seal(self, plaintext: str) -> str:
        """The value to store: the secret encrypted under the first key."""
        return self._require().encrypt(plaintext.encode()).decode()

    def open(self, stored: str) -> str:
        """The secret of a stored value: decrypted, or as it is when it was stored before encryption."""
        if not is_sealed(stored):
            return stored
        try:
            return self._require().decrypt(stored.encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                "a stored secret opens with none of VOICEFARM_SECRET_KEY's keys: was a key dropped before "
                "`voicefarm keys reencrypt` ran?"
            ) from None

    def reseal(self, stored: str) -> str:
        """The stored value rewritten under the first key (a plaintext one encrypted)."""
        if not is_sealed(stored):
            return self.seal(stored)
        try:
            return self._require().rotate(stored.encode()).decode()
        except InvalidToken:
            raise SecretKeyError("a stored secret opens with none of VOICEFARM_SECRET_KEY's keys") from None

    def _require(self) -> MultiFernet:
        if self._fernet is None:
            raise SecretKeyError("no VOICEFARM_SECRET_KEY: webhook signing secrets cannot be encrypted or read; "
                                 + HOW_TO_MAKE_A_KEY)  # fmt: skip
        return self._fernet


@lru_cache(maxsize=8)
def _box(keys: tuple[str, ...]) -> SecretBox:
    return SecretBox(list(keys))


def is_sealed(stored: str) -> bool:
    return stored.startswith(_TOKEN_PREFIX)


def open_secret(settings: Settings, stored: str) -> str:
    """A stored secret in the clear, with the keys of these settings."""
    return SecretBox.from_settings(settings).open(stored)


def require_secret_key(settings: Settings) -> None:
    """Refuse to serve without a key: raises `SecretKeyError` naming the fix (also when a key is malformed)."""
    if not SecretBox.from_settings(settings).has_key:
        raise SecretKeyError(
            "no VOICEFARM_SECRET_KEY: the API stores webhook signing secrets encrypted with a key held outside the "
            f"database. Set VOICEFARM_SECRET_KEY (the same on the API and the webhook workers; {HOW_TO_MAKE_A_KEY}"
            "), or run the embedded farm (`voicefarm up`), which keeps one in its data dir."
        )


def ensure_key_file(data_dir: Path) -> str:
    """The embedded farm's key, made on its first start: `secret_key` in the data dir, readable by its owner only."""
    path = data_dir / SECRET_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_KEY_FILE}.{secrets.token_hex(4)}")
        tmp.touch(mode=0o600)
        try:
            tmp.write_text(Fernet.generate_key().decode() + "\n")
            with contextlib.suppress(FileExistsError):  # another start made one first: keep that one
                os.link(tmp, path)
        finally:
            tmp.unlink()
    path.chmod(0o600)
    return path.read_text().strip()
