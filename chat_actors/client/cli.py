"""The client commands of `chat-actors`: register, login, send, dm, tail, history.

They find the server from `--url` / `CHAT_URL` (the HTTP base URL; the WebSocket URL comes
from its `GET /api/info`) and the token from `--token` / `CHAT_TOKEN` / the file `login`
saved (`credentials.py`). Output is human-readable, or one JSON object per line with
`--json` (messages and acks exactly as on the wire).

Exit status: 0 done; 1 the server refused the request, could not be reached, or the
`--timeout` passed; 2 usage error; 3 not logged in, or the token was refused (log in
again); 130 interrupted. Expected failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TextIO

import attrs
import orjson
import trio

from chat_actors.protocol import encode_event
from chat_actors.records import Ack, Message

from . import api, credentials
from .chat import Chat, open_chat
from .errors import ChatError, Unauthorized

__all__ = ["COMMANDS", "add_commands", "run"]

DEFAULT_URL = "http://127.0.0.1:3001"
DEFAULT_TIMEOUT_S = 30.0

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class CommandError(Exception):
    """An expected failure of a command: a message and an exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- arguments


def add_commands(commands: Any) -> None:
    """Add the client commands to `chat-actors`' subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", metavar="URL",
                        help=f"the server's HTTP base URL [env CHAT_URL; default {DEFAULT_URL}]")
    common.add_argument("--json", action="store_true", help="one JSON object per line on standard output")
    connected = argparse.ArgumentParser(add_help=False, parents=[common])
    connected.add_argument("--token", metavar="TOKEN",
                           help="access token [env CHAT_TOKEN; default: the one `chat-actors login` saved for URL]")
    connected.add_argument("--timeout", metavar="SECONDS", type=float,
                           help=f"give up after this long [default {DEFAULT_TIMEOUT_S:g}; tail: never, it reconnects]")

    for name, verb in (("register", "create an account"), ("login", "log in")):
        p = commands.add_parser(name, parents=[common], help=f"{verb} and save the token",
                                description=f"{verb.capitalize()}; the token is saved (mode 0600) to "
                                f"{credentials.credentials_path()} for later commands.")
        p.add_argument("username")
        p.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input (else: prompt)")
        p.add_argument("--no-save", action="store_true", help="print the token only, do not save it")

    p = commands.add_parser("send", parents=[connected], help="send a message to a room (joins it)",
                            description="Send TEXT to ROOM and wait for the server's ack (the message is durable then).")
    p.add_argument("room")
    p.add_argument("text", help="the message; - reads it from standard input")
    p = commands.add_parser("dm", parents=[connected], help="send a direct message",
                            description="Send TEXT to USER as a direct message and wait for the ack.")
    p.add_argument("user")
    p.add_argument("text", help="the message; - reads it from standard input")
    p = commands.add_parser("tail", parents=[connected], help="print a room's messages as they arrive",
                            description="Print ROOM's messages as they arrive, in order, each once, across "
                            "reconnects and server restarts, until interrupted.")
    p.add_argument("room")
    p.add_argument("--since", metavar="SEQ", type=_seq, help="start after this seq (0: from the first message)")
    p.add_argument("-n", "--lines", metavar="N", type=_seq, default=10,
                   help="without --since, print the last N messages first [default 10]")
    p.add_argument("--count", metavar="N", type=_seq, help="exit after printing N messages")
    p = commands.add_parser("history", parents=[connected], help="print a room's stored messages",
                            description="Print ROOM's stored messages, oldest first.")
    p.add_argument("room")
    p.add_argument("--limit", metavar="N", type=_seq, default=50, help="how many, the newest [default 50]")
    p.add_argument("--before", metavar="SEQ", type=_seq, help="only messages below this seq")


def _seq(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


# --------------------------------------------------------------------------- output


def _printable(text: str) -> str:
    """Text as a terminal should show it: control characters (escape sequences!) made visible."""
    return "".join(c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in text)


class Output:
    """Writes results to `stream`: human lines, or JSON lines with `as_json`."""

    def __init__(self, stream: TextIO, as_json: bool) -> None:
        self.stream = stream
        self.as_json = as_json

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, msg: Message) -> None:
        if self.as_json:
            self._line(encode_event(msg).decode())
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(msg.ts / 1000))
        body = _printable(msg.text).replace("\n", "\n    ")
        self._line(f"{stamp}  #{msg.seq}  {_printable(msg.sender)}: {body}")

    def ack(self, ack: Ack) -> None:
        if self.as_json:
            self._line(encode_event(attrs.evolve(ack, ref=None)).decode())
        else:
            self._line(f"sent to {ack.room} as #{ack.seq}")

    def login(self, creds: api.Credentials, saved: str | None) -> None:
        if self.as_json:
            self._line(orjson.dumps({"user": creds.user, "token": creds.token, "expires_at": creds.expires_at,
                                     "saved_to": saved}).decode())
            return
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(creds.expires_at / 1000))
        where = f"token saved to {saved}" if saved else f"token: {creds.token}"
        self._line(f"logged in as {creds.user} (valid until {until}); {where}")


# --------------------------------------------------------------------------- commands


def _base_url(args: argparse.Namespace) -> str:
    return (args.url or os.environ.get("CHAT_URL") or DEFAULT_URL).rstrip("/")


def _token(args: argparse.Namespace, base_url: str) -> str:
    token = args.token or os.environ.get("CHAT_TOKEN")
    if token:
        return token
    saved = credentials.load(base_url)
    if saved is None:
        raise CommandError(f"not logged in to {base_url}: run `chat-actors login USERNAME` "
                           "(or pass --token / set CHAT_TOKEN)", EXIT_AUTH)
    if saved.expires_at <= time.time() * 1000:
        raise CommandError(f"the saved token for {saved.user} expired: run `chat-actors login {saved.user}`", EXIT_AUTH)
    return saved.token


def _text(value: str) -> str:
    text = sys.stdin.read().removesuffix("\n") if value == "-" else value
    if not text:
        raise CommandError("the message is empty", EXIT_USAGE)
    return text


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
    if not password:
        raise CommandError("no password given", EXIT_USAGE)
    return password


@asynccontextmanager
async def _chat(args: argparse.Namespace, *, give_up_after: float | None) -> AsyncIterator[Chat]:
    """open_chat on the server of `args`, found through its /api/info."""
    base = _base_url(args)
    token = _token(args, base)
    info = await api.server_info(base)
    async with open_chat(info.ws_url, token=token, give_up_after=give_up_after, direct_messages=False) as chat:
        yield chat


def _timeout(args: argparse.Namespace) -> float:
    return args.timeout if args.timeout is not None else DEFAULT_TIMEOUT_S


async def _account(args: argparse.Namespace, out: Output) -> None:
    base = _base_url(args)
    password = _password(args)
    action = api.register if args.command == "register" else api.login
    creds = await action(base, args.username, password)
    saved = None if args.no_save else str(credentials.save(base, creds))
    out.login(creds, saved)


async def _send(args: argparse.Namespace, out: Output) -> None:
    text = _text(args.text)
    async with _chat(args, give_up_after=_timeout(args)) as chat:
        if args.command == "dm":
            ack = await chat.dm(args.user, text)
        else:
            await chat.join(args.room)
            ack = await chat.send(args.room, text)
    out.ack(ack)


async def _tail(args: argparse.Namespace, out: Output) -> None:
    count = args.count
    printed = 0
    async with _chat(args, give_up_after=args.timeout) as chat:
        if args.since is not None:
            await chat.join(args.room, since=args.since)
        else:
            joined = await chat.join(args.room)
            lines = args.lines if count is None else min(args.lines, count)
            if lines and joined.seq:
                for msg in await _last(chat, args.room, before=joined.seq + 1, limit=lines):
                    out.message(msg)
                    printed += 1
        if count is not None and printed >= count:
            return
        async for event in chat.events():
            if isinstance(event, Message) and event.room == args.room:
                out.message(event)
                printed += 1
                if count is not None and printed >= count:
                    return


async def _history(args: argparse.Namespace, out: Output) -> None:
    async with _chat(args, give_up_after=_timeout(args)) as chat:
        messages = await _last(chat, args.room, before=args.before, limit=args.limit)
    for msg in messages:
        out.message(msg)


async def _last(chat: Chat, room: str, *, before: int | None, limit: int) -> list[Message]:
    """The newest `limit` messages below `before`, oldest first, in pages of 200."""
    messages: list[Message] = []
    while len(messages) < limit:
        page = await chat.history(room, before=before, limit=min(200, limit - len(messages)))
        messages[:0] = page.messages
        if not page.more or not page.messages:
            break
        before = page.messages[0].seq
    return messages


_RUNNERS: dict[str, Callable[[argparse.Namespace, Output], Awaitable[None]]] = {
    "register": _account, "login": _account, "send": _send, "dm": _send, "tail": _tail, "history": _history,
}
COMMANDS = frozenset(_RUNNERS)


async def _main(args: argparse.Namespace, out: Output) -> None:
    """Run the command; every command but `tail` is bounded by its --timeout as a whole."""
    runner = _RUNNERS[args.command]
    if args.command == "tail":
        await runner(args, out)
        return
    timeout = _timeout(args) if hasattr(args, "timeout") else DEFAULT_TIMEOUT_S
    try:
        with trio.fail_after(timeout):
            await runner(args, out)
    except trio.TooSlowError:
        raise CommandError(f"no answer within {timeout:g} s", EXIT_FAILED) from None


def run(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    """Run one client command; returns the exit status (see the module docstring)."""
    out = Output(stdout or sys.stdout, args.json)
    try:
        trio.run(_main, args, out)
    except CommandError as exc:
        return _fail(str(exc), exc.status)
    except Unauthorized as exc:
        hint = "" if args.command in ("login", "register") else " (log in again: `chat-actors login USERNAME`)"
        return _fail(f"unauthorized: {exc.message or exc}{hint}", EXIT_AUTH)
    except ChatError as exc:
        what = exc.code.value if exc.code else type(exc).__name__
        return _fail(f"{what}: {exc.message or exc}", EXIT_FAILED)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return EXIT_OK


def _fail(message: str, status: int) -> int:
    sys.stderr.write(f"chat-actors: {message}\n")
    return status
