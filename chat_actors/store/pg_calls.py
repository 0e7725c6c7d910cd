"""Blocking psycopg calls that trio can walk away from without leaking a connection.

A store call runs its body in a worker thread (``trio.to_thread.run_sync`` with
``abandon_on_cancel=True`` and a limiter as large as the connection pool). When the caller
is cancelled, or the call's deadline passes, the trio side returns at once and the thread
is *interrupted* so that it finishes soon and gives its connection back:

1. ``conn.cancel_safe()``: PostgreSQL's own cancel request (a separate short connection to
   the server) stops the running statement; the body sees ``QueryCanceled``, rolls back,
   and the connection goes back to the pool clean and idle. This is the normal case: a
   query waiting for a lock, a slow server.
2. If the thread still holds the connection ``INTERRUPT_GRACE_S`` later (the cancel could
   not reach the server: a black-holed network, a frozen host), the connection's socket is
   shut down. The thread's blocking read fails at once, the connection is broken, and the
   pool discards it and opens a fresh one. The shutdown goes through a ``dup`` of the
   socket taken by the worker thread itself when it started using the connection, so it
   can never hit a file descriptor number that libpq has closed and the process reused.

Until the thread has finished, trio keeps its limiter token, so at most pool-size threads
ever exist and a thread always finds a connection. Interrupts are serialized with the
worker letting go of its connection (``_lock``): a cancel request can never land on a
connection that has meanwhile been lent to another call.

A call interrupted before its thread got a connection never touches the database.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio

__all__ = ["CANCEL_TIMEOUT_S", "INTERRUPT_GRACE_S", "DeadlineExceeded", "Interrupted", "PgCall", "run_interruptible"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long the cancel request may take (it opens a connection of its own).
CANCEL_TIMEOUT_S = 2.0
#: How long a cancelled statement gets to come back before its socket is shut down.
INTERRUPT_GRACE_S = 1.0


class Interrupted(Exception):
    """The call was interrupted before it reached the database (raised in its thread only)."""


class DeadlineExceeded(Exception):
    """``run_interruptible`` gave up on the call at its deadline (the thread was interrupted)."""


class PgCall:
    """The connection one worker thread is using, and the means to interrupt it."""

    __slots__ = ("_lock", "_conn", "_sock", "_interrupted", "_released")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Any = None
        self._sock: socket.socket | None = None
        self._interrupted = False
        self._released = threading.Event()

    # --- worker thread side -----------------------------------------------------------

    def attach(self, conn: Any) -> None:
        """Record that this thread now uses ``conn``; Interrupted if the caller left already."""
        with self._lock:
            if self._interrupted:
                raise Interrupted
            self._conn = conn
            try:
                self._sock = socket.socket(fileno=os.dup(conn.fileno()))
            except (OSError, ValueError):  # no socket (closed already): nothing to shut down
                self._sock = None

    def detach(self) -> None:
        """The thread is done with its connection (before it goes back to the pool)."""
        with self._lock:
            self._conn = None
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()  # the dup only: the connection itself stays open
        self._released.set()

    # --- trio side ---------------------------------------------------------------------

    def interrupt_soon(self) -> None:
        """Make the thread finish soon; never blocks (the blocking part runs in a thread).

        Called from trio when the caller is cancelled or gives up at the deadline.
        """
        with self._lock:
            self._interrupted = True
            busy = self._conn is not None
        if busy:
            trio.lowlevel.start_thread_soon(self._interrupt, _ignore_outcome, name="postgres interrupt")

    def _interrupt(self) -> None:
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            try:  # under the lock: the worker cannot hand conn to another call meanwhile
                conn.cancel_safe(timeout=CANCEL_TIMEOUT_S)
            except Exception as exc:  # unreachable server: escalate below
                log.info("postgres cancel request failed: %s", exc)
        if self._released.wait(INTERRUPT_GRACE_S):
            return
        with self._lock:
            if self._conn is conn and self._sock is not None:
                log.warning("postgres connection did not answer a cancel; shutting its socket down")
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _ignore_outcome(outcome: object) -> None:
    """``start_thread_soon``'s delivery callback: the interrupt's result matters to no one."""


async def run_interruptible(
    body: Callable[[PgCall], T],
    *,
    limiter: trio.CapacityLimiter,
    deadline_s: float | None,
) -> T:
    """``body(call)`` in a worker thread, abandoned and interrupted on cancel or deadline.

    Raises DeadlineExceeded when ``deadline_s`` passes first (the limiter wait counts: a
    store too busy to start the call in time is as good as down), trio.Cancelled when the
    caller is cancelled, or whatever the body raised.
    """
    call = PgCall()
    try:
        with trio.move_on_after(deadline_s if deadline_s is not None else float("inf")):
            return await trio.to_thread.run_sync(body, call, limiter=limiter, abandon_on_cancel=True)
    except trio.Cancelled:
        call.interrupt_soon()
        raise
    call.interrupt_soon()
    raise DeadlineExceeded
