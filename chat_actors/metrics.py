"""Prometheus metrics of one server, in its own CollectorRegistry (no process globals).

Counters on the fan-out path are incremented once per event with the recipient count, never
once per recipient. Gauges that describe live state (connections, rooms, inbox depth) are
read on scrape through callbacks instead of being kept up to date on the hot path.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("chat_connections", "Open authenticated WebSocket connections", registry=r)
        self.rooms = Gauge("chat_rooms_active", "Room actors currently running", registry=r)
        self.inbox_depth = Gauge("chat_room_inbox_depth_max", "Deepest room inbox right now", registry=r)
        self.inbox_total = Gauge("chat_room_inbox_depth_total", "Commands queued in all room inboxes", registry=r)
        self.messages_in = Counter("chat_messages_in", "Messages stored (acked), duplicates excluded", registry=r)
        self.deliveries_out = Counter("chat_deliveries_out", "Events handed to connections by room actors", registry=r)
        self.evictions = Counter("chat_evictions", "Connections closed by the server, by reason", ["reason"], registry=r)
        self.errors = Counter("chat_errors", "Protocol error events sent, by code", ["code"], registry=r)
        self.store_batch_size = Histogram(
            "chat_store_batch_size", "Messages per store commit", registry=r,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
        )
        self.store_batch_seconds = Histogram(
            "chat_store_batch_seconds", "Store commit latency", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )

        # the cluster (zero on a single node)
        self.gap_fills = Counter("chat_gap_fills", "Gaps in a room's seq order read from the store", registry=r)
        self.messages_filled = Counter(
            "chat_messages_filled", "Messages delivered from the store by gap fills", registry=r)
        self.lease_renewals = Counter("chat_presence_lease_renewals", "Presence lease renewals of this node", registry=r)
        self.bus_published = Gauge("chat_bus_published", "Events this node handed to the bus (total)", registry=r)
        self.bus_received = Gauge("chat_bus_received", "Events this node received from the bus (total)", registry=r)
        self.bus_dropped = Gauge(
            "chat_bus_dropped", "Bus events dropped here (queue full, bus down, malformed; total)", registry=r)
        self.bus_reconnects = Gauge("chat_bus_reconnects", "Times the bus came back after being down", registry=r)
        self.bus_up = Gauge("chat_bus_up", "1 while the bus delivers (probes come back), else 0", registry=r)

    def bind_bus(self, statistics: Callable[[], object], state: Callable[[], str]) -> None:
        """Bus figures read from the bus's own counters at scrape time."""
        self.bus_published.set_function(lambda: float(statistics().published))  # type: ignore[attr-defined]
        self.bus_received.set_function(lambda: float(statistics().received))  # type: ignore[attr-defined]
        self.bus_dropped.set_function(lambda: float(statistics().dropped))  # type: ignore[attr-defined]
        self.bus_reconnects.set_function(lambda: float(statistics().reconnects))  # type: ignore[attr-defined]
        self.bus_up.set_function(lambda: 1.0 if state() == "ok" else 0.0)

    def bind(self, *, connections: Callable[[], int], registry_stats: Callable[[], object]) -> None:
        """Read live gauges from their owners at scrape time."""
        self.connections.set_function(lambda: float(connections()))
        self.rooms.set_function(lambda: float(registry_stats().rooms))  # type: ignore[attr-defined]
        self.inbox_depth.set_function(lambda: float(registry_stats().inbox_depth_max))  # type: ignore[attr-defined]
        self.inbox_total.set_function(lambda: float(registry_stats().inbox_depth_total))  # type: ignore[attr-defined]

    def observe_batch(self, size: int, seconds: float) -> None:
        self.store_batch_size.observe(size)
        self.store_batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
