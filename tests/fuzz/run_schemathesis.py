"""A bounded schemathesis run against the gateway's own OpenAPI spec: fails on any 5xx.

Starts a demo-like gateway (SQLite in a temporary directory, the ComfyUI emulator, both on free
loopback ports), makes a user and a key for it, then runs `st run` against /openapi.json once as
the admin and once as that user, with `--checks not_a_server_error`. The exit status is
schemathesis' (non-zero when any request got a 5xx), so `.ci/run` fails on one.

    python tests/fuzz/run_schemathesis.py [--max-examples N] [extra `st run` options ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402
from comfy_emulator import Emulator, EmulatorConfig  # noqa: E402

ADMIN_KEY = "cgw_fuzz_admin_key_0123456789abcdef"


class Demo:
    """The gateway and the emulator on their own event loop, in a thread, while `st` runs."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.base_url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="demo", daemon=True)

    def __enter__(self) -> Demo:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None or not self.base_url:
            raise RuntimeError(f"the gateway did not start: {self._error!r}")
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(90)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by __enter__
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        emulator = Emulator(EmulatorConfig(step_seconds=0.005, node_seconds=0.001))
        await emulator.start(host="127.0.0.1", port=0)
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{self.data}/gateway.db",
            storage_dir=self.data / "outputs",
            comfyui_urls=[emulator.base_url],
            admin_api_key=ADMIN_KEY,
            # The run sends hundreds of requests a minute: limits would answer most of them 429.
            default_rate_per_minute=1_000_000,
            default_max_queued=1_000_000,
            default_jobs_per_day=100_000_000,
            _env_file=None,
        )
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="error"))
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped")
                await asyncio.sleep(0.02)
            self.base_url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
            self._ready.set()
            await self._stop.wait()
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 60)
            await emulator.stop()


def _user_key(base_url: str) -> str:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=base_url, headers=admin, timeout=30) as http:
        user = http.post("/v1/admin/users", json={"name": "fuzz user", "limits": {"allow_raw_workflows": True}})
        user.raise_for_status()
        key = http.post(f"/v1/admin/users/{user.json()['id']}/keys", json={"name": "fuzz"})
        key.raise_for_status()
        return key.json()["key"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=15, help="Test cases per operation and key.")
    parser.add_argument("--seed", type=int, default=None, help="Schemathesis' seed, to replay a run.")
    args, extra = parser.parse_known_args()
    st = shutil.which("st", path=os.path.dirname(sys.executable)) or shutil.which("st") or "st"
    data = Path(tempfile.mkdtemp(prefix="gateway-fuzz-"))
    status = 0
    try:
        with Demo(data) as demo:
            keys = {"admin": ADMIN_KEY, "user": _user_key(demo.base_url)}
            for who, key in keys.items():
                command = [
                    st, "run", f"{demo.base_url}/openapi.json",
                    "--checks", "not_a_server_error",
                    "--header", f"Authorization: Bearer {key}",
                    "--max-examples", str(args.max_examples),
                    "--phases", "examples,coverage,fuzzing",
                    "--workers", "1",
                    "--generation-database", "none",
                    "--request-timeout", "30",
                    "--no-color",
                    *(["--seed", str(args.seed)] if args.seed is not None else []),
                    *extra,
                ]
                print(f"== schemathesis as the {who} ==", flush=True)
                code = subprocess.call(command, cwd=data)
                status = status or code
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
