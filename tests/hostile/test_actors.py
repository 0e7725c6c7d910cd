"""Room actors that crash, stall or miss a notice must not leave anyone waiting or locked out.

* A crashed actor used to close its inbox, and trio's `MemoryReceiveChannel.close()` discards
  what is queued: those commands' replies never resolved and their connections or HTTP
  requests hung. Now every queued and half-done command is answered `unavailable`, the
  room's joined connections are closed with 1011 (they resume with `join since`), and the
  next command spawns a fresh actor.
* Every wait on a room (its answer, room in its inbox) is bounded (`REPLY_TIMEOUT_S`).
* A private-room grant was dropped when the room's inbox was full, and the actor re-read
  grants only while the room did not exist yet, so the new member stayed `forbidden`.

The crash is injected by patching the actor's commit step: no input from outside is known to
crash one, which is exactly why the recovery path needs a test of its own.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from chat_actors.commands import REPLY_TIMEOUT_S, AccessCmd, Reply
from chat_actors.errors import Unavailable
from chat_actors.metrics import Metrics
from chat_actors.registry import Registry
from chat_actors.room import RoomActor, RoomDeps
from chat_actors.sessions import Sessions
from chat_actors.store.memory import MemoryStore
from integration.client import auth, http


@pytest.fixture
def doomed(monkeypatch):
    """Arm to make the next commit of room `doomed` stall briefly, then crash the actor."""
    state = {"armed": False, "entered": trio.Event()}
    original = RoomActor._flush

    async def flush(self: RoomActor) -> None:
        if self.name == "doomed" and state["armed"]:
            state["armed"] = False
            state["entered"].set()
            await trio.sleep(0.5)           # more commands queue up in the inbox meanwhile
            raise RuntimeError("injected crash")
        await original(self)

    monkeypatch.setattr(RoomActor, "_flush", flush)
    return state


async def test_a_crashed_actor_answers_every_queued_command(server, doomed) -> None:
    alice, bob, carol = [await server.user(n) for n in ("alice", "bob", "carol")]
    async with server.connect(alice) as a, server.connect(bob) as b, server.connect(carol) as c:
        await a.join("doomed")
        await b.join("doomed")
        doomed["armed"] = True
        await a.send({"type": "send", "room": "doomed", "id": "m1", "text": "one", "ref": "a1"})
        with trio.fail_after(10):
            await doomed["entered"].wait()
        # all of these reach the inbox while the actor is stuck in its commit
        await b.send({"type": "send", "room": "doomed", "id": "m2", "text": "two", "ref": "b1"})
        await b.send({"type": "presence", "room": "doomed", "ref": "b2"})
        await c.send({"type": "join", "room": "doomed", "ref": "c1"})
        async with http(server.http_url) as h:
            r = await h.post("/api/rooms/doomed/messages", json={"id": "h1", "text": "three"}, headers=auth(alice))
        assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
        for conn, ref in ((a, "a1"), (b, "b1"), (b, "b2"), (c, "c1")):
            error = await conn.expect("error", ref=ref)
            assert error["code"] == "unavailable", error
        assert await a.expect_close() == 1011       # joined: their membership lived in the actor
        assert await b.expect_close() == 1011
        await c.ping()                              # not joined: carries on
    async with server.connect(alice) as again:      # a fresh actor serves the room
        joined = await again.join("doomed", since=0)
        assert joined["seq"] == 0 and joined["recovered"] is True
        assert (await again.send_message("doomed", "after", id="m1"))["seq"] == 1


async def test_a_wait_on_a_stuck_room_is_bounded(autojump_clock, monkeypatch) -> None:
    """An actor that never takes a command: senders get `unavailable` after the bound."""

    async def stuck(self: RoomActor) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(RoomActor, "run", stuck)
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        registry = Registry(nursery, RoomDeps(store=store, sessions=Sessions(), metrics=Metrics(),
                                              presence_grace_s=1, idle_s=1), inbox_size=1)
        reply: Reply[bool] = Reply()
        await registry.send("r", AccessCmd("alice", reply))      # fits in the inbox
        started = trio.current_time()
        with pytest.raises(Unavailable):
            await reply.wait()                                   # nobody answers
        assert trio.current_time() - started == pytest.approx(REPLY_TIMEOUT_S)
        with pytest.raises(Unavailable):
            await registry.send("r", AccessCmd("alice", Reply()))  # the inbox stays full
        nursery.cancel_scope.cancel()


async def test_a_grant_made_while_the_inbox_is_full_is_honoured(server_factory, monkeypatch) -> None:
    server = await server_factory(room_inbox_size=1)
    alice, bob = await server.user("alice"), await server.user("bob")
    gate = trio.Event()
    stall = {"on": False}
    original = RoomActor._flush

    async def flush(self: RoomActor) -> None:
        if self.name == "club" and stall["on"]:
            stall["on"] = False
            await gate.wait()
        await original(self)

    monkeypatch.setattr(RoomActor, "_flush", flush)
    async with http(server.http_url) as h:
        r = await h.post("/api/rooms", json={"name": "club", "private": True}, headers=auth(alice))
        assert r.status_code == 201
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("club")
        stall["on"] = True
        await a.send({"type": "typing", "room": "club"})            # the actor stalls on this drain
        await a.send({"type": "presence", "room": "club", "ref": "p"})  # ... and this fills the inbox
        async with trio.open_nursery() as nursery:
            async def add_bob() -> None:
                async with http(server.http_url) as h:
                    r = await h.post("/api/rooms/club/members", json={"user": "bob"}, headers=auth(alice))
                    assert r.status_code == 204, r.text

            nursery.start_soon(add_bob)
            await trio.sleep(0.3)       # the grant has reached the full inbox (it used to be dropped)
            gate.set()
        await a.expect("presence_list", ref="p")
        joined = await b.join("club")
        assert joined["type"] == "joined"


async def test_a_grant_from_elsewhere_is_found_before_answering_forbidden(server_factory) -> None:
    """Two servers on one database (as two nodes): the grant goes through B, bob joins on A."""
    a_server = await server_factory()
    b_server = await server_factory()
    alice, bob = await a_server.user("alice"), await a_server.user("bob")
    async with http(a_server.http_url) as h:
        r = await h.post("/api/rooms", json={"name": "club", "private": True}, headers=auth(alice))
        assert r.status_code == 201
    async with a_server.connect(alice) as a, a_server.connect(bob) as b:
        await a.join("club")                                    # A's actor is live, grants cached
        refused = await b.request({"type": "join", "room": "club"}, "joined")
        assert refused["code"] == "forbidden"
        async with http(b_server.http_url) as h:
            r = await h.post("/api/rooms/club/members", json={"user": "bob"}, headers=auth(alice))
            assert r.status_code == 204, r.text
        joined = await b.join("club")                           # A never heard of the grant
        assert joined["type"] == "joined"
        assert (await b.send_message("club", "hi"))["type"] == "ack"
