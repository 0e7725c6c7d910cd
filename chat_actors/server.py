"""Composition root: builds store, registry, listeners from one Config and owns shutdown.

Everything is passed explicitly; there are no module-level singletons. Nursery layout:

    serve
      store (async context)
        rooms nursery  <- Registry spawns room actors here
          listeners nursery
            WsServer.run      (one nursery per connection inside)
            hypercorn serve   (HTTP API)

Graceful shutdown (request_shutdown, SIGTERM/SIGINT via the CLI): stop accepting, close
every WebSocket with 1001 and give writers `graceful_timeout_s` to flush, stop HTTP, then
close the room inboxes so each actor commits its last batch, and close the store last.
"""

from __future__ import annotations

import logging
from functools import partial

import attrs
import hypercorn.config
import hypercorn.trio
import trio

from . import __version__
from .auth import PasswordHasher, TokenIssuer, load_or_create_secret
from .config import Config
from .connection import ConnectionDeps, handle_websocket
from .errors import ChatError, CloseCode
from .http_api import HttpDeps, build_app
from .identity import Authenticator
from .metrics import Metrics
from .registry import Registry
from .room import RoomDeps
from .sessions import Sessions
from .store import open_store
from .transport import TransportSettings, WsServer

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
    hc = hypercorn.config.Config()
    host = f"[{config.http_host}]" if ":" in config.http_host else config.http_host
    hc.bind = [f"{host}:{config.http_port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("chat_actors.http")
    hc.graceful_timeout = config.graceful_timeout_s
    hc.keep_alive_timeout = 5
    return hc


async def serve(config: Config, *, task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED) -> None:
    """Run one chat server until `RunningServer.request_shutdown()` or cancellation."""
    if not config.bus.startswith("local://"):
        raise ValueError(f"unsupported bus URL {config.bus!r} (this version fans out in-process: local://)")
    secret = load_or_create_secret(config)
    tokens = TokenIssuer(secret, config.token_ttl_s)
    hasher = PasswordHasher()
    metrics = Metrics()
    sessions = Sessions()
    stopped: RunningServer | None = None
    try:
        async with open_store(config.store) as store:
            async with trio.open_nursery() as rooms_nursery:
                registry = Registry(
                    rooms_nursery,
                    RoomDeps(store=store, sessions=sessions, metrics=metrics,
                             presence_grace_s=config.presence_grace_s, idle_s=config.room_idle_s),
                    inbox_size=config.room_inbox_size,
                )
                metrics.bind(connections=lambda: len(sessions), registry_stats=registry.statistics)
                authenticate = Authenticator(tokens, store)

                async def ready() -> dict[str, str]:
                    try:
                        with trio.fail_after(2):
                            await store.ping()
                        return {"store": "ok", "bus": "ok"}
                    except (ChatError, trio.TooSlowError, OSError):
                        return {"store": "unavailable", "bus": "ok"}

                conn_deps = ConnectionDeps(
                    config=config, registry=registry, store=store, sessions=sessions, metrics=metrics,
                    authenticate=authenticate, server_name=f"chat-actors/{__version__}",
                )
                ws_server = WsServer(
                    partial(handle_websocket, deps=conn_deps),
                    host=config.ws_host, port=config.ws_port,
                    settings=TransportSettings(
                        max_frame_bytes=config.max_frame_bytes, send_queue_bytes=config.send_queue_bytes,
                        heartbeat_s=config.heartbeat_s, handshake_timeout_s=config.handshake_timeout_s,
                        allowed_origins=config.allowed_origins,
                    ),
                    authenticate=authenticate,
                )
                app = build_app(HttpDeps(
                    config=config, store=store, registry=registry, metrics=metrics, tokens=tokens,
                    hasher=hasher, authenticate=authenticate, ready=ready,
                ))
                http_stop = trio.Event()
                ws_scope = trio.CancelScope()

                async def run_ws(task_status: trio.TaskStatus[tuple[str, int]]) -> None:
                    with ws_scope:
                        await ws_server.run(task_status=task_status)

                async with trio.open_nursery() as listeners:
                    ws_host, ws_port = await listeners.start(run_ws)
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
                    await ws_server.close_all(CloseCode.GOING_AWAY, config.graceful_timeout_s)
                    ws_scope.cancel()
                    http_stop.set()  # hypercorn finishes in-flight requests within its grace
                    listeners.cancel_scope.deadline = trio.current_time() + config.graceful_timeout_s
                await registry.aclose()
        log.info("stopped")
    finally:
        if stopped is not None:
            stopped._stopped.set()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
