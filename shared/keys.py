"""API keys: random bearer tokens, stored only as SHA-256 digests.

Keys carry 256 bits of entropy, so a fast hash is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "vf_"
WEBHOOK_SECRET_PREFIX = "whsec_"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    """A key's webhook signing secret; the farm keeps it to sign with, stored encrypted (shared/secrets.py)."""
    return WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_label(key: str) -> str:
    """The part of a key that may be shown in listings and logs."""
    return key[: len(KEY_PREFIX) + 6] + "…"
