"""Processes the harness starts and stops: the server under test (one node, or the nodes
of a cluster), the peer, the blast server and the generators, each pinned to its core.

Everything started here is stopped by `Processes.close()` (the harness runs it in a
`finally`), so an interrupted run leaves nothing behind: that includes the PostgreSQL
databases and Redis keys of a `--store postgresql://` or `--nodes` run (bench/stores.py).
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
from typing import Any, Callable

import orjson
import psutil

from bench.stores import REDIS_URL, PostgresDatabases, ServiceCpu, delete_prefix, is_postgres, new_prefix

BENCH_DIR = Path(__file__).resolve().parent
PEER_DIR = BENCH_DIR / "peer"
ROOT = BENCH_DIR.parent


def cores() -> tuple[list[int], list[int]]:
    """(server cores, generator cores): the first CPU for the server, the rest for load."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return available, available
    return available[:1], available[1:]


def layout(nodes: int) -> tuple[list[list[int]], list[int], str]:
    """(the cores of each node, the generator cores, how the nodes share cores, or "").

    One node: `cores()`. N nodes get a core each when there are at least N + 1 (the rest go
    to the generators); with fewer, the nodes take turns on every core but the last, which
    stays the generators' (on 2 cores: all nodes on CPU 0, the generator on CPU 1).
    """
    server, gens = cores()
    if nodes <= 1:
        return [server], gens, ""
    available = sorted(os.sched_getaffinity(0))
    if len(available) >= nodes + 1:
        return [[c] for c in available[:nodes]], available[nodes:], ""
    pool = available[:-1] or available
    gens = available[-1:]
    per_node = [[pool[k % len(pool)]] for k in range(nodes)]
    shared = ", ".join(f"CPU {c}: nodes {', '.join(str(k) for k in range(nodes) if per_node[k] == [c])}"
                       for c in pool)
    return per_node, gens, (f"{len(available)} cores, fewer than {nodes} nodes + 1 generator core: "
                            f"the nodes share ({shared}) and their CPU figures add up on the same core(s)")


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
        self.services: ServiceCpu | None = None       # CPU of its store (PostgreSQL backends)
        self.on_stop: list[Callable[[], None]] = []     # clean-ups once it has stopped

    def other_cpu(self) -> dict[str, float]:
        """Cumulative CPU seconds of the other processes a message costs (empty: none tracked)."""
        return self.services.sample() if self.services is not None else {}

    def counters(self) -> dict[str, float]:
        """The server's own counters the runner tracks per step (none for a single server)."""
        return {}

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


#: the /metrics series a cluster run records per step (their increase, all nodes summed)
CLUSTER_COUNTERS = ("chat_bus_published", "chat_bus_received", "chat_bus_dropped", "chat_bus_reconnects",
                    "chat_gap_fills_total", "chat_messages_filled_total")


class Cluster:
    """N nodes of one chat: the same PostgreSQL database, one Redis prefix, one JWT secret.

    Looks like a `Target` to the runner: CPU and RSS are the sum over its nodes (and
    `other_cpu` has each node's share and the services'); clients are placed on
    `nodes[idx % N]`, and registration goes through node 0.
    """

    def __init__(self, name: str, nodes: list[Target], database: str, prefix: str) -> None:
        self.name = name
        self.nodes = nodes
        self.database = database
        self.prefix = prefix
        self.ws_url = nodes[0].ws_url
        self.http_url = nodes[0].http_url
        self.services = ServiceCpu(database, REDIS_URL)
        self.on_stop: list[Callable[[], None]] = []

    def cpu_s(self) -> float:
        return sum(n.cpu_s() for n in self.nodes)

    def rss(self) -> int:
        return sum(n.rss() for n in self.nodes)

    def alive(self) -> bool:
        return all(n.alive() for n in self.nodes)

    def other_cpu(self) -> dict[str, float]:
        return {**{f"node {k}": n.cpu_s() for k, n in enumerate(self.nodes)}, **self.services.sample()}

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every node's /readyz says "ok" (its store and its bus answer), at most `timeout` s."""
        import httpx
        deadline = time.monotonic() + timeout
        for k, node in enumerate(self.nodes):
            last: object = None
            while True:
                try:
                    r = httpx.get(f"{node.http_url}/readyz", timeout=5)
                    last = r.text
                    if r.status_code == 200 and r.json().get("status") == "ok":
                        break
                except httpx.HTTPError as exc:
                    last = exc
                if time.monotonic() > deadline or not node.alive():
                    raise RuntimeError(f"cluster node {k} not ready within {timeout:g}s: {last}")
                time.sleep(0.1)

    def counters(self) -> dict[str, float]:
        """The cluster counters of /metrics (bus events, gap fills), summed over the nodes."""
        import httpx
        out: dict[str, float] = {}
        for node in self.nodes:
            try:
                text = httpx.get(f"{node.http_url}/metrics", timeout=5).text
            except httpx.HTTPError:
                continue
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name in CLUSTER_COUNTERS:
                    out[name] = out.get(name, 0.0) + float(value)
        return out

    def stop(self, timeout: float = 20.0) -> int | None:
        codes = [n.stop(timeout) for n in self.nodes]
        return next((c for c in codes if c not in (0, None)), codes[0] if codes else None)


def _cleanup(target: Target | Cluster) -> None:
    while target.on_stop:
        job = target.on_stop.pop(0)
        try:
            job()
        except Exception as exc:  # reported, never fatal: the rest still has to be cleaned
            print(f"bench: clean-up failed: {type(exc).__name__}: {exc}", file=sys.stderr)


class Processes:
    """Owns every child process of one harness run."""

    def __init__(self, nodes: int = 1) -> None:
        self.node_cpus, self.gen_cpus, self.sharing = layout(nodes)
        self.server_cpus = self.node_cpus[0]
        self.children: list[Target] = []
        self.clusters: list[Cluster] = []
        self.databases: dict[str, PostgresDatabases] = {}
        self.generators: list[GeneratorProc] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="chat-bench-"))
        self.started = 0
        self.profile_dir: Path | None = None      # set: py-spy records the server under test
        self.profile_label = "server"
        self.profiles: list[str] = []
        self.server_src: Path | None = None       # run the server from this checkout instead

    def _fresh_database(self, store: str) -> tuple[PostgresDatabases, str, str]:
        dbs = self.databases.setdefault(store, PostgresDatabases(store))
        name, url = dbs.create()
        return dbs, name, url

    def start_ours(self, store: str | None = None, extra_env: dict[str, str] | None = None,
                   cpus: list[int] | None = None) -> Target:
        """One node; a postgresql:// `store` is the maintenance database of a fresh one."""
        database = None
        if is_postgres(store) and not (extra_env and "CHAT_STORE" in extra_env):
            dbs, database, store = self._fresh_database(store)
        try:
            target = self._start_node(store, extra_env, cpus)
        except BaseException:
            if database:
                dbs.drop(database)
            raise
        if database:
            target.services = ServiceCpu(database, None)
            target.on_stop.append(lambda: dbs.drop(database))
        return target

    def start_cluster(self, count: int, store: str) -> Cluster:
        """`count` nodes on a fresh database of `store` and a fresh Redis prefix, each on its cores."""
        dbs, database, url = self._fresh_database(store)
        prefix = new_prefix()
        shared = {"CHAT_STORE": url, "CHAT_BUS": f"{REDIS_URL}?prefix={prefix}",
                  "CHAT_JWT_SECRET": secrets.token_hex(32), "CHAT_API_KEY": secrets.token_hex(16)}
        nodes: list[Target] = []
        try:
            for k in range(count):      # node 0 first: it applies the migrations, the others find them
                nodes.append(self._start_node(url, {**shared, "CHAT_NODE_ID": f"bench-node-{k}"},
                                              self.node_cpus[k % len(self.node_cpus)], label=f"node{k}"))
        except BaseException:
            for node in nodes:
                self.stop(node)
            for job in (lambda: delete_prefix(prefix), lambda: dbs.drop(database)):
                try:
                    job()
                except Exception as exc:
                    print(f"bench: clean-up failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            raise
        cluster = Cluster(f"ours-{count}-nodes", nodes, database, prefix)
        cluster.on_stop += [lambda: delete_prefix(prefix), lambda: dbs.drop(database)]
        self.clusters.append(cluster)
        try:
            cluster.wait_ready()
        except BaseException:
            self.stop(cluster)
            raise
        return cluster

    def _start_node(self, store: str | None, extra_env: dict[str, str] | None, cpus: list[int] | None,
                    label: str = "") -> Target:
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
                             r"listening ws=(\S+) http=(\S+)", "stderr", timeout=60, env=env, cpus=cpus)
        if self.profile_dir is not None:
            target.profiler = self._profile(target.proc.pid, label)
        return target

    def _profile(self, pid: int, label: str = "") -> subprocess.Popen:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        assert self.profile_dir is not None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        path = self.profile_dir / f"{self.profile_label}-{self.started}{'-' + label if label else ''}.txt"
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
               timeout: float = 30, env: dict[str, str] | None = None, cpus: list[int] | None = None) -> Target:
        """Start a server on the server CPUs (or `cpus`) and wait for its `listening` line
        (ws URL, http URL?)."""
        proc = subprocess.Popen(pinned(argv, cpus or self.server_cpus), env=env, cwd=cwd,
                                stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
                                stderr=subprocess.PIPE if stream == "stderr" else None,   # else: to ours
                                start_new_session=True)
        m = _wait_line(proc, listening, timeout, stream)
        target = Target(name, proc, m.group(1), m.group(2) if m.re.groups > 1 else None)
        self.children.append(target)
        return target

    def stop(self, target: Target | Cluster) -> int | None:
        """Stop a server or a cluster, then remove what it left (its database, its Redis keys)."""
        code = target.stop()
        for node in target.nodes if isinstance(target, Cluster) else [target]:
            if node in self.children:
                self.children.remove(node)
            _cleanup(node)
        if target in self.clusters:
            self.clusters.remove(target)
        _cleanup(target)
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
        for cluster in list(self.clusters):
            self.stop(cluster)
        for target in list(self.children):
            self.stop(target)
        for dbs in self.databases.values():
            for name in dbs.drop_all():
                print(f"bench: could not drop the database {name}", file=sys.stderr)
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
