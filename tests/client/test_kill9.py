"""kill -9 of the server mid-stream, twice, while another user keeps sending: the consumer's
stream equals the room's history (no gap, no repeat) and every send lands exactly once."""

from __future__ import annotations

import trio
from proc import ServerProcess

from chat_actors.client import open_chat
from integration.client import register

from .helpers import FAST, Collector, assert_stream_is_history, full_history, ws_port


def same_ports(server: ServerProcess) -> list[str]:
    return ["--ws-port", str(ws_port(server.ws_url)), "--http-port", server.http_url.rsplit(":", 1)[1]]


async def kill_and_restart(server: ServerProcess) -> ServerProcess:
    """SIGKILL (nothing graceful happens), then a new process on the same ports and database."""
    with trio.fail_after(30):
        await server.kill()
    again = ServerProcess(server.workdir, *same_ports(server))
    await again.start()
    return again


async def test_kill_9_and_restart_mid_stream(tmp_path):
    server = ServerProcess(tmp_path)
    await server.start()
    try:
        alice = await register(server.http_url, "alice")
        bob = await register(server.http_url, "bobby")
        total = 200
        acked: list[str] = []
        async with open_chat(server.ws_url, token=bob, backoff=FAST) as consumer, \
                open_chat(server.ws_url, token=alice, backoff=FAST) as producer:
            await consumer.join("general")
            await producer.join("general")
            collector = Collector(consumer, "general")

            async def produce() -> None:
                for i in range(total):
                    ack = await producer.send("general", f"m{i}", id=f"p{i}")
                    acked.append(ack.id)
                    await trio.sleep(0.005)  # a steady stream, so the kills land mid-stream

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collector.run)
                nursery.start_soon(produce)
                for when in (50, 120):
                    with trio.fail_after(60):
                        while len(acked) < when:
                            await trio.sleep(0.01)
                    server = await kill_and_restart(server)
                await collector.until(total)
                nursery.cancel_scope.cancel()
            history = await full_history(consumer, "general")
            assert_stream_is_history(collector.messages, history)
            assert [m.id for m in history] == [f"p{i}" for i in range(total)]  # each send once, in order
            assert acked == [f"p{i}" for i in range(total)]
            assert consumer.statistics().connects == 3 and producer.statistics().connects == 3
    finally:
        await server.stop()
