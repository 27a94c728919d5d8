"""Signed output URLs: `?expires=<unix seconds>&signature=<hmac>`, bound to one output of one job."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


class UrlSigner:
    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._key = secret.encode("utf-8")
        self.ttl_seconds = ttl_seconds

    def _mac(self, job_id: str, output_id: str, expires: int) -> str:
        msg = f"output:{job_id}:{output_id}:{expires}".encode()
        digest = hmac.new(self._key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def sign(self, job_id: str, output_id: str, *, now: float | None = None) -> tuple[int, str]:
        # Expiry rounded up to the next full minute so that repeated views of a job within that
        # minute give the same URL, which lets browsers and CDNs cache the image.
        now = time.time() if now is None else now
        expires = int((now + self.ttl_seconds) // 60 + 1) * 60
        return expires, self._mac(job_id, output_id, expires)

    def url(self, job_id: str, output_id: str) -> str:
        expires, signature = self.sign(job_id, output_id)
        return f"/v1/jobs/{job_id}/outputs/{output_id}?expires={expires}&signature={signature}"

    def verify(self, job_id: str, output_id: str, expires: str | int | None, signature: str | None) -> bool:
        if expires is None or signature is None:
            return False
        try:
            exp = int(expires)
        except (TypeError, ValueError):
            return False
        if exp < time.time():
            return False
        # Compared as bytes: compare_digest refuses a str with non-ASCII characters (a TypeError).
        return hmac.compare_digest(
            self._mac(job_id, output_id, exp).encode("ascii"), signature.encode("utf-8", "replace")
        )
