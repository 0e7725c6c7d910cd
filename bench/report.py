"""Writing a run: one JSON file, a Markdown summary, and PNG plots (ours beside the peer)."""

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
    if run.get("ceilings"):
        lines.append("Generator ceiling (frames/s received from the blast server): "
                     + ", ".join(f"{k} frames {v:,.0f}" for k, v in run["ceilings"].items()))
        lines.append("")
    lines += ["| scenario | metric | ours | node ws | ratio | target | met | note |",
              "|---|---|---|---|---|---|---|---|"]
    for name, result in run["scenarios"].items():
        for r in result.get("table", []):
            lines.append(f"| {name} | {r['metric']} | {_fmt(r['ours'])} | {_fmt(r['peer'])} | "
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
        for t, v in stepped.items():
            for s in v["steps"]:
                lat = s["ack_latency_ms"] if acked else s["latency_ms"]
                flag = "yes" if s["sustained"] else "no"
                if s["generator_bound"]:
                    flag += " (generator-bound)"
                lines.append(f"| {t} | {_fmt(s['offered_msgs_per_s'])} | "
                             f"{_fmt(s['acked_per_s'] if acked else s['deliveries_per_s'])} | "
                             f"{_fmt(lat['p50'])} | {_fmt(lat['p90'])} | {_fmt(lat['p99'])} | {_fmt(lat['p99.9'])} | "
                             f"{_fmt(lat['max'])} | {s['lost']} | {s['duplicated_or_out_of_order']} | "
                             f"{_fmt(s['server_cpu_pct'])} | {_fmt(s['server_rss_mib'])} | "
                             f"{_fmt(s['generator_cpu_pct'])} | {flag} |")
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
