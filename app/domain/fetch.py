"""Image params given as URLs: fetched by the gateway through the shared outbound guard
(app/net/ssrf.py), streamed into a spooled file with a size limit and an overall time limit."""

from __future__ import annotations

import asyncio
from typing import BinaryIO

import httpx

from app.domain.uploads import FetchFailed, UrlFetcher
from app.net.ssrf import OutboundGuard, UnsafeRequest, UnsafeUrl


def make_fetcher(guard: OutboundGuard, *, max_bytes: int, timeout: float) -> UrlFetcher:
    async def fetch(url: str, fh: BinaryIO) -> None:
        try:
            url = guard.check_url(url)
        except UnsafeUrl as exc:
            raise FetchFailed(f"is a URL the gateway may not fetch: {exc.reason}") from None
        try:
            # One limit for the whole download: a server that trickles bytes cannot hold a request.
            async with asyncio.timeout(timeout), guard.client(timeout=timeout) as client:
                async with client.stream("GET", url, headers={"Accept": "image/*"}) as resp:
                    if resp.status_code != 200:
                        what = (
                            "redirects, which are not followed"
                            if resp.is_redirect
                            else f"answered HTTP {resp.status_code}"
                        )
                        raise FetchFailed(f"is a URL whose server {what}")
                    length = resp.headers.get("content-length", "")
                    if length.isdigit() and int(length) > max_bytes:
                        raise FetchFailed(f"is an image larger than {max_bytes} bytes")
                    size = 0
                    async for chunk in resp.aiter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise FetchFailed(f"is an image larger than {max_bytes} bytes")
                        fh.write(chunk)  # a spooled file: in memory up to 1 MiB, then a temporary file
        except UnsafeRequest as exc:
            raise FetchFailed(f"is a URL the gateway may not fetch: {exc.reason}") from None
        # One message for every way a connection fails (refused, reset, TLS, timed out): telling
        # them apart would let a caller map which ports answer on the hosts it may name.
        except (TimeoutError, httpx.HTTPError):
            raise FetchFailed(f"could not be fetched (no complete answer within {timeout:g} s)") from None

    return fetch
