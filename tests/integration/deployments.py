"""The two deployments the integration suite runs against: one node, and a three-node cluster.

A client that knows only PROTOCOL.md must not be able to tell them apart (section 9), so
every integration test runs on both (ids `[node]` and `[cluster]`, see conftest.py). The
cluster is three in-process `serve()` instances with distinct `CHAT_NODE_ID`s on one fresh
PostgreSQL database and one Redis key prefix of the test's own, with the same JWT secret and
API key. `ClusterHandle` looks like `ServerHandle` to the tests and spreads them:

* every `connect()` and every read of `ws_url` goes to the next node, round robin, so the
  clients of one test land on different nodes;
* every read of `http_url` starts at the next node, and the HTTP client built on it
  (`client.http`) sends each request to the next node again (`SpreadUrl`, `SpreadTransport`):
  a register, a publish and the history read that checks it are answered by different nodes,
  as behind a load balancer without sticky sessions;
* `nodes` lists the nodes, for the few checks that concern one process (its /metrics) and
  for a test that wants a client on a given node; a single node's `nodes` is `[itself]`.

`server_factory()` on a cluster starts a whole new cluster on the same database and prefix:
the restart of a cluster (every node stopped, then started again).
"""

from __future__ import annotations

import itertools
import urllib.parse
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import attrs
import httpx
import pytest
import trio

from .client import Deployment
from .databases import DatabasePool

#: nodes of the cluster deployment
CLUSTER_SIZE = 3
#: PostgreSQL connections each node keeps: the machine's server is shared (max_connections 100)
NODE_POOL = 3
STOP_TIMEOUT_S = 30.0  # ServerHandle.stop's bound (tests/conftest.py), for the message


class SpreadUrl(str):
    """A base URL (its value: the node this access picked) that also names every node, in the
    order an HTTP client built on it should rotate through (`client.http` does)."""

    spread: tuple[str, ...]

    def __new__(cls, urls: Sequence[str]) -> "SpreadUrl":
        value = super().__new__(cls, urls[0])
        value.spread = tuple(urls)
        return value


class SpreadTransport(httpx.AsyncBaseTransport):
    """Sends each request to the next of `urls` (host and port rewritten, Host header too)."""

    def __init__(self, urls: Sequence[str]) -> None:
        self._targets = [httpx.URL(u) for u in urls]
        self._turn = itertools.count()
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = self._targets[next(self._turn) % len(self._targets)]
        request.url = request.url.copy_with(scheme=target.scheme, host=target.host, port=target.port)
        request.headers["Host"] = target.netloc.decode("ascii")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class ClusterHandle(Deployment):
    """Several running nodes of one chat, handed to tests as if they were one server."""

    def __init__(self, nodes: list[Any]) -> None:
        self.nodes = nodes
        self.config = nodes[0].config
        self.secret: str = nodes[0].secret
        self._ws_turn = itertools.count()
        self._http_turn = itertools.count()

    @property
    def stopped(self) -> bool:
        return all(node.stopped for node in self.nodes)

    @property
    def ws_url(self) -> str:
        """The next node's WebSocket URL (each read moves on)."""
        return self.nodes[next(self._ws_turn) % len(self.nodes)].ws_url

    @property
    def http_url(self) -> str:
        """The next node's HTTP URL; an HTTP client built on it keeps rotating per request."""
        k = next(self._http_turn) % len(self.nodes)
        urls = [node.http_url for node in self.nodes]
        return SpreadUrl(urls[k:] + urls[:k])

    def request_shutdown(self) -> None:
        for node in self.nodes:
            node.request_shutdown()

    async def wait_stopped(self) -> None:
        for node in self.nodes:
            await node.wait_stopped()

    async def stop(self) -> None:
        async with trio.open_nursery() as nursery:
            for node in self.nodes:
                nursery.start_soon(node.stop)


def bus_url(redis_url: str, prefix: str) -> str:
    """The `CHAT_BUS` of a cluster under `prefix` (options in chat_actors/bus/redis.py)."""
    return f"{redis_url}?{urllib.parse.urlencode({'prefix': prefix})}"


@asynccontextmanager
async def cluster_factory(
    base_config: Any, tmp_path: Path, make_handle: Callable[[Any, Any], Any], databases: DatabasePool,
    *, size: int = CLUSTER_SIZE,
) -> AsyncIterator[Callable[..., Awaitable[ClusterHandle]]]:
    """`await start(**overrides)` starts `size` nodes on this test's database and prefix.

    Every cluster it starts shares them, so a second call after stopping the first is a
    restart of the whole cluster. The database is dropped and the prefix's keys deleted
    once every node has stopped.
    """
    from chat_actors.server import serve
    from services import fresh_redis_prefix

    async with databases.database() as database, fresh_redis_prefix() as (redis_url, prefix):
        shared = dict(store=f"{database}?pool={NODE_POOL}", bus=bus_url(redis_url, prefix))
        clusters: list[ClusterHandle] = []
        generation = itertools.count()
        async with trio.open_nursery() as nursery:

            async def start(**overrides: Any) -> ClusterHandle:
                config = attrs.evolve(base_config, **{**overrides, **shared})
                life = next(generation)
                nodes: list[Any] = [None] * size

                async def start_node(k: int) -> None:
                    data = tmp_path / f"node-{k}"
                    data.mkdir(exist_ok=True)
                    node_config = attrs.evolve(config, node_id=f"node-{k}", data_dir=str(data))
                    with trio.fail_after(30):
                        running = await nursery.start(serve, node_config)
                    nodes[k] = make_handle(running, node_config)

                async with trio.open_nursery() as starting:   # together, as a deployment's nodes do
                    for k in range(size):
                        starting.start_soon(start_node, k, name=f"start node-{k} (cluster {life})")
                cluster = ClusterHandle(nodes)
                clusters.append(cluster)
                return cluster

            yield start
            stuck: list[str] = []

            async def stop(node: Any) -> None:
                try:
                    await node.stop()
                except trio.TooSlowError:
                    stuck.append(node.ws_url)

            for cluster in reversed(clusters):
                async with trio.open_nursery() as stopping:
                    for node in cluster.nodes:
                        stopping.start_soon(stop, node)
            if stuck:
                nursery.cancel_scope.cancel()
                pytest.fail(f"node(s) {stuck} did not stop within {STOP_TIMEOUT_S} s of request_shutdown()")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {sample with its labels: value}."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


async def metrics_total(server: Any) -> dict[str, float]:
    """Every /metrics sample summed over the server's nodes.

    Metrics belong to a process (a node counts its own connections, commits and evictions),
    so what one server shows is what the nodes of a cluster show together.
    """
    total: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=10.0) as h:
        for node in server.nodes:
            response = await h.get(f"{node.http_url}/metrics")
            assert response.status_code == 200, response.text
            for key, value in parse_metrics(response.text).items():
                total[key] = total.get(key, 0.0) + value
    return total
