"""Secrets sent in URLs (a /v1/ws key, a signed URL's signature, tokens) never reach the logs."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import websockets
from uvicorn.logging import AccessFormatter, DefaultFormatter

from tests.integration.conftest import Gateway
from tests.integration.test_live_events import ws_url
from tests.ports import free_port

SECRETS = ("cgw_secretkey_in_the_query_0123", "SIGNATURE-VALUE-123", "TOKEN-VALUE-456", "KEY-VALUE-789")


class Lines(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def test_keys_signatures_and_tokens_in_urls_are_redacted_in_the_server_logs(idle_gateway) -> None:  # noqa: ANN001
    gateway: Gateway = await idle_gateway()
    handlers = {"uvicorn.access": Lines(AccessFormatter()), "uvicorn.error": Lines(DefaultFormatter())}
    for name, handler in handlers.items():
        logging.getLogger(name).addHandler(handler)
        # The gateway fixture runs uvicorn at WARNING; a deployment logs requests at INFO.
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        async with websockets.connect(ws_url(gateway, f"?api_key={SECRETS[0]}")) as ws:
            await ws.recv()
        await gateway.http.get(f"/v1/jobs/j1/outputs/o1?expires=1&signature={SECRETS[1]}")
        await gateway.http.get(f"/healthz?token={SECRETS[2]}&key={SECRETS[3]}&page=2")
    finally:
        for name, handler in handlers.items():
            logging.getLogger(name).removeHandler(handler)
            logging.getLogger(name).setLevel(logging.WARNING)
    lines = handlers["uvicorn.access"].lines + handlers["uvicorn.error"].lines
    # The requests were logged (with what is not secret)...
    assert any("/v1/jobs/j1/outputs/o1?expires=1&signature=" in line for line in lines), lines
    assert any("/healthz?token=" in line and "page=2" in line for line in lines), lines
    assert any("WebSocket /v1/ws?api_key=" in line for line in lines), lines
    # ...without the secrets.
    for secret in SECRETS:
        assert not any(secret in line for line in lines), (secret, lines)


async def test_the_apps_own_log_lines_are_redacted_too(
    idle_gateway, caplog: pytest.LogCaptureFixture
) -> None:  # noqa: ANN001
    await idle_gateway()
    caplog.set_level(logging.INFO)
    # A webhook receiver's URL may carry its own token; the HTTP client logs each request's URL.
    logging.getLogger("httpx").info(
        'HTTP Request: %s %s "%s"', "POST", f"https://hooks.example/in?token={SECRETS[2]}", "200"
    )
    logging.getLogger("app.webhooks").warning(f"delivery to https://hooks.example/in?key={SECRETS[3]} failed")
    lines = [r.getMessage() for r in caplog.records if r.name in ("httpx", "app.webhooks")]
    assert len(lines) == 2 and all("hooks.example/in?" in line for line in lines), lines
    assert not any(secret in line for secret in SECRETS for line in lines), lines


async def test_plain_uvicorn_serving_the_app_logs_no_secrets(db_url: str, tmp_path: Path) -> None:
    """`uvicorn app.main:app` configures logging itself, before the app exists: the filter holds anyway."""
    port = free_port()
    env = {
        **os.environ,
        "GATEWAY_DATABASE_URL": db_url,
        "GATEWAY_STORAGE_DIR": str(tmp_path / "outputs"),
        "GATEWAY_COMFYUI_URLS": "http://127.0.0.1:9",
        "GATEWAY_RUN_DISPATCHER": "false",
    }
    log = tmp_path / "uvicorn.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=Path(__file__).parents[2],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            while True:
                try:
                    await client.get("/healthz")
                    break
                except httpx.HTTPError:
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                    await asyncio.sleep(0.1)
            await client.get(f"/healthz?api_key={SECRETS[0]}&signature={SECRETS[1]}")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    text = log.read_text()
    assert "/healthz?api_key=" in text, text[-3000:]
    assert SECRETS[0] not in text and SECRETS[1] not in text, text[-3000:]
