"""The benchmark harness still runs end to end (a tiny smoke; figures belong to bench/).

It starts the real server and, when Node.js and npm are on PATH, the reference peer,
measures a few messages through the generator process, and writes its JSON, Markdown and
plots. What is asserted is that the harness measured something and that nothing was lost,
duplicated or reordered; no timing is asserted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_bench_smoke_writes_results(tmp_path: Path) -> None:
    peer = "node" if shutil.which("node") and shutil.which("npm") else "none"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "fanout", "dm", "ingest", "--smoke", "--peer", peer,
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result_file] = tmp_path.glob("*.json")
    run = json.loads(result_file.read_text())
    assert run["mode"] == "smoke"
    assert set(run["scenarios"]) == {"fanout", "dm", "ingest"}
    assert run["ceilings"]["ours"] > 0

    fanout = run["scenarios"]["fanout"]
    targets = ["ours"] + (["node-ws"] if peer == "node" else [])
    assert sorted(fanout["targets"]) == sorted(targets)
    for name in targets:
        [step] = fanout["targets"][name]["steps"]
        assert step["sent"] > 0
        assert step["delivered"] == step["expected"] == step["sent"] * run["scenarios"]["fanout"]["params"]["connections"]
        assert step["lost"] == 0 and step["duplicated_or_out_of_order"] == 0
        assert step["latency_ms"]["p50"] is not None

    replay = run["scenarios"]["dm"]["targets"]["ours"]["offline_replay"]
    assert replay["expected"] > 0 and replay["received"] == replay["expected"]
    assert replay["duplicated_or_out_of_order"] == 0

    [ingest] = run["scenarios"]["ingest"]["targets"]["ours"]["steps"]
    assert ingest["acked"] == ingest["sent"] > 0

    assert (tmp_path / result_file.name.replace(".json", ".md")).read_text().count("| fanout |") >= 1
    assert run["plots"] and all((tmp_path / p).stat().st_size > 0 for p in run["plots"])
