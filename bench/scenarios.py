"""The scenarios: each starts its targets, sets clients up through the real protocol,
measures, stops what it started, and returns one JSON-able result.

Every result has `targets` (ours and, unless --peer none, the Node `ws` peer, each with
its steps or figures) and `table` (rows of metric, ours, peer, ratio, target, met).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from bench.procs import Target, call_all
from bench.runner import Context, best_sustained, done_line, progress, ratio, run_step, stepped
from bench.accounts import ours_url, raw_url, register_users, split
from bench.stats import merge, percentiles

PEER = "node-ws"


# --- shared set-up -----------------------------------------------------------------------------

def measure_ceiling(ctx: Context, conns: int, duration: float) -> None:
    """The generators' receive ceiling for both frame shapes, from the blast server."""
    for shape in ("ours", "raw"):
        if shape in ctx.ceilings or (shape == "raw" and not ctx.peer):
            continue
        blast = ctx.procs.start_blast(shape, 200)
        try:
            specs = [{"idx": 1_000_000 + i, "url": blast.ws_url + "/ceiling"} for i in range(conns)]
            connect(ctx, "raw", specs)
            replies = call_all(ctx.gens, "ceiling", [{"duration": duration}] * len(ctx.gens))
            ctx.ceilings[shape] = round(sum(r["per_s"] for r in replies), 1)
            close_all(ctx, specs, forget=True)
        finally:
            ctx.procs.stop(blast)
        done_line(f"  generator ceiling ({shape} frames, {conns} connections): {ctx.ceilings[shape]:,.0f} frames/s")


def start_target(ctx: Context, name: str) -> Target:
    return ctx.procs.start_ours(ctx.store) if name == "ours" else ctx.procs.start_peer()


def targets(ctx: Context) -> list[str]:
    return ["ours", PEER] if ctx.peer else ["ours"]


def connect(ctx: Context, mode: str, specs: list[dict[str, Any]], concurrency: int = 200,
            sink: str | None = None, target: Target | None = None) -> dict[str, Any]:
    gens = ctx.gens
    cpu0, wall0 = (target.cpu_s(), time.monotonic()) if target else (0.0, 0.0)
    replies = call_all(gens, "connect", [{"mode": mode, "specs": part, "concurrency": concurrency,
                                          "sink": sink} for part in split(specs, len(gens))])
    failures: dict[str, int] = {}
    for r in replies:
        for k, v in r["failures"].items():
            failures[k] = failures.get(k, 0) + v
    out = {"connected": sum(r["connected"] for r in replies), "failures": failures,
           "elapsed_s": max(r["elapsed"] for r in replies),
           "connect_latency_ms": percentiles(merge(r["connect_latency"] for r in replies))}
    if target is not None:
        out["server_cpu_pct"] = round((target.cpu_s() - cpu0) / (time.monotonic() - wall0) * 100, 1)
    if sink:
        sinks = [r["sink"] for r in replies]
        out["received"] = sum(s["received"] for s in sinks)
        out["duplicated_or_out_of_order"] = sum(s["ooo"] for s in sinks)
        out["latency_ms"] = percentiles(merge(s["latency"] for s in sinks))
    if failures:
        done_line(f"  connect failures: {failures}")
    return out


def close_all(ctx: Context, specs: list[dict[str, Any]] | None = None, forget: bool = False) -> None:
    """Close `specs`, or every client; forgotten clients start afresh when reopened.

    Closing every client forgets them; a closed subset keeps what it has seen, so that its
    reconnect (`join since`) is checked for gaps and duplicates.
    """
    gens = ctx.gens
    if specs is None:
        parts: list[dict[str, Any]] = [{}] * len(gens)
    else:
        parts = [{"idxs": [s["idx"] for s in part]} for part in split(specs, len(gens))]
    call_all(gens, "close", parts)
    if forget or specs is None:
        call_all(gens, "forget", parts)


def clients(ctx: Context, target: Target, name: str, rooms: list[str], per_room: int,
            users: list[tuple[str, str]] | None, by_room: bool = False) -> list[dict[str, Any]]:
    """Connect specs: `per_room` connections in each room (ours: users as devices, in turn,
    or with `by_room` the devices of one user per room, so a welcome lists one room)."""
    specs = []
    for r, room in enumerate(rooms):
        for m in range(per_room):
            idx = r * per_room + m
            if name == "ours":
                assert users is not None
                user = users[(r if by_room else idx) % len(users)]
                specs.append({"idx": idx, "room": room,
                              "url": ours_url(target, user[1]), "joins": [[room, None]]})
            else:
                specs.append({"idx": idx, "room": room, "url": raw_url(target, room)})
    return specs


def joined_clients(ctx: Context, target: Target, name: str, rooms: list[str],
                   per_room: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Register users (ours), then connect and join `per_room` clients in each room."""
    users = users_for(ctx, target, len(rooms) * per_room) if name == "ours" else None
    specs = clients(ctx, target, name, rooms, per_room, users)
    return specs, connect(ctx, "ours" if name == "ours" else "raw", specs)


def senders_by_gen(ctx: Context, specs: list[dict[str, Any]]) -> list[list[list[Any]]]:
    return [[[s["idx"], s["room"]] for s in part] for part in split(specs, len(ctx.gens))]


def with_target(ctx: Context, name: str, body: Callable[[Target], dict[str, Any]]) -> dict[str, Any]:
    target = start_target(ctx, name)
    try:
        result = body(target)
        result["server_rss_mib_end"] = round(target.rss() / 2**20, 1)
        return result
    finally:
        close_all(ctx)
        code = ctx.procs.stop(target)
        if name == "ours" and code not in (0, None):
            done_line(f"  warning: the server exited with {code}")


def users_for(ctx: Context, target: Target, conns: int) -> list[tuple[str, str]]:
    count = ctx.param("users", 100, 20, 4)
    progress(f"  registering {min(count, conns)} users over HTTP ...")
    started = time.monotonic()
    users = register_users(target, min(count, conns))
    done_line(f"  registered {len(users)} users over HTTP in {time.monotonic() - started:.1f}s")
    return users


def row(metric: str, ours: Any, peer: Any, target: str = "", met: bool | None = None,
        note: str = "") -> dict[str, Any]:
    r = ratio(ours, peer) if isinstance(ours, (int, float)) and isinstance(peer, (int, float)) else None
    return {"metric": metric, "ours": ours, "peer": peer, "ratio": r, "target": target, "met": met, "note": note}


def _stepped_summary(steps: list[dict[str, Any]]) -> dict[str, Any]:
    best = best_sustained(steps)
    return {"steps": steps, "best": best}


def _rate_rows(result: dict[str, Any], label: str, min_ratio: float) -> list[dict[str, Any]]:
    ours = result["targets"]["ours"]["best"]
    peer_t = result["targets"].get(PEER)
    peer = peer_t["best"] if peer_t else None
    o = ours["deliveries_per_s"] if ours else None
    p = peer["deliveries_per_s"] if peer else None
    r = ratio(o, p)
    notes = []
    for who, step in (("ours", ours), ("peer", peer)):
        if step and step["generator_bound"]:
            notes.append(f"{who} generator-bound: a lower bound, not claimed")
        elif step and step["generator_busy"]:
            notes.append(f"{who}: generator >= 90% busy (its queueing is in the latency)")
    met = None if r is None else r >= min_ratio
    rows = [row(f"{label} sustained deliveries/s (p99 <= 50 ms, >= 99% delivered)", o, p,
                f">= {min_ratio}x peer", met, "; ".join(notes))]
    rows.append(row("p99 latency at that rate, ms", ours["latency_ms"]["p99"] if ours else None,
                    peer["latency_ms"]["p99"] if peer else None, "<= 50"))
    return rows


# --- fanout ------------------------------------------------------------------------------------

def fanout(ctx: Context) -> dict[str, Any]:
    n = ctx.param("connections", 1000, 1000, 50)
    duration = ctx.param("duration", 5.0, 2.0, 1.0)
    rates = ctx.param("rates", [100, 150, 200, 250, 300, 350, 400, 450, 500, 600, 700, 800, 1000, 1200, 1500],
                      [200, 400, 600], [20])
    size = ctx.param("size", 200, 200, 200)
    measure_ceiling(ctx, n, duration)
    result: dict[str, Any] = {"params": {"connections": n, "duration_s": duration, "rates": rates, "size": size},
                              "targets": {}}
    for name in targets(ctx):
        def body(target: Target) -> dict[str, Any]:
            _, setup = joined_clients(ctx, target, name, ["fanout"], n + 1)
            sender = [[[0, "fanout"]]] + [[] for _ in ctx.gens[1:]]
            steps = stepped(ctx, target, rates, lambda rate: run_step(
                ctx, target, rate=rate, senders=sender, fanout=n, duration=duration, size=size,
                label="fanout", shape="ours" if name == "ours" else "raw"))
            return {"setup": setup, **_stepped_summary(steps)}
        result["targets"][name] = with_target(ctx, name, body)
    result["table"] = _rate_rows(result, f"fanout 1 x {n:,}", 1.0)
    return result


# --- rooms -------------------------------------------------------------------------------------

def rooms(ctx: Context) -> dict[str, Any]:
    count = ctx.param("rooms", 100, 100, 4)
    members = ctx.param("members", 10, 10, 3)
    duration = ctx.param("duration", 5.0, 2.0, 1.0)
    per_conn = ctx.param("rates", [1, 2, 4, 6, 8, 9, 10, 11, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 35, 40],
                         [2, 6, 12], [1])
    size = ctx.param("size", 200, 200, 200)
    conns = count * members
    measure_ceiling(ctx, min(conns, 1000), duration)
    result: dict[str, Any] = {"params": {"rooms": count, "members": members, "duration_s": duration,
                                         "rates_per_connection": per_conn, "size": size}, "targets": {}}
    names = [f"room{i}" for i in range(count)]
    for name in targets(ctx):
        def body(target: Target) -> dict[str, Any]:
            specs, setup = joined_clients(ctx, target, name, names, members)
            senders = senders_by_gen(ctx, specs)
            steps = stepped(ctx, target, per_conn, lambda r: {**run_step(
                ctx, target, rate=r * conns, senders=senders, fanout=members - 1, duration=duration,
                size=size, label=f"rooms {r:g}/s/conn", shape="ours" if name == "ours" else "raw"),
                "per_connection_msgs_per_s": r})
            return {"setup": setup, **_stepped_summary(steps)}
        result["targets"][name] = with_target(ctx, name, body)
    result["table"] = _rate_rows(result, f"rooms {count} x {members}", 0.5)
    return result


# --- dm ----------------------------------------------------------------------------------------

def dm(ctx: Context) -> dict[str, Any]:
    pairs = ctx.param("pairs", 50, 20, 4)
    rate = ctx.param("rate", 10.0, 10.0, 5.0)             # per sending user, msgs/s
    duration = ctx.param("duration", 5.0, 2.0, 1.0)
    result: dict[str, Any] = {"params": {"pairs": pairs, "rate_per_user": rate, "duration_s": duration},
                              "targets": {}}
    online_b = pairs // 2                                  # pairs [0, online_b) have B online
    for name in targets(ctx):
        def body(target: Target) -> dict[str, Any]:
            if name == "ours":
                progress(f"  registering {2 * pairs} users over HTTP ...")
                users = register_users(target, 2 * pairs, "d")
                a_specs = [{"idx": i, "room": users[pairs + i][0], "url": ours_url(target, users[i][1])}
                           for i in range(pairs)]
                b_specs = [{"idx": pairs + i, "room": users[i][0], "url": ours_url(target, users[pairs + i][1])}
                           for i in range(pairs)]
                mode, kind = "ours", "dm"
            else:
                a_specs = [{"idx": i, "room": f"dm{i}", "url": raw_url(target, f"dm{i}")} for i in range(pairs)]
                b_specs = [{"idx": pairs + i, "room": f"dm{i}", "url": raw_url(target, f"dm{i}")}
                           for i in range(pairs)]
                mode, kind = "raw", "send"
            live_b, offline_b = b_specs[:online_b], b_specs[online_b:]
            setup = connect(ctx, mode, a_specs + live_b)
            senders = senders_by_gen(ctx, a_specs + live_b)
            total_rate = rate * (pairs + online_b)
            # messages from the A's of the offline half cannot be delivered live
            offline_a = {str(s["idx"]) for s in a_specs[online_b:]}

            def to_offline(sent_by: list[dict[str, int]]) -> int:
                return sum(n for r in sent_by for i, n in r.items() if i in offline_a)

            step = run_step(ctx, target, rate=total_rate, senders=senders, fanout=1, duration=duration,
                            kind=kind, label="dm live", shape="ours" if name == "ours" else "raw",
                            keep_sent_by=True, undeliverable=to_offline)
            offline_msgs = to_offline(step.pop("sent_by"))
            out: dict[str, Any] = {"setup": setup, "live": step}
            if name == "ours":
                progress(f"  {len(offline_b)} offline recipients reconnect ...")
                replay = connect(ctx, mode, offline_b, sink="fresh")
                replay["expected"] = offline_msgs
                replay["lost"] = max(0, offline_msgs - replay["received"] + replay["duplicated_or_out_of_order"])
                done_line(f"  {len(offline_b)} offline recipients: {replay['received']} of {offline_msgs} "
                          f"messages replayed before synced in {replay['elapsed_s']:.2f}s")
                out["offline_replay"] = replay
            return out
        result["targets"][name] = with_target(ctx, name, body)
    ours = result["targets"]["ours"]
    peer = result["targets"].get(PEER)
    result["table"] = [
        row("dm live deliveries/s", ours["live"]["deliveries_per_s"],
            peer["live"]["deliveries_per_s"] if peer else None),
        row("dm live p99 latency, ms", ours["live"]["latency_ms"]["p99"],
            peer["live"]["latency_ms"]["p99"] if peer else None, "<= 50"),
        row("dm lost / dup+ooo (live)", f"{ours['live']['lost']} / {ours['live']['duplicated_or_out_of_order']}",
            f"{peer['live']['lost']} / {peer['live']['duplicated_or_out_of_order']}" if peer else None, "0 / 0"),
        row("offline recipients: replayed of expected, seconds to synced",
            f"{ours['offline_replay']['received']} of {ours['offline_replay']['expected']}, "
            f"{ours['offline_replay']['elapsed_s']:.2f}s", "n/a (no store)", "all, 0 dup"),
    ]
    return result


# --- idle --------------------------------------------------------------------------------------

def idle(ctx: Context) -> dict[str, Any]:
    n = ctx.param("connections", 10_000, 2_000, 100)
    settle = ctx.param("settle", 3.0, 2.0, 0.5)
    result: dict[str, Any] = {"params": {"connections": n, "settle_s": settle}, "targets": {}}
    for name in targets(ctx):
        def body(target: Target) -> dict[str, Any]:
            users = users_for(ctx, target, n) if name == "ours" else None
            specs = []
            for i in range(n):
                if name == "ours":
                    assert users is not None
                    specs.append({"idx": i, "url": ours_url(target, users[i % len(users)][1])})
                else:
                    specs.append({"idx": i, "url": raw_url(target, f"idle{i % 100}")})
            time.sleep(settle)
            before = target.rss()
            progress(f"  {name}: opening {n:,} idle connections ...")
            setup = connect(ctx, "ours" if name == "ours" else "raw", specs, concurrency=500)
            time.sleep(settle)
            cpu0, wall0 = target.cpu_s(), time.monotonic()
            time.sleep(settle)
            after = target.rss()
            per_conn = (after - before) / max(1, setup["connected"])
            idle_cpu = (target.cpu_s() - cpu0) / (time.monotonic() - wall0) * 100
            done_line(f"  {name}: {setup['connected']:,} idle connections, server RSS "
                      f"{before / 2**20:.1f} -> {after / 2**20:.1f} MiB = {per_conn / 1024:.1f} KiB each")
            return {"setup": setup, "rss_before": before, "rss_after": after,
                    "rss_per_connection_kib": round(per_conn / 1024, 2), "idle_cpu_pct": round(idle_cpu, 2)}
        result["targets"][name] = with_target(ctx, name, body)
    o = result["targets"]["ours"]
    p = result["targets"].get(PEER)
    kib = o["rss_per_connection_kib"]
    result["table"] = [
        row(f"server RSS per idle authenticated connection at {n:,}, KiB", kib,
            p["rss_per_connection_kib"] if p else None, "<= 16", kib <= 16),
        row("connections open", o["setup"]["connected"], p["setup"]["connected"] if p else None, f"{n:,}",
            o["setup"]["connected"] == n),
    ]
    return result


# --- connect -----------------------------------------------------------------------------------

def connect_scenario(ctx: Context) -> dict[str, Any]:
    n = ctx.param("connections", 5_000, 2_000, 100)
    storm = ctx.param("storm", 10_000, 2_000, 100)
    room_count = ctx.param("rooms", 100, 50, 4)
    missed = ctx.param("missed", 5, 5, 2)
    result: dict[str, Any] = {"params": {"connections": n, "storm": storm, "rooms": room_count,
                                         "missed_per_room": missed}, "targets": {}}
    names = [f"c{i}" for i in range(room_count)]
    for name in targets(ctx):
        def body(target: Target) -> dict[str, Any]:
            users = users_for(ctx, target, room_count) if name == "ours" else None
            mode = "ours" if name == "ours" else "raw"
            specs = clients(ctx, target, name, names, -(-n // room_count), users, by_room=True)[:n]
            progress(f"  {name}: {n:,} clients connect{', authenticate and join' if name == 'ours' else ''} ...")
            rate_run = connect(ctx, mode, specs, concurrency=500, target=target)
            rate_run["per_s"] = round(rate_run["connected"] / rate_run["elapsed_s"], 1)
            done_line(f"  {name}: {rate_run['connected']:,} connects in {rate_run['elapsed_s']:.2f}s = "
                      f"{rate_run['per_s']:,.0f}/s, server cpu {rate_run['server_cpu_pct']}%")
            close_all(ctx)
            # storm: everyone joined, everyone drops, the rooms move on, everyone comes back at once
            storm_specs = clients(ctx, target, name, names, -(-storm // room_count), users, by_room=True)[:storm]
            connect(ctx, mode, storm_specs, concurrency=500)
            close_all(ctx, storm_specs)
            out: dict[str, Any] = {"rate": rate_run}
            expected = 0
            if name == "ours":
                talkers = [{"idx": 2_000_000 + i, "room": room, "url": ours_url(target, users[i % len(users)][1]),
                            "joins": [[room, None]]} for i, room in enumerate(names)]
                connect(ctx, mode, talkers)
                per_room = {}
                for s in storm_specs:
                    per_room[s["room"]] = per_room.get(s["room"], 0) + 1
                away = run_step(ctx, target, rate=missed * room_count / 1.0, senders=senders_by_gen(ctx, talkers),
                                fanout=0, duration=1.0, label="storm: messages while away", keep_sent_by=True)
                sent_to = {}
                for gen_sent in away["sent_by"]:
                    for idx, count in gen_sent.items():
                        sent_to[talkers[int(idx) - 2_000_000]["room"]] = count
                expected = sum(sent_to.get(room, 0) * members for room, members in per_room.items())
                for s in storm_specs:
                    s["joins"] = [[s["room"], 0]]
            progress(f"  {name}: reconnect storm of {storm:,} ...")
            back = connect(ctx, mode, storm_specs, concurrency=1000, sink="fresh", target=target)
            back["expected_replayed"] = expected
            out["storm"] = back
            done_line(f"  {name}: storm of {back['connected']:,} back in {back['elapsed_s']:.2f}s, "
                      f"server cpu {back['server_cpu_pct']}%"
                      + (f", replayed {back['received']:,} of {expected:,}" if name == "ours" else ""))
            return out
        result["targets"][name] = with_target(ctx, name, body)
    o = result["targets"]["ours"]
    p = result["targets"].get(PEER)
    result["table"] = [
        row("connects per second (ours: + auth + join; peer: handshake)", o["rate"]["per_s"],
            p["rate"]["per_s"] if p else None, ">= 2,000", o["rate"]["per_s"] >= 2000),
        row(f"reconnect storm of {storm:,}, seconds (ours: with join since)", round(o["storm"]["elapsed_s"], 2),
            round(p["storm"]["elapsed_s"], 2) if p else None, "< 10",
            o["storm"]["elapsed_s"] < 10 and o["storm"]["connected"] == storm),
        row("storm: replayed of expected, dup/ooo", f"{o['storm']['received']:,} of "
            f"{o['storm']['expected_replayed']:,}, {o['storm']['duplicated_or_out_of_order']}", "n/a", "all, 0"),
    ]
    return result


# --- ingest ------------------------------------------------------------------------------------

def ingest(ctx: Context) -> dict[str, Any]:
    senders = ctx.param("senders", 50, 50, 6)
    per_room = ctx.param("members", 5, 5, 3)
    duration = ctx.param("duration", 5.0, 2.0, 1.0)
    rates = ctx.param("rates", [5000, 10000, 15000, 20000, 25000, 30000], [5000, 15000], [200])
    room_names = [f"i{i}" for i in range(-(-senders // per_room))]
    result: dict[str, Any] = {"params": {"senders": senders, "senders_per_room": per_room,
                                         "duration_s": duration, "rates": rates,
                                         "store": ctx.store or "sqlite (temporary file)"}, "targets": {}}

    def body(target: Target) -> dict[str, Any]:
        users = users_for(ctx, target, senders)
        specs = clients(ctx, target, "ours", room_names, per_room, users)[:senders]
        setup = connect(ctx, "ours", specs)
        by_gen = senders_by_gen(ctx, specs)

        def one(rate: float) -> dict[str, Any]:
            step = run_step(ctx, target, rate=rate, senders=by_gen, fanout=per_room - 1, duration=duration,
                            label="ingest")
            acked_ok = step["acked"] >= 0.99 * step["sent"]
            p99 = step["ack_latency_ms"]["p99"]
            step["sustained"] = bool(acked_ok and p99 is not None and p99 <= 50 and not step["closes"])
            return step
        steps = stepped(ctx, target, rates, one)
        best = max((s for s in steps if s["sustained"]), key=lambda s: s["acked_per_s"] or 0, default=None)
        return {"setup": setup, "steps": steps, "best": best}
    result["targets"]["ours"] = with_target(ctx, "ours", body)
    best = result["targets"]["ours"]["best"]
    acked = round(best["acked_per_s"], 1) if best else None
    result["table"] = [
        row("acked msgs/s, ack after commit (ack p99 <= 50 ms)", acked, "n/a (no store)", ">= 10,000",
            acked is not None and acked >= 10_000,
            "generator-bound" if best and best["generator_bound"] else ""),
        row("ack p99 at that rate, ms", best["ack_latency_ms"]["p99"] if best else None, "n/a", "<= 50"),
    ]
    return result


SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "fanout": fanout, "rooms": rooms, "dm": dm, "idle": idle, "connect": connect_scenario, "ingest": ingest,
}
