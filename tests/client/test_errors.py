"""Every refusal reaches the program as the exception named for its protocol code."""

from __future__ import annotations

import socket

import pytest
import trio

from chat_actors.client import (
    BadRequest, ConnectionFailed, Conflict, Forbidden, NotFound, NotJoined, RateLimited, TooLarge, Unauthorized,
    Unavailable, create_room, login, open_chat, publish, register,
)
from integration.client import PASSWORD

from .helpers import FAST, full_history


async def test_websocket_refusals_raise_named_exceptions(server):
    alice, bob = await server.user("alice"), await server.user("bobby")
    await create_room(server.http_url, "secret", token=alice, private=True)
    async with open_chat(server.ws_url, token=bob, backoff=FAST) as chat:
        with pytest.raises(NotJoined) as info:
            await chat.send("general", "not joined yet")
        assert info.value.code == "not_joined" and info.value.message
        with pytest.raises(BadRequest):
            await chat.send("no spaces allowed", "x")
        with pytest.raises(NotFound):
            await chat.dm("nobody", "hello?")
        with pytest.raises(NotFound):
            await chat.history("no-such-room")
        with pytest.raises(Forbidden):
            await chat.join("secret")
        await chat.join("general")
        with pytest.raises(TooLarge):
            await chat.send("general", "x" * (server.config.max_text_chars + 1))
        # after all that the connection is the first one, and it still works
        ack = await chat.send("general", "still here")
        assert ack.seq == 1 and chat.statistics().connects == 1


async def test_http_refusals_raise_named_exceptions(server):
    alice = await server.user("alice")
    with pytest.raises(Conflict) as info:
        await register(server.http_url, "alice", PASSWORD)
    assert info.value.status == 409 and info.value.code == "conflict"
    with pytest.raises(BadRequest):
        await register(server.http_url, "x", PASSWORD)  # too short
    with pytest.raises(Unauthorized):
        await login(server.http_url, "alice", "wrong password")
    await create_room(server.http_url, "taken", token=alice)
    with pytest.raises(Conflict):
        await create_room(server.http_url, "taken", token=alice)
    with pytest.raises(Unauthorized):
        await publish(server.http_url, "general", "hi", api_key="wrong key")
    assert (await login(server.http_url, "alice", PASSWORD)).user == "alice"


async def test_a_refused_token_raises_unauthorized(server):
    with pytest.raises(Unauthorized):
        async with open_chat(server.ws_url, token="not-a-token", backoff=FAST):
            pytest.fail("the chat must not open")


async def test_a_wrong_path_is_not_retried(server):
    with pytest.raises(NotFound):
        async with open_chat(server.ws_url.replace("/ws", "/nope"), token=server.token("alice"), backoff=FAST):
            pytest.fail("the chat must not open")


async def test_token_expiry_4001_ends_the_chat_with_unauthorized(server):
    await server.user("alice")
    token = server.token("alice", ttl_s=2)
    async with open_chat(server.ws_url, token=token, backoff=FAST) as chat:
        await chat.join("general")
        with trio.fail_after(15), pytest.raises(Unauthorized) as info:
            async for _ in chat.events():
                pass
        assert "4001" in str(info.value)
        with pytest.raises(Unauthorized):  # every later call says the same
            await chat.send("general", "too late")


async def test_an_unreachable_server_raises_connection_failed():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connections are refused
        with trio.fail_after(20), pytest.raises(ConnectionFailed) as info:
            async with open_chat(f"ws://127.0.0.1:{port}/ws", token="t", backoff=FAST, give_up_after=1.0):
                pytest.fail("the chat must not open")
    assert isinstance(info.value, Unavailable)


async def test_a_frame_over_the_servers_limit_is_refused_before_sending(server_factory):
    """The server would close the connection (1009) and the retry would do it again: the
    library refuses the command itself, and the connection stays up."""
    server = await server_factory(max_frame_bytes=8192)
    token = await server.user("alice")
    async with open_chat(server.ws_url, token=token, backoff=FAST) as chat:
        await chat.join("general")
        with pytest.raises(TooLarge):
            await chat.send("general", "\u20ac" * 3000)  # 3,000 characters, 9,000 bytes
        await chat.send("general", "fits")
        assert chat.statistics().connects == 1


async def test_rate_limited_is_waited_out_by_default_and_raised_on_request(server_factory):
    server = await server_factory(rate_per_second=5.0, rate_burst=5)
    token = await server.user("alice")
    async with open_chat(server.ws_url, token=token, backoff=FAST, retry_busy=False) as strict, \
            open_chat(server.ws_url, token=token, backoff=FAST) as polite:
        await strict.join("strict")
        await polite.join("polite")
        outcomes: list[object] = []

        async def send(chat, room: str, i: int) -> None:
            try:
                outcomes.append(await chat.send(room, f"m{i}"))
            except RateLimited as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(send, strict, "strict", i)
        refused = [o for o in outcomes if isinstance(o, RateLimited)]
        assert refused and refused[0].code == "rate_limited"
        assert len(await full_history(polite, "strict")) == len(outcomes) - len(refused)  # nothing refused was stored
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for i in range(12):
                    nursery.start_soon(polite.send, "polite", f"m{i}")
        texts = sorted(m.text for m in await full_history(polite, "polite"))
        assert texts == sorted(f"m{i}" for i in range(12))
    with pytest.raises(RateLimited) as info:
        for i in range(20):
            await publish(server.http_url, "general", f"p{i}", token=token)
    assert info.value.status == 429 and info.value.retry_after is not None
