"""Server processes of the test's own: `python -m chat_actors serve` in a subprocess.

Why a subprocess rather than the in-process `server` fixture:

* memory: in-process servers share the test's memory, so the hostile tests measure a
  separate process whose peak RSS they can read (VmHWM) and reset (clear_refs 5);
* crashes and clusters: a node of a cluster (tests/cluster) must be a real process that can
  be killed with SIGKILL mid-traffic, with its own event loop, connections and threads.

`ServerProcess` starts one server with both listeners on port 0, reads the PROTOCOL section 1
listening line from its log (a file, so a chatty server never blocks on a full pipe), and
stops it with SIGTERM (graceful) or `kill()` (SIGKILL, nothing flushed). The store defaults
to SQLite in the work directory; pass `store=` for anything else, and extra CLI flags as
positional arguments.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import trio

LISTENING = re.compile(r"chat-actors listening ws=(ws://\S+) http=(http://\S+)")
SECRET = "hostile-test-secret-0123456789abcdef"
#: generous: a Python start with every import, on a busy 2-core machine
START_TIMEOUT_S = 30.0


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class ServerProcess:
    """One server subprocess; its log goes to a file polled for the listening line."""

    def __init__(
        self,
        workdir: Path,
        *args: str,
        store: str | None = None,
        secret: str = SECRET,
        name: str = "server",
    ) -> None:
        self.workdir = workdir
        self.args: Sequence[str] = args
        self.store = store or f"sqlite:///{workdir}/chat.db"
        self.name = name
        self.log_path = workdir / f"{name}-{os.urandom(3).hex()}.log"
        self.proc: trio.Process | None = None
        self.ws_url = self.http_url = ""
        self.secret = secret

    async def start(self) -> None:
        """Start the process and wait for its listening line (fails the test with its log if
        it exits first or does not listen within START_TIMEOUT_S)."""
        log = open(self.log_path, "wb")
        cmd = [
            sys.executable, "-m", "chat_actors", "serve", "--ws-port", "0", "--http-port", "0",
            "--store", self.store, "--data-dir", str(self.workdir),
            "--jwt-secret", self.secret, "--graceful-timeout", "3", *self.args,
        ]
        self.proc = await trio.lowlevel.open_process(cmd, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        with trio.fail_after(START_TIMEOUT_S):
            while True:
                match = LISTENING.search(self.log())
                if match:
                    self.ws_url, self.http_url = match.group(1), match.group(2)
                    return
                assert self.proc.poll() is None, f"{self.name} exited before listening:\n{self.log()}"
                await trio.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        """Resident memory now."""
        return _status_kib(self.pid, "VmRSS")

    def peak_kib(self) -> int:
        """Highest resident memory since start or since the last `reset_peak()`."""
        return _status_kib(self.pid, "VmHWM")

    def reset_peak(self) -> None:
        """Start a new peak measurement from the current RSS (Linux clear_refs 5)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def kill(self) -> int:
        """SIGKILL (a crash: nothing flushed, no close frames) and reap; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return await self.proc.wait()

    async def stop(self) -> int:
        """SIGTERM and wait (kill after 30 s); the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        with trio.move_on_after(30):
            return await self.proc.wait()
        self.proc.kill()
        return await self.proc.wait()


async def start_server(workdir: Path, *args: str, **kwargs: str) -> ServerProcess:
    server = ServerProcess(workdir, *args, **kwargs)
    await server.start()
    return server
