"""`python -m bench SCENARIO [SCENARIO ...]`: run scenarios against ours and the peer.

The exact interface is documented in bench/README.md; `--help` lists every option.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import Processes, raise_fd_limit
from bench.report import machine, write
from bench.runner import Context, done_line
from bench.scenarios import SCENARIOS
from bench.stores import REDIS_URL, PostgresDatabases, Redis, is_postgres, redacted

ORDER = ["fanout", "rooms", "dm", "idle", "connect", "ingest"]
CLUSTERED = ("fanout", "rooms", "ingest")      # the scenarios --nodes applies to


def _numbers(text: str) -> list[float]:
    return [float(x) if "." in x else int(x) for x in text.split(",") if x]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("scenarios", nargs="+", choices=[*ORDER, "all"], metavar="SCENARIO",
                   help=f"one or more of {', '.join(ORDER)}, or all")
    p.add_argument("--quick", action="store_true", help="smaller steps and shorter windows (all in < 2 min)")
    p.add_argument("--smoke", action="store_true", help="a few messages only: checks that the harness works")
    p.add_argument("--peer", choices=("node", "none"), default="node",
                   help="run the Node.js ws reference peer in the same invocation (default node)")
    p.add_argument("--store", metavar="URL", help="CHAT_STORE for the server under test "
                   "(default: SQLite in a temporary directory); postgresql://USER@HOST:PORT/DB names a "
                   "maintenance database: every server start gets a fresh database, dropped afterwards")
    p.add_argument("--nodes", type=int, default=1, metavar="N",
                   help="fanout, rooms, ingest: also run ours as a cluster of N nodes (PostgreSQL store, "
                   f"Redis bus at {REDIS_URL}), beside one node, in the same run (default 1: one node only)")
    p.add_argument("--out", metavar="DIR", type=Path, default=Path("bench/results"),
                   help="where the JSON, Markdown and PNG files go (default bench/results)")
    p.add_argument("--profile", action="store_true",
                   help="record the server under test with py-spy (raw stacks in the output directory)")
    p.add_argument("--server-src", metavar="DIR", type=Path,
                   help="run the server under test from this source tree (e.g. a git worktree of "
                   "another commit) to measure what a change bought")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--connections", type=int, help="fanout/idle/connect: connections (default per scenario)")
    p.add_argument("--rooms", type=int, help="rooms: number of rooms; connect: rooms joined")
    p.add_argument("--members", type=int, help="rooms: members per room; ingest: senders per room")
    p.add_argument("--rates", type=_numbers, help="comma-separated offered rates to step through "
                   "(fanout, ingest: msgs/s in total; rooms: msgs/s per connection)")
    p.add_argument("--duration", type=float, help="seconds each step offers load")
    p.add_argument("--users", type=int, help="users registered over HTTP (connections are their devices)")
    p.add_argument("--storm", type=int, help="connect: clients in the reconnect storm")
    p.add_argument("--senders", type=int, help="ingest: sending connections")
    p.add_argument("--pairs", type=int, help="dm: user pairs")
    return p


def _check_services(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Refuse, before anything starts, what cannot run: --nodes without PostgreSQL, a
    PostgreSQL or Redis that does not answer. Returns lines describing the services."""
    about = []
    if args.nodes < 1:
        p.error("--nodes must be at least 1")
    if args.nodes > 1 and not is_postgres(args.store):
        p.error(f"--nodes {args.nodes} needs --store postgresql://USER@HOST:PORT/DB (a maintenance database "
                "on the PostgreSQL server the nodes share): the nodes of a cluster share one PostgreSQL "
                f"store, and {'SQLite (the default)' if not args.store else repr(args.store)} cannot be shared "
                "between processes")
    if is_postgres(args.store):
        try:
            version = PostgresDatabases(args.store).check()
        except Exception as exc:
            p.error(f"--store {redacted(args.store)}: PostgreSQL does not answer: {type(exc).__name__}: {exc}")
        about.append(f"PostgreSQL {version} at {redacted(args.store)}: a fresh database per server start, "
                     "dropped when it stops")
    if args.nodes > 1:
        try:
            with Redis(REDIS_URL, timeout=3) as r:
                r.call("PING")
        except Exception as exc:
            p.error(f"--nodes {args.nodes}: Redis at {REDIS_URL} does not answer: {type(exc).__name__}: {exc}")
        about.append(f"Redis at {REDIS_URL}: a fresh key prefix per cluster, its keys deleted when it stops")
    return about


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt      # the same clean-up as Ctrl-C: children, databases, Redis keys


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    names = ORDER if "all" in args.scenarios else list(dict.fromkeys(args.scenarios))
    services = _check_services(p, args)
    raise_fd_limit()
    params = {k: getattr(args, k) for k in ("connections", "rooms", "members", "rates", "duration", "users",
                                             "storm", "senders", "pairs")}
    procs = Processes(nodes=args.nodes)
    ctx = Context(procs=procs, quick=args.quick, smoke=args.smoke, store=args.store, peer=args.peer == "node",
                  params=params, nodes=args.nodes)
    signal.signal(signal.SIGTERM, _terminated)
    if args.profile:
        procs.profile_dir = args.out
    if args.server_src is not None:
        procs.server_src = args.server_src.resolve()
    started = time.monotonic()
    stamp = dt.datetime.now(dt.timezone.utc)
    run: dict[str, Any] = {
        "started": stamp.isoformat(timespec="seconds"),
        "command": "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "pinning": (f"server on CPU {procs.server_cpus}, generators on CPU {procs.gen_cpus}"
                    + (" (taskset)" if shutil.which("taskset") else " (no taskset: unpinned)")),
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "server_src": str(args.server_src) if args.server_src else None,
        "scenarios": {},
    }
    if args.store:
        run["store"] = "; ".join(services) if services else args.store
    if args.nodes > 1:
        run["nodes"] = args.nodes
        placement = ", ".join(f"node {k} on CPU {c}" for k, c in enumerate(procs.node_cpus))
        run["cluster"] = (f"{args.nodes} nodes ({', '.join(n for n in names if n in CLUSTERED) or 'no scenario'}"
                          f" of this run), {placement}"
                          + (f"; {procs.sharing}" if procs.sharing else ": a core each")
                          + "; PostgreSQL and Redis are shared services of the machine, not pinned: they run on "
                          "whichever core is free, and their CPU is not in the server's figures")
    elif is_postgres(args.store):
        run["pinning"] += "; PostgreSQL is a shared service of the machine, not pinned"
    done_line(f"chat_actors bench: {', '.join(names)} ({run['mode']}); {run['pinning']}")
    for line in services:
        done_line(f"  {line}")
    if args.nodes > 1:
        done_line(f"  cluster: {run['cluster']}")
        single = [n for n in names if n not in CLUSTERED]
        if single:
            done_line(f"  --nodes applies to {', '.join(CLUSTERED)}: {', '.join(single)} run(s) on one node only")
    code = 0
    try:
        for name in names:
            done_line(f"[{name}]")
            procs.profile_label = f"profile-{name}"
            try:
                result = SCENARIOS[name](ctx)
                if run["mode"] != "full":       # coarse steps stop early: figures, not verdicts
                    for r in result.get("table", []):
                        r["met"] = None
                        r["note"] = "; ".join(filter(None, [r["note"], f"{run['mode']} run: not judged"]))
                run["scenarios"][name] = result
            except Exception as exc:
                code = 1
                done_line(f"  {name} failed: {type(exc).__name__}: {exc}")
                run["scenarios"][name] = {"error": f"{type(exc).__name__}: {exc}", "targets": {}, "table": []}
    except KeyboardInterrupt:
        code = 130
        done_line("interrupted: stopping everything")
    finally:
        procs.close()
    run["ceilings"] = ctx.ceilings
    run["profiles"] = procs.profiles
    run["duration_s"] = round(time.monotonic() - started, 1)
    stem = stamp.strftime("%Y%m%dT%H%M%SZ") + "-" + "-".join(names if len(names) < 6 else ["all"])
    paths = write(run, args.out, stem, with_plots=not args.no_plots)
    print(paths["markdown"].read_text())
    done_line(f"wrote {paths['json']} and {paths['markdown']}" + (f" and {len(run.get('plots', []))} plots"
                                                                    if run.get("plots") else ""))
    return code
