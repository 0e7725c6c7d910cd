"""Writing a run: one JSON file, a Markdown summary, and PNG plots (ours beside the peer).

A run with `--nodes N` (N > 1) has one more column, ours on N nodes, beside ours on one
node, both measured in the same run; its step tables add the server CPU per delivery, the
p99 of receivers on the sender's node and on another node, and the CPU of each node and of
the services.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import orjson
import psutil


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(run: dict[str, Any]) -> str:
    lines = [f"# chat_actors benchmark, {run['started']}", "",
             f"Command: `{run['command']}`  ",
             f"Machine: {run['machine']['cpu']}, {run['machine']['cores']} cores, "
             f"{run['machine']['memory_gib']} GiB, Linux {run['machine']['kernel']}, Python {run['machine']['python']}  ",
             f"Pinning: {run['pinning']}  ", f"Duration: {run['duration_s']:.0f} s", ""]
    nodes = run.get("nodes", 1)
    if run.get("store"):
        lines[-1:-1] = [f"Store: {run['store']}  "]
    if nodes > 1:
        lines[-1:-1] = [f"Cluster: {run['cluster']}  "]
    if run.get("ceilings"):
        lines.append("Generator ceiling (frames/s received from the blast server): "
                     + ", ".join(f"{k} frames {v:,.0f}" for k, v in run["ceilings"].items()))
        lines.append("")
    if nodes > 1:
        lines += [f"| scenario | metric | ours, 1 node | ours, {nodes} nodes | node ws | ratio (1 node / node ws) "
                  "| target | met | note |", "|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| scenario | metric | ours | node ws | ratio | target | met | note |",
                  "|---|---|---|---|---|---|---|---|"]
    for name, result in run["scenarios"].items():
        for r in result.get("table", []):
            cluster = f" {_fmt(r.get('cluster'))} |" if nodes > 1 else ""
            lines.append(f"| {name} | {r['metric']} | {_fmt(r['ours'])} |{cluster} {_fmt(r['peer'])} | "
                         f"{_fmt(r['ratio'])} | {r['target']} | {_fmt(r['met'])} | {r['note']} |")
    for name, result in run["scenarios"].items():
        stepped = {t: v for t, v in result["targets"].items() if "steps" in v}
        if not stepped:
            continue
        lines += ["", f"## {name}: steps", "",
                  "| target | offered msg/s | deliveries/s | p50 ms | p90 | p99 | p99.9 | max | lost | dup/ooo "
                  "| server cpu % | server RSS MiB | generator cpu % | sustained |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        acked = name in _ACKED
        if acked:
            lines[-2] = lines[-2].replace("deliveries/s | p50 ms", "acked msgs/s | ack p50 ms")
        # a cluster or a PostgreSQL store: CPU per unit and of each process; a cluster: the hop
        every = [s for v in stepped.values() for s in v["steps"]]
        more = any("cpu_pct_by_process" in s for s in every)
        hops = any("latency_by_hop_ms" in s for s in every)
        bus = any(s.get("cluster_counters") for s in every)
        if more:
            lines[-2] += f" server cpu µs/{'msg' if acked else 'delivery'} |"
            lines[-2] += " p99 same node / other node ms |" if hops else ""
            lines[-2] += " cpu by process % |"
            lines[-1] += "---|---|---|" if hops else "---|---|"
        if bus:
            lines[-2] += " bus events and gap fills (all nodes) |"
            lines[-1] += "---|"
        for t, v in stepped.items():
            for s in [*v["steps"], *([v["half_knee"]] if v.get("half_knee") else [])]:
                lat = s["ack_latency_ms"] if acked else s["latency_ms"]
                flag = "yes" if s["sustained"] else "no"
                if s["generator_bound"]:
                    flag += " (generator-bound)"
                if s is v.get("half_knee"):
                    flag += " (half the knee)"
                line = (f"| {t} | {_fmt(s['offered_msgs_per_s'])} | "
                        f"{_fmt(s['acked_per_s'] if acked else s['deliveries_per_s'])} | "
                        f"{_fmt(lat['p50'])} | {_fmt(lat['p90'])} | {_fmt(lat['p99'])} | {_fmt(lat['p99.9'])} | "
                        f"{_fmt(lat['max'])} | {s['lost']} | {s['duplicated_or_out_of_order']} | "
                        f"{_fmt(s['server_cpu_pct'])} | {_fmt(s['server_rss_mib'])} | "
                        f"{_fmt(s['generator_cpu_pct'])} | {flag} |")
                if more:
                    line += f" {_fmt(s.get('server_cpu_us_per_msg' if acked else 'server_cpu_us_per_delivery'))} |"
                    if hops:
                        hop = s.get("latency_by_hop_ms")
                        line += (f" {_fmt(hop['local']['p99'])} / {_fmt(hop['remote']['p99'])} |" if hop else " - |")
                    by = s.get("cpu_pct_by_process") or {}
                    line += " " + (", ".join(f"{k} {pct:g}" for k, pct in by.items()) or "-") + " |"
                if bus:
                    line += " " + (", ".join(f"{k.removeprefix('bus_')} {n:,}" for k, n in
                                             (s.get("cluster_counters") or {}).items()) or "-") + " |"
                lines.append(line)
    return "\n".join(lines) + "\n"


_COLORS = {"ours": "C0", "node-ws": "C1"}
_ACKED = {"ingest"}         # measured by acks (send -> ack), not by deliveries


def plots(run: dict[str, Any], out: Path, stem: str) -> list[str]:
    """Per stepped scenario: latency percentiles and delivered rate against offered rate."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, result in run["scenarios"].items():
        stepped = {t: v["steps"] for t, v in result["targets"].items() if v.get("steps")}
        if not stepped:
            continue
        fig, (lat_ax, rate_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
        top = 0.0
        acked = name in _ACKED
        for t, steps in stepped.items():
            delivered_kind = "acked_per_s" if acked else "deliveries_per_s"
            lat_key = "ack_latency_ms" if acked else "latency_ms"
            offered = [s["offered_msgs_per_s"] if acked
                       else s["offered_msgs_per_s"] * max(1, s["expected"] // max(1, s["sent"])) for s in steps]
            color = _COLORS.get(t, "C2")
            for pct, style in (("p50", ":"), ("p99", "-"), ("p99.9", "--")):
                lat_ax.plot(offered, [s[lat_key][pct] for s in steps], style, color=color, marker="o",
                            markersize=3, label=f"{t} {pct}")
            rate_ax.plot(offered, [s[delivered_kind] or 0 for s in steps], color=color, marker="o", label=t)
            top = max(top, *offered)
        lat_ax.axhline(50, color="grey", linewidth=0.8)
        lat_ax.set_yscale("log")
        lat_ax.set_xlabel("offered msgs/s" if acked else "offered deliveries/s")
        lat_ax.set_ylabel("send -> ack latency, ms" if acked else "end-to-end latency, ms")
        lat_ax.set_title(f"{name}: latency")
        lat_ax.legend(fontsize=7)
        rate_ax.plot([0, top], [0, top], color="grey", linewidth=0.8)
        rate_ax.set_xlabel("offered msgs/s" if acked else "offered deliveries/s")
        rate_ax.set_ylabel("acked msgs/s" if acked else "delivered/s")
        rate_ax.set_title(f"{name}: delivered against offered")
        rate_ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{stem}-{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path.name)
    return written


def write(run: dict[str, Any], out: Path, stem: str, with_plots: bool = True) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    if with_plots:
        run["plots"] = plots(run, out, stem)
    paths["json"].write_bytes(orjson.dumps(run, option=orjson.OPT_INDENT_2))
    paths["markdown"].write_text(markdown(run))
    return paths
