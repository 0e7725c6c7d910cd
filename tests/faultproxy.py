"""A TCP proxy that fails on command, to put between a client under test and a real service.

    async with FaultProxy(upstream_port=5432) as proxy:   # listens on 127.0.0.1:<proxy.port>
        ...connect the client to 127.0.0.1:proxy.port...
        proxy.cut()        # server gone: every connection closed, new ones reset at once
        proxy.blackhole()  # silent network: bytes are accepted and dropped, nothing comes back
        proxy.silence_replies()  # open connections still deliver to the service, but its
                           # replies are dropped (a reply lost on the way back); new ones forward
        proxy.restore()    # forward again (black-holed and silenced connections are closed:
                           # their streams lost bytes, so nothing sane can continue on them)

It owns a nursery for its listener and one task pair per connection; leaving the ``async
with`` closes everything. Only 127.0.0.1 is used on both sides by default. The proxy is
generic (PostgreSQL, Redis, anything over TCP); ``accepted`` counts client connections, so
a test can tell that its client really reconnected.
"""

from __future__ import annotations

import enum
import socket
import struct
from functools import partial
from types import TracebackType

import trio

__all__ = ["FaultProxy", "Mode"]


class Mode(enum.Enum):
    FORWARD = "forward"
    CUT = "cut"
    BLACKHOLE = "blackhole"


class _Link:
    """One client connection and, when forwarding, its upstream connection."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.holed = False
        self.replies_lost = False


def _reset(stream: trio.SocketStream) -> None:
    """Close with RST rather than FIN: to the client it looks like a refused connection."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class FaultProxy:
    """See the module docstring. Use as ``async with FaultProxy(...) as proxy``."""

    def __init__(self, upstream_host: str = "127.0.0.1", upstream_port: int = 5432, *, host: str = "127.0.0.1") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.port = 0
        self.mode = Mode.FORWARD
        self.accepted = 0
        self._links: set[_Link] = set()
        self._cm = trio.open_nursery()
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> FaultProxy:
        nursery = await self._cm.__aenter__()
        try:
            listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host=self.host))
        except BaseException as exc:
            nursery.cancel_scope.cancel()
            await self._cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self.port = listeners[0].socket.getsockname()[1]
        self._nursery = nursery
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._nursery is not None, "not entered"
        self._nursery.cancel_scope.cancel()
        return await self._cm.__aexit__(exc_type, exc, tb)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    # --- faults ---------------------------------------------------------------------------

    def cut(self) -> None:
        """Close every connection now and reset new ones as they arrive, until ``restore``."""
        self.mode = Mode.CUT
        for link in list(self._links):
            link.scope.cancel()

    def blackhole(self) -> None:
        """From now on swallow every byte in both directions, on open and new connections,
        without closing anything: a peer that has silently stopped answering."""
        self.mode = Mode.BLACKHOLE
        for link in list(self._links):
            link.holed = True

    def silence_replies(self) -> None:
        """On the connections open now, keep forwarding the client's bytes to the upstream but
        drop everything the upstream sends back: the service acts on a request whose answer
        never arrives. New connections are not affected."""
        for link in list(self._links):
            link.replies_lost = True

    def restore(self) -> None:
        """Forward new connections again; close the black-holed and silenced ones."""
        self.mode = Mode.FORWARD
        for link in list(self._links):
            if link.holed or link.replies_lost:
                link.scope.cancel()

    # --- plumbing ------------------------------------------------------------------------

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        upstream: trio.SocketStream | None = None
        with trio.CancelScope() as scope:
            link = _Link(scope)
            self._links.add(link)
            try:
                if self.mode is Mode.CUT:
                    _reset(client)
                    return
                if self.mode is Mode.BLACKHOLE:
                    link.holed = True
                    await self._swallow(client)
                    return
                try:
                    upstream = await trio.open_tcp_stream(self.upstream_host, self.upstream_port)
                except OSError:
                    _reset(client)
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, link, client, upstream, False)
                    nursery.start_soon(self._pump, link, upstream, client, True)
            finally:
                self._links.discard(link)
                for stream in (client, upstream):
                    if stream is not None:
                        await trio.aclose_forcefully(stream)

    async def _pump(self, link: _Link, source: trio.SocketStream, sink: trio.SocketStream, reply: bool) -> None:
        """Copy ``source`` to ``sink`` (dropping the bytes while black-holed, or while replies
        are lost when ``reply``: upstream to client); either side closing closes the link."""
        try:
            while True:
                data = await source.receive_some(65536)
                if not data:
                    break
                if not (link.holed or (reply and link.replies_lost)):
                    await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        link.scope.cancel()

    async def _swallow(self, client: trio.SocketStream) -> None:
        try:
            while await client.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
