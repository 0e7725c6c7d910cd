"""Sessions: which connections each user has open right now, on this node.

Direct messages go to every device of both users whether or not they joined the dm room, so
the dm room actor asks here instead of keeping its own member list. All mutation happens on
the trio thread without an await in between, so the dict needs no lock.
"""

from __future__ import annotations

from typing import Callable, Iterable

from .commands import Peer


class Sessions:
    """user -> {connection id: peer}.

    `on_first` / `on_last` are called (synchronously) when a user's first connection on this
    node opens and when the last one closes: in a cluster, the node then hears, or stops
    hearing, the direct messages other nodes commit for that user. `on_count` gets the
    user's count after every change (the cluster-wide connection cap).
    """

    def __init__(
        self,
        on_first: Callable[[str], None] | None = None,
        on_last: Callable[[str], None] | None = None,
        on_count: Callable[[str, int], None] | None = None,
    ) -> None:
        self._by_user: dict[str, dict[str, Peer]] = {}
        self._count = 0
        self._on_first = on_first
        self._on_last = on_last
        self._on_count = on_count

    def add(self, peer: Peer) -> None:
        conns = self._by_user.get(peer.user)
        if conns is None:
            conns = self._by_user[peer.user] = {}
            if self._on_first is not None:
                self._on_first(peer.user)
        if peer.id not in conns:
            conns[peer.id] = peer
            self._count += 1
            if self._on_count is not None:
                self._on_count(peer.user, len(conns))

    def remove(self, peer: Peer) -> None:
        conns = self._by_user.get(peer.user)
        if conns is None or conns.pop(peer.id, None) is None:
            return
        self._count -= 1
        if self._on_count is not None:
            self._on_count(peer.user, len(conns))
        if not conns:
            del self._by_user[peer.user]
            if self._on_last is not None:
                self._on_last(peer.user)

    def connections_of(self, user: str) -> Iterable[Peer]:
        conns = self._by_user.get(user)
        return conns.values() if conns else ()

    def is_online(self, user: str) -> bool:
        return user in self._by_user

    def count(self, user: str) -> int:
        """The user's open connections on this node (the per-user connection cap)."""
        conns = self._by_user.get(user)
        return len(conns) if conns else 0

    def __len__(self) -> int:
        return self._count
