"""The server's configuration: one frozen record, built once at startup from four layers.

Precedence, per field: command-line flag > environment variable > TOML file > default.
Every tunable carries its unit in its name (`heartbeat_s`, `max_frame_bytes`) so code reading
`config.presence_grace_s` never has to guess whether it holds seconds or milliseconds; the
environment variables and flags drop the suffix (`CHAT_PRESENCE_GRACE`, `--presence-grace`)
because PROTOCOL section 1 says all durations are seconds.

The TOML file is flat and uses the Config field names only (`ws_port = 0`, `heartbeat_s = 30`,
`allowed_origins = ["https://chat.example.com"]`). The env-style short names (`heartbeat`) are
refused with a hint naming the field, so a typo never silently falls back to a default.

Empty strings: for the optional values (`jwt_secret`, `api_key`) an empty string means "unset"
(None) and for `allowed_origins` it means "no restriction"; that value still counts for its layer,
so `CHAT_API_KEY=` switches off a key set in the file. For every other field an empty string is an
error.

Validation happens in the record itself, so a `Config(...)` built directly in a test is checked
too; `load_config` checks first so its messages also name where the bad value came from.
"""

from __future__ import annotations

import logging
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

__all__ = [
    "DEFAULTS",
    "ENV_VARS",
    "FLAGS",
    "HELP",
    "LOG_LEVELS",
    "METAVARS",
    "Config",
    "ConfigError",
    "load_config",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which value, where from, and why.

    The CLI prints the message without a traceback and exits with status 2.
    """


# --- field kinds: (parse from text, check a typed value) ---------------------------------
# A check returns None when the value is fine, else a short reason ("must be > 0").


def _check_port(v: Any) -> str | None:
    if not _is_int(v):
        return "must be an integer"
    if not 0 <= v <= 65535:
        return "must be between 0 and 65535 (0 picks a free port)"
    return None


def _positive_int(v: Any) -> str | None:
    if not _is_int(v):
        return "must be an integer"
    if v < 1:
        return "must be a positive integer"
    return None


def _positive_float(v: Any) -> str | None:
    if not _is_number(v) or not math.isfinite(v):
        return "must be a finite number"
    if v <= 0:
        return "must be greater than 0"
    return None


def _non_negative_float(v: Any) -> str | None:
    if not _is_number(v) or not math.isfinite(v):
        return "must be a finite number"
    if v < 0:
        return "must be 0 or greater"
    return None


def _non_empty_str(v: Any) -> str | None:
    if not isinstance(v, str):
        return "must be a string"
    if not v.strip():
        return "must not be empty"
    return None


def _url(v: Any) -> str | None:
    problem = _non_empty_str(v)
    if problem:
        return problem
    if "://" not in v:
        return "must be a URL such as sqlite:///data/chat.db, memory:// or local://"
    return None


def _optional_str(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        return "must be a non-empty string or unset"
    return None


def _origins(v: Any) -> str | None:
    if not isinstance(v, tuple) or not all(isinstance(o, str) for o in v):
        return "must be a list of origins"
    for origin in v:
        if (
            origin == "null"
        ):  # what browsers send from file:// pages and sandboxed frames
            continue
        try:
            parts = urlsplit(origin)
        except ValueError:
            return f"entry {origin!r} is not an origin such as https://chat.example.com"
        if not parts.scheme or not parts.netloc or "://" not in origin:
            return f"entry {origin!r} is not an origin such as https://chat.example.com"
        if parts.path or parts.query or parts.fragment:
            return (
                f"entry {origin!r} must be scheme://host[:port] only, without a path or trailing "
                "slash (browsers never send one, so it would never match)"
            )
    return None


def _ws_url(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        return "must be a ws:// or wss:// URL or unset"
    try:
        parts = urlsplit(v)
    except ValueError:
        return "must be a ws:// or wss:// URL such as wss://chat.example.com/ws"
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        return "must be a ws:// or wss:// URL such as wss://chat.example.com/ws"
    return None


def _log_level(v: Any) -> str | None:
    if not isinstance(v, str) or v.upper() not in LOG_LEVELS:
        return "must be one of " + ", ".join(LOG_LEVELS)
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse_int(text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(
            f"expected a number of seconds or a rate, got {text!r}"
        ) from None
    return value


def _parse_str(text: str) -> str:
    return text.strip()


def _parse_optional(text: str) -> str | None:
    return text if text != "" else None


def _parse_origins(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


_NODE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _node_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _NODE_ID.fullmatch(value):
        return "must be 1-64 characters of A-Z a-z 0-9 _ . : -"
    return None


def _parse_level(text: str) -> str:
    return text.strip().upper()


@attrs.frozen
class _Kind:
    parse: Callable[[str], Any]  # from env / flag text
    check: Callable[[Any], str | None]


_PORT = _Kind(_parse_int, _check_port)
_HOST = _Kind(_parse_str, _non_empty_str)
_URL = _Kind(_parse_str, _url)
_PATH = _Kind(_parse_str, _non_empty_str)
_SECRET = _Kind(_parse_optional, _optional_str)
_COUNT = _Kind(_parse_int, _positive_int)
_SECONDS = _Kind(_parse_float, _positive_float)
_SECONDS0 = _Kind(_parse_float, _non_negative_float)
_RATE = _Kind(_parse_float, _positive_float)
_ORIGINS = _Kind(_parse_origins, _origins)
_NODE = _Kind(_parse_optional, _node_id)
_WS_URL = _Kind(_parse_optional, _ws_url)
_LEVEL = _Kind(_parse_level, _log_level)


@attrs.frozen
class _Option:
    kind: _Kind
    metavar: str
    help: str


# fmt: off
_OPTIONS: dict[str, _Option] = {
    "ws_host": _Option(_HOST, "HOST", "interface the WebSocket listener binds"),
    "ws_port": _Option(_PORT, "PORT", "WebSocket port (endpoint /ws; 0 picks a free port)"),
    "http_host": _Option(_HOST, "HOST", "interface the HTTP API and web client bind"),
    "http_port": _Option(_PORT, "PORT", "HTTP API port (0 picks a free port)"),
    "store": _Option(_URL, "URL",
        "message store: sqlite:///rel/path.db (relative to the working directory), "
        "sqlite:////abs/path.db, postgresql://... or memory:// (not durable)"),
    "bus": _Option(_URL, "URL",
        "fan-out bus between nodes: local:// (single node) or redis://host:6379/0"),
    "node_id": _Option(_NODE, "ID",
        "this node's name in logs, metrics, /readyz and welcome; unset: host name and "
        "process id"),
    "node_lease_s": _Option(_SECONDS, "SECONDS",
        "how long this node's presence lease lives without renewal (renewed every third "
        "of it); a node that dies is forgotten after it"),
    "data_dir": _Option(_PATH, "DIR",
        "directory holding the generated JWT secret (file jwt_secret, mode 0600)"),
    "jwt_secret": _Option(_SECRET, "SECRET",
        "HS256 signing secret (at least 32 random bytes); unset: generated once into the "
        "data dir; every node of a cluster needs the same value; a flag shows in the "
        "process list, prefer the env var"),
    "heartbeat_s": _Option(_SECONDS, "SECONDS",
        "WebSocket ping interval; no inbound frame for twice this closes the connection "
        "(4000); token expiry is checked at least this often"),
    "max_frame_bytes": _Option(_COUNT, "BYTES",
        "largest inbound WebSocket message (close 1009 above it) and largest HTTP request "
        "body (413 too_large above it)"),
    "max_text_chars": _Option(_COUNT, "CHARS",
        "longest message text in Unicode code points (too_large above it)"),
    "rate_per_second": _Option(_RATE, "RATE",
        "token bucket refill rate per connection for send, dm, typing and history"),
    "rate_burst": _Option(_COUNT, "N",
        "token bucket size per connection (commands allowed in a burst)"),
    "presence_grace_s": _Option(_SECONDS0, "SECONDS",
        "how long a dropped connection's user stays online before 'offline' is "
        "announced (a quick reconnect shows no flicker)"),
    "token_ttl_s": _Option(_SECONDS, "SECONDS", "lifetime of issued tokens"),
    "send_queue_bytes": _Option(_COUNT, "BYTES",
        "outbound backlog limit per connection; a durable event beyond it closes the "
        "connection (4008)"),
    "graceful_timeout_s": _Option(_SECONDS0, "SECONDS",
        "on shutdown, how long connections get to flush before they are dropped"),
    "api_key": _Option(_SECRET, "KEY",
        "key for X-Api-Key publishes as 'system'; unset: no key is accepted"),
    "allowed_origins": _Option(_ORIGINS, "ORIGINS",
        "comma-separated origins (https://chat.example.com) allowed to open WebSockets; "
        "unset: any origin"),
    "public_ws_url": _Option(_WS_URL, "URL",
        "the WebSocket URL GET /api/info gives browsers (wss://chat.example.com/ws behind a "
        "proxy); unset: built per request from its host and the WebSocket port"),
    "room_inbox_size": _Option(_COUNT, "N",
        "commands buffered per room actor before senders wait"),
    "room_idle_s": _Option(_SECONDS0, "SECONDS",
        "delay before an empty, idle room actor is retired"),
    "handshake_timeout_s": _Option(_SECONDS, "SECONDS",
        "time a client has to complete the WebSocket upgrade; on the HTTP port, how long "
        "headers or a request body may stall before the connection is closed"),
    "auth_timeout_s": _Option(_SECONDS, "SECONDS",
        "time a connection without a token has to send its auth frame (close 4001 "
        "after it)"),
    "auth_queue": _Option(_COUNT, "N",
        "logins and registrations that may wait for a password hash at once; one more is "
        "answered 429 with Retry-After"),
    "max_connections_per_user": _Option(_COUNT, "N",
        "connections one user may hold at once; one more upgrade is refused with HTTP 429"),
    "max_rooms_per_user": _Option(_COUNT, "N",
        "rooms (direct rooms included) one user may be a member of; a join beyond it is "
        "answered too_large"),
    "log_level": _Option(_LEVEL, "LEVEL", "logging threshold: " + ", ".join(LOG_LEVELS)),
}
# fmt: on


def _public_name(field: str) -> str:
    # Env vars and flags drop the unit suffix: every duration is seconds (PROTOCOL section 1).
    return field.removesuffix("_s")


#: Config field name -> environment variable.
ENV_VARS: dict[str, str] = {n: "CHAT_" + _public_name(n).upper() for n in _OPTIONS}
#: Config field name -> command-line flag of `chat-actors serve`.
FLAGS: dict[str, str] = {n: "--" + _public_name(n).replace("_", "-") for n in _OPTIONS}
#: Config field name -> one-line explanation (the CLI adds env var and default).
HELP: dict[str, str] = {name: opt.help for name, opt in _OPTIONS.items()}
#: Config field name -> metavar shown in --help.
METAVARS: dict[str, str] = {name: opt.metavar for name, opt in _OPTIONS.items()}


def _redact(value: object) -> str:
    return "None" if value is None else "'***'"


def _redact_url(url: object) -> str:
    """Hide the password of `postgresql://user:pw@host/db` style URLs in reprs and logs."""
    if not isinstance(url, str):
        return repr(url)
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return repr(url)
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
        return repr(urlunsplit(parts._replace(netloc=netloc)))
    except ValueError:
        return repr(url)


def _to_float(value: Any) -> Any:
    # ints are fine for durations and rates; everything else is left to the check
    return float(value) if _is_int(value) else value


def _to_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(value, str):
        return _parse_origins(value)
    return value


def _to_level(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


@attrs.frozen
class Config:
    """Everything the server can be tuned with; one instance is passed explicitly everywhere.

    Defaults are the normative values of PROTOCOL section 1. Durations are seconds (float),
    sizes bytes, timestamps elsewhere milliseconds. Secrets are redacted from the repr.
    """

    ws_host: str = "127.0.0.1"
    ws_port: int = 8301
    http_host: str = "127.0.0.1"
    http_port: int = 3001
    store: str = attrs.field(default="sqlite:///data/chat.db", repr=_redact_url)
    bus: str = attrs.field(default="local://", repr=_redact_url)
    node_id: str | None = None
    node_lease_s: float = attrs.field(default=10.0, converter=_to_float)
    data_dir: str = "data"
    jwt_secret: str | None = attrs.field(default=None, repr=_redact)
    heartbeat_s: float = attrs.field(default=30.0, converter=_to_float)
    max_frame_bytes: int = 65536
    max_text_chars: int = 4000
    rate_per_second: float = attrs.field(default=20.0, converter=_to_float)
    rate_burst: int = 40
    presence_grace_s: float = attrs.field(default=5.0, converter=_to_float)
    token_ttl_s: float = attrs.field(default=86400.0, converter=_to_float)
    send_queue_bytes: int = 1048576
    graceful_timeout_s: float = attrs.field(default=10.0, converter=_to_float)
    api_key: str | None = attrs.field(default=None, repr=_redact)
    allowed_origins: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple)
    public_ws_url: str | None = None
    room_inbox_size: int = 1024
    room_idle_s: float = attrs.field(default=30.0, converter=_to_float)
    handshake_timeout_s: float = attrs.field(default=10.0, converter=_to_float)
    auth_timeout_s: float = attrs.field(default=10.0, converter=_to_float)
    auth_queue: int = 32
    max_connections_per_user: int = 100
    max_rooms_per_user: int = 1000
    log_level: str = attrs.field(default="INFO", converter=_to_level)

    def __attrs_post_init__(self) -> None:
        for name, option in _OPTIONS.items():
            problem = option.kind.check(getattr(self, name))
            if problem:
                raise ConfigError(f"{name} {problem}")


# Guard against the option table and the record drifting apart.
if tuple(_OPTIONS) != tuple(a.name for a in attrs.fields(Config)):  # pragma: no cover
    raise RuntimeError("chat_actors.config: option table and Config fields differ")

DEFAULTS: dict[str, Any] = {a.name: a.default for a in attrs.fields(Config)}


def _shown(name: str, raw: object) -> str:
    """How a raw value appears in an error message (secrets never do)."""
    return _redact(raw) if _OPTIONS[name].kind is _SECRET else repr(raw)


def _from_text(name: str, text: str, source: str) -> Any:
    try:
        return _OPTIONS[name].kind.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _from_file_value(name: str, value: Any, source: str) -> Any:
    """TOML values are typed already; only the shapes TOML cannot express are converted."""
    kind = _OPTIONS[name].kind
    if kind is _ORIGINS:
        if isinstance(value, str):
            return _parse_origins(value)
        if isinstance(value, list):
            return tuple(value)
        raise ConfigError(
            f"{source} must be an array of origins or a comma-separated string"
        )
    if kind in (_SECRET, _WS_URL) and value == "":
        return None
    if kind is _LEVEL and isinstance(value, str):
        return value.upper()
    if kind in (_SECONDS, _SECONDS0, _RATE) and _is_int(value):
        return float(value)
    return value


def _from_flag_value(name: str, value: Any, source: str) -> Any:
    """Flags arrive as text from argparse, or already typed when a caller builds the mapping."""
    if isinstance(value, str):
        return _from_text(name, value, source)
    return _from_file_value(name, value, source)


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc.strerror or exc}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    short_names = {
        env.removeprefix("CHAT_").lower(): name for name, env in ENV_VARS.items()
    }
    for key in data:
        if key not in _OPTIONS:
            hint = ""
            if key in short_names:
                hint = f"; did you mean {short_names[key]!r}?"
            elif isinstance(data[key], dict):
                hint = "; the file is flat, without [tables]"
            raise ConfigError(f"config file {path}: unknown key {key!r}{hint}")
    return data


def load_config(
    argv_options: Mapping[str, object],
    env: Mapping[str, str],
    file: str | None = None,
) -> Config:
    """Build the Config: flags > environment > TOML file > defaults, field by field.

    `argv_options` maps field names to values explicitly given on the command line (text as
    argparse yields it, or typed values; None entries are ignored, so only passed flags count).
    `env` is usually `os.environ`; only the CHAT_* names of `ENV_VARS` are read. `file` is an
    optional TOML path whose keys are the field names. Raises ConfigError naming the source
    of the first bad value.
    """
    unknown = sorted(set(argv_options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(unknown)}")

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if file is not None:
        for name, raw in _read_file(file).items():
            source = f"{name} = {_shown(name, raw)} in {file}"
            values[name] = _from_file_value(name, raw, source)
            sources[name] = source
    for name in _OPTIONS:
        if ENV_VARS[name] in env:
            source = f"{ENV_VARS[name]}={_shown(name, env[ENV_VARS[name]])}"
            values[name] = _from_text(name, env[ENV_VARS[name]], source)
            sources[name] = source
    for name, raw in argv_options.items():
        if raw is None:
            continue
        source = f"{FLAGS[name]} {_shown(name, raw)}"
        values[name] = _from_flag_value(name, raw, source)
        sources[name] = source

    for name, value in values.items():
        problem = _OPTIONS[name].kind.check(value)
        if problem:
            raise ConfigError(f"{sources[name]} {problem}")
    config = Config(**values)
    logging.getLogger(__name__).debug("configuration: %r", config)
    return config
