"""Token checks shared by the WebSocket handshake, first-frame auth and the HTTP API.

A token is good when its JWT verifies and its `sub` is a registered user. Users are never
deleted, so a user once seen is remembered and later checks cost no store round trip.
"""

from __future__ import annotations

from .auth import Claims, TokenIssuer
from .errors import Unauthorized
from .store import Store


class Authenticator:
    def __init__(self, tokens: TokenIssuer, store: Store) -> None:
        self._tokens = tokens
        self._store = store
        self._known: set[str] = set()

    def remember(self, user: str) -> None:
        self._known.add(user)

    async def __call__(self, token: str) -> Claims:
        """Verify `token`; raises Unauthorized (or Unavailable when the store is down)."""
        claims = self._tokens.decode(token)
        if claims.user not in self._known:
            if await self._store.get_user(claims.user) is None:
                raise Unauthorized("token subject is not a registered user")
            self._known.add(claims.user)
        return claims
