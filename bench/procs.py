"""Processes the harness starts and stops: the server under test, the peer, the blast
server and the generators, each pinned to its core.

Everything started here is stopped by `Processes.close()` (the harness runs it in a
`finally`), so an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

BENCH_DIR = Path(__file__).resolve().parent
PEER_DIR = BENCH_DIR / "peer"
ROOT = BENCH_DIR.parent


def cores() -> tuple[list[int], list[int]]:
    """(server cores, generator cores): the first CPU for the server, the rest for load."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return available, available
    return available[:1], available[1:]


def pinned(argv: list[str], cpus: list[int]) -> list[str]:
    """Prefix `taskset -c` when it exists (the harness then says how it pinned)."""
    if shutil.which("taskset") and cpus:
        return ["taskset", "-c", ",".join(map(str, cpus)), *argv]
    return argv


def raise_fd_limit() -> int:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Target:
    """A server under test (ours, the Node peer or the blast server) and its resource use."""

    def __init__(self, name: str, proc: subprocess.Popen, ws_url: str, http_url: str | None) -> None:
        self.name = name
        self.proc = proc
        self.ws_url = ws_url
        self.http_url = http_url
        self.ps = psutil.Process(proc.pid)
        self.profiler: subprocess.Popen | None = None

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.profiler is not None and self.profiler.poll() is None:
            self.profiler.send_signal(signal.SIGINT)       # py-spy writes its file on SIGINT
            try:
                self.profiler.wait(30)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _wait_line(proc: subprocess.Popen, pattern: str, timeout: float, stream: str) -> re.Match:
    """Read lines of the child's `stream` until one matches; keep draining it afterwards."""
    pipe = proc.stderr if stream == "stderr" else proc.stdout
    assert pipe is not None
    found: list[re.Match] = []
    seen: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        for raw in pipe:
            line = raw.decode(errors="replace")
            if not ready.is_set():
                seen.append(line)
                m = re.search(pattern, line)
                if m:
                    found.append(m)
                    ready.set()
            elif "Traceback" in line or "ERROR" in line or "CRITICAL" in line:
                sys.stderr.write(f"[{proc.args[-1] if proc.args else 'child'}] {line}")
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    ready.wait(timeout)
    if not found:
        proc.kill()
        raise RuntimeError(f"no line matching {pattern!r} within {timeout}s; got:\n" + "".join(seen[-20:]))
    return found[0]


class Processes:
    """Owns every child process of one harness run."""

    def __init__(self) -> None:
        self.server_cpus, self.gen_cpus = cores()
        self.children: list[Target] = []
        self.generators: list[GeneratorProc] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="chat-bench-"))
        self.started = 0
        self.profile_dir: Path | None = None      # set: py-spy records the server under test
        self.profile_label = "server"
        self.profiles: list[str] = []
        self.server_src: Path | None = None       # run the server from this checkout instead

    def start_ours(self, store: str | None = None, extra_env: dict[str, str] | None = None) -> Target:
        self.started += 1
        data = self.tmp / f"ours-{self.started}"
        data.mkdir()
        env = {
            **os.environ,
            "CHAT_WS_HOST": "127.0.0.1", "CHAT_WS_PORT": "0",
            "CHAT_HTTP_HOST": "127.0.0.1", "CHAT_HTTP_PORT": "0",
            "CHAT_STORE": store or f"sqlite:///{data}/chat.db",
            "CHAT_DATA_DIR": str(data),
            "CHAT_JWT_SECRET": secrets.token_hex(32),
            # the bench measures throughput, not policy: lift the per-connection send limit and
            # the per-user connection cap (its connections are devices of a few users)
            "CHAT_RATE_PER_SECOND": "1000000", "CHAT_RATE_BURST": "1000000",
            "CHAT_MAX_CONNECTIONS_PER_USER": "1000000",
            "CHAT_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        if self.server_src is not None:         # e.g. a git worktree of an older commit
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.server_src), env.get("PYTHONPATH")]))
        target = self._spawn("ours", [sys.executable, "-m", "chat_actors", "serve"], self.tmp,
                             r"listening ws=(\S+) http=(\S+)", "stderr", timeout=60, env=env)
        if self.profile_dir is not None:
            target.profiler = self._profile(proc.pid)
        return target

    def _profile(self, pid: int) -> subprocess.Popen:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        assert self.profile_dir is not None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        path = self.profile_dir / f"{self.profile_label}-{self.started}.txt"
        self.profiles.append(str(path))
        return subprocess.Popen([spy, "record", "--format", "raw", "--rate", "200", "--nonblocking", "--gil",
                                 "-o", str(path), "-p", str(pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_peer(self) -> Target:
        install_peer()
        return self._spawn("node-ws", ["node", str(PEER_DIR / "server.js")], PEER_DIR,
                           r"peer listening (\S+)", "stdout")

    def start_blast(self, shape: str, size: int) -> Target:
        return self._spawn("blast", [sys.executable, "-m", "bench.blast", "--shape", shape, "--size", str(size)],
                           ROOT, r"blast listening (\S+)", "stdout")

    def _spawn(self, name: str, argv: list[str], cwd: Path, listening: str, stream: str, *,
               timeout: float = 30, env: dict[str, str] | None = None) -> Target:
        """Start a server on the server CPUs and wait for its `listening` line (ws URL, http URL?)."""
        proc = subprocess.Popen(pinned(argv, self.server_cpus), env=env, cwd=cwd,
                                stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
                                stderr=subprocess.PIPE if stream == "stderr" else None,   # else: to ours
                                start_new_session=True)
        m = _wait_line(proc, listening, timeout, stream)
        target = Target(name, proc, m.group(1), m.group(2) if m.re.groups > 1 else None)
        self.children.append(target)
        return target

    def stop(self, target: Target) -> int | None:
        code = target.stop()
        if target in self.children:
            self.children.remove(target)
        return code

    def start_generators(self, count: int | None = None) -> list[GeneratorProc]:
        cpus = self.gen_cpus
        count = count or len(cpus)
        while len(self.generators) < count:
            cpu = cpus[len(self.generators) % len(cpus)]
            self.generators.append(GeneratorProc(pinned([sys.executable, "-m", "bench.generator"], [cpu])))
        return self.generators[:count]

    def close(self) -> None:
        for gen in self.generators:
            gen.stop()
        self.generators.clear()
        for target in list(self.children):
            target.stop()
        self.children.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


class GeneratorProc:
    """One generator process, driven by JSON lines (see bench/generator.py)."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)

    def send(self, op: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps({"op": op, **fields}) + b"\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"generator exited with {self.proc.wait()}")
        reply = orjson.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"generator failed: {reply.get('error')}")
        return reply

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        self.send(op, **fields)
        return self.result()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("exit")
                self.proc.wait(15)
            except Exception:
                self.proc.kill()
                self.proc.wait(5)


def call_all(gens: list[GeneratorProc], op: str, per_gen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send `op` to every generator at once (so they run together), then collect replies."""
    for gen, fields in zip(gens, per_gen):
        gen.send(op, **fields)
    return [gen.result() for gen in gens]


def install_peer() -> None:
    """`npm ci` the peer's pinned `ws` into bench/peer once (node_modules is not committed)."""
    if (PEER_DIR / "node_modules" / "ws" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("the reference peer needs Node.js and npm on PATH (or pass --peer none)")
    started = time.monotonic()
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEER_DIR, check=True,
                   stdout=subprocess.DEVNULL, timeout=300)
    print(f"installed the peer's ws package with npm in {time.monotonic() - started:.1f}s", file=sys.stderr)
