"""Autobahn TestSuite cases (sections 1-7, 9, 10) against an echo handler on our transport.

The cases are driven by `kosoku` (a native runner of the Autobahn case files) from this
process, while the echo server (tests/autobahn_echo.py) runs in a subprocess so the two do
not share an interpreter. The whole run takes a few seconds on loopback.

Set CHAT_AUTOBAHN_CASES (comma-separated ids or globs, e.g. "9.*") to run a subset.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

kosoku = pytest.importorskip("kosoku")

ECHO = Path(__file__).with_name("autobahn_echo.py")
SECTIONS = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]
#: Verdicts that pass: NON-STRICT and INFORMATIONAL are conformant (kosoku `CaseResult.passed`).
GOOD_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
GOOD_CLOSE = {"OK", "INFORMATIONAL"}

log = logging.getLogger(__name__)


def _start_echo() -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(ECHO), "0"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()           # "listening <port>"; "" if the server died
    if not line.startswith("listening "):
        proc.kill()
        pytest.fail(f"echo server did not start: {line!r}")
    return proc, int(line.split()[1])


async def _run_cases(url: str, cases: list[str]) -> list:
    try:
        return await kosoku.run_fuzzingclient(url, cases, None, concurrency=2)
    except kosoku.FailureError as failure:
        return failure.results


@pytest.mark.timeout(600)
def test_autobahn_sections_pass() -> None:
    cases = [c for c in os.environ.get("CHAT_AUTOBAHN_CASES", "").split(",") if c] or SECTIONS
    proc, port = _start_echo()
    started = time.monotonic()
    try:
        results = asyncio.run(_run_cases(f"ws://127.0.0.1:{port}/ws", cases))
    finally:
        proc.terminate()
        proc.wait(10)
    elapsed = time.monotonic() - started
    behaviors = collections.Counter(r.behavior.value for r in results)
    closes = collections.Counter(r.behavior_close.value for r in results)
    summary = (f"autobahn: {len(results)} cases in {elapsed:.1f}s; behavior {dict(behaviors)}; "
               f"close {dict(closes)}")
    log.warning("%s", summary)
    print(summary)
    bad = [f"{r.case_id}: {r.behavior.value}/{r.behavior_close.value} {r.result} {r.result_close}"
           for r in results
           if r.behavior.value not in GOOD_BEHAVIOR or r.behavior_close.value not in GOOD_CLOSE]
    assert not bad, "\n".join(bad)
    assert results, "no case ran"
    if cases is SECTIONS:
        ran = {r.case_id.split(".")[0] for r in results}
        assert ran == {s.split(".")[0] for s in SECTIONS}
        assert behaviors["FAILED"] == 0 and closes["WRONG CODE"] == 0
