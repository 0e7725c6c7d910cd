"""Which close codes and upgrade refusals the chat reconnects after, and which end it.

The real server closes with these codes only under conditions that are slow or unsafe to
produce in a test (a 10 s rate-limit storm, a flooded backlog, a server bug), so the peer
here is a small scripted WebSocket server (trio-websocket) that answers the upgrade, sends a
valid `welcome` and `synced`, and then closes with the code under test.
"""

from __future__ import annotations

import json
from functools import partial

import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from chat_actors.client import Forbidden, Unauthorized, open_chat

from .helpers import FAST

WELCOME = {
    "type": "welcome", "user": "alice", "session": "s", "server": "scripted", "heartbeat": 30,
    "limits": {"max_frame_bytes": 65536, "max_text_chars": 4000, "rate_per_second": 20, "rate_burst": 40},
    "rooms": [],
}


class Script:
    """Per connection: refuse the upgrade with `refuse[n]` (an HTTP status), or accept,
    greet and close with `close[n]` (the last entry repeats)."""

    def __init__(self, *, refuse: list[int | None] | None = None, close: list[int | None] | None = None) -> None:
        self.refuse = refuse or [None]
        self.close = close or [None]
        self.connections = 0
        self.changed = trio.Event()

    def _pick(self, plan: list[int | None]) -> int | None:
        return plan[min(self.connections, len(plan) - 1)]

    async def handle(self, request: WebSocketRequest) -> None:
        refuse, close = self._pick(self.refuse), self._pick(self.close)
        self.connections += 1
        self.changed.set()
        self.changed = trio.Event()
        if refuse is not None:
            body = json.dumps({"error": "refused", "message": f"scripted {refuse}"}).encode()
            await request.reject(refuse, body=body)
            return
        ws = await request.accept()
        await ws.send_message(json.dumps(WELCOME))
        await ws.send_message(json.dumps({"type": "synced"}))
        if close is None:
            await trio.sleep_forever()
        await ws.aclose(code=close, reason="scripted")

    async def until(self, connections: int) -> None:
        with trio.fail_after(20):
            while self.connections < connections:
                await self.changed.wait()


async def serve(nursery: trio.Nursery, script: Script) -> str:
    server = await nursery.start(partial(serve_websocket, script.handle, "127.0.0.1", 0, None))
    return f"ws://127.0.0.1:{server.port}/ws"


@pytest.mark.parametrize("code", [1000, 1001, 1008, 1011, 4000, 4008, 4029])
async def test_the_chat_reconnects_after_close_code(code):
    script = Script(close=[code, code, None])
    async with trio.open_nursery() as nursery:
        url = await serve(nursery, script)
        async with open_chat(url, token="t", backoff=FAST) as chat:
            await script.until(3)
            with trio.fail_after(20):
                while not (chat.connected and chat.statistics().connects == 3):
                    await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def test_close_4001_ends_the_chat_with_unauthorized():
    script = Script(close=[4001])
    async with trio.open_nursery() as nursery:
        url = await serve(nursery, script)
        # raised by open_chat itself if the close comes first, else by events()
        with trio.fail_after(20), pytest.raises(Unauthorized):
            async with open_chat(url, token="t", backoff=FAST) as chat:
                async for _ in chat.events():
                    pass
        assert script.connections == 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_a_busy_server_refusing_the_upgrade_is_retried(status):
    script = Script(refuse=[status, status, None])
    async with trio.open_nursery() as nursery:
        url = await serve(nursery, script)
        async with open_chat(url, token="t", backoff=FAST) as chat:
            assert chat.user == "alice" and script.connections == 3
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("status", "error"), [(401, Unauthorized), (403, Forbidden)])
async def test_a_refusal_no_retry_can_fix_is_raised(status, error):
    script = Script(refuse=[status])
    async with trio.open_nursery() as nursery:
        url = await serve(nursery, script)
        with pytest.raises(error):
            async with open_chat(url, token="t", backoff=FAST):
                pytest.fail("the chat must not open")
        assert script.connections == 1
        nursery.cancel_scope.cancel()
