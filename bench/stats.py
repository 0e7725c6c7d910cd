"""Latency histograms that merge across generator processes, and their percentiles.

A generator keeps every latency of a step (microseconds) and ships a log-binned histogram:
bins 1% wide from 1 µs, so percentiles are exact to 1% whatever the number of processes,
and the JSON stays small (a few hundred bins) even for millions of deliveries.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from typing import Any

_GROWTH = 1.01
_LOG = math.log(_GROWTH)
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def _bin(us: int) -> int:
    return 0 if us < 1 else int(math.log(us) / _LOG) + 1


def _upper(b: int) -> float:
    """Upper edge of bin `b`, microseconds."""
    return 1.0 if b == 0 else _GROWTH ** b


def histogram(values: array | Iterable[int]) -> dict[str, Any]:
    """{"n", "max_us", "bins": {bin: count}} for latencies in microseconds."""
    try:
        import numpy as np
    except ImportError:  # numpy comes with matplotlib; the slow path keeps the generator usable
        counts: dict[int, int] = {}
        top = 0
        n = 0
        for v in values:
            b = _bin(v)
            counts[b] = counts.get(b, 0) + 1
            top = max(top, v)
            n += 1
        return {"n": n, "max_us": top, "bins": {str(k): c for k, c in counts.items()}}
    data = np.frombuffer(values, dtype=np.int64) if isinstance(values, array) else np.fromiter(values, np.int64)
    if data.size == 0:
        return {"n": 0, "max_us": 0, "bins": {}}
    clipped = np.maximum(data, 1).astype(np.float64)
    bins = np.where(data < 1, 0, (np.log(clipped) / _LOG).astype(np.int64) + 1)
    keys, counts = np.unique(bins, return_counts=True)
    return {"n": int(data.size), "max_us": int(data.max()),
            "bins": {str(int(k)): int(c) for k, c in zip(keys, counts)}}


def merge(hists: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    out: dict[str, int] = {}
    n = 0
    top = 0
    for h in hists:
        if not h:
            continue
        n += h["n"]
        top = max(top, h["max_us"])
        for k, c in h["bins"].items():
            out[k] = out.get(k, 0) + c
    return {"n": n, "max_us": top, "bins": out}


def percentiles(h: dict[str, Any]) -> dict[str, float | None]:
    """p50/p90/p99/p99.9/max in milliseconds (None when there is no sample)."""
    names = {p: "p" + (str(p).rstrip("0").rstrip(".")) for p in PERCENTILES}
    if not h or h["n"] == 0:
        return {**{names[p]: None for p in PERCENTILES}, "max": None}
    items = sorted((int(k), c) for k, c in h["bins"].items())
    result: dict[str, float | None] = {}
    total = h["n"]
    for p in PERCENTILES:
        rank = math.ceil(total * p / 100.0)
        seen = 0
        for b, c in items:
            seen += c
            if seen >= rank:
                result[names[p]] = round(min(_upper(b), h["max_us"]) / 1000.0, 3)
                break
    result["max"] = round(h["max_us"] / 1000.0, 3)
    return result
