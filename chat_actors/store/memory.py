"""In-process ``Store`` on plain dicts, for tests and ``memory://``.

It keeps exactly the semantics of the SQL stores (the conformance suite runs against all of
them) but nothing survives the process. It is ordinary single-threaded trio code: each call
checkpoints once on entry (so it behaves like a real async call under cancellation: a
cancelled call did nothing) and then runs to completion without awaiting, which makes every
call, ``commit`` included, atomic without any lock.

``meta`` is stored as its JSON encoding, so callers get fresh objects back (mutating a
returned dict cannot change the store) and the same JSON round trip as SQLite.

Test hook: set ``available = False`` to make every call raise ``errors.Unavailable``
(a store that is down), ``True`` to bring it back.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import orjson
import trio

from chat_actors import errors
from chat_actors.store import (
    AppendResult,
    RoomBatch,
    RoomInfo,
    RoomListing,
    RoomSnapshot,
    StoredMessage,
    UserRecord,
    UserRoom,
    validate_room,
)

__all__ = ["MemoryStore", "open_from_url"]


@attrs.define
class _Message:
    seq: int
    client_id: str
    sender: str
    text: str
    meta_json: bytes | None
    ts: int


@attrs.define
class _Room:
    name: str
    kind: str
    owner: str | None
    created_ts: int
    participants: tuple[str, str] | None
    messages: list[_Message] = attrs.Factory(list)  # messages[i].seq == i + 1
    by_client: dict[tuple[str, str], _Message] = attrs.Factory(dict)
    members: set[str] = attrs.Factory(set)
    grants: set[str] = attrs.Factory(set)
    cursors: dict[str, int] = attrs.Factory(dict)

    @property
    def last_seq(self) -> int:
        return len(self.messages)

    def info(self) -> RoomInfo:
        return RoomInfo(self.name, self.kind, self.owner, self.last_seq, self.created_ts)  # type: ignore[arg-type]

    def stored(self, lo: int, hi: int) -> list[StoredMessage]:
        """Messages with lo < seq <= hi (seq = index + 1, so this is a slice)."""
        lo, hi = max(lo, 0), min(hi, self.last_seq)
        return (
            [
                StoredMessage(
                    self.name,
                    m.seq,
                    m.client_id,
                    m.sender,
                    m.text,
                    None if m.meta_json is None else orjson.loads(m.meta_json),
                    m.ts,
                )
                for m in self.messages[lo:hi]
            ]
            if lo < hi
            else []
        )

    def raise_cursor(self, user: str, seq: int) -> None:
        if seq > self.cursors.get(user, 0):
            self.cursors[user] = seq


class MemoryStore:
    """``Store`` in memory (see the module docstring)."""

    def __init__(self) -> None:
        self.available = True
        self._closed = False
        self._users: dict[str, UserRecord] = {}
        self._rooms: dict[str, _Room] = {}
        self._dm_rooms: dict[str, set[str]] = {}  # user -> names of their direct rooms

    async def _enter(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise errors.Unavailable("store is closed")
        if not self.available:
            raise errors.Unavailable("store is unavailable")

    def _room(self, name: str) -> _Room:
        room = self._rooms.get(name)
        if room is None:
            raise errors.NotFound(f"no room {name!r}")
        return room

    async def create_user(self, username: str, password_hash: str, ts: int) -> None:
        await self._enter()
        if username in self._users:
            raise errors.Conflict(f"user {username!r} exists")
        self._users[username] = UserRecord(username, password_hash, ts)

    async def get_user(self, username: str) -> UserRecord | None:
        await self._enter()
        return self._users.get(username)

    def _create_room(self, name: str, kind: str, owner: str | None, ts: int) -> RoomInfo:
        participants = validate_room(name, kind)
        room = _Room(name, kind, owner, ts, participants)
        if owner is not None:
            room.members.add(owner)
            if kind == "private":
                room.grants.add(owner)
        room.members.update(participants or ())  # both users of a direct room are its members
        self._rooms[name] = room
        for user in participants or ():
            self._dm_rooms.setdefault(user, set()).add(name)
        return room.info()

    async def create_room(self, name: str, *, kind: str, owner: str | None, ts: int) -> RoomInfo:
        validate_room(name, kind)
        await self._enter()
        if name in self._rooms:
            raise errors.Conflict(f"room {name!r} exists")
        return self._create_room(name, kind, owner, ts)

    async def ensure_room(self, name: str, *, kind: str, owner: str | None, ts: int) -> RoomInfo:
        validate_room(name, kind)
        await self._enter()
        room = self._rooms.get(name)
        return room.info() if room is not None else self._create_room(name, kind, owner, ts)

    async def get_room(self, name: str) -> RoomInfo | None:
        await self._enter()
        room = self._rooms.get(name)
        return None if room is None else room.info()

    async def load_room(self, name: str) -> RoomSnapshot | None:
        await self._enter()
        room = self._rooms.get(name)
        if room is None:
            return None
        return RoomSnapshot(room.info(), frozenset(room.grants), frozenset(room.members), dict(room.cursors))

    async def add_grant(self, room: str, user: str) -> None:
        await self._enter()
        self._room(room).grants.add(user)

    async def commit(self, batch: RoomBatch) -> list[AppendResult]:
        await self._enter()
        room = self._room(batch.room)
        # Encode every meta first: the only step that can fail must fail before any change.
        metas = [None if m.meta is None else orjson.dumps(m.meta) for m in batch.messages]
        results: list[AppendResult] = []
        for msg, meta_json in zip(batch.messages, metas):
            key = (msg.sender, msg.client_id)
            old = room.by_client.get(key)
            if old is not None:
                results.append(AppendResult(old.seq, old.ts, True))
                continue
            stored = _Message(room.last_seq + 1, msg.client_id, msg.sender, msg.text, meta_json, msg.ts)
            room.messages.append(stored)
            room.by_client[key] = stored
            room.raise_cursor(msg.sender, stored.seq)
            results.append(AppendResult(stored.seq, stored.ts, False))
        room.members.update(batch.joins)
        room.members.difference_update(batch.leaves)
        for user, seq in batch.cursors:
            room.raise_cursor(user, min(seq, room.last_seq))
        return results

    async def find_message(self, room: str, sender: str, client_id: str) -> AppendResult | None:
        await self._enter()
        found = self._rooms.get(room)
        old = None if found is None else found.by_client.get((sender, client_id))
        return None if old is None else AppendResult(old.seq, old.ts, True)

    async def history(
        self, room: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        await self._enter()
        found = self._rooms.get(room)
        if found is None:
            return [], False
        lo = 0 if after is None else max(after, 0)  # candidates: lo < seq < hi
        hi = found.last_seq + 1 if before is None else min(before, found.last_seq + 1)
        count = max(hi - lo - 1, 0)
        if after is None:
            return found.stored(max(lo, hi - 1 - limit), hi - 1), count > limit
        return found.stored(lo, min(hi - 1, lo + limit)), count > limit

    async def messages_between(self, room: str, after: int, upto: int, limit: int) -> list[StoredMessage]:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        await self._enter()
        found = self._rooms.get(room)
        return [] if found is None else found.stored(after, min(upto, max(after, 0) + limit))

    def _rooms_where(self, pick: Callable[[_Room], bool]) -> list[_Room]:
        return [self._rooms[name] for name in sorted(self._rooms) if pick(self._rooms[name])]

    async def user_rooms(self, user: str, limit: int = -1) -> list[UserRoom]:
        await self._enter()
        dms = self._dm_rooms.get(user, set())
        rooms = self._rooms_where(lambda r: user in r.members or r.name in dms)
        if limit >= 0:
            rooms = rooms[:limit]
        return [UserRoom(r.name, r.last_seq, r.cursors.get(user, 0)) for r in rooms]

    async def count_user_rooms(self, user: str) -> int:
        await self._enter()
        dms = self._dm_rooms.get(user, set())
        return len(self._rooms_where(lambda r: user in r.members or r.name in dms))

    async def list_rooms(self, user: str) -> list[RoomListing]:
        await self._enter()
        dms = self._dm_rooms.get(user, set())

        def visible(r: _Room) -> bool:
            if r.kind == "public":
                return True
            if r.kind == "private":
                return r.owner == user or user in r.grants
            return r.name in dms

        return [RoomListing(r.info(), len(r.members)) for r in self._rooms_where(visible)]

    async def undelivered_direct(self, user: str, per_room_limit: int) -> list[StoredMessage]:
        if per_room_limit < 1:
            raise ValueError("per_room_limit must be >= 1")
        await self._enter()
        out: list[StoredMessage] = []
        for name in sorted(self._dm_rooms.get(user, ())):
            room = self._rooms[name]
            read = room.cursors.get(user, 0)
            out.extend(room.stored(read, read + per_room_limit))
        return out

    async def room_members(self, room: str) -> list[str]:
        await self._enter()
        found = self._rooms.get(room)
        return [] if found is None else sorted(found.members)

    async def ping(self) -> None:
        await self._enter()

    async def aclose(self) -> None:
        self._closed = True


async def open_from_url(url: str) -> MemoryStore:
    """``open_store``'s entry for ``memory://`` (a fresh, empty store each time)."""
    return MemoryStore()
