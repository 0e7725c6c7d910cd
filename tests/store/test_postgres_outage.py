"""PostgreSQL going away under a running store, through a fault-injecting TCP proxy.

While the server cannot be reached every call raises errors.Unavailable within a bound and
nothing else escapes; once it is back the same store instance serves again by itself. Two
kinds of outage: a cut (connections closed, new ones reset: a server that stopped) and a
black hole (bytes accepted and never answered: a frozen host, a silent network), where only
the store's own deadline can notice. Bounds are generous ``fail_after`` waits, not timing
assertions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio

from chat_actors import errors
from chat_actors.store import NewMessage, RoomBatch, Store, open_store
from faultproxy import FaultProxy
from services import POSTGRES_URL, postgres_url  # noqa: F401  (postgres_url is a fixture)

# Short bounds, so that a black-holed call gives up quickly (connect_timeout is at least 2 s in libpq).
OPTIONS = "?pool=2&timeout=1.5&connect_timeout=2"


def through(proxy: FaultProxy, url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{netloc}{proxy.host}:{proxy.port}")) + OPTIONS


def upstream() -> tuple[str, int]:
    parts = urlsplit(POSTGRES_URL)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def operations(store: Store, tag: str) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
    """One of each kind of call: the room batch path, single-statement writes, reads."""
    return [
        ("commit", lambda: store.commit(RoomBatch("general", (NewMessage("alice", f"{tag}-c", "x", None, 1),)))),
        ("create_user", lambda: store.create_user(f"user-{tag}", "h", 1)),
        ("add_grant", lambda: store.add_grant("general", f"user-{tag}")),
        ("get_room", lambda: store.get_room("general")),
        ("load_room", lambda: store.load_room("general")),
        ("history", lambda: store.history("general", before=None, after=None, limit=10)),
        ("user_rooms", lambda: store.user_rooms("alice")),
        ("ping", store.ping),
    ]


async def all_unavailable(store: Store, tag: str, bound: float) -> None:
    """Every call raises Unavailable, and nothing else, each within ``bound`` seconds."""
    for name, call in operations(store, tag):
        with trio.fail_after(bound):
            with pytest.raises(errors.Unavailable):
                await call()


async def serves_again(store: Store, tag: str) -> int:
    """Retry a commit (as a client would) until it lands; returns its seq."""
    with trio.fail_after(45):
        while True:
            try:
                [result] = await store.commit(RoomBatch("general", (NewMessage("alice", tag, "back", None, 2),)))
                return result.seq
            except errors.Unavailable:
                await trio.sleep(0.1)


async def every_connection_serves(store: Store, pool: int) -> None:
    """As many concurrent calls as connections: no thread still holds a token or a connection."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(pool * 2):
                nursery.start_soon(store.get_room, "general")


async def test_cut_fails_fast_and_the_store_recovers(postgres_url: str) -> None:
    host, port = upstream()
    async with FaultProxy(host, port) as proxy:
        async with open_store(through(proxy, postgres_url)) as store:
            await store.create_room("general", kind="public", owner=None, ts=1)
            [first] = await store.commit(RoomBatch("general", (NewMessage("alice", "c0", "x", None, 1),)))
            accepted = proxy.accepted

            proxy.cut()
            await all_unavailable(store, "cut", bound=10)
            await all_unavailable(store, "cut-again", bound=10)  # also once the store knows it is down

            proxy.restore()
            assert await serves_again(store, "after") == first.seq + 1  # nothing was stored meanwhile
            await every_connection_serves(store, pool=2)
            assert proxy.accepted > accepted  # the pool reconnected by itself
            page, _ = await store.history("general", before=None, after=None, limit=10)
            assert [(m.seq, m.client_id) for m in page] == [(1, "c0"), (2, "after")]
            assert await store.get_user("user-cut") is None


async def test_black_hole_is_bounded_by_the_deadline_and_the_store_recovers(postgres_url: str) -> None:
    host, port = upstream()
    async with FaultProxy(host, port) as proxy:
        async with open_store(through(proxy, postgres_url)) as store:
            await store.create_room("general", kind="public", owner=None, ts=1)
            await store.commit(RoomBatch("general", (NewMessage("alice", "c0", "x", None, 1),)))

            proxy.blackhole()
            await all_unavailable(store, "hole", bound=15)

            proxy.restore()
            seq = await serves_again(store, "after")
            assert seq == 2  # what went into the hole never reached the server
            await every_connection_serves(store, pool=2)  # the abandoned threads all finished
            page, _ = await store.history("general", before=None, after=None, limit=10)
            assert [m.seq for m in page] == list(range(1, seq + 1))  # gap-free
            assert page[-1].client_id == "after" and page[0].client_id == "c0"


async def test_open_through_a_black_hole_is_bounded(postgres_url: str) -> None:
    host, port = upstream()
    async with FaultProxy(host, port) as proxy:
        proxy.blackhole()
        with trio.fail_after(30):
            with pytest.raises(errors.Unavailable):
                async with open_store(through(proxy, postgres_url)):
                    pass
