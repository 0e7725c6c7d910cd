"""Shared pieces of the client-library tests: fast backoff, collecting a room's stream,
reading a room's whole history, and the stream property every test checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from chat_actors.client import Backoff, Chat, Message, open_chat

#: Reconnect quickly in tests (the policy itself is unit-tested in test_units.py).
FAST = Backoff(initial=0.05, maximum=0.5)
WAIT = 60.0


async def wait_for(predicate: Any, timeout: float = WAIT) -> None:
    """Poll `predicate()` until it holds (bounded; a state to reach, not a speed to measure)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def ws_via(port: int) -> str:
    """The WebSocket URL of a FaultProxy (or anything) listening on 127.0.0.1:port."""
    return f"ws://127.0.0.1:{port}/ws"


def ws_port(ws_url: str) -> int:
    return int(ws_url.rsplit(":", 1)[1].split("/", 1)[0])


class Collector:
    """Reads `chat.events()` in the background and keeps the messages of `room`."""

    def __init__(self, chat: Chat, room: str) -> None:
        self.chat = chat
        self.room = room
        self.messages: list[Message] = []
        self.others: list[Any] = []
        self._changed = trio.Event()

    async def run(self) -> None:
        async for event in self.chat.events():
            if isinstance(event, Message) and event.room == self.room:
                self.messages.append(event)
            else:
                self.others.append(event)
            self._changed.set()
            self._changed = trio.Event()

    async def until(self, seq: int, timeout: float = WAIT) -> list[Message]:
        """Wait until a message with `seq` or higher arrived; the messages so far."""
        with trio.fail_after(timeout):
            while not self.messages or self.messages[-1].seq < seq:
                await self._changed.wait()
        return self.messages

    async def count(self, n: int, timeout: float = WAIT) -> list[Message]:
        """Wait until `n` messages arrived in all."""
        with trio.fail_after(timeout):
            while len(self.messages) < n:
                await self._changed.wait()
        return self.messages


@asynccontextmanager
async def consuming(ws_url: str, token: str, room: str = "general", **options: Any) -> AsyncIterator[tuple[Chat, Collector]]:
    """A chat that joined `room`, with a Collector reading its events in the background."""
    async with open_chat(ws_url, token=token, backoff=FAST, **options) as chat:
        await chat.join(room)
        collector = Collector(chat, room)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collector.run)
            yield chat, collector
            nursery.cancel_scope.cancel()


async def send_all(ws_url: str, token: str, texts: Iterable[str], room: str = "general",
                   progress: list[int] | None = None) -> list[Message]:
    """Join `room` on a chat of its own, send `texts` one by one (appending each ack's seq
    to `progress`); the room's history after."""
    async with open_chat(ws_url, token=token, backoff=FAST) as chat:
        await chat.join(room)
        for text in texts:
            ack = await chat.send(room, text)
            if progress is not None:
                progress.append(ack.seq)
        return await full_history(chat, room)


def same_ports(server: Any) -> dict[str, int]:
    """server_factory overrides that bring a server back on the ports `server` had."""
    return {"ws_port": ws_port(server.ws_url), "http_port": int(server.http_url.rsplit(":", 1)[1])}


async def collect(chat: Chat, room: str, until_seq: int, timeout: float = WAIT) -> list[Message]:
    """Read `chat.events()` until `room`'s message `until_seq`; that room's messages."""
    out: list[Message] = []
    with trio.fail_after(timeout):
        async for event in chat.events():
            if isinstance(event, Message) and event.room == room:
                out.append(event)
                if event.seq >= until_seq:
                    break
    return out


async def full_history(chat: Chat, room: str) -> list[Message]:
    """Every stored message of `room`, oldest first."""
    out: list[Message] = []
    after = 0
    while True:
        page = await chat.history(room, after=after, limit=200)
        out.extend(page.messages)
        if not page.more:
            return out
        after = out[-1].seq


def assert_stream_is_history(stream: list[Message], history: list[Message]) -> None:
    """The consumer saw exactly the room's history: every seq once, in order, same content."""
    seqs = [m.seq for m in stream]
    assert seqs == list(range(1, len(seqs) + 1)), f"gap or repeat: {_summary(seqs)}"
    assert stream == history


def _summary(seqs: list[int]) -> str:
    seen: set[int] = set()
    repeats = sorted({s for s in seqs if s in seen or seen.add(s)})  # type: ignore[func-returns-value]
    missing = sorted(set(range(1, max(seqs, default=0) + 1)) - seen)
    disorder = [(a, b) for a, b in zip(seqs, seqs[1:]) if b < a][:5]
    return f"{len(seqs)} messages, repeated {repeats[:10]}, missing {missing[:10]}, out of order {disorder}"
