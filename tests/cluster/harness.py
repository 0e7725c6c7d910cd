"""A cluster of real node processes on the machine's PostgreSQL and Redis (PROTOCOL section 9).

`open_cluster` starts N `python -m chat_actors serve` processes (tests/proc.py) with distinct
`--node-id`s on one fresh PostgreSQL database and one fresh Redis key prefix
(tests/services.py), the same JWT secret and API key, a short `--node-lease` and
`--presence-grace`, and stops them at the end (SIGTERM; a node a test killed is only reaped).
With `proxied=True` every node reaches Redis and PostgreSQL through FaultProxies of its own
(tests/faultproxy.py), so a test can cut or black-hole one node's services, or all of them.

At the end every node still meant to run must still be running: a node that died by itself
(a crash, an unhandled error) fails the test with its log. Waits are generous and bounded;
nothing here measures speed.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.parse
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import trio

from faultproxy import FaultProxy
from integration.client import Conn, auth, connect, http, register
from proc import ServerProcess

SECRET = "cluster-test-secret-" + "0123456789abcdef" * 2
API_KEY = "cluster-test-api-key"
#: short, so that crash tests are quick; the lease is renewed every third of it
NODE_LEASE_S = 2.0
PRESENCE_GRACE_S = 1.0
#: PROTOCOL section 9: a dead node's users are offline within lease + grace (plus slack
#: for the renewal period, a loaded machine and the test's own polling)
OFFLINE_BOUND_S = NODE_LEASE_S + PRESENCE_GRACE_S + 8.0
#: store URL options: a call gives up after `timeout`, a connect after `connect_timeout`
STORE_OPTIONS = {"timeout": "3", "connect_timeout": "2"}


def _host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 0


def _with_address(url: str, port: int | None = None, query: dict[str, str] | None = None) -> str:
    """`url` pointing at 127.0.0.1:`port` (a proxy; None: the host and port unchanged), with
    `query` added to its options."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    if port is not None:
        netloc[-1] = f"127.0.0.1:{port}"
    merged = dict(urllib.parse.parse_qsl(parts.query))
    merged.update(query or {})
    return urllib.parse.urlunsplit(parts._replace(netloc="@".join(netloc), query=urllib.parse.urlencode(merged)))


class Node:
    """One node process, its URLs, and (when proxied) its own proxies to Redis and PostgreSQL."""

    def __init__(self, name: str, process: ServerProcess, redis: FaultProxy | None, pg: FaultProxy | None) -> None:
        self.name = name
        self.process = process
        self.redis = redis
        self.postgres = pg
        self.killed = False

    @property
    def ws_url(self) -> str:
        return self.process.ws_url

    @property
    def http_url(self) -> str:
        return self.process.http_url

    def connect(self, token: str, **kwargs: Any) -> contextlib.AbstractAsyncContextManager[Conn]:
        """A WebSocket connection to this node, after `welcome` ... `synced`."""
        return connect(self.ws_url, token, **kwargs)

    def http(self) -> httpx.AsyncClient:
        return http(self.http_url)

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        async with self.http() as h:
            r = await h.get("/readyz")
        return r.status_code, r.json()

    async def metric(self, name: str) -> float:
        """The value of one unlabelled metric from /metrics."""
        async with self.http() as h:
            text = (await h.get("/metrics")).text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert match, f"{name} not in /metrics of {self.name}"
        return float(match.group(1))

    async def publish(self, room: str, text: str, id: str, *, token: str | None = None) -> httpx.Response:
        """HTTP publish: as the token's user, or as `system` with the API key."""
        headers = auth(token) if token else {"X-Api-Key": API_KEY}
        async with self.http() as h:
            return await h.post(f"/api/rooms/{room}/messages", json={"id": id, "text": text}, headers=headers)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the node's process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def kill(self) -> None:
        """kill -9: nothing is flushed, no close frame goes out."""
        self.killed = True
        await self.process.kill()

    def __repr__(self) -> str:
        return f"<node {self.name} {self.ws_url}>"


class Cluster:
    """The nodes of one test, and the few facts tests need about them."""

    def __init__(self, workdir: Path, nursery: trio.Nursery, *,
                 store_url: str, bus_url: str, proxied: bool, args: Iterable[str]) -> None:
        self.workdir = workdir
        self._nursery = nursery
        self.store_url = store_url
        self.bus_url = bus_url
        self.proxied = proxied
        self.args = tuple(args)
        self.nodes: list[Node] = []

    def __getitem__(self, index: int) -> Node:
        return self.nodes[index]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.nodes)

    @property
    def live(self) -> list[Node]:
        return [n for n in self.nodes if not n.killed]

    async def _proxy(self, upstream: str) -> FaultProxy:
        """A FaultProxy to `upstream`'s host and port, living in the cluster's nursery (so
        any task may ask for one) until the cluster closes."""

        async def hold(task_status: trio.TaskStatus[FaultProxy]) -> None:
            async with FaultProxy(*_host_port(upstream)) as proxy:
                task_status.started(proxy)
                await trio.sleep_forever()

        return await self._nursery.start(hold)

    async def _prepare(self, name: str) -> Node:
        """The node's process (not started) and, when the cluster is proxied, its proxies."""
        store, bus = self.store_url, self.bus_url
        redis_proxy = pg_proxy = None
        if self.proxied:
            redis_proxy = await self._proxy(self.bus_url)
            pg_proxy = await self._proxy(self.store_url)
            bus = _with_address(bus, redis_proxy.port)
            store = _with_address(store, pg_proxy.port)
        process = ServerProcess(
            self.workdir, "--bus", bus, "--node-id", name, "--api-key", API_KEY,
            "--node-lease", str(NODE_LEASE_S), "--presence-grace", str(PRESENCE_GRACE_S), *self.args,
            store=store, secret=SECRET, name=name,
        )
        node = Node(name, process, redis_proxy, pg_proxy)
        self.nodes.append(node)
        return node

    async def start_node(self, name: str | None = None) -> Node:
        """One more node (with its own proxies first, when the cluster is proxied)."""
        node = await self._prepare(name or f"n{len(self.nodes) + 1}")
        await node.process.start()
        return node

    async def start(self, count: int) -> None:
        """Start `count` nodes at once (their migrations race under the advisory lock)."""
        nodes = [await self._prepare(f"n{len(self.nodes) + 1}") for _ in range(count)]
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(node.process.start)

    async def user(self, name: str) -> str:
        """Register `name` (through the first live node) and return its token."""
        return await register(self.live[0].http_url, name)

    async def users(self, *names: str) -> list[str]:
        tokens: dict[str, str] = {}

        async def one(name: str) -> None:
            tokens[name] = await self.user(name)

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
        return [tokens[n] for n in names]

    async def history(self, room: str, token: str, *, node: Node | None = None) -> list[dict[str, Any]]:
        """Every stored message of `room`, in seq order, paged over HTTP."""
        node = node or self.live[0]
        out: list[dict[str, Any]] = []
        after = 0
        async with node.http() as h:
            while True:
                r = await h.get(f"/api/rooms/{room}/messages", params={"after": after, "limit": 200},
                                headers=auth(token))
                assert r.status_code == 200, r.text
                page = r.json()
                out.extend(page["messages"])
                if not page["more"]:
                    return out
                after = out[-1]["seq"]

    def cut_bus(self, *nodes: Node) -> None:
        for node in nodes or self.nodes:
            assert node.redis is not None, "the cluster is not proxied"
            node.redis.cut()

    def blackhole_bus(self, *nodes: Node) -> None:
        for node in nodes or self.nodes:
            assert node.redis is not None, "the cluster is not proxied"
            node.redis.blackhole()

    def restore_bus(self, *nodes: Node) -> None:
        for node in nodes or self.nodes:
            assert node.redis is not None, "the cluster is not proxied"
            node.redis.restore()

    def store_proxies(self, *nodes: Node) -> list[FaultProxy]:
        proxies = [n.postgres for n in (nodes or self.nodes)]
        assert all(p is not None for p in proxies), "the cluster is not proxied"
        return proxies  # type: ignore[return-value]

    async def stop(self) -> list[str]:
        """SIGTERM every node still running, together; the names of nodes that had died by
        themselves (not killed by the test) with the tail of their logs."""
        dead = [f"{n.name} exited by itself:\n{n.process.log()[-4000:]}"
                for n in self.nodes if not n.killed and n.process.proc is not None and not n.process.alive()]
        async with trio.open_nursery() as nursery:
            for node in self.nodes:
                if node.process.proc is not None and node.process.alive():
                    nursery.start_soon(node.process.stop)
        return dead


@contextlib.asynccontextmanager
async def open_cluster(
    workdir: Path, store_url: str, redis: tuple[str, str], *, nodes: int = 3, proxied: bool = False,
    args: Iterable[str] = (),
) -> AsyncIterator[Cluster]:
    """Start `nodes` nodes (see the module docstring); stop them and the proxies at the end."""
    redis_url, prefix = redis
    bus_url = f"{redis_url}?{urllib.parse.urlencode({'prefix': prefix})}"
    store_url = _with_address(store_url, query=STORE_OPTIONS)
    async with trio.open_nursery() as nursery:
        cluster = Cluster(workdir, nursery, store_url=store_url, bus_url=bus_url, proxied=proxied, args=args)
        dead: list[str] = []
        try:
            await cluster.start(nodes)
            yield cluster
        finally:
            with trio.CancelScope(shield=True):
                dead = await cluster.stop()
            nursery.cancel_scope.cancel()  # the proxies
        assert not dead, "\n\n".join(dead)


# --------------------------------------------------------------------------- checks


def seqs(messages: Iterable[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in messages]


def assert_gap_free(messages: list[dict[str, Any]], *, first: int = 1) -> None:
    """seq first, first+1, ... with no gap and no duplicate."""
    got = seqs(messages)
    assert got == list(range(first, first + len(got))), f"not gap-free from {first}: {got}"
