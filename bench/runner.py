"""What every scenario shares: the run context, one measured step, and the pass rules.

A step offers a fixed rate for a fixed time, lets the deliveries drain (bounded), then
reads the counters of every generator and the server's CPU and RSS. Lost, duplicated and
out-of-order deliveries are counted on every step; a step is "sustained" when p99 <= 50 ms,
>= 99% was delivered, and nothing was duplicated, reordered or evicted.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bench.procs import GeneratorProc, Processes, Target, call_all
from bench.stats import merge, percentiles

P99_LIMIT_MS = 50.0
DELIVERED_MIN = 0.99
GENERATOR_BOUND = 0.8          # within 80% of the generator's ceiling: not claimed
GENERATOR_BUSY = 0.9           # flagged: the generator's own queueing is in the latency


@dataclass
class Context:
    procs: Processes
    quick: bool
    smoke: bool
    store: str | None
    peer: bool
    params: dict[str, Any]
    ceilings: dict[str, float] = field(default_factory=dict)
    warmup: bool = False          # the current step is the unrecorded warm-up
    nodes: int = 1                # fanout, rooms, ingest: also run ours on this many nodes

    @property
    def gens(self) -> list[GeneratorProc]:
        return self.procs.start_generators()

    def param(self, name: str, full: Any, quick: Any, smoke: Any) -> Any:
        given = self.params.get(name)
        if given is not None:
            return given
        return smoke if self.smoke else quick if self.quick else full


def progress(text: str) -> None:
    """One status line, rewritten in place on a terminal."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + text)
    else:
        sys.stderr.write(text + "\n")
    sys.stderr.flush()


def done_line(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def gen_cpu(gens: list[GeneratorProc]) -> float:
    total = 0.0
    for gen in gens:
        t = gen.ps.cpu_times()
        total += t.user + t.system
    return total


def is_ours(name: str) -> bool:
    """Ours on one node ("ours") or on several ("ours-N-nodes")."""
    return name.startswith("ours")


def run_step(ctx: Context, target: Target, *, rate: float, senders: list[list[list[Any]]],
             fanout: int, duration: float, kind: str = "send", size: int = 200, label: str = "",
             shape: str = "ours", keep_sent_by: bool = False,
             undeliverable: Callable[[list[dict[str, int]]], int] | None = None) -> dict[str, Any]:
    """Offer `rate` msgs/s (split over the generators by their share of `senders`) for
    `duration` s; every message should reach `fanout` connections, except the
    `undeliverable(sent_by)` ones (e.g. direct messages to users who are offline)."""
    gens = ctx.gens
    if ctx.warmup:
        duration = min(duration, 2.0)
        label = f"warm-up ({label})"
    total_senders = sum(len(s) for s in senders) or 1
    per_gen = []
    for gen_senders in senders:
        share = rate * len(gen_senders) / total_senders
        per_gen.append({"senders": gen_senders, "rate": share, "duration": duration, "kind": kind,
                        "size": size, "expect": 0, "acks": 0, "drain": 3.0 if not ctx.smoke else 2.0})
    # each generator waits for its own expected deliveries: share out the total evenly
    expected_total = int(rate * duration) * fanout
    for fields in per_gen:
        fields["expect"] = expected_total // len(per_gen)
        fields["acks"] = int(fields["rate"] * duration) if is_ours(target.name) else 0
    progress(f"  {target.name} {label} offering {rate:g} msg/s for {duration:g}s ...")
    other0, counters0 = target.other_cpu(), target.counters()
    cpu0, gcpu0, wall0 = target.cpu_s(), gen_cpu(gens), time.monotonic()
    replies = call_all(gens, "run", per_gen)
    wall = time.monotonic() - wall0
    server_cpu_s = target.cpu_s() - cpu0
    server_cpu = server_cpu_s / wall
    generator_cpu = (gen_cpu(gens) - gcpu0) / wall / len(gens)
    sent = sum(r["sent"] for r in replies)
    received = sum(r["received"] for r in replies)
    ooo = sum(r["ooo"] for r in replies)
    acked = sum(r["acked"] for r in replies)
    expected = sent * fanout
    if undeliverable is not None:
        expected -= undeliverable([r["sent_by"] for r in replies])
    unique = received - ooo
    lost = max(0, expected - unique)
    t0 = min(r["t0_ns"] for r in replies)
    last = max((r["last_ns"] for r in replies), default=t0)
    window = max(duration, (last - t0) / 1e9) if received else duration
    latency = percentiles(merge(r["latency"] for r in replies))
    ack_latency = percentiles(merge(r["ack_latency"] for r in replies))
    closes: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in replies:
        for k, v in r["closes"].items():
            closes[k] = closes.get(k, 0) + v
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    deliveries_per_s = unique / window
    ceiling = ctx.ceilings.get(shape)
    step = {
        "offered_msgs_per_s": rate, "duration_s": duration, "sent": sent, "expected": expected,
        "delivered": unique, "lost": lost, "duplicated_or_out_of_order": ooo,
        "acked": acked, "acked_per_s": acked / window if acked else None,
        "deliveries_per_s": round(deliveries_per_s, 1),
        "latency_ms": latency, "ack_latency_ms": ack_latency,
        "server_cpu_pct": round(server_cpu * 100, 1), "server_rss_mib": round(target.rss() / 2**20, 1),
        "generator_cpu_pct": round(generator_cpu * 100, 1),
        "closes": closes, "errors": errors,
        "sent_by": [r["sent_by"] for r in replies],
    }
    if not keep_sent_by:
        del step["sent_by"]
    # CPU per unit of work: the server's (all nodes of a cluster), microseconds
    step["server_cpu_us_per_delivery"] = round(server_cpu_s * 1e6 / unique, 2) if unique else None
    step["server_cpu_us_per_msg"] = round(server_cpu_s * 1e6 / sent, 2) if sent else None
    if other0:                  # a cluster's nodes, a PostgreSQL store's backends, Redis
        other = target.other_cpu()
        step["cpu_pct_by_process"] = {k: round((other[k] - v) / wall * 100, 1) for k, v in other0.items() if k in other}
    if counters0:               # a cluster: bus events and gap fills during the step
        counters = target.counters()
        step["cluster_counters"] = {k.removeprefix("chat_").removesuffix("_total"): round(counters[k] - v)
                                    for k, v in counters0.items() if k in counters}
    hops = [r["hop"] for r in replies if r.get("hop")]
    if hops:
        step["latency_by_hop_ms"] = {k: percentiles(merge(h.get(k) for h in hops)) for k in ("local", "remote")}
        by_node = [r["by_node"] for r in replies if r.get("by_node")]
        nodes = sorted({k for b in by_node for k in b}, key=int)
        step["latency_by_node_ms"] = {k: percentiles(merge(b.get(k) for b in by_node)) for k in nodes}
    delivered_ok = expected == 0 or unique >= DELIVERED_MIN * expected
    p99 = latency["p99"]
    step["sustained"] = bool(delivered_ok and ooo == 0 and not closes and sent >= 0.95 * rate * duration
                             and (p99 is not None and p99 <= P99_LIMIT_MS or expected == 0))
    step["generator_bound"] = bool(ceiling and deliveries_per_s >= GENERATOR_BOUND * ceiling)
    step["generator_busy"] = generator_cpu >= GENERATOR_BUSY
    extra = ""
    if "latency_by_hop_ms" in step:
        extra += (f", p99 same node {step['latency_by_hop_ms']['local']['p99']} ms / other node "
                  f"{step['latency_by_hop_ms']['remote']['p99']} ms")
    if "cpu_pct_by_process" in step:
        extra += ", " + ", ".join(f"{k} {v}%" for k, v in step["cpu_pct_by_process"].items())
    if step.get("cluster_counters"):
        extra += ", " + ", ".join(f"{k} {v:,}" for k, v in step["cluster_counters"].items())
    done_line(f"  {target.name} {label} {rate:g} msg/s: {deliveries_per_s:,.0f} deliveries/s, "
              f"p99 {p99} ms, lost {lost}, dup/ooo {ooo}, server cpu {step['server_cpu_pct']}%, "
              f"generator cpu {step['generator_cpu_pct']}%{extra}"
              + (" [generator-bound]" if step["generator_bound"] else "")
              + (" [generator busy]" if step["generator_busy"] else "")
              + ("" if step["sustained"] else " [not sustained]"))
    return step


def best_sustained(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [s for s in steps if s["sustained"]]
    return max(ok, key=lambda s: s["deliveries_per_s"]) if ok else None


def stepped(ctx: Context, target: Target, rates: list[float], run: Any) -> list[dict[str, Any]]:
    """Run `run(rate)` for each rate until one is not sustained (that one is kept, then stop).

    An unrecorded warm-up at the first rate comes first (not in smoke runs), so that neither
    target's first recorded step pays for caches, allocator growth or a JIT warming up.
    """
    steps = []
    if rates and not ctx.smoke:
        ctx.warmup = True
        try:
            run(rates[0])
        finally:
            ctx.warmup = False
    for rate in rates:
        step = run(rate)
        steps.append(step)
        if not step["sustained"] or not target.alive():
            break
    return steps


def ratio(ours: float | None, peer: float | None) -> float | None:
    if not ours or not peer:
        return None
    return round(ours / peer, 2)
