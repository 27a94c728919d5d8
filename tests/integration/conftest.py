"""The gateway as users meet it: uvicorn on a loopback port, a real database, the emulator on another port."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from app.api.state import GatewayState
from app.config import Settings
from app.dispatch.dispatcher import Dispatcher
from app.main import create_app
from comfy_emulator import Emulator, EmulatorConfig
from tests.integration.webhook_receiver import Receiver
from tests.ports import free_port

ADMIN_KEY = "cgw_test_admin_key_0123456789"
TERMINAL = {"succeeded", "failed", "canceled"}


@dataclass(frozen=True)
class SseEvent:
    id: str | None
    event: str
    data: Any


def metric_sum(metrics: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` in a /metrics text whose labels include `labels` (0 if none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


class Gateway:
    def __init__(self, app: Any, server: uvicorn.Server, task: asyncio.Task, base_url: str) -> None:
        self.app = app
        self.server = server
        self.task = task
        self.base_url = base_url
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30)
        self.admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    @property
    def state(self) -> GatewayState:
        """The running gateway's typed state (app/api/state.py)."""
        return self.app.state.gateway

    @property
    def dispatcher(self) -> Dispatcher:
        # The concrete one, not the API's narrow view of it: tests look at its links.
        return self.app.state.gateway.dispatcher

    async def generate(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.http.post("/v1/generate", json=body, headers=headers or self.admin)

    async def job(self, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        resp = await self.http.get(f"/v1/jobs/{job_id}", headers=headers or self.admin)
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def wait(
        self,
        job_id: str,
        statuses: set[str] = TERMINAL,
        *,
        timeout: float = 20,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(job_id, headers)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s: {job}")
            await asyncio.sleep(0.02)

    async def sse(
        self,
        job_id: str,
        headers: dict[str, str] | None = None,
        *,
        last_event_id: str | None = None,
        previews: bool = False,
        stop: Callable[[list[SseEvent]], bool] | None = None,
        timeout: float = 30,
    ) -> list[SseEvent]:
        """A job's event stream, parsed, until the server ends it or `stop(events so far)` says so
        (then the connection is dropped, as a client that goes away does)."""
        hdrs = dict(headers or self.admin)
        if last_event_id is not None:
            hdrs["Last-Event-ID"] = last_event_id
        params = {"previews": "true"} if previews else None
        events: list[SseEvent] = []
        async with self.http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers=hdrs, params=params, timeout=timeout
        ) as resp:
            assert resp.status_code == 200, await resp.aread()
            assert resp.headers["content-type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async for line in resp.aiter_lines():
                if line == "":
                    if "event" in fields:
                        events.append(
                            SseEvent(
                                fields.get("id"), fields["event"], json.loads(fields.get("data", "null"))
                            )
                        )
                        if stop is not None and stop(events):
                            break
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
        return events

    async def create_user(
        self, name: str, *, is_admin: bool = False, limits: dict | None = None
    ) -> tuple[str, dict[str, str]]:
        """A user and a key, made through the admin API; returns the user's id and its auth header."""
        resp = await self.http.post(
            "/v1/admin/users",
            json={"name": name, "is_admin": is_admin, "limits": limits or {}},
            headers=self.admin,
        )
        assert resp.status_code == 201, resp.text
        user_id = resp.json()["id"]
        key = await self.http.post(
            f"/v1/admin/users/{user_id}/keys", json={"name": "test"}, headers=self.admin
        )
        assert key.status_code == 201, key.text
        return user_id, {"Authorization": f"Bearer {key.json()['key']}"}

    async def backends(self) -> dict[str, dict[str, Any]]:
        """The admin view of the backend pool, by URL."""
        resp = await self.http.get("/v1/admin/backends", headers=self.admin)
        assert resp.status_code == 200, resp.text
        return {b["url"]: b for b in resp.json()["items"]}

    async def wait_backend(
        self, url: str, check: Callable[[dict[str, Any]], bool], *, timeout: float = 20
    ) -> dict[str, Any]:
        """Until the admin view of a backend passes `check`; returns that view."""
        deadline = time.monotonic() + timeout
        while True:
            view = (await self.backends()).get(url)
            if view is not None and check(view):
                return view
            assert time.monotonic() < deadline, f"backend {url} never got there: {view}"
            await asyncio.sleep(0.05)

    async def wait_ready(self, timeout: float = 10) -> None:
        """Until every backend's socket is up and its node definitions are known."""
        deadline = time.monotonic() + timeout
        while not all(link.healthy and link.capabilities for link in self.dispatcher.links):
            assert time.monotonic() < deadline, "the gateway never connected to its backends"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.http.aclose()
        self.server.should_exit = True
        # Generous: on a loaded machine the dispatcher's 5 s grace can pass with a collection still
        # waiting for SQLite's write lock, and a cancelled SQLite statement only returns when its
        # busy timeout (30 s) ends; the next start reconciles whatever was left.
        await asyncio.wait_for(self.task, timeout=60)


async def start_gateway(settings: Settings, **app_options: Any) -> Gateway:
    """`app_options` go to create_app (e.g. `outbound_resolver`)."""
    app = create_app(settings, **app_options)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the gateway did not start")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return Gateway(app, server, task, f"http://127.0.0.1:{port}")


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    emu = Emulator(EmulatorConfig(step_seconds=0.01))
    await emu.start(host="127.0.0.1", port=0)
    yield emu
    await emu.stop()


@pytest.fixture
async def three_backends() -> AsyncIterator[list[Emulator]]:
    """Three emulated backends whose samplers take 30 ms a step."""
    emus = [Emulator(EmulatorConfig(step_seconds=0.03)) for _ in range(3)]
    for emu in emus:
        await emu.start(host="127.0.0.1", port=0)
    yield emus
    for emu in emus:
        if emu.alive:
            await emu.stop()


@pytest.fixture
def make_settings(db_url: str, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": db_url,
            "storage_dir": tmp_path / "outputs",
            "admin_api_key": ADMIN_KEY,
            "dispatch_poll_seconds": 0.2,
            "backend_retry_seconds": 0.2,
            "_env_file": None,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
async def gateway_factory() -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    started: list[Gateway] = []

    async def factory(settings: Settings, **app_options: Any) -> Gateway:
        gw = await start_gateway(settings, **app_options)
        started.append(gw)
        return gw

    yield factory
    for gw in reversed(started):
        await gw.close()


@pytest.fixture
def idle_gateway(make_settings, gateway_factory) -> Callable[..., Awaitable[Gateway]]:  # noqa: ANN001
    """Starts a gateway (with setting overrides) whose dispatcher does not run: jobs stay queued.
    For tests of the API alone; cheaper than `gateway`, which needs a backend."""

    async def start(**overrides: Any) -> Gateway:
        return await gateway_factory(
            make_settings(comfyui_urls=["http://127.0.0.1:9"], run_dispatcher=False, **overrides)
        )

    return start


@pytest.fixture
async def gateway(emulator: Emulator, make_settings, gateway_factory) -> Gateway:  # noqa: ANN001
    gw = await gateway_factory(make_settings(comfyui_urls=[emulator.base_url]))
    # Ready means the backend's socket is up, so tests do not race the first connection.
    deadline = time.monotonic() + 10
    while not all(gw.dispatcher.backend_health().values()):
        assert time.monotonic() < deadline, "the gateway never connected to the emulator"
        await asyncio.sleep(0.02)
    return gw


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on a loopback port (tests/integration/webhook_receiver.py)."""
    rec = Receiver()
    await rec.start()
    yield rec
    await rec.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible server: moto's standalone server (`moto[server]`), as a subprocess on a
    free loopback port. Returns its endpoint URL; tests make their own buckets."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert proc.poll() is None, "moto's server exited"
            assert time.monotonic() < deadline, "moto's server did not start"
            time.sleep(0.1)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
