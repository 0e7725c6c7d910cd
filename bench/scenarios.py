"""The scenarios: each starts its targets, sets clients up through the real protocol,
measures, stops what it started, and returns one JSON-able result.

Every result has `targets` (ours and, unless --peer none, the Node `ws` peer, each with
its steps or figures) and `table` (rows of metric, ours, peer, ratio, target, met).
With `--nodes N` (N > 1), `fanout`, `rooms` and `ingest` also run ours on a cluster of N
nodes (target `ours-N-nodes`, same parameters, same run), whose figures fill the rows'
`cluster` column.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from bench.procs import Cluster, Target, call_all
from bench.runner import Context, best_sustained, done_line, is_ours, progress, ratio, run_step, stepped
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


def start_target(ctx: Context, name: str) -> Target | Cluster:
    if name == "ours":
        return ctx.procs.start_ours(ctx.store)
    if is_ours(name):
        assert ctx.store is not None
        progress(f"  starting {ctx.nodes} nodes ...")
        cluster = ctx.procs.start_cluster(ctx.nodes, ctx.store)
        done_line(f"  {cluster.name}: database {cluster.database}, Redis prefix {cluster.prefix}, "
                  + ", ".join(f"node {k} at {n.ws_url}" for k, n in enumerate(cluster.nodes)))
        return cluster
    return ctx.procs.start_peer()


def cluster_name(ctx: Context) -> str:
    return f"ours-{ctx.nodes}-nodes"


def targets(ctx: Context, cluster: bool = False) -> list[str]:
    """Ours, ours on `ctx.nodes` nodes (with `cluster`, when --nodes > 1), the peer."""
    ours = ["ours", cluster_name(ctx)] if cluster and ctx.nodes > 1 else ["ours"]
    return [*ours, PEER] if ctx.peer else ours


def place(target: Target | Cluster, spec: dict[str, Any], token: str) -> dict[str, Any]:
    """Set the spec's URL: on a cluster, client `idx` goes to node `idx % N` (and says so)."""
    if isinstance(target, Cluster):
        k = spec["idx"] % len(target.nodes)
        spec.update(url=ours_url(target.nodes[k], token), node=k, nodes=len(target.nodes))
    else:
        spec["url"] = ours_url(target, token)
    return spec


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
            if is_ours(name):
                assert users is not None
                user = users[(r if by_room else idx) % len(users)]
                specs.append(place(target, {"idx": idx, "room": room, "joins": [[room, None]]}, user[1]))
            else:
                specs.append({"idx": idx, "room": room, "url": raw_url(target, room)})
    return specs


def joined_clients(ctx: Context, target: Target, name: str, rooms: list[str],
                   per_room: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Register users (ours), then connect and join `per_room` clients in each room."""
    users = users_for(ctx, target, len(rooms) * per_room) if is_ours(name) else None
    specs = clients(ctx, target, name, rooms, per_room, users)
    return specs, connect(ctx, "ours" if is_ours(name) else "raw", specs)


def senders_by_gen(ctx: Context, specs: list[dict[str, Any]]) -> list[list[list[Any]]]:
    return [[[s["idx"], s["room"]] for s in part] for part in split(specs, len(ctx.gens))]


def with_target(ctx: Context, name: str, body: Callable[[Target], dict[str, Any]]) -> dict[str, Any]:
    target = start_target(ctx, name)
    try:
        result = body(target)
        result["server_rss_mib_end"] = round(target.rss() / 2**20, 1)
        if isinstance(target, Cluster):
            result["cluster"] = {"database": target.database, "redis_prefix": target.prefix,
                                 "nodes": [{"ws_url": n.ws_url, "cpus": ctx.procs.node_cpus[k % len(ctx.procs.node_cpus)]}
                                           for k, n in enumerate(target.nodes)]}
        elif target.services is not None and target.services.database:
            result["database"] = target.services.database
        return result
    finally:
        close_all(ctx)
        code = ctx.procs.stop(target)
        if is_ours(name) and code not in (0, None):
            done_line(f"  warning: the server exited with {code}")


def users_for(ctx: Context, target: Target, conns: int) -> list[tuple[str, str]]:
    count = ctx.param("users", 100, 20, 4)
    progress(f"  registering {min(count, conns)} users over HTTP ...")
    started = time.monotonic()
    users = register_users(target, min(count, conns))
    done_line(f"  registered {len(users)} users over HTTP in {time.monotonic() - started:.1f}s")
    return users


def row(metric: str, ours: Any, peer: Any, target: str = "", met: bool | None = None,
        note: str = "", cluster: Any = None) -> dict[str, Any]:
    """One table row; `cluster` (ours on N nodes) only in runs with --nodes > 1."""
    r = ratio(ours, peer) if isinstance(ours, (int, float)) and isinstance(peer, (int, float)) else None
    out = {"metric": metric, "ours": ours, "peer": peer, "ratio": r, "target": target, "met": met, "note": note}
    if cluster is not None:
        out["cluster"] = cluster
    return out


def _stepped_summary(steps: list[dict[str, Any]]) -> dict[str, Any]:
    best = best_sustained(steps)
    return {"steps": steps, "best": best}


def _cluster_best(result: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """(the cluster target's name, its best step), or (None, None) without a cluster."""
    name = next((t for t in result["targets"] if is_ours(t) and t != "ours"), None)
    return name, (result["targets"][name]["best"] if name else None)


def _rate_rows(result: dict[str, Any], label: str, min_ratio: float) -> list[dict[str, Any]]:
    ours = result["targets"]["ours"]["best"]
    peer_t = result["targets"].get(PEER)
    peer = peer_t["best"] if peer_t else None
    cname, cbest = _cluster_best(result)
    o = ours["deliveries_per_s"] if ours else None
    p = peer["deliveries_per_s"] if peer else None
    r = ratio(o, p)
    notes = []
    for who, step in (("ours", ours), (cname, cbest), ("peer", peer)):
        if step and step["generator_bound"]:
            notes.append(f"{who} generator-bound: a lower bound, not claimed")
        elif step and step["generator_busy"]:
            notes.append(f"{who}: generator >= 90% busy (its queueing is in the latency)")
    met = None if r is None else r >= min_ratio
    if cname is None:
        rows = [row(f"{label} sustained deliveries/s (p99 <= 50 ms, >= 99% delivered)", o, p,
                    f">= {min_ratio}x peer", met, "; ".join(notes))]
        rows.append(row("p99 latency at that rate, ms", ours["latency_ms"]["p99"] if ours else None,
                        peer["latency_ms"]["p99"] if peer else None, "<= 50"))
        return rows
    rows = [row(f"{label} sustained deliveries/s (p99 <= 50 ms, >= 99% delivered)", o, p,
                f">= {min_ratio}x peer", met, "; ".join(notes), cluster=cbest["deliveries_per_s"] if cbest else "-")]
    rows.append(row("p99 latency at that rate (the knee), ms", ours["latency_ms"]["p99"] if ours else None,
                    peer["latency_ms"]["p99"] if peer else None, "<= 50",
                    cluster=cbest["latency_ms"]["p99"] if cbest else "-"))
    rows += _cluster_cpu_rows(result, cname, "delivery", "server_cpu_us_per_delivery")
    return rows


def _same_rate(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], bool] | None:
    """The steps of `a` and `b` at the highest offered rate both sustained (True), else at the
    lowest rate both ran (False)."""
    in_b = {s["offered_msgs_per_s"]: s for s in b}
    both = [(s, in_b[s["offered_msgs_per_s"]]) for s in a if s["offered_msgs_per_s"] in in_b]
    ok = [p for p in both if p[0]["sustained"] and p[1]["sustained"]]
    if ok:
        return (*max(ok, key=lambda p: p[0]["offered_msgs_per_s"]), True)
    return (*min(both, key=lambda p: p[0]["offered_msgs_per_s"]), False) if both else None


def _others(step: dict[str, Any] | None) -> str:
    by = (step or {}).get("cpu_pct_by_process")
    return ", ".join(f"{k} {v:g}" for k, v in by.items()) if by else "-"


def _cluster_cpu_rows(result: dict[str, Any], cname: str, unit: str, key: str) -> list[dict[str, Any]]:
    """Server CPU per `unit` (one node against the nodes summed), at the same rate and at each knee;
    the CPU of each node and of the services at the knee; the bus hop at the cluster's knee."""
    ours_t, clus_t = result["targets"]["ours"], result["targets"][cname]
    ours, cbest = ours_t["best"], clus_t["best"]
    rows = []
    pair = _same_rate(ours_t["steps"], clus_t["steps"])
    if pair:
        one, many, both_ok = pair
        rate = f"{one['offered_msgs_per_s']:g} msgs/s offered"
        rows.append(row(f"server CPU per {unit} at {rate} ("
                        + ("the highest rate both sustained" if both_ok else "the lowest rate both ran")
                        + "), µs (the nodes summed)", one[key], "n/a", "report", cluster=many[key],
                        note="" if both_ok else "; ".join(f"{who} did not sustain it" for who, s in
                                                          (("ours", one), (cname, many)) if not s["sustained"])))
    rows.append(row(f"server CPU per {unit} at the knee, µs (the nodes summed)", ours[key] if ours else None, "n/a",
                    "report", cluster=cbest[key] if cbest else "-"))
    rows.append(row("CPU at the knee by process, % of a core (PostgreSQL: the backends of the bench's database; "
                    "Redis: the whole server)", _others(ours), "n/a", "", cluster=_others(cbest)))
    if cbest and "latency_by_hop_ms" in cbest:
        hop = cbest["latency_by_hop_ms"]
        rows.append(row("p99 at the knee, receivers on the sender's node / on another node, ms", "n/a (one node)",
                        "n/a", "report", cluster=f"{_ms(hop['local']['p99'])} / {_ms(hop['remote']['p99'])}"))
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _hop_rows(result: dict[str, Any], cname: str) -> list[dict[str, Any]]:
    """The bus hop at half the cluster's knee: receivers on another node than the sender
    against receivers on the sender's node, in the same step."""
    half = result["targets"][cname].get("half_knee")
    if not half or "latency_by_hop_ms" not in half:
        return [row("p99 added by the bus hop at half the knee, ms", "n/a (one node)", "n/a", "report",
                    cluster="- (no sustained step)")]
    local, remote = half["latency_by_hop_ms"]["local"]["p99"], half["latency_by_hop_ms"]["remote"]["p99"]
    added = round(remote - local, 2) if local is not None and remote is not None else "-"
    rate = f"{half['offered_msgs_per_s']:g} msgs/s"
    return [
        row(f"p99 at half the knee ({rate}), receivers on the sender's node / on another node, ms",
            "n/a (one node)", "n/a", "report", cluster=f"{_ms(local)} / {_ms(remote)}",
            note="" if half["sustained"] else "that step was not sustained"),
        row(f"p99 added by the bus hop at half the knee ({rate}), ms", "n/a (one node)", "n/a", "report",
            cluster=added),
    ]


def half_knee(ctx: Context, target: Target | Cluster, steps: list[dict[str, Any]],
              run: Callable[[float], dict[str, Any]]) -> dict[str, Any] | None:
    """One more recorded step at half the best sustained rate (the bus hop is read there)."""
    best = best_sustained(steps)
    if best is None or not target.alive():
        return None
    return run(best["offered_msgs_per_s"] / 2)


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
    _cluster_params(ctx, result, "receivers round-robin over the nodes (receiver i on node i % N), "
                                 "the sender on node 0")
    for name in targets(ctx, cluster=True):
        def body(target: Target) -> dict[str, Any]:
            _, setup = joined_clients(ctx, target, name, ["fanout"], n + 1)
            sender = [[[0, "fanout"]]] + [[] for _ in ctx.gens[1:]]

            def one(rate: float, label: str = "fanout") -> dict[str, Any]:
                return run_step(ctx, target, rate=rate, senders=sender, fanout=n, duration=duration, size=size,
                                label=label, shape="ours" if is_ours(name) else "raw")
            steps = stepped(ctx, target, rates, one)
            out = {"setup": setup, **_stepped_summary(steps)}
            if isinstance(target, Cluster):
                out["half_knee"] = half_knee(ctx, target, steps, lambda rate: one(rate, "fanout, half the knee"))
            return out
        result["targets"][name] = with_target(ctx, name, body)
    result["table"] = _rate_rows(result, f"fanout 1 x {n:,}", 1.0)
    cname, _ = _cluster_best(result)
    if cname:
        result["table"] += _hop_rows(result, cname)
    return result


def _cluster_params(ctx: Context, result: dict[str, Any], placement: str) -> None:
    """Record the store and, with --nodes > 1, the cluster's size and placement."""
    if ctx.store:
        result["params"]["store"] = _store_label(ctx)
    if ctx.nodes > 1:
        result["params"]["nodes"] = ctx.nodes
        result["params"]["placement"] = placement


def _store_label(ctx: Context) -> str:
    from bench.stores import is_postgres, redacted
    if is_postgres(ctx.store):
        return f"postgresql: a fresh database per server start on {redacted(ctx.store)}"
    return str(ctx.store)


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
    _cluster_params(ctx, result, "connections round-robin over the nodes (connection i on node i % N), "
                                 "so every room has members on every node")
    names = [f"room{i}" for i in range(count)]
    for name in targets(ctx, cluster=True):
        def body(target: Target) -> dict[str, Any]:
            specs, setup = joined_clients(ctx, target, name, names, members)
            senders = senders_by_gen(ctx, specs)
            steps = stepped(ctx, target, per_conn, lambda r: {**run_step(
                ctx, target, rate=r * conns, senders=senders, fanout=members - 1, duration=duration,
                size=size, label=f"rooms {r:g}/s/conn", shape="ours" if is_ours(name) else "raw"),
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
    _cluster_params(ctx, result, "senders round-robin over the nodes (sender i on node i % N), so every "
                                 "room has senders on several nodes")

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
    for name in targets(ctx, cluster=True):
        if is_ours(name):
            result["targets"][name] = with_target(ctx, name, body)
    best = result["targets"]["ours"]["best"]
    acked = round(best["acked_per_s"], 1) if best else None
    from bench.stores import is_postgres
    if not is_postgres(ctx.store):
        result["table"] = [
            row("acked msgs/s, ack after commit (ack p99 <= 50 ms)", acked, "n/a (no store)", ">= 10,000",
                acked is not None and acked >= 10_000,
                "generator-bound" if best and best["generator_bound"] else ""),
            row("ack p99 at that rate, ms", best["ack_latency_ms"]["p99"] if best else None, "n/a", "<= 50"),
        ]
        return result
    # PostgreSQL: reported (the 10,000 target is the SQLite one), one node beside N nodes
    cname, cbest = _cluster_best(result)
    cacked = (round(cbest["acked_per_s"], 1) if cbest else "-") if cname else None
    notes = [f"{who} generator-bound" for who, s in (("ours", best), (cname, cbest)) if s and s["generator_bound"]]
    result["table"] = [
        row("acked msgs/s on PostgreSQL, ack after commit (ack p99 <= 50 ms)", acked, "n/a (no store)", "report",
            None, "; ".join(notes), cluster=cacked),
        row("ack p99 at that rate, ms", best["ack_latency_ms"]["p99"] if best else None, "n/a", "<= 50",
            cluster=(cbest["ack_latency_ms"]["p99"] if cbest else "-") if cname else None),
    ]
    if cname:
        result["table"] += _cluster_cpu_rows(result, cname, "message", "server_cpu_us_per_msg")
    else:
        result["table"].append(row("server CPU per message at that rate, µs",
                                   best["server_cpu_us_per_msg"] if best else None, "n/a", "report"))
        result["table"].append(row("CPU at that rate by process, % of a core (PostgreSQL: the backends of the "
                                   "bench's database)", _others(best), "n/a", ""))
    return result


SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "fanout": fanout, "rooms": rooms, "dm": dm, "idle": idle, "connect": connect_scenario, "ingest": ingest,
}
