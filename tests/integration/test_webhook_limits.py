"""Webhook attempts against receivers that stall: each attempt ends at GATEWAY_WEBHOOK_TIMEOUT_SECONDS
however slowly the receiver answers, a delivery is never sent twice at once, and one user's stalled
receivers cannot take every sending slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from comfy_emulator import Emulator
from tests.integration.conftest import Gateway
from tests.integration.webhook_receiver import Receiver

BLUR = {"template": "blur", "params": {"width": 32, "height": 32, "blur_radius": 1}}


class TricklingReceiver:
    """A raw TCP server that reads a request's head, then sends its 200 answer one byte every 0.2 s
    (a receiver that keeps a sender waiting without ever going quiet long enough for a read
    timeout). It records how many connections were open at once."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await reader.readuntil(b"\r\n\r\n")
            trickle = asyncio.create_task(self._trickle(writer))
            # The sender closing its end is seen as the end of what it sends.
            while await reader.read(65536):
                pass
            trickle.cancel()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def _trickle(self, writer: asyncio.StreamWriter) -> None:
        try:
            for i in range(len(self.ANSWER)):
                writer.write(self.ANSWER[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.2)
        except OSError:
            pass

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def trickling() -> AsyncIterator[TricklingReceiver]:
    rec = TricklingReceiver()
    await rec.start()
    yield rec
    await rec.stop()


@pytest.fixture
def hooked(emulator: Emulator, make_settings, gateway_factory) -> Callable[..., Any]:  # noqa: ANN001
    async def start(**overrides: Any) -> Gateway:
        settings = make_settings(
            comfyui_urls=[emulator.base_url],
            **{
                "outbound_allowlist": ["127.0.0.1"],
                "webhook_retry_jitter": 0,
                "webhook_poll_seconds": 0.05,
                **overrides,
            },
        )
        gw = await gateway_factory(settings)
        await gw.wait_ready()
        return gw

    return start


async def make_user(gw: Gateway, name: str) -> dict[str, str]:
    _, headers = await gw.create_user(name, limits={"rate_per_minute": 100_000})
    return headers


async def wait_deliveries(
    gw: Gateway,
    job_id: str,
    headers: dict[str, str],
    done: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 30,
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        resp = await gw.http.get(f"/v1/jobs/{job_id}/webhook-deliveries", headers=headers)
        assert resp.status_code == 200, resp.text
        items = resp.json()["items"]
        if done(items):
            return items
        assert time.monotonic() < deadline, f"deliveries of {job_id} never got there: {items}"
        await asyncio.sleep(0.05)


async def test_a_trickling_receiver_gets_timed_out_attempts_one_at_a_time_up_to_max_attempts(
    hooked,
    trickling: TricklingReceiver,  # noqa: ANN001
) -> None:
    # The answer takes about 14 s to trickle in; each attempt may take 1 s. The lease is short
    # too (but longer than an attempt), so a sender that outlived it would be seen sending twice.
    gw = await hooked(
        webhook_timeout_seconds=1,
        webhook_lease_seconds=3,
        webhook_retry_schedule=[1.0],
        webhook_max_attempts=3,
    )
    user = await make_user(gw, "app")
    url = f"http://127.0.0.1:{trickling.port}/hook"
    job = (await gw.generate({**BLUR, "webhook": {"url": url}}, user)).json()

    [delivery] = await wait_deliveries(
        gw, job["id"], user, lambda items: items and items[0]["status"] != "pending", timeout=60
    )
    assert delivery["status"] == "failed", delivery
    assert [(a["succeeded"], a["status_code"], a["error"]) for a in delivery["attempts"]] == [
        (False, None, "timeout")
    ] * 3
    assert delivery["last_error"] == "timeout"
    # Exactly one connection per attempt, never two at once.
    assert trickling.connections == 3 and trickling.most_open == 1


async def test_one_users_hanging_receivers_do_not_hold_up_another_users_webhook(
    hooked, receiver: Receiver
) -> None:  # noqa: ANN001
    gw = await hooked(
        webhook_timeout_seconds=120,
        webhook_lease_seconds=240,
        webhook_max_inflight=4,
        webhook_max_inflight_per_user=2,
    )
    alice, bob = await make_user(gw, "alice"), await make_user(gw, "bob")
    release = receiver.hold("/hangs")
    try:
        # Six deliveries of Alice's (running and succeeded, three jobs), each kept waiting.
        hook = {"url": receiver.url("/hangs"), "events": ["job.running", "job.succeeded"]}
        for _ in range(3):
            job = (await gw.generate({**BLUR, "webhook": hook}, alice)).json()
            await gw.wait(job["id"], headers=alice)
        await receiver.wait_for(lambda: len(receiver.at("/hangs")) >= 2)

        theirs = (await gw.generate({**BLUR, "webhook": {"url": receiver.url("/bob")}}, bob)).json()
        await wait_deliveries(
            gw, theirs["id"], bob, lambda items: items and items[0]["status"] == "succeeded", timeout=30
        )
        # Alice's receiver still holds every request it got: no more than her share went out.
        assert len(receiver.at("/hangs")) == 2
    finally:
        release.set()
