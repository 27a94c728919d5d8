"""API keys: `cgw_<random>`, shown once, stored as a sha256 hash, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "cgw_"


def generate_key() -> str:
    # 32 random bytes: far beyond guessing, so a plain (fast) hash is a safe way to store it.
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_hint(key: str) -> str:
    return key[: len(KEY_PREFIX) + 4]


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
