"""Fixtures shared by the whole suite.

`server` starts a real server in-process (both listeners on port 0, SQLite in `tmp_path`) and
stops it gracefully at the end of the test. A module or test changes the configuration by
overriding the `server_overrides` fixture, e.g.

    @pytest.fixture
    def server_overrides():
        return {"heartbeat_s": 0.3}

`server_factory` starts further servers (for instance a restart on the same database).
tests/integration/conftest.py runs its tests on this single server and on a three-node cluster.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable

import attrs
import pytest
import trio

try:  # tests/ is not a package: pytest puts it on sys.path, so the client is `integration.client`
    from integration.client import Conn, Deployment
except ImportError:  # pragma: no cover - if tests/ ever becomes a package
    from tests.integration.client import Conn, Deployment  # type: ignore

JWT_SECRET = "test-secret-" + "0123456789abcdef" * 4  # long enough for HS512 test tokens
STOP_TIMEOUT_S = 30.0


class ServerHandle(Deployment):
    """A running server plus the few facts tests need about it."""

    def __init__(self, running: Any, config: Any) -> None:
        self.running = running
        self.config = config
        self.info = running.info
        self.ws_url: str = running.info.ws_url
        self.http_url: str = running.info.http_url
        self.secret: str = config.jwt_secret
        self.stopped = False

    @property
    def nodes(self) -> list["ServerHandle"]:
        """The server processes behind this handle: itself (a cluster handle lists its nodes)."""
        return [self]

    def request_shutdown(self) -> None:
        self.running.request_shutdown()

    async def wait_stopped(self) -> None:
        await self.running.wait_stopped()
        self.stopped = True

    async def stop(self) -> None:
        if not self.stopped:
            self.running.request_shutdown()
            with trio.fail_after(STOP_TIMEOUT_S):
                await self.running.wait_stopped()
            self.stopped = True


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    """Config fields to change for a module or a test (override this fixture)."""
    return {}


@pytest.fixture
def server_config(tmp_path: Any, server_overrides: dict[str, Any]) -> Any:
    from chat_actors.config import Config

    base: dict[str, Any] = dict(
        ws_host="127.0.0.1",
        ws_port=0,
        http_host="127.0.0.1",
        http_port=0,
        store=f"sqlite:///{tmp_path}/chat.db",
        data_dir=str(tmp_path),
        jwt_secret=JWT_SECRET,
        presence_grace_s=0.5,
        graceful_timeout_s=5.0,
    )
    base.update(server_overrides)
    return Config(**base)


@pytest.fixture
async def server_factory(server_config: Any) -> AsyncIterator[Callable[..., Awaitable[ServerHandle]]]:
    """`await server_factory(**overrides)` starts one more server (same config unless overridden)."""
    from chat_actors.server import serve

    handles: list[ServerHandle] = []
    async with trio.open_nursery() as nursery:

        async def start(**overrides: Any) -> ServerHandle:
            config = attrs.evolve(server_config, **overrides) if overrides else server_config
            with trio.fail_after(30):
                running = await nursery.start(serve, config)
            handle = ServerHandle(running, config)
            handles.append(handle)
            return handle

        yield start
        stuck = []
        for handle in reversed(handles):
            try:
                await handle.stop()
            except trio.TooSlowError:
                stuck.append(handle.ws_url)
        if stuck:
            nursery.cancel_scope.cancel()
            pytest.fail(f"server(s) {stuck} did not stop within {STOP_TIMEOUT_S} s of request_shutdown()")


@pytest.fixture
async def server(server_factory: Callable[..., Awaitable[ServerHandle]]) -> ServerHandle:
    return await server_factory()


__all__ = ["ServerHandle", "Conn", "JWT_SECRET"]
