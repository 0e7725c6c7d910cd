"""The harness itself: on a cluster, the clients of one test really are spread over the nodes
(otherwise `[cluster]` would quietly test one node on PostgreSQL)."""

from __future__ import annotations

from contextlib import AsyncExitStack

from .client import http


async def test_connections_go_to_every_node_in_turn(server):
    token = await server.user("alice")
    async with AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(server.connect(token)) for _ in range(2 * len(server.nodes))]
    nodes = [c.welcome["node"] for c in conns]
    assert len(set(nodes)) == len(server.nodes)
    assert nodes[: len(server.nodes)] == nodes[len(server.nodes):]     # round robin
    for node in server.nodes:                                           # and one node on purpose
        async with node.connect(token) as pinned:
            assert pinned.welcome["node"] == (node.config.node_id or nodes[0])


async def test_http_requests_go_to_every_node_in_turn(server):
    """One HTTP client, every node in turn (each answers from its own port)."""
    async with http(server.http_url) as h:
        responses = [await h.get("/healthz") for _ in range(2 * len(server.nodes))]
    assert all(r.status_code == 200 for r in responses)
    ports = [r.request.url.port for r in responses]
    assert sorted(set(ports)) == sorted(int(n.http_url.rsplit(":", 1)[1]) for n in server.nodes)
    assert ports[: len(server.nodes)] == ports[len(server.nodes):]
