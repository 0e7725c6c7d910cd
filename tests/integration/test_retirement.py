"""Idle room actors retire and respawn without losing a command that races the retirement.

With a tiny idle delay, every pause between commands lets the room's actor retire, so each
burst below lands on an actor that is retiring or freshly spawned.
"""

from __future__ import annotations

import pytest
import trio

from .client import auth, http
from .deployments import metrics_total


@pytest.fixture
def server_overrides():
    return {"room_idle_s": 0.005, "rate_per_second": 100000, "rate_burst": 100000}


async def test_commands_racing_retirement_are_all_answered(server) -> None:
    alice = await server.user("alice")
    results: list[int] = []
    async with http(server.http_url) as h:
        for burst in range(30):
            async with trio.open_nursery() as nursery:
                for i in range(5):
                    async def publish(n: int = burst * 5 + i) -> None:
                        r = await h.post("/api/rooms/quiet/messages", headers=auth(alice),
                                         json={"id": f"m{n}", "text": f"t{n}"})
                        assert r.status_code == 201, r.text
                        results.append(r.json()["seq"])
                    nursery.start_soon(publish)
            await trio.sleep(0.02)  # longer than room_idle_s: the actor retires here
        with trio.fail_after(10):
            while (await metrics_total(server))["chat_rooms_active"] != 0:
                await trio.sleep(0.01)  # retirement really happens between bursts (on every node)
        page = (await h.get("/api/rooms/quiet/messages", headers=auth(alice), params={"limit": 200})).json()
    assert sorted(results) == list(range(1, 151))
    assert [m["seq"] for m in page["messages"]] == list(range(1, 151))


async def test_join_after_retirement_sees_the_room(server) -> None:
    alice = await server.user("alice")
    async with server.connect(alice) as a:
        for round_ in range(10):
            await a.join("cycle")
            ack = await a.send_message("cycle", f"r{round_}")
            assert ack["seq"] == round_ + 1
            await a.leave("cycle")
            await trio.sleep(0.02)  # the now-empty room retires
        page = await a.history("cycle")
        assert [m["text"] for m in page["messages"]] == [f"r{i}" for i in range(10)]
