"""The `chat-actors` command: `chat-actors serve [--config FILE] [--ws-port N ...]`, and the
client commands (`register`, `login`, `send`, `dm`, `tail`, `history`: chat_actors/client/cli.py,
which documents their exit statuses).

Exit status of `serve`: 0 after a graceful stop, 1 when the server cannot start (e.g. a port
in use) or fails, 2 for a configuration or usage error, 128+N when a signal N stopped it hard
(a second SIGINT/SIGTERM, or one arriving before the server was up).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import sys
from typing import Any

import attrs
import trio

from chat_actors import __version__
from chat_actors.client import cli as client_cli
from chat_actors.config import (
    DEFAULTS,
    ENV_VARS,
    FLAGS,
    HELP,
    METAVARS,
    Config,
    ConfigError,
    load_config,
)
from chat_actors.errors import ChatError
from chat_actors.logging_setup import configure_logging

__all__ = ["main"]

logger = logging.getLogger(__name__)

CONFIG_ENV = "CHAT_CONFIG"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})

_PRECEDENCE = (
    "Each option is taken from, in order: the command-line flag, its environment variable, "
    "the TOML file given with --config (flat keys named like the Config fields, e.g. "
    'ws_port = 0, heartbeat_s = 30, allowed_origins = ["https://chat.example.com"]), '
    "then the default. Durations are seconds (fractions allowed)."
)


def _shown_default(name: str) -> str:
    value = DEFAULTS[name]
    if value is None:
        return "unset"
    if value == ():
        return "unset (any origin)"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _option_help(name: str) -> str:
    text = f"{HELP[name]} [env {ENV_VARS[name]}; default {_shown_default(name)}]"
    return text.replace("%", "%%")


def _options_table() -> str:
    lines = [
        "options of `chat-actors serve` (flag, environment variable, TOML key, default):"
    ]
    width = max(len(flag) for flag in FLAGS.values())
    env_width = max(len(env) for env in ENV_VARS.values())
    key_width = max(len(name) for name in FLAGS)
    for name, flag in FLAGS.items():
        lines.append(
            f"  {flag:<{width}}  {ENV_VARS[name]:<{env_width}}  {name:<{key_width}}  "
            f"{_shown_default(name)}"
        )
    lines.append(
        f"  {'--config':<{width}}  {CONFIG_ENV:<{env_width}}  {'-':<{key_width}}  none"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; public so docs can render the same help the command prints."""
    parser = argparse.ArgumentParser(
        prog="chat-actors",
        description="Real-time chat server: WebSocket + HTTP API, durable ordered delivery.",
        epilog=_options_table()
        + "\n\n"
        + _PRECEDENCE
        + "\nRun `chat-actors serve --help` for details.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"chat-actors {__version__}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the chat server until SIGTERM or SIGINT",
        description="Run the chat server. The first SIGTERM/SIGINT stops it gracefully "
        "(connections closed with 1001, pending messages stored); a second one stops it at once.",
        epilog=_PRECEDENCE,
    )
    serve.add_argument(
        "--version", action="version", version=f"chat-actors {__version__}"
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"TOML file with option values [env {CONFIG_ENV}; default none]",
    )
    for name, flag in FLAGS.items():
        serve.add_argument(
            flag,
            dest=name,
            metavar=METAVARS[name],
            default=argparse.SUPPRESS,  # absent flags stay absent, so env and file apply
            help=_option_help(name),
        )
    client_cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `chat-actors` and `python -m chat_actors`; returns the exit status.

    `--help`, `--version` and usage errors raise SystemExit as argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in client_cli.COMMANDS:
        return client_cli.run(args)
    if args.command != "serve":
        parser.print_help(sys.stderr)
        return 2
    flags = {name: value for name, value in vars(args).items() if name in FLAGS}
    config_file = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or None
    try:
        config = load_config(flags, os.environ, config_file)
    except ConfigError as exc:
        sys.stderr.write(f"chat-actors: configuration error: {exc}\n")
        return 2
    configure_logging(config.log_level)
    return run(config)


@attrs.define
class _State:
    running: Any = None  # chat_actors.server.RunningServer once started
    shutdown_requested: bool = False
    hard_stop_signal: int | None = None


def run(config: Config) -> int:
    """Run the server in a fresh Trio loop until it stops; returns the exit status."""
    state = _State()
    try:
        return trio.run(_serve_main, config, state)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        leaves = _leaves(exc)
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            return 128 + signal.SIGINT
        known = [e for e in leaves if isinstance(e, (OSError, ChatError, ConfigError))]
        if state.running is None and known and len(known) == len(leaves):
            sys.stderr.write(
                f"chat-actors: cannot start: {_describe(known[0], config)}\n"
            )
            return 1
        logger.critical("chat-actors stopped by an unexpected error", exc_info=exc)
        return 1


async def _serve_main(config: Config, state: _State) -> int:
    """Start the server, translate signals into a graceful (then a hard) stop, wait for it."""
    serve = importlib.import_module("chat_actors.server").serve
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, state, nursery.cancel_scope)

        async def run_server(
            *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
        ) -> None:
            try:
                await serve(config, task_status=task_status)
            finally:
                nursery.cancel_scope.cancel()  # the server is done: stop watching signals

        state.running = await nursery.start(run_server)
    if state.hard_stop_signal is not None:
        return 128 + state.hard_stop_signal
    return 0


async def _watch_signals(
    state: _State,
    cancel_scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """First signal: request_shutdown(). Second (or one before startup finished): cancel all.

    After a hard stop the receiver is closed, so a further signal gets the default behaviour.
    """
    with trio.open_signal_receiver(*_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if state.running is not None and not state.shutdown_requested:
                state.shutdown_requested = True
                logger.info(
                    "%s: shutting down gracefully (send it again to stop at once)", name
                )
                state.running.request_shutdown()
                continue
            logger.warning("%s: stopping now", name)
            state.hard_stop_signal = signum
            cancel_scope.cancel()
            return


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            out.extend(_leaves(inner))
        return out
    return [exc]


def _describe(exc: BaseException, config: Config) -> str:
    if isinstance(exc, OSError) and exc.filename is None and exc.errno in _BIND_ERRNOS:
        where = f"ws {config.ws_host}:{config.ws_port}, http {config.http_host}:{config.http_port}"
        return f"{exc} ({where})"
    return str(exc) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
