"""Passwords, tokens and the signing secret (PROTOCOL section 2).

Password hashing is deliberately slow (argon2id), so it runs in worker threads behind a small
CapacityLimiter: a login flood queues on the limiter instead of exhausting the thread pool or
stalling the event loop, and memory stays bounded at `max_concurrent` x `memory_cost`. The queue
in front of the limiter is bounded too (`queue_size`, CHAT_AUTH_QUEUE): a flood of bogus logins
would otherwise delay a real one without bound (200 of them made one login take 18 s), so the
call after the queue is full is refused at once with `HasherBusy` (HTTP 429 with Retry-After).

Tokens are HS256 JWTs checked by pyjwt with a fixed algorithm list, so a token cannot choose
its own algorithm (`none`, HS512, RS256 with the secret as a "public key"). pyjwt coerces the
time claims with int() (so "123", 1.5 and true pass) and accepts any size of integer, which
later code (a float conversion, a deadline) cannot take: the claims are re-checked after pyjwt
as JSON integers within +-(2**53-1), like every integer of the wire (PROTOCOL sections 2, 3).
Whether the subject is a registered user is the caller's check: it needs the store.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import secrets
import stat
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import argon2
import attrs
import jwt
import trio

from chat_actors.config import Config, ConfigError
from chat_actors.errors import ProtocolError, RateLimited, Unauthorized
from chat_actors.protocol import is_safe_int

__all__ = [
    "MAX_PASSWORD_CHARS",
    "MIN_PASSWORD_CHARS",
    "RESERVED_USERNAMES",
    "SECRET_FILE_NAME",
    "USERNAME_RE",
    "Claims",
    "HasherBusy",
    "PasswordHasher",
    "TokenIssuer",
    "is_valid_username",
    "load_or_create_secret",
    "validate_password",
    "validate_username",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Usernames of PROTOCOL section 2 (case-sensitive). `\Z`, not `$`, so "alice\n" never matches.
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{3,32}\Z")
#: Names nobody may register, compared case-insensitively ("system" publishes X-Api-Key posts).
RESERVED_USERNAMES = frozenset({"system"})
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 256
SECRET_FILE_NAME = "jwt_secret"
_ALGORITHM = "HS256"
_MIN_SECRET_BYTES = (
    32  # RFC 7518 section 3.2: an HS256 key at least as long as the hash
)
#: time claims that must be JSON integers when present (`exp` and `iat` are also required)
_TIME_CLAIMS = ("exp", "nbf", "iat")
#: what one hash is assumed to cost before any has been measured (Retry-After estimate)
_INITIAL_HASH_S = 0.1


def _timed(fn: Callable[..., T], args: tuple[object, ...]) -> tuple[T, float]:
    """Run `fn(*args)` in the worker thread and say how long it took (for Retry-After)."""
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def is_valid_username(name: object) -> bool:
    """True for a name a user could register (pattern and not reserved)."""
    return (
        isinstance(name, str)
        and USERNAME_RE.match(name) is not None
        and name.lower() not in RESERVED_USERNAMES
    )


def validate_username(name: object) -> None:
    """Raise ProtocolError (bad_request) unless `name` is a registrable username."""
    if not isinstance(name, str):
        raise ProtocolError("username must be a string")
    if USERNAME_RE.match(name) is None:
        raise ProtocolError(
            "username must be 3 to 32 characters of A-Z, a-z, 0-9, '_', '.' or '-'"
        )
    if name.lower() in RESERVED_USERNAMES:
        raise ProtocolError(f"username {name!r} is reserved")


def validate_password(pw: object) -> None:
    """Raise ProtocolError (bad_request) unless `pw` is 8..256 characters of encodable text."""
    if not isinstance(pw, str):
        raise ProtocolError("password must be a string")
    if not MIN_PASSWORD_CHARS <= len(pw) <= MAX_PASSWORD_CHARS:
        raise ProtocolError(
            f"password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters long"
        )
    try:
        pw.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("password must be valid Unicode text") from None


class HasherBusy(RateLimited):
    """The password hasher's queue is full: answer 429 with `Retry-After: retry_after_s` at once."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            "too many logins and registrations are waiting for a password check; "
            f"retry in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


class PasswordHasher:
    """argon2id hashing off the event loop, at most `max_concurrent` hashes at a time.

    The defaults are argon2-cffi's RFC 9106 "low memory" profile (t=3, 64 MiB, p=4), so two
    concurrent hashes use about 128 MiB. Tests may pass cheaper parameters.

    Queue bound: at most `queue_size` calls of `hash`/`verify` are admitted at once, counting
    the ones hashing in a thread (at most `max_concurrent`) and the ones waiting for a thread.
    One more raises `HasherBusy` at once, without waiting and without hashing, so a caller
    admitted behind a flood waits for at most `ceil(queue_size / max_concurrent)` hashes. When
    `queue_size < max_concurrent`, only `queue_size` hashes ever run at once. Calls that need
    no hash (an over-long password, one that is not text) are not counted and never refused.

    Cancellation: a call waiting for a limiter slot is cancelled at once and frees its place in
    the queue. A hash already running in its thread cannot be interrupted (argon2 has no cancel
    point), so cancellation takes effect when it finishes, a few tens of milliseconds later,
    and the result is discarded. The thread is never abandoned, which is what keeps the
    limiter an honest bound.
    """

    def __init__(
        self,
        *,
        time_cost: int = 3,
        memory_cost_kib: int = 65536,
        parallelism: int = 4,
        max_concurrent: int = 2,
        queue_size: int = 32,
    ) -> None:
        if max_concurrent < 1 or queue_size < 1:
            raise ValueError("max_concurrent and queue_size must be at least 1")
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost_kib,
            parallelism=parallelism,
            type=argon2.Type.ID,
        )
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._queue_size = queue_size
        self._admitted = 0
        self._hash_s = _INITIAL_HASH_S  # running mean of one hash's duration
        self._dummy_hash: str | None = None
        self._dummy_lock = trio.Lock()

    @property
    def admitted(self) -> int:
        """Calls in the hasher now (hashing or waiting for a thread)."""
        return self._admitted

    async def hash(self, password: str) -> str:
        """The encoded `$argon2id$...` hash of `password` (validate it first).

        Raises HasherBusy when `queue_size` calls are in the hasher already.
        """
        with self._admit():
            return await self._run(self._hasher.hash, password)

    async def verify(self, hash: str | None, password: str) -> bool:
        """True if `password` matches `hash`; False on a mismatch or an unreadable hash.

        Never raises for a wrong password (HasherBusy when the queue is full). `hash=None`
        (unknown user) verifies against a throwaway hash and returns False, so a login for a
        missing account costs the same time as one with a wrong password and does not reveal
        which accounts exist.
        """
        if not isinstance(password, str) or len(password) > MAX_PASSWORD_CHARS:
            return (
                False  # no stored hash can match: registration refuses such passwords
            )
        try:
            password.encode("utf-8")
        except UnicodeEncodeError:
            return False
        with self._admit():
            if hash is None:
                await self._run(self._verify_sync, await self._dummy(), password)
                return False
            return await self._run(self._verify_sync, hash, password)

    async def _dummy(self) -> str:
        """The throwaway hash unknown users are checked against, made once on first need."""
        async with self._dummy_lock:
            if self._dummy_hash is None:
                self._dummy_hash = await self._run(self._hasher.hash, secrets.token_urlsafe(16))
        return self._dummy_hash

    @contextlib.contextmanager
    def _admit(self) -> Iterator[None]:
        if self._admitted >= self._queue_size:
            raise HasherBusy(self._retry_after_s())
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    def _retry_after_s(self) -> int:
        """Whole seconds until the queue has drained at the measured hash rate (at least 1)."""
        rounds = math.ceil(self._admitted / self._limiter.total_tokens)
        return max(1, math.ceil(rounds * self._hash_s))

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        result, elapsed = await trio.to_thread.run_sync(
            _timed, fn, args, limiter=self._limiter
        )
        self._hash_s += (elapsed - self._hash_s) * 0.2
        return result

    def _verify_sync(self, hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(hash, password)
        except (
            argon2.exceptions.VerificationError,
            argon2.exceptions.InvalidHashError,
        ):
            return False

    def needs_rehash(self, hash: str) -> bool:
        """True when `hash` was made with other parameters (re-hash it after a good login)."""
        try:
            return self._hasher.check_needs_rehash(hash)
        except (argon2.exceptions.InvalidHashError, ValueError):
            return True


@attrs.frozen
class Claims:
    """What a valid token says: who, and until when (ms since the epoch)."""

    user: str
    exp_ms: int


class TokenIssuer:
    """Issues and checks HS256 tokens with `sub`, `iat`, `exp` (PROTOCOL section 2).

    `decode` rejects, with Unauthorized: any algorithm but HS256 (`none` included), a wrong
    signature, a missing `exp`/`iat`/`sub`, an expired token, a `nbf` in the future, an `exp`,
    `nbf` or `iat` that is not a JSON integer within +-(2**53-1) (a string, a float, a bool, a
    huge integer), a subject that is not a valid username, and anything malformed. Leeway is 0.
    `iat` is not compared with the clock: PROTOCOL names `nbf` as the not-before check, and
    comparing `iat` would refuse tokens from a node whose clock runs slightly ahead.
    """

    def __init__(self, secret: str, ttl_s: float) -> None:
        if not isinstance(secret, str) or not secret:
            raise ValueError("the token secret must be a non-empty string")
        if not ttl_s > 0:
            raise ValueError("the token lifetime must be positive")
        self._secret = secret
        self._ttl_ms = round(ttl_s * 1000)
        self._short_key = len(secret.encode("utf-8")) < _MIN_SECRET_BYTES
        if self._short_key:
            logger.warning(
                "the JWT secret is shorter than %d bytes; use at least %d random bytes",
                _MIN_SECRET_BYTES,
                _MIN_SECRET_BYTES,
            )

    def issue(self, username: str, now_ms: int | None = None) -> tuple[str, int]:
        """A token for `username` and the moment it expires (ms since the epoch).

        `exp` is whole seconds (rounded down), and the returned expiry is exactly `exp`
        in milliseconds, so clients never hold a token past the time they were told.
        """
        if now_ms is None:
            now_ms = time.time_ns() // 1_000_000
        iat = now_ms // 1000
        exp = (now_ms + self._ttl_ms) // 1000
        payload = {"sub": username, "iat": iat, "exp": exp}
        with self._quiet():
            token = jwt.encode(payload, self._secret, algorithm=_ALGORITHM)
        return token, exp * 1000

    def decode(self, token: str) -> Claims:
        """The claims of a valid token; raises Unauthorized saying what is wrong."""
        if not isinstance(token, str) or not token:
            raise Unauthorized("malformed token")
        try:
            with self._quiet():
                payload = jwt.decode(
                    token,
                    self._secret,
                    algorithms=[_ALGORITHM],
                    options={"require": ["exp", "iat", "sub"], "verify_iat": False},
                    leeway=0,
                )
        except jwt.InvalidAlgorithmError:
            raise Unauthorized(
                "token algorithm is not allowed (only HS256 is accepted)"
            ) from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("token signature is invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token has no {exc.claim!r} claim") from None
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized(
                "token is not valid yet (nbf is in the future)"
            ) from None
        except jwt.DecodeError as exc:
            raise Unauthorized(f"malformed token: {exc}") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise Unauthorized("malformed token") from None
        for claim in _TIME_CLAIMS:
            if claim in payload and not is_safe_int(payload[claim]):
                raise Unauthorized(
                    f"malformed token: {claim} must be an integer within +-(2**53-1)"
                )
        user = payload["sub"]
        if not is_valid_username(user):
            raise Unauthorized("token subject is not a valid username")
        return Claims(user=user, exp_ms=int(payload["exp"]) * 1000)

    def _quiet(self) -> contextlib.AbstractContextManager[object]:
        # pyjwt warns on every call with a short key; we warned once in __init__.
        if self._short_key:
            return warnings.catch_warnings(
                action="ignore", category=jwt.InsecureKeyLengthWarning
            )
        return contextlib.nullcontext()


def load_or_create_secret(config: Config) -> str:
    """The token signing secret: `config.jwt_secret`, else `<data_dir>/jwt_secret`.

    When neither exists, 32 random bytes (URL-safe text) are generated and written atomically
    with mode 0600, and one WARNING says so: tokens then survive restarts of this node, but
    every node of a cluster must share CHAT_JWT_SECRET. Concurrent first starts on one data dir
    agree on a single secret (the file is linked into place, never overwritten). Blocking file
    I/O: call it once at startup. Raises ConfigError if the directory or file is unusable.
    """
    if config.jwt_secret:
        return config.jwt_secret
    path = Path(config.data_dir) / SECRET_FILE_NAME
    existing = _read_secret(path)
    if existing is not None:
        return existing
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(32)
        winner = _write_new_secret(path, secret)
    except OSError as exc:
        raise ConfigError(
            f"cannot store a generated JWT secret in {path}: {exc.strerror or exc}; "
            "make the data dir writable or set CHAT_JWT_SECRET"
        ) from None
    if winner != secret:
        return winner  # another process created it first; use theirs
    logger.warning(
        "generated a new JWT secret and stored it in %s (mode 0600); "
        "multi-node deployments must set CHAT_JWT_SECRET to the same value on every node",
        path,
    )
    return secret


def _read_secret(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the JWT secret file {path}: {exc}; fix its permissions or set "
            "CHAT_JWT_SECRET"
        ) from None
    if not text:
        raise ConfigError(
            f"the JWT secret file {path} is empty; delete it to generate a new secret "
            "(this signs out every user) or set CHAT_JWT_SECRET"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "the JWT secret file %s is accessible to other users; chmod 600 it", path
        )
    return text


def _write_new_secret(path: Path, secret: str) -> str:
    """Write `secret` to a temp file, then link it to `path` unless `path` appeared meanwhile."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (secret + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            existing = _read_secret(path)
            return existing if existing is not None else secret
        except OSError:
            os.replace(tmp, path)  # file systems without hard links
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    _fsync_dir(path.parent)
    return secret


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
