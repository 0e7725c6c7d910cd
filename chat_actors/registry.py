"""Registry: the rooms nursery, lazy spawning of room actors and their idle retirement.

Spawning is synchronous (the inbox is registered before the actor task runs and loads the
room), so two commands racing for a new room can never start two actors. Retirement is the
mirror image: the actor retires only when its inbox is empty and nobody is blocked sending,
and it unregisters and closes its inbox in one synchronous step. A sender that still holds
the old inbox then gets `BrokenResourceError` on `send` and retries against a fresh actor,
so no command that races the retirement is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from .commands import REPLY_TIMEOUT_S, RoomCommand
from .errors import Unavailable
from .room import RoomActor, RoomDeps

log = logging.getLogger(__name__)


@attrs.frozen
class RegistryStats:
    rooms: int
    inbox_depth_max: int
    inbox_depth_total: int


@attrs.define(eq=False)
class _Handle:
    send: trio.MemorySendChannel[RoomCommand]
    actor: RoomActor


class Registry:
    """Routes commands to room actors, spawning them into `nursery` on first use."""

    def __init__(self, nursery: trio.Nursery, deps: RoomDeps, *, inbox_size: int) -> None:
        self._nursery = nursery
        self._deps = deps
        self._inbox_size = inbox_size
        self._rooms: dict[str, _Handle] = {}
        self._closed = False

    def _spawn(self, room: str, start_below: int | None = None) -> _Handle:
        send, receive = trio.open_memory_channel[RoomCommand](self._inbox_size)
        actor = RoomActor(room, receive, self._deps, self._retire, start_below=start_below)
        handle = _Handle(send=send, actor=actor)
        self._rooms[room] = handle
        self._nursery.start_soon(self._run_actor, handle, name=f"room:{room}")
        return handle

    async def _run_actor(self, handle: _Handle) -> None:
        actor = handle.actor
        try:
            await actor.run()
        except Exception:
            log.exception("room %s: actor crashed", actor.name)
            # Unregister first, so the next command spawns a fresh actor (which reloads the
            # room from the store); then answer everything queued or half-done, synchronously,
            # before close() would silently discard what is still in the channel.
            if self._rooms.get(actor.name) is handle:
                del self._rooms[actor.name]
            actor.fail_everything(Unavailable(f"room {actor.name} failed; nothing more was stored, retry"))
        finally:
            if self._rooms.get(actor.name) is handle:
                del self._rooms[actor.name]
            actor.inbox.close()

    def _retire(self, actor: RoomActor) -> bool:
        """Called by an idle actor: unregister and close in one step if nothing is queued."""
        handle = self._rooms.get(actor.name)
        stats = actor.inbox.statistics()
        if handle is None or handle.actor is not actor or stats.current_buffer_used or stats.tasks_waiting_send:
            return False
        del self._rooms[actor.name]
        actor.inbox.close()
        return True

    async def send(self, room: str, cmd: RoomCommand) -> None:
        """Deliver `cmd` to the room's actor, spawning it if needed.

        Waits while the room's inbox is full (backpressure for a flooding sender), at most
        `REPLY_TIMEOUT_S`. Raises `Unavailable` once the server is shutting down, or when the
        room took no command for that long (a stuck actor must not hang its senders).
        """
        while True:
            if self._closed:
                raise Unavailable("server is shutting down")
            handle = self._rooms.get(room)
            if handle is None:
                handle = self._spawn(room)
            try:
                try:
                    handle.send.send_nowait(cmd)     # the usual case: no schedule point per command
                except trio.WouldBlock:
                    with trio.move_on_after(REPLY_TIMEOUT_S):
                        await handle.send.send(cmd)
                        return
                    raise Unavailable(f"room {room} is not taking commands, retry") from None
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if self._rooms.get(room) is handle:
                    del self._rooms[room]

    async def notify(self, room: str, cmd: RoomCommand) -> None:
        """Tell a live actor about a change already in the store (e.g. a new grant).

        No actor: nothing to do, the next one loads the room from the store. A full inbox is
        waited on like any command, never dropped (a lost grant kept a new member out).
        """
        handle = self._rooms.get(room)
        if handle is None:
            return
        try:
            try:
                handle.send.send_nowait(cmd)
            except trio.WouldBlock:
                with trio.fail_after(REPLY_TIMEOUT_S):
                    await handle.send.send(cmd)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass            # retired meanwhile: its successor reads the store
        except trio.TooSlowError:
            raise Unavailable(f"room {room} is not taking commands, retry") from None

    def offer(self, room: str, cmd: RoomCommand, *, spawn: bool = False, start_below: int | None = None) -> None:
        """Hand a bus event to the room's actor without waiting (called from the bus's task).

        No actor: dropped, unless `spawn` (a direct message for this node's devices); the
        next actor reads the store anyway. A full inbox: dropped, and the actor is told to
        catch up from the store once it gets to it (the bus is best effort; the store is not).
        """
        if self._closed:
            return
        handle = self._rooms.get(room)
        if handle is None:
            if not spawn:
                return
            handle = self._spawn(room, start_below)
        try:
            handle.send.send_nowait(cmd)
        except trio.WouldBlock:
            handle.actor.lost_events = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def broadcast(self, make: Callable[[], RoomCommand]) -> None:
        """Give every live actor a command of its own (a catch-up, a node gone); waits on
        full inboxes like `notify`, one room at a time, and skips rooms that do not answer."""
        for room in list(self._rooms):
            try:
                await self.notify(room, make())
            except Unavailable:
                log.warning("room %s: not taking commands, skipped", room)

    def statistics(self) -> RegistryStats:
        depths = [h.actor.inbox_depth for h in self._rooms.values()]
        return RegistryStats(rooms=len(depths), inbox_depth_max=max(depths, default=0), inbox_depth_total=sum(depths))

    async def aclose(self) -> None:
        """Stop accepting commands and close every inbox: actors drain, commit and exit."""
        self._closed = True
        for handle in list(self._rooms.values()):
            handle.send.close()
        await trio.lowlevel.checkpoint()
