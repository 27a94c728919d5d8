"""Live connections (SSE streams, /v1/ws) against hostile or greedy clients: odd keys, too many streams."""

from __future__ import annotations

import json

import websockets

from tests.integration.conftest import Gateway
from tests.integration.test_live_events import assert_closed_for_policy, ws_url


async def test_ws_first_frame_key_with_a_lone_surrogate_is_refused_like_a_bad_key(idle_gateway) -> None:  # noqa: ANN001
    gateway: Gateway = await idle_gateway()
    # JSON may escape a lone surrogate, which no UTF-8 string can hold: as a key it is merely wrong.
    for first in ('{"api_key": "cgw_\\ud800"}', '"\\udfff"'):
        async with websockets.connect(ws_url(gateway)) as ws:
            await ws.send(first)
            error = json.loads(await ws.recv())
            assert error["event"] == "error" and error["data"]["status"] == 401
            await assert_closed_for_policy(ws)
