"""Load generator worker: one asyncio process holding many WebSocket clients.

The harness starts one per generator core (`python -m bench.generator`, pinned with
taskset) and drives it with one JSON command per line on stdin; each command is answered
with one JSON line on stdout. Keeping the generator in separate processes on their own
core is what lets the harness attribute CPU to the server under test.

Clients are picows (Cython framing, masking and auto-pong), and the per-frame Python work
is kept to a few `bytes.find` calls: every load message carries a marker
`~<sender>:<n>:<t_ns>~` in its text, where `t_ns` is the intended send time on the
system-wide monotonic clock, so end-to-end latency, loss, duplicates and order are read
off the marker without parsing JSON. Everything else (welcome, joined, ack, error) is rare
and goes through orjson.

Against a cluster, a client's spec also says which node it is on (`node`, of `nodes`), and
the harness places client `idx` on node `idx % nodes`; such a client also files each
delivery under "local" or "remote" (the sender, read off the marker, on the same node or
another one) and under its own node, which is how the bus hop shows.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from array import array
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.stats import histogram

_TEXT = WSMsgType.TEXT
_CLOSE = WSMsgType.CLOSE
now_ns = time.monotonic_ns


class Sink:
    """Counters for one measurement window (a step), shared by the clients writing to it."""

    __slots__ = ("lat", "received", "ooo", "gaps", "acked", "ack_lat", "errors", "last_ns", "hop", "by_node")

    def __init__(self) -> None:
        self.lat = array("q")          # end-to-end latency of each delivery, microseconds
        self.ack_lat = array("q")      # send -> ack, microseconds
        self.received = 0              # marker frames, duplicates included
        self.ooo = 0                   # a sender's n not above the last one seen: duplicate or reordered
        self.gaps = 0                  # skipped n (lost unless they show up later as ooo)
        self.acked = 0
        self.errors: dict[str, int] = {}
        self.last_ns = 0
        self.hop: dict[str, array] = {}        # cluster clients only: "local" / "remote" latencies
        self.by_node: dict[int, array] = {}    # cluster clients only: latencies by receiving node

    def summary(self) -> dict[str, Any]:
        out = {
            "received": self.received, "ooo": self.ooo, "gaps": self.gaps, "acked": self.acked,
            "errors": self.errors, "latency": histogram(self.lat), "ack_latency": histogram(self.ack_lat),
            "last_ns": self.last_ns,
        }
        if self.hop or self.by_node:
            out["hop"] = {k: histogram(v) for k, v in self.hop.items()}
            out["by_node"] = {str(k): histogram(v) for k, v in self.by_node.items()}
        return out


class Client(WSListener):
    """One WebSocket client; `mode` is "ours" (the chat protocol) or "raw" (the peer)."""

    def __init__(self, gen: Generator, idx: int, mode: str) -> None:
        self.gen = gen
        self.idx = idx
        self.mode = mode
        self.transport: WSTransport | None = None
        self.sink = gen.sink
        self.last: dict[bytes, int] = {}
        self.waiting: dict[str, asyncio.Future] = {}
        self.close_code: int | None = None
        self.disconnected = asyncio.get_running_loop().create_future()
        self.joined_seq: dict[str, int] = {}
        self.name = b"%d" % idx          # the sender id in markers
        self.n = 0                       # last n sent
        self.file_by_node = False        # NodeClient: deliveries also filed by hop and node

    # -- picows callbacks -------------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not _TEXT:
            if frame.msg_type is _CLOSE:
                self.close_code = frame.get_close_code().value
            return
        p = frame.get_payload_as_bytes()
        i = p.find(b"~")
        if i >= 0:
            j = p.find(b"~", i + 1)
            sid, n, t = p[i + 1:j].split(b":")
            now = now_ns()
            sink = self.sink
            us = (now - int(t)) // 1000
            sink.lat.append(us)
            if self.file_by_node:
                self._file(sink, sid, us)
            sink.received += 1
            sink.last_ns = now
            n = int(n)
            last = self.last.get(sid, 0)
            if n > last:
                self.last[sid] = n
                if n != last + 1:
                    sink.gaps += n - last - 1
            else:
                sink.ooo += 1
            return
        self._control(orjson.loads(p))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.disconnected.done():
            self.disconnected.set_result(self.close_code)
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"closed {self.close_code}"))
        self.gen.closes[str(self.close_code)] = self.gen.closes.get(str(self.close_code), 0) + 1

    def _file(self, sink: Sink, sid: bytes, us: int) -> None:
        """File one delivery's latency by where it came from (a cluster client only)."""

    # -- control frames ---------------------------------------------------------------------
    def _control(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "ack":
            sink = self.sink
            sink.acked += 1
            sent = event["id"].rsplit(".", 1)[-1]
            sink.ack_lat.append((now_ns() - int(sent)) // 1000)
            return
        if kind == "error":
            code = event.get("code", "?")
            self.sink.errors[code] = self.sink.errors.get(code, 0) + 1
            if code == "rate_limited":
                return
        if kind == "joined":
            self.joined_seq[event["room"]] = event["seq"]
        fut = self.waiting.pop(kind, None)
        if fut is not None and not fut.done():
            fut.set_result(event)

    def expect(self, kind: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.waiting[kind] = fut
        return fut

    # -- sending ----------------------------------------------------------------------------
    def send_load(self, target: bytes, kind: bytes, intended_ns: int, pad: bytes) -> None:
        """One load message; `target` is a room (send), a username (dm) or unused (raw)."""
        self.n = n = self.n + 1
        marker = b"~%s:%d:%d~" % (self.name, n, intended_ns)
        if self.mode == "raw":
            self.transport.send(_TEXT, marker + pad[len(marker):])
            return
        field = b"room" if kind == b"send" else b"to"
        self.transport.send(_TEXT, b'{"type":"%s","%s":"%s","id":"%s.%d.%d","text":"%s"}' % (
            kind, field, target, self.name, n, intended_ns, marker + pad[len(marker):]))


class NodeClient(Client):
    """A client of node `node` of a cluster of `nodes`: its deliveries are also filed by hop
    (sender `idx % nodes` against `node`) and by receiving node."""

    def __init__(self, gen: Generator, idx: int, mode: str, node: int, nodes: int) -> None:
        super().__init__(gen, idx, mode)
        self.node = node
        self.nodes = nodes
        self.file_by_node = True

    def _file(self, sink: Sink, sid: bytes, us: int) -> None:
        hop = "local" if int(sid) % self.nodes == self.node else "remote"
        lat = sink.hop.get(hop)
        if lat is None:
            lat = sink.hop[hop] = array("q")
        lat.append(us)
        lat = sink.by_node.get(self.node)
        if lat is None:
            lat = sink.by_node[self.node] = array("q")
        lat.append(us)


class Generator:
    def __init__(self) -> None:
        self.clients: dict[int, Client] = {}
        self.sink = Sink()
        self.closes: dict[str, int] = {}

    # -- commands ---------------------------------------------------------------------------
    async def op_connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Open (or reopen) clients: each spec has idx, url, and for "ours" joins [[room, since]]."""
        mode = cmd["mode"]
        sem = asyncio.Semaphore(cmd.get("concurrency", 200))
        timeout = cmd.get("timeout", 30.0)
        times = array("q")
        failures: dict[str, int] = {}
        into = cmd.get("sink") == "fresh"
        if into:
            self.sink = Sink()

        async def one(spec: dict[str, Any]) -> None:
            async with sem:
                started = now_ns()
                try:
                    await asyncio.wait_for(self._open(mode, spec), timeout)
                except Exception as exc:  # counted and reported; the harness decides
                    key = type(exc).__name__ + (f": {exc}"[:80] if str(exc) else "")
                    failures[key] = failures.get(key, 0) + 1
                    return
                times.append((now_ns() - started) // 1000)

        started = time.monotonic()
        await asyncio.gather(*(one(spec) for spec in cmd["specs"]))
        elapsed = time.monotonic() - started
        return {"connected": len(times), "failures": failures, "elapsed": elapsed,
                "connect_latency": histogram(times), "sink": self.sink.summary() if into else None}

    async def _open(self, mode: str, spec: dict[str, Any]) -> None:
        idx = spec["idx"]
        old = self.clients.get(idx)
        client = NodeClient(self, idx, mode, spec["node"], spec["nodes"]) if "node" in spec \
            else Client(self, idx, mode)
        if old is not None:
            client.last = old.last          # a reconnect keeps what it has seen: replays are checked
            client.n = old.n
        if mode == "ours":
            synced = client.expect("synced")
        _, client = await ws_connect(lambda: client, spec["url"], enable_auto_pong=True,
                                     websocket_handshake_timeout=30)
        self.clients[idx] = client
        if mode != "ours":
            return
        await synced
        for room, since in spec.get("joins", ()):
            joined = client.expect("joined")
            frame = {"type": "join", "room": room}
            if since is not None:
                frame["since"] = since
            client.transport.send(_TEXT, orjson.dumps(frame))
            await joined

    async def op_close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        idxs = cmd.get("idxs")
        targets = [self.clients[i] for i in idxs] if idxs is not None else list(self.clients.values())
        for client in targets:
            if client.transport is not None and not client.transport.is_disconnected:
                client.transport.send_close()
                client.transport.disconnect()
        await asyncio.gather(*(asyncio.wait_for(c.disconnected, 10) for c in targets), return_exceptions=True)
        return {"closed": len(targets)}

    async def op_forget(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Drop closed clients (and what they have seen) so their indexes start afresh."""
        idxs = cmd.get("idxs")
        for idx in list(self.clients) if idxs is None else idxs:
            self.clients.pop(idx, None)
        return {"clients": len(self.clients)}

    async def op_run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Send load at `rate` msgs/s in total, round-robin over `senders`, then let it drain.

        Each message is stamped with its intended send time (k / rate after the start), so a
        stalled generator or server shows up as latency instead of a lower offered rate.
        """
        self.sink = sink = Sink()
        for client in self.clients.values():
            client.sink = sink
        senders = [(self.clients[i], t.encode(), cmd.get("kind", "send").encode()) for i, t in cmd["senders"]]
        rate = float(cmd["rate"])
        duration = float(cmd["duration"])
        pad = b"x" * int(cmd.get("size", 200))
        closes_before = dict(self.closes)
        count = len(senders)
        t0 = now_ns()
        end = t0 + int(duration * 1e9)
        step_ns = 1e9 / rate if rate > 0 else 0
        k = 0
        total = int(rate * duration) if senders else 0
        tick = 0.001 if rate > 0 else 0.01      # libuv timers have 1 ms resolution: less would spin
        while k < total:
            now = now_ns()
            if now >= end + 1_000_000_000:      # a stalled loop still ends
                break
            due = min(int((now - t0) / step_ns) + 1, total)
            while k < due:
                client, target, kind = senders[k % count]
                if client.transport is not None and not client.transport.is_disconnected:
                    client.send_load(target, kind, t0 + int(k * step_ns), pad)
                k += 1
            await asyncio.sleep(tick)
        sent_elapsed = (now_ns() - t0) / 1e9
        await self._drain(sink, cmd.get("expect", 0), cmd.get("acks", 0), cmd.get("drain", 3.0))
        closes = {c: n - closes_before.get(c, 0) for c, n in self.closes.items() if n != closes_before.get(c, 0)}
        out = sink.summary()
        sent_by: dict[str, int] = {}
        for i in range(min(k, count)):
            sent_by[str(senders[i][0].idx)] = k // count + (1 if i < k % count else 0)
        out.update(sent=k, sent_by=sent_by, send_elapsed=sent_elapsed, t0_ns=t0, closes=closes)
        return out

    async def op_wait(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Wait until `expect` marker frames arrived in the current sink (or the timeout)."""
        sink = self.sink
        await self._drain(sink, cmd.get("expect", 0), 0, cmd.get("timeout", 10.0))
        return sink.summary()

    async def _drain(self, sink: Sink, expect: int, acks: int, limit_s: float) -> None:
        """Wait for the expected deliveries and acks, giving up after `limit_s` or 1 s of silence."""
        deadline = time.monotonic() + limit_s
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if sink.received >= expect and sink.acked >= acks:
                return
            progress = sink.received + sink.acked
            if progress != seen:
                seen, quiet_since = progress, time.monotonic()
            elif time.monotonic() - quiet_since > 1.0:
                return
            await asyncio.sleep(0.02)

    async def op_ceiling(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Receive as fast as a blast server sends for `duration` s: this process's own ceiling."""
        self.sink = sink = Sink()
        for client in self.clients.values():
            client.sink = sink
            client.last = {}
            client.transport.send(_TEXT, b"go %d" % int(cmd["duration"] * 1000))
        started = time.monotonic()
        await asyncio.sleep(cmd["duration"])
        received = sink.received
        elapsed = time.monotonic() - started
        return {"received": received, "elapsed": elapsed, "per_s": received / elapsed}

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 28)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd = orjson.loads(line)
            op = cmd.pop("op")
            if op == "exit":
                await self.op_close({})
                self._reply({"ok": True})
                return
            try:
                result = await getattr(self, "op_" + op)(cmd)
                result["ok"] = True
            except Exception as exc:
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            result["cpu_s"] = sum(os.times()[:2])
            self._reply(result)

    @staticmethod
    def _reply(result: dict[str, Any]) -> None:
        sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
        sys.stdout.buffer.flush()


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(Generator().serve())
    else:
        uvloop.run(Generator().serve())


if __name__ == "__main__":
    main()
