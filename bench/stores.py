"""The shared services a PostgreSQL or cluster run uses, and what the harness leaves in them.

PostgreSQL and Redis belong to the machine, not to the bench: nothing here stops, flushes
or reconfigures them. With `--store postgresql://.../DB` (a maintenance database) every
server start gets a database of its own, `chat_bench_<random>`, dropped `WITH (FORCE)`
when that server stops; a cluster also gets a Redis key prefix of its own,
`chat-bench-<random>:`, whose keys are deleted (SCAN + DEL on that prefix only) when it
stops. Both services are also where part of the CPU of a message goes, so `ServiceCpu`
reads it for each step: the PostgreSQL backends serving the bench's database, and the Redis
server as a whole (it is shared: other clients' work would be in that figure too).
"""

from __future__ import annotations

import secrets
import socket
import time
import urllib.parse
from typing import Any

import psutil

SCHEMES = ("postgresql", "postgres")
#: the bus of a cluster run (the prefix is added per cluster)
REDIS_URL = "redis://127.0.0.1:6379/0"
#: bounds on the clean-up loops
SCAN_ROUNDS = 100_000
CLEANUP_S = 60.0


def is_postgres(url: str | None) -> bool:
    return bool(url) and urllib.parse.urlsplit(url).scheme in SCHEMES


def _with_database(url: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path="/" + name))


def _admin_conninfo(url: str) -> str:
    """The maintenance URL as libpq takes it: without the server's own query parameters."""
    parts = urllib.parse.urlsplit(url)
    rest = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if k not in ("pool", "timeout")]
    if not any(k == "connect_timeout" for k, _ in rest):
        rest.append(("connect_timeout", "5"))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest)))


def redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.replace(":" + parts.password + "@", ":***@", 1)))


class PostgresDatabases:
    """Fresh databases on the server of one maintenance URL; `drop_all` removes what is left."""

    def __init__(self, maintenance_url: str) -> None:
        self.url = maintenance_url
        self.created: list[str] = []

    def _admin(self, sql: str) -> None:
        import psycopg
        with psycopg.connect(_admin_conninfo(self.url), autocommit=True) as conn:
            conn.execute(sql)

    def check(self) -> str:
        """The server's version, or an exception saying why the maintenance database is unusable."""
        import psycopg
        with psycopg.connect(_admin_conninfo(self.url), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def create(self) -> tuple[str, str]:
        """(database name, the store URL of that database, with the given URL's options)."""
        name = f"chat_bench_{secrets.token_hex(6)}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return name, _with_database(self.url, name)

    def drop(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> list[str]:
        """Drop every database this run created and has not dropped; the names it could not."""
        failed = []
        for name in list(self.created):
            try:
                self.drop(name)
            except Exception:
                failed.append(name)
        return failed


# --- Redis: a minimal RESP client for the few commands the harness needs ---------------------

class Redis:
    """Blocking RESP2 over one TCP connection (SCAN, DEL, INFO, PING): no dependency, no pool."""

    def __init__(self, url: str = REDIS_URL, timeout: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout)
        self.buf = b""
        if parts.password:
            self.call(*(["AUTH", urllib.parse.unquote(parts.username)] if parts.username else ["AUTH"]),
                      urllib.parse.unquote(parts.password))
        db = parts.path.strip("/")
        if db and db != "0":
            self.call("SELECT", db)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Redis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, *args: str | bytes) -> Any:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a.encode() if isinstance(a, str) else a
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"redis: unexpected reply {line[:40]!r}")

    def cpu_s(self) -> float:
        """used_cpu_user + used_cpu_sys of the whole Redis server (INFO cpu)."""
        info = self.call("INFO", "cpu").decode()
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return float(fields.get("used_cpu_user", 0)) + float(fields.get("used_cpu_sys", 0))


def new_prefix() -> str:
    return f"chat-bench-{secrets.token_hex(6)}:"


def delete_prefix(prefix: str, url: str = REDIS_URL) -> int:
    """Delete every key under `prefix` (SCAN MATCH prefix* + DEL); the number deleted."""
    if not prefix or any(c in prefix for c in "*?[]\\"):
        raise ValueError(f"refusing to delete under the prefix {prefix!r}")
    deleted = 0
    deadline = time.monotonic() + CLEANUP_S
    with Redis(url) as r:
        cursor = b"0"
        for _ in range(SCAN_ROUNDS):
            cursor, keys = r.call("SCAN", cursor, "MATCH", prefix + "*", "COUNT", "1000")
            keys = [k for k in keys if k.startswith(prefix.encode())]
            if keys:
                deleted += r.call("DEL", *keys)
            if cursor == b"0" or time.monotonic() > deadline:
                break
    return deleted


def count_prefix(prefix: str, url: str = REDIS_URL) -> int:
    """Keys under `prefix` (bounded like `delete_prefix`)."""
    found = 0
    deadline = time.monotonic() + CLEANUP_S
    with Redis(url) as r:
        cursor = b"0"
        for _ in range(SCAN_ROUNDS):
            cursor, keys = r.call("SCAN", cursor, "MATCH", prefix + "*", "COUNT", "1000")
            found += len(keys)
            if cursor == b"0" or time.monotonic() > deadline:
                break
    return found


# --- CPU of the services ---------------------------------------------------------------------

def postgres_backends_cpu_s(database: str) -> float:
    """CPU seconds of the PostgreSQL backends connected to `database` (by process title)."""
    marker = f" {database} "
    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        try:
            title = " ".join(proc.info["cmdline"] or ())
            if title.startswith("postgres:") and marker in title:
                t = proc.cpu_times()
                total += t.user + t.system
        except (psutil.Error, TypeError):
            continue
    return total


class ServiceCpu:
    """Cumulative CPU seconds of the services behind one server or cluster, by name."""

    def __init__(self, database: str | None, redis_url: str | None) -> None:
        self.database = database
        self.redis_url = redis_url

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.database:
            out["postgresql"] = postgres_backends_cpu_s(self.database)
        if self.redis_url:
            try:
                with Redis(self.redis_url, timeout=2.0) as r:
                    out["redis"] = r.cpu_s()
            except OSError:
                pass
        return out
