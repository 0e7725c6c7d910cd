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
