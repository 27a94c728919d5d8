"""kill -9 of the gateway process: every job still ends correctly, and none runs twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
from sqlalchemy import select

from app.db.engine import create_engine, create_sessionmaker
from app.db.models import Job, Output
from tests.integration.conftest import ADMIN_KEY
from tests.ports import free_port

ROOT = Path(__file__).parents[2]


async def start(env: dict[str, str], port: int, log: Path, deadline_seconds: float = 30) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + deadline_seconds
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            if time.monotonic() >= deadline:
                proc.kill()  # it must not outlive the test
                raise AssertionError(log.read_text()[-3000:])
            await asyncio.sleep(0.1)


def gateway_env(db_url: str, backend: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a gateway process of these tests (one that can be killed)."""
    return {
        **os.environ,
        "GATEWAY_DATABASE_URL": db_url,
        "GATEWAY_STORAGE_DIR": str(tmp_path / "outputs"),
        "GATEWAY_COMFYUI_URLS": backend,
        "GATEWAY_ADMIN_API_KEY": ADMIN_KEY,
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_DISPATCH_POLL_SECONDS": "0.2",
    }


async def test_kill_9_with_jobs_queued_running_and_finished_unread(
    emulator, db_url: str, tmp_path: Path
) -> None:  # noqa: ANN001
    env = gateway_env(db_url, emulator.base_url, tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    log = tmp_path / "gateway.log"
    first = await start(env, port, log)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        # 500 ms each: long enough that a loaded machine still sees the second one running.
        body = {"template": "txt2img", "params": {"prompt": "crash", "steps": 50}}
        ids = [(await client.post("/v1/generate", json=body, headers=headers)).json()["id"] for _ in range(6)]
        deadline = time.monotonic() + 60
        while (await client.get(f"/v1/jobs/{ids[0]}", headers=headers)).json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "the first job never finished"
            await asyncio.sleep(0.02)
        while (
            status := (await client.get(f"/v1/jobs/{ids[1]}", headers=headers)).json()["status"]
        ) == "queued":
            assert time.monotonic() < deadline, "the second job never started"
            await asyncio.sleep(0.01)
        assert status == "running", f"the second job was already {status} when the gateway was to be killed"
    first.send_signal(signal.SIGKILL)
    first.wait()
    # While the gateway is dead, ComfyUI finishes the running prompt and starts the queued one.
    await asyncio.sleep(0.6)

    second = await start(env, port, log)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 30
            finals: dict[str, dict] = {}
            while len(finals) < len(ids):
                assert time.monotonic() < deadline, finals
                for job_id in ids:
                    job = (await client.get(f"/v1/jobs/{job_id}", headers=headers)).json()
                    if job["status"] in ("succeeded", "failed", "canceled"):
                        finals[job_id] = job
                await asyncio.sleep(0.05)
            assert all(job["status"] == "succeeded" for job in finals.values()), finals
            for job in finals.values():
                [out] = job["outputs"]
                assert (await client.get(out["url"])).status_code == 200
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(15)

    engine = create_engine(db_url)
    async with create_sessionmaker(engine)() as session:
        prompts = list((await session.execute(select(Job.prompt_id).where(Job.id.in_(ids)))).scalars())
        outputs = Counter((await session.execute(select(Output.job_id))).scalars())
    await engine.dispose()
    executed = Counter(emulator.executed_prompts)
    # Each job's final prompt ran exactly once, and nothing else ran: no job ran twice.
    assert all(executed[p] == 1 for p in prompts), (prompts, executed)
    assert sum(executed.values()) == len(ids)
    assert all(outputs[j] == 1 for j in ids)
