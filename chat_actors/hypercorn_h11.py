"""Keep hypercorn's cleartext listener on HTTP/1.1 (PROTOCOL section 8: no h2c, no prior knowledge).

Why a subclass and not a setting: hypercorn 0.18 has no switch for cleartext HTTP/2.
`Config.alpn_protocols` only matters with TLS. On a plain socket every connection starts in
`hypercorn.protocol.h11.H11Protocol`, whose `_check_protocol` runs on each parsed request line,
before the ASGI app is called:

* a request with `Upgrade: h2c` (and no body) is answered `101 Switching Protocols` right
  there, then `H2CProtocolRequiredError` is raised;
* a `PRI * HTTP/2.0` request line (the HTTP/2 connection preface) raises
  `H2ProtocolAssumedError`;

and `hypercorn.protocol.ProtocolWrapper.handle` catches both and replaces the connection's
protocol with `H2Protocol`, which then sends its SETTINGS frame. No ASGI middleware can refuse
this: the 101 is already on the wire when the app would first hear of the request. The only
place that decides is `_check_protocol`, so `Http11OnlyProtocol` overrides it to never switch,
and `install()` makes `ProtocolWrapper` build that class (it looks the name up in
`hypercorn.protocol` for each new connection). Afterwards an `Upgrade: h2c` request is served
as the plain HTTP/1.1 request it also is (RFC 9110 section 7.8: a server may ignore Upgrade),
and the `PRI` request reaches the app, where `http_limits.RequestGuard` answers 400 and closes.

This leans on a private method of hypercorn. The alternatives were worse: a TCP proxy in
front of hypercorn, or a copy of hypercorn's worker and TCP server loops. `install()` checks the
method still exists and refuses to start otherwise (fail closed, never silently serve HTTP/2),
and tests/hostile/test_http_h2.py sends both the preface and an h2c upgrade through a real
socket, so an upgrade of hypercorn that changes this path fails the suite.
"""

from __future__ import annotations

import h11
import hypercorn.protocol
from hypercorn.protocol.h11 import H11Protocol

__all__ = ["Http11OnlyProtocol", "install"]


class Http11OnlyProtocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol without the switches to HTTP/2 (see the module docstring)."""

    async def _check_protocol(self, event: h11.Request) -> None:
        return None


def install() -> None:
    """Make every new hypercorn connection in this process use `Http11OnlyProtocol` (idempotent).

    Raises RuntimeError if this hypercorn no longer decides protocol switches where we expect.
    """
    if not callable(getattr(H11Protocol, "_check_protocol", None)):
        raise RuntimeError(
            "hypercorn.protocol.h11.H11Protocol._check_protocol is gone: this hypercorn version is "
            "not known to keep cleartext connections on HTTP/1.1; pin hypercorn or update "
            "chat_actors/hypercorn_h11.py"
        )
    if getattr(hypercorn.protocol, "H11Protocol", None) not in (H11Protocol, Http11OnlyProtocol):
        raise RuntimeError("hypercorn.protocol.H11Protocol was replaced by someone else")
    hypercorn.protocol.H11Protocol = Http11OnlyProtocol  # type: ignore[misc]
