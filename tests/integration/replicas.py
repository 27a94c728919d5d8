"""Several gateway processes on one PostgreSQL database, and in-process emulated backends: the
helpers of test_replicas.py and bench/replicas.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from comfy_emulator import Emulator, EmulatorConfig
from tests.integration.conftest import ADMIN_KEY
from tests.integration.test_crash import start
from tests.ports import free_port

PLENTY = {"max_queued": 10_000, "rate_per_minute": 100_000, "jobs_per_day": 100_000, "max_running": 1000}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TERMINAL = {"succeeded", "failed", "canceled"}


def replica_env(
    db_url: str, backends: Iterable[str], storage: Path, name: str, lease: float
) -> dict[str, str]:
    return {
        **os.environ,
        "GATEWAY_DATABASE_URL": db_url,
        # One shared volume for every replica: an output collected by one is served by all.
        "GATEWAY_STORAGE_DIR": str(storage),
        "GATEWAY_COMFYUI_URLS": ",".join(backends),
        "GATEWAY_ADMIN_API_KEY": ADMIN_KEY,
        "GATEWAY_LOG_LEVEL": "info",
        "GATEWAY_DISPATCH_POLL_SECONDS": "0.2",
        "GATEWAY_HEALTH_CHECK_SECONDS": "0.5",
        "GATEWAY_BACKEND_LEASE_SECONDS": str(lease),
        "GATEWAY_REPLICA_NAME": name,
        "GATEWAY_METRICS_PUBLIC": "true",
    }


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen
    base: str
    log: Path
    http: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.AsyncClient(base_url=self.base, timeout=30, headers=ADMIN)

    async def owned(self) -> dict[str, str | None]:
        """Backend URL -> the name of the replica holding its lease, as this replica's admin view says."""
        resp = await self.http.get("/v1/admin/backends", params={"limit": 100})
        assert resp.status_code == 200, resp.text
        return {b["url"]: (b["lease"] or {}).get("owner_name") for b in resp.json()["items"]}

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def stop(self) -> None:
        await self.http.aclose()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)


async def start_replica(
    db_url: str,
    backends: list[str],
    tmp_path: Path,
    name: str,
    *,
    lease: float,
    storage: Path | None = None,
    env: dict[str, str] | None = None,
) -> Replica:
    """`env`: settings over the tests' (which poll often, to be quick)."""
    port = free_port()
    log = tmp_path / f"{name}.log"
    env = {**replica_env(db_url, backends, storage or tmp_path / "outputs", name, lease), **(env or {})}
    # Generous: several processes start at once on a machine that may be busy.
    proc = await start(env, port, log, deadline_seconds=90)
    replica = Replica(name, proc, f"http://127.0.0.1:{port}", log)
    return replica


async def start_backends(n: int, step_seconds: float = 0.01) -> list[Emulator]:
    emus = [Emulator(EmulatorConfig(step_seconds=step_seconds)) for _ in range(n)]
    for emu in emus:
        await emu.start(host="127.0.0.1", port=0)
    return emus


async def wait_for(check: Any, what: str, timeout: float = 30, every: float = 0.05) -> Any:
    """Until `await check()` is truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out: {what} (last: {value!r})"
        await asyncio.sleep(every)


async def make_user(replica: Replica, name: str, limits: dict[str, Any] | None = None) -> tuple[str, dict]:
    resp = await replica.http.post(
        "/v1/admin/users", json={"name": name, "is_admin": False, "limits": {**PLENTY, **(limits or {})}}
    )
    assert resp.status_code == 201, resp.text
    user_id = resp.json()["id"]
    key = await replica.http.post(f"/v1/admin/users/{user_id}/keys", json={"name": "test"})
    assert key.status_code == 201, key.text
    return user_id, {"Authorization": f"Bearer {key.json()['key']}"}


def job_body(steps: int = 10) -> dict[str, Any]:
    return {"template": "txt2img", "params": {"prompt": "replicas", "steps": steps}}


async def submit(replica: Replica, headers: dict, steps: int = 10) -> str:
    resp = await replica.http.post("/v1/generate", json=job_body(steps), headers=headers)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


async def finals(replica: Replica, ids: list[str], timeout: float = 120) -> dict[str, dict]:
    """Every job's final view (read through `replica`), once all of them ended."""
    done: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(ids):
        for job_id in [j for j in ids if j not in done]:
            # The admin route: these are other users' jobs.
            job = (await replica.http.get(f"/v1/admin/jobs/{job_id}")).json()
            if job["status"] in TERMINAL:
                done[job_id] = job
        assert time.monotonic() < deadline, f"{len(ids) - len(done)} jobs never ended"
        await asyncio.sleep(0.1)
    return done


def senders_in_order(emu: Emulator) -> list[str | None]:
    """Who sent each prompt the backend received, in the order it received them."""
    return [emu.prompt_senders.get(pid) for pid in emu.prompts_received]


def one_sender_at_a_time(senders: list[str | None]) -> bool:
    """Each sender's prompts form one run: no backend went back and forth between two replicas."""
    runs = [s for i, s in enumerate(senders) if i == 0 or senders[i - 1] != s]
    return len(runs) == len(set(runs))
