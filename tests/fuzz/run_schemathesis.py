"""A bounded schemathesis run against the gateway's own OpenAPI spec: fails on any 5xx.

Starts a demo-like gateway (SQLite in a temporary directory, the ComfyUI emulator, both on free
loopback ports), makes a user and a key, and a finished job for each key, then runs `st run`
against /openapi.json once as the admin and once as that user, with `--checks not_a_server_error`
(path ids are pinned to those rows, so routes that take an id reach real data). The exit status is
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
        except BaseException as exc:  # noqa: BLE001 — reported by __enter__
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
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="error")
        )
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


def _seed(base_url: str) -> dict[str, tuple[str, dict[str, str]]]:
    """A user with a key, another user for the admin to change, and a finished job of each key's:
    their ids are given to schemathesis, so that routes taking an id reach real rows, not only 404s."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=base_url, timeout=30) as http:

        def created(resp: httpx.Response) -> dict:
            if resp.status_code >= 300:
                raise RuntimeError(f"seeding failed: {resp.status_code} {resp.text}")
            return resp.json()

        user = created(
            http.post(
                "/v1/admin/users",
                json={"name": "fuzz user", "limits": {"allow_raw_workflows": True}},
                headers=admin,
            )
        )
        user_key = created(
            http.post(f"/v1/admin/users/{user['id']}/keys", json={"name": "fuzz"}, headers=admin)
        )["key"]
        target = created(http.post("/v1/admin/users", json={"name": "fuzz target"}, headers=admin))
        target_key = created(
            http.post(f"/v1/admin/users/{target['id']}/keys", json={"name": "target"}, headers=admin)
        )
        backend_id = created(http.get("/v1/admin/backends", headers=admin))["items"][0]["id"]
        runs = {}
        for who, key, user_id, key_id in (
            ("admin", ADMIN_KEY, target["id"], target_key["id"]),
            ("user", user_key, user["id"], ""),
        ):
            auth = {"Authorization": f"Bearer {key}"}
            job = created(
                http.post(
                    "/v1/generate",
                    json={"template": "txt2img", "params": {"prompt": "fuzz", "steps": 2}},
                    headers={**auth, "Prefer": "wait=30"},
                )
            )
            params = {
                "path.job_id": job["id"],
                "path.output_id": job["outputs"][0]["id"] if job["outputs"] else "",
                "path.user_id": user_id,
                "path.key_id": key_id,
                "path.backend_id": backend_id,
                "path.name": "txt2img",
            }
            runs[who] = (key, {k: v for k, v in params.items() if v})
        return runs


def _config(path: Path, parameters: dict[str, str]) -> Path:
    path.write_text("[parameters]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in parameters.items()))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-examples", type=int, default=15, help="Test cases per operation and key.")
    parser.add_argument("--seed", type=int, default=None, help="Schemathesis' seed, to replay a run.")
    args, extra = parser.parse_known_args()
    st = shutil.which("st", path=os.path.dirname(sys.executable)) or shutil.which("st") or "st"
    data = Path(tempfile.mkdtemp(prefix="gateway-fuzz-"))
    status = 0
    try:
        with Demo(data) as demo:
            for who, (key, parameters) in _seed(demo.base_url).items():
                config = _config(data / f"{who}.toml", parameters)
                command = [
                    st,
                    "--config-file",
                    str(config),
                    "run",
                    f"{demo.base_url}/openapi.json",
                    "--checks",
                    "not_a_server_error",
                    "--header",
                    f"Authorization: Bearer {key}",
                    "--max-examples",
                    str(args.max_examples),
                    "--phases",
                    "examples,coverage,fuzzing",
                    "--workers",
                    "1",
                    "--generation-database",
                    "none",
                    "--request-timeout",
                    "30",
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
