"""Composition root: builds store, registry, listeners from one Config and owns shutdown.

Everything is passed explicitly; there are no module-level singletons. Nursery layout:

    serve
      store (async context)
        bus (async context: local://, or redis:// for a cluster)
          cluster nursery  <- ClusterLink.run (lease, presence writes, catch-ups; clusters only)
            rooms nursery  <- Registry spawns room actors here
              listeners nursery
                WsServer.run      (one nursery per connection inside)
                hypercorn serve   (HTTP API)

Graceful shutdown (request_shutdown, SIGTERM/SIGINT via the CLI): stop accepting, in a
cluster let every room deliver what other nodes committed (`_catch_up_rooms`), close
every WebSocket with 1001 and give writers `graceful_timeout_s` to flush, stop HTTP, then
close the room inboxes so each actor commits its last batch, then the cluster link and the
bus, and close the store last.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Awaitable, Callable

import attrs
import hypercorn.config
import hypercorn.trio
import trio

from . import __version__, hypercorn_h11
from .auth import Claims, PasswordHasher, TokenIssuer, load_or_create_secret
from .bus import Bus, default_node_id, open_bus
from .cluster import ClusterLink, instance_id
from .commands import CatchUpCmd, Reply
from .config import Config
from .connection import ConnectionDeps, handle_websocket
from .errors import ChatError, CloseCode, RateLimited
from .fair import client_reads
from .http_api import HttpDeps, build_app
from .identity import Authenticator
from .metrics import Metrics
from .registry import Registry
from .room import RoomDeps
from .sessions import Sessions
from .store import open_store
from .transport import TransportSettings
from .ws_server import WsServer

log = logging.getLogger(__name__)


@attrs.frozen
class ServerInfo:
    ws_url: str
    http_url: str


class RunningServer:
    """Handle given to whoever started `serve`: where it listens, and how to stop it."""

    def __init__(self, info: ServerInfo) -> None:
        self.info = info
        self._shutdown = trio.Event()
        self._stopped = trio.Event()

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown (idempotent, callable from any task)."""
        self._shutdown.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def _hypercorn_config(config: Config) -> hypercorn.config.Config:
    """hypercorn settings for the HTTP listener (PROTOCOL section 8).

    Stalls: `read_timeout` bounds every wait for bytes from the client, so headers or a body
    that stop arriving for `handshake_timeout_s` close the connection; `keep_alive_timeout`
    bounds the whole wait for a request's headers (it runs from the connection or the last
    response until the request line and headers are complete), so headers trickled in byte by
    byte cannot hold a connection either. hypercorn pauses reading while the app is busy with a
    request, so neither timeout cuts a slow handler short. Headers are capped by
    `h11_max_incomplete_size` (hypercorn's 16 KiB default). HTTP/1.1 only: `hypercorn_h11`
    removes the cleartext switches to HTTP/2, `alpn_protocols` the TLS one should TLS ever be
    configured here.
    """
    hypercorn_h11.install()
    hc = hypercorn.config.Config()
    host = f"[{config.http_host}]" if ":" in config.http_host else config.http_host
    hc.bind = [f"{host}:{config.http_port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("chat_actors.http")
    hc.graceful_timeout = config.graceful_timeout_s
    hc.keep_alive_timeout = min(5.0, config.handshake_timeout_s)
    hc.read_timeout = config.handshake_timeout_s  # type: ignore[assignment]  # hypercorn takes any number
    hc.alpn_protocols = ["http/1.1"]
    return hc


async def serve(config: Config, *, task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED) -> None:
    """Run one chat server until `RunningServer.request_shutdown()` or cancellation."""
    clustered = not config.bus.startswith("local://")
    node_id = config.node_id or default_node_id()
    secret = load_or_create_secret(config)
    tokens = TokenIssuer(secret, config.token_ttl_s)
    hasher = PasswordHasher(queue_size=config.auth_queue)
    metrics = Metrics()
    stopped: RunningServer | None = None
    try:
        async with open_store(config.store) as store, \
                open_bus(config.bus, node_id=instance_id(node_id) if clustered else node_id) as bus, \
                trio.open_nursery() as cluster_nursery:
            link = ClusterLink(bus, node_id=node_id, lease_s=config.node_lease_s, metrics=metrics) \
                if clustered else None
            sessions = Sessions(link.user_connected, link.user_disconnected, link.connections_changed) \
                if link else Sessions()
            metrics.bind_bus(bus.statistics, lambda: bus.state)
            if link is not None:
                await cluster_nursery.start(link.run)
            async with trio.open_nursery() as rooms_nursery:
                registry = Registry(
                    rooms_nursery,
                    RoomDeps(store=store, sessions=sessions, metrics=metrics,
                             presence_grace_s=config.presence_grace_s, idle_s=config.room_idle_s,
                             max_rooms_per_user=config.max_rooms_per_user, cluster=link),
                    inbox_size=config.room_inbox_size,
                )
                if link is not None:
                    link.bind(registry, store, sessions)
                metrics.bind(connections=lambda: len(sessions), registry_stats=registry.statistics)
                authenticate = Authenticator(tokens, store)

                async def ready() -> dict[str, str]:
                    """Each component "ok" or "down"; /readyz derives its status from them."""
                    return {"store": await _probe(store.ping), "bus": _bus_state(bus)}

                reads = client_reads()
                conn_deps = ConnectionDeps(
                    config=config, registry=registry, store=store, sessions=sessions, metrics=metrics,
                    authenticate=authenticate, server_name=f"chat-actors/{__version__}", reads=reads,
                    node_id=node_id,
                )
                ws_server = WsServer(
                    partial(handle_websocket, deps=conn_deps),
                    host=config.ws_host, port=config.ws_port,
                    settings=TransportSettings(
                        max_frame_bytes=config.max_frame_bytes, send_queue_bytes=config.send_queue_bytes,
                        heartbeat_s=config.heartbeat_s, handshake_timeout_s=config.handshake_timeout_s,
                        allowed_origins=config.allowed_origins,
                    ),
                    authenticate=partial(_admit_upgrade, authenticate, sessions, config.max_connections_per_user,
                                         link),
                )
                http_stop = trio.Event()
                ws_scope = trio.CancelScope()

                async def run_ws(task_status: trio.TaskStatus[tuple[str, int]]) -> None:
                    with ws_scope:
                        await ws_server.run(task_status=task_status)

                async with trio.open_nursery() as listeners:
                    ws_host, ws_port = await listeners.start(run_ws)
                    app = build_app(HttpDeps(
                        config=config, store=store, registry=registry, metrics=metrics, tokens=tokens,
                        hasher=hasher, authenticate=authenticate, ready=ready, reads=reads, cluster=link,
                        server_name=conn_deps.server_name, ws_port=ws_port,
                    ))
                    binds = await listeners.start(partial(
                        hypercorn.trio.serve, app, _hypercorn_config(config), shutdown_trigger=http_stop.wait,
                    ))
                    http_port = int(binds[0].rsplit(":", 1)[1])
                    info = ServerInfo(
                        ws_url=f"ws://{_url_host(config.ws_host)}:{ws_port}/ws",
                        http_url=f"http://{_url_host(config.http_host)}:{http_port}",
                    )
                    # tools wait for this line, so it shows whatever the log level
                    level = max(logging.INFO, log.getEffectiveLevel())
                    log.log(level, "chat-actors listening ws=%s http=%s", info.ws_url, info.http_url)
                    running = stopped = RunningServer(info)
                    task_status.started(running)
                    await running._shutdown.wait()
                    log.info("shutting down: closing connections (grace %.1fs)", config.graceful_timeout_s)
                    ws_server.stop_accepting()
                    if link is not None:
                        await _catch_up_rooms(registry, config.graceful_timeout_s)
                    await ws_server.close_all(CloseCode.GOING_AWAY, config.graceful_timeout_s)
                    ws_scope.cancel()
                    http_stop.set()  # hypercorn finishes in-flight requests within its grace
                    listeners.cancel_scope.deadline = trio.current_time() + config.graceful_timeout_s
                await registry.aclose()
            cluster_nursery.cancel_scope.cancel()
        log.info("stopped")
    finally:
        if stopped is not None:
            stopped._stopped.set()


async def _admit_upgrade(authenticate: Authenticator, sessions: Sessions, cap: int, link: ClusterLink | None,
                         token: str) -> Claims:
    """The upgrade's token check, plus the per-user connection cap (cluster-wide: the other
    nodes' counts come from Redis): 429 instead of a 101."""
    claims = await authenticate(token)
    count = sessions.count(claims.user)
    if count < cap and link is not None:
        count += await link.connections_elsewhere(claims.user)
    if count >= cap:
        raise RateLimited(f"{claims.user} has {cap} connections open already (the most allowed)")
    return claims


async def _catch_up_rooms(registry: Registry, timeout_s: float) -> None:
    """Before a node closes its connections with 1001: every room delivers what the store
    holds, so a client leaves with every message acked before the shutdown, whichever node
    committed it (the bus may not have brought all of them yet). Bounded by `timeout_s`."""
    replies: list[Reply[None]] = []

    def command() -> CatchUpCmd:
        reply: Reply[None] = Reply()
        replies.append(reply)
        return CatchUpCmd(presence=False, reply=reply)

    with trio.move_on_after(timeout_s):
        await registry.broadcast(command)
        for reply in replies:
            try:
                await reply.wait()
            except ChatError:
                pass            # that room could not: its clients resume with `join since`


#: how long a readiness probe may take before its component counts as down
READY_PROBE_TIMEOUT_S = 2.0


async def _probe(ping: Callable[[], Awaitable[None]]) -> str:
    """The component's state: "ok" if `ping` answers within READY_PROBE_TIMEOUT_S, else "down".

    A failing or hanging backend is an answer here, not an error: /readyz must not 500.
    """
    try:
        with trio.fail_after(READY_PROBE_TIMEOUT_S):
            await ping()
    except (ChatError, trio.TooSlowError, OSError):
        return "down"
    return "ok"


def _bus_state(bus: Bus) -> str:
    """The bus as /readyz reports it: "ok" while it delivers (probes come back), else "down"."""
    return "ok" if bus.state == "ok" else "down"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
